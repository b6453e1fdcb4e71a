"""`python -m voxmesh.healthcheck HOST:PORT [SERVICE]`: exit 0 if the gRPC health service there
reports SERVING, 1 otherwise. For container health checks where no grpc_health_probe exists
(Kubernetes has native gRPC probes; Docker Compose does not)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    target, service = args[0], args[1] if len(args) == 2 else ""
    try:
        with grpc.insecure_channel(target) as channel:
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
                .status
            )
    except grpc.RpcError as e:
        print(f"{target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{target} {service or '(overall)'}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
