"""Voxmesh as on several hosts, on one machine: PostgreSQL, NATS, the control plane and two STT
workers are separate processes that share nothing but the PostgreSQL and NATS addresses (the
workers have no data directory at all). Killing the worker that holds a job mid-way still
completes the job, on the other worker."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from control.db.embedded import EmbeddedPostgres
from control.kinds import FIELDS
from tests.conftest import free_port
from tests.speech import passage, wav_bytes
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VOXMESH_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    return {**base, "PYTHONPATH": str(ROOT), **extra}


def test_separate_hosts_survive_losing_a_worker(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "db-host" / "pgdata", delete_on_exit=True)
    nats = EmbeddedNats(tmp_path / "nats-host", port=free_port(), worker_types=FIELDS).start()
    database = pg.ensure_database("voxmesh")
    port = free_port()
    control_env = _env(
        DATABASE_URL=database, NATS_URL=nats.url, VOXMESH_PORT=str(port),
        VOXMESH_DATA_DIR=str(tmp_path / "control-host"), VOXMESH_AUTH__JWT_SECRET="multi-host-secret-" + "z" * 30,
        VOXMESH_MESH__ACK_WAIT_SECONDS="3",
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "control", "create-user", "ops", "--role", "editor"],
                   env=control_env, input="ops-password\n", text=True, check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    control = subprocess.Popen([sys.executable, "-m", "control", "serve"], env=control_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # No database, no data dir: a worker host has only its own NATS credentials.
    worker_env = _env(NATS_URL=nats.url_for("worker-stt"), VOXMESH_STT__CPU_THREADS="1")
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-m", "services.stt"],
            env={**worker_env, "HOSTNAME": name},
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("stt-host-a", "stt-host-b")
    }
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while True:
            try:
                token = (
                    auth_pb2_grpc.AuthServiceStub(channel)
                    .Login(
                        auth_pb2.LoginRequest(username="ops", password="ops-password"), timeout=5
                    )
                    .tokens.access_token
                )
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the control plane did not come up"
                time.sleep(0.5)
        md = (("authorization", f"Bearer {token}"),)
        samples, _ = passage(repeat=4)  # ~2 minutes of speech: long enough to kill a worker mid-job
        data = wav_bytes(samples)
        files = files_pb2_grpc.FileServiceStub(channel)
        started = files.StartUpload(
            files_pb2.StartUploadRequest(filename="talk.wav", size_bytes=len(data)), metadata=md
        )
        for offset in range(0, len(data), started.chunk_size_bytes):
            files.UploadChunk(files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=offset,
                              data=data[offset : offset + started.chunk_size_bytes]), metadata=md)  # fmt: skip
        stored = files.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id,
                                    sha256=hashlib.sha256(data).hexdigest()), metadata=md).file  # fmt: skip
        project = projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
            projects_pb2.CreateProjectRequest(name="multi-host"), metadata=md).project  # fmt: skip
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = jobs.CreateJob(jobs_pb2.CreateJobRequest(project_id=project.id, input_file_id=stored.id,
                             stt=jobs_pb2.SttParams()), metadata=md).job  # fmt: skip
        holder = ""
        for event in jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job.id), metadata=md, timeout=120
        ):
            if event.WhichOneof("event") == "log" and "started run" in event.log.line:
                holder = event.log.line.split("worker ")[1].split(" ")[0]
            if event.WhichOneof("event") == "progress" and event.progress.percent >= 10 and holder:
                break
        pid = int(holder.rsplit(":", 1)[1])  # worker ids are <type>@<host>:<pid>
        victim = next(name for name, proc in workers.items() if proc.pid == pid)
        os.kill(pid, signal.SIGKILL)
        workers[victim].wait()
        last = None
        for event in jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job.id), metadata=md, timeout=240
        ):
            last = event
        assert last is not None and last.WhichOneof("event") == "result"
        final = jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id), metadata=md).job
        assert final.status == jobs_pb2.JOB_STATUS_COMPLETED and final.attempts == 2
        assert "delivery 2" in last.result.logs and last.result.meta["word_count"] > 100
        survivor = next(name for name in workers if name != victim)
        print(f"\nkilled {victim} (pid {pid}) mid-job; {survivor} finished it: "
              f"{int(last.result.meta['word_count'])} words, attempts {final.attempts}")  # fmt: skip
    finally:
        for proc in [*workers.values(), control]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*workers.values(), control]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()
        pg.stop()
