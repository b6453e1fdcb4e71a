"""`python -m gateway.http --control 127.0.0.1:50051 --port 8090`: the HTTP API on uvicorn
(Envoy routes /v1/ to it; `make run` starts both)."""

from __future__ import annotations

import argparse
import os

import uvicorn

from gateway.http.app import create_app
from voxmesh import eventloop, heap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control", default=os.environ.get("VOXMESH_CONTROL", "127.0.0.1:50051"))
    parser.add_argument("--host", default=os.environ.get("VOXMESH_HTTP_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("VOXMESH_HTTP_PORT", "8090"))
    )
    args = parser.parse_args()
    app = create_app(args.control)
    heap.freeze_startup_objects()  # what the imports and the app made lives as long as we do
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning",
        proxy_headers=True, forwarded_allow_ips="127.0.0.1",
        # the loop and the HTTP parser the peers run (uvicorn[standard]): uvloop and httptools
        loop=eventloop.name(), http="httptools",
    )  # fmt: skip


if __name__ == "__main__":
    main()
