"""`voxmesh-control serve` as a real process on the embedded PostgreSQL: it starts with no
DATABASE_URL, keeps its data across restarts, stops cleanly on SIGTERM, and refuses to start
against an external database without a signing secret."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voxmesh import launch
from voxmesh.v1 import auth_pb2, auth_pb2_grpc, projects_pb2, projects_pb2_grpc

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_") and k != "DATABASE_URL"
    }
    return {**env, "VOXMESH_DATA_DIR": str(data_dir), **extra}


def _start(data_dir: Path, port: int, nats_port: int) -> subprocess.Popen[str]:
    """The control plane on its embedded servers, on ports of its own (a `make run` on the
    default ones may be running beside the tests)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "control", "serve", "--port", str(port)],
        env=_env(data_dir, VOXMESH_NATS_PORT=str(nats_port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"server exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return proc
        except grpc.RpcError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become healthy in 60 s")


def _outliving(procs: list[psutil.Process], timeout: float) -> list[str]:
    """The processes still running after `timeout` (a zombie has ended: its parent may be an
    init that is slow to reap it)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(p.cmdline()[:3]))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def _login(port: int, password: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username="alice", password=password), timeout=10
        )
        return reply.tokens.access_token


def test_embedded_database_survives_restarts(tmp_path: Path) -> None:
    password = "alice-password"
    subprocess.run(
        [sys.executable, "-m", "control", "create-user", "alice", "--role", "admin"],
        env=_env(tmp_path), input=password + "\n", text=True, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    assert (tmp_path / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    port, nats_port = _free_port(), _free_port()
    proc = _start(tmp_path, port, nats_port)
    try:
        token = _login(port, password)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
                projects_pb2.CreateProjectRequest(name="Kept across restarts"),
                metadata=(("authorization", f"Bearer {token}"),), timeout=10,
            )  # fmt: skip
    finally:
        log = _stop(proc)
    assert "embedded database" in log and "shutting down" in log

    proc = _start(tmp_path, port, nats_port)
    try:
        token = _login(port, password)  # the same generated secret and the same data
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            listed = projects_pb2_grpc.ProjectServiceStub(channel).ListProjects(
                projects_pb2.ListProjectsRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert [p.name for p in listed.projects] == ["Kept across restarts"]
    finally:
        _stop(proc)


def test_external_database_needs_a_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "control", "serve"],
        env=_env(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/voxmesh"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "VOXMESH_AUTH__JWT_SECRET is not set" in result.stderr


def test_make_run_runs_the_platform_and_transcribes(tmp_path: Path) -> None:
    """What `make run` starts (python -m voxmesh.launch): control plane, embedded PostgreSQL and
    NATS, and the STT worker as separate processes; a real recording goes in, its transcript
    comes out."""
    import hashlib
    import secrets
    import urllib.request

    from tests.speech import passage, wav_bytes
    from voxmesh.v1 import (
        files_pb2,
        files_pb2_grpc,
        jobs_pb2,
        jobs_pb2_grpc,
        results_pb2,
        results_pb2_grpc,
    )

    port, nats_port = _free_port(), _free_port()
    subprocess.run(
        [sys.executable, "-m", "control", "create-user", "alice", "--role", "editor"],
        env=_env(tmp_path), input="alice-password\n", text=True, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    gateway, metrics = _free_port(), 20000 + secrets.randbelow(20000)
    env = _env(tmp_path, VOXMESH_PORT=str(port), VOXMESH_NATS_PORT=str(nats_port),
               VOXMESH_GATEWAY_PORT=str(gateway), VOXMESH_GATEWAY_ADMIN_PORT=str(_free_port()),
               VOXMESH_METRICS_PORT=str(metrics), VOXMESH_HEALTH_PORT=str(metrics + 10))  # fmt: skip
    launcher = subprocess.Popen([sys.executable, "-m", "voxmesh.launch"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    samples, _ = passage()
    audio = wav_bytes(samples[: 16000 * 8])
    try:
        deadline = time.monotonic() + 90
        token = None
        while token is None and time.monotonic() < deadline:
            try:
                token = _login(port, "alice-password")
            except grpc.RpcError:
                time.sleep(0.5)
        assert token, "the platform did not come up"
        md = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            files = files_pb2_grpc.FileServiceStub(channel)
            started = files.StartUpload(
                files_pb2.StartUploadRequest(filename="a.wav", size_bytes=len(audio)), metadata=md
            )
            files.UploadChunk(
                files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=0, data=audio),
                metadata=md,
            )
            stored = files.FinishUpload(
                files_pb2.FinishUploadRequest(
                    upload_id=started.upload_id, sha256=hashlib.sha256(audio).hexdigest()
                ),
                metadata=md,
            ).file
            project = (
                projects_pb2_grpc.ProjectServiceStub(channel)
                .CreateProject(projects_pb2.CreateProjectRequest(name="e2e"), metadata=md)
                .project
            )
            job = (
                jobs_pb2_grpc.JobServiceStub(channel)
                .CreateJob(
                    jobs_pb2.CreateJobRequest(
                        project_id=project.id, input_file_id=stored.id, stt=jobs_pb2.SttParams()
                    ),
                    metadata=md,
                )
                .job
            )
        # The progress stream, through the gateway (native gRPC on Envoy's port).
        with grpc.insecure_channel(f"127.0.0.1:{gateway}") as via_envoy:
            last = None
            for event in jobs_pb2_grpc.JobServiceStub(via_envoy).WatchJob(
                jobs_pb2.WatchJobRequest(job_id=job.id), metadata=md, timeout=120
            ):
                last = event
            assert last is not None and last.WhichOneof("event") == "result"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            result = (
                results_pb2_grpc.JobResultServiceStub(channel)
                .GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id), metadata=md)
                .result
            )
        assert result.meta["language"] == "en" and result.meta["word_count"] >= 15
        # Every process serves its metrics: the control plane on the base port, workers after.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert "voxmesh_rpc_requests_total" in r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics + 1}/metrics", timeout=5) as r:
            assert (
                'voxmesh_worker_jobs_total{outcome="completed",type="stt"} 1.0' in r.read().decode()
            )
        # kill -9 of the control plane: make run starts another, which adopts the embedded
        # NATS and PostgreSQL the first left running (no "port in use"), and serves again.
        family = psutil.Process(launcher.pid).children()
        control = next(p for p in family if "control" in p.cmdline())
        control.kill()
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(grpc.RpcError):
                if _login(port, "alice-password"):
                    break
            assert time.monotonic() < deadline, "make run did not bring the control plane back"
            time.sleep(0.5)
        assert all(p.pid != control.pid for p in psutil.Process(launcher.pid).children())
        # kill -9 of make run itself: every process it started stops (they are tied to it),
        # including the embedded servers, so nothing is left listening for the next one.
        family = psutil.Process(launcher.pid).children(recursive=True)
        servers = [
            psutil.Process(int((tmp_path / "nats" / "nats-server.pid").read_text())),
            psutil.Process(int((tmp_path / "pgdata" / "postmaster.pid").read_text().split()[0])),
        ]
        launcher.kill()
        out, _ = launcher.communicate(timeout=90)
        alive = _outliving([*family, *servers], timeout=90)
        assert not alive, alive
        for listening in (port, nats_port, gateway):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", listening)) != 0, f"{listening} still taken"
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)
            out, _ = launcher.communicate(timeout=90)
    assert "Voxmesh is running" in out
    assert "the control plane exited (-9); restarting" in out


def test_a_ctrl_c_reaches_make_run_alone() -> None:
    """The terminal sends Ctrl-C to its whole foreground process group. Every piece `make run`
    starts has a group of its own, so the signal reaches the launcher alone, and it stops the
    pieces in order (workers, then the control plane and its embedded servers): a worker still
    finishing a job is never cut off from NATS by a control plane that stopped first."""
    piece = launch.child([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert os.getpgid(piece.pid) == piece.pid != os.getpgid(0)
    finally:
        piece.kill()
        piece.wait(10)
