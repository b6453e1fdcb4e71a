"""The fault suite: kill -9 of each part of the platform in the middle of a job: a worker,
nats-server, PostgreSQL, the control plane. In every case the job ends exactly once (one
COMPLETED status, one result, one result row), every client call gets a status (never a hang:
each has a deadline), outages answer UNAVAILABLE with a sentence, health says NOT_SERVING while a
dependency is down, and everything comes back by itself.

Workers here are the mesh's test worker (`tests.workers`, no model) in a process of their own,
so that they can be killed; the parts are the real ones (embedded PostgreSQL, nats-server)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import func, select

from control.db import migrate
from control.db.embedded import EmbeddedPostgres
from control.db.models import JobEvent, JobResult, UserRole
from tests.conftest import control_plane, free_port
from tests.harness import Caller, Harness, eventually, rpc_error
from tests.workers import spawn
from voxmesh import mesh
from voxmesh.nats_auth import CREDENTIALS_FILE, Credentials, worker_user
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
)

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 60.0
CALL = 15.0  # every RPC below has this deadline: an answer, or the test fails (never a hang)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def serving(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=CALL
    )
    return int(reply.status)


async def job_status(client: Any, job_id: str) -> int:
    reply = await client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=CALL)
    return int(reply.job.status)


async def ended_exactly_once(h: Harness, job_id: str) -> None:
    """One COMPLETED status event, one result event, one result row: the job ended once."""
    async with h.app.sessions() as session:
        kinds = list(
            await session.scalars(select(JobEvent.kind).where(JobEvent.job_id == uuid.UUID(job_id)))
        )
        rows = await session.scalar(
            select(func.count()).select_from(JobResult).where(JobResult.job_id == uuid.UUID(job_id))
        )
        statuses = [
            jobs_pb2.WatchJobResponse.FromString(p).status.status
            for p in await session.scalars(
                select(JobEvent.payload).where(
                    JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "status"
                )
            )
        ]
    assert kinds.count("result") == 1, kinds
    assert statuses.count(jobs_pb2.JOB_STATUS_COMPLETED) == 1, statuses
    assert rows == 1


async def start_running(h: Harness, editor: Caller, text: str) -> str:
    project = await h.project(editor.user_id)
    job = (
        await editor.client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(project_id=str(project), tts=jobs_pb2.TtsParams(text=text)),
            timeout=CALL,
        )
    ).job.id

    async def running() -> bool:
        reply = await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job), timeout=CALL)
        return reply.job.status == jobs_pb2.JOB_STATUS_RUNNING and reply.job.progress > 0

    await eventually(running, f"job {job} running")
    return job


@contextlib.contextmanager
def worker_process(nats: EmbeddedNats, name: str, **env: str) -> Any:
    proc = spawn(nats.url_for(worker_user("tts")), name, **env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def wav_bytes(seconds: float = 0.5) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


# --- a worker ---------------------------------------------------------------------------


async def test_worker_killed_mid_job(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    with worker_process(harness.nats, "doomed") as doomed:
        job = await start_running(harness, editor, "sleep:4")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(30)
        with worker_process(harness.nats, "second"):

            async def completed() -> bool:
                return await job_status(editor.client, job) == jobs_pb2.JOB_STATUS_COMPLETED

            await eventually(completed, "the job completed on the second worker")
    reply = await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job), timeout=CALL)
    assert reply.job.attempts == 2
    await ended_exactly_once(harness, job)


async def test_a_stopped_worker_leaves_a_long_job_to_another(harness: Harness) -> None:
    """SIGTERM (Ctrl-C, a rolling update) lets the job in hand run on for VOXMESH_DRAIN_SECONDS
    only: a longer one is left unacknowledged, the process ends, and another worker takes the
    job up. (A worker that waited for a 12 s job would still be running after 8.)"""
    editor = await harness.user(UserRole.EDITOR)
    with worker_process(harness.nats, "stopping", VOXMESH_DRAIN_SECONDS="1") as stopping:
        job = await start_running(harness, editor, "sleep:12")
        stopping.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(stopping.wait, 8) == 0
    with worker_process(harness.nats, "second"):

        async def completed() -> bool:
            return await job_status(editor.client, job) == jobs_pb2.JOB_STATUS_COMPLETED

        await eventually(completed, "the job completed on the second worker", timeout=60)
    reply = await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job), timeout=CALL)
    assert reply.job.attempts == 2
    await ended_exactly_once(harness, job)


# --- nats-server ------------------------------------------------------------------------


async def test_nats_killed_mid_job(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    nats = harness.nats
    with worker_process(nats, "survivor") as worker:
        job = await start_running(harness, editor, "sleep:5")
        nats.kill()
        # Finishing an upload needs the object store: UNAVAILABLE with a sentence, and the
        # same upload finishes once NATS is back (nothing received is lost).
        audio = wav_bytes()
        upload = await editor.client.files.StartUpload(
            files_pb2.StartUploadRequest(
                filename="a.wav", size_bytes=len(audio), content_type="audio/wav"
            ),
            timeout=CALL,
        )
        await editor.client.files.UploadChunk(
            files_pb2.UploadChunkRequest(upload_id=upload.upload_id, offset=0, data=audio),
            timeout=CALL,
        )
        finish = files_pb2.FinishUploadRequest(
            upload_id=upload.upload_id, sha256=hashlib.sha256(audio).hexdigest()
        )
        err = await rpc_error(editor.client.files.FinishUpload(finish, timeout=CALL))
        assert err.code() == UNAVAILABLE and "NATS" in (err.details() or ""), err.details()
        # A new job is accepted into the outbox and dispatched once NATS is back.
        project = await harness.project(editor.user_id)
        later = (
            await editor.client.jobs.CreateJob(
                jobs_pb2.CreateJobRequest(
                    project_id=str(project), tts=jobs_pb2.TtsParams(text="steps:2")
                ),
                timeout=CALL,
            )
        ).job.id

        async def not_serving() -> bool:
            return await serving(harness.channel) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, "health NOT_SERVING while NATS is down", 20)
        assert worker.poll() is None, "the worker died in the NATS outage"
        nats.start()

        async def both_completed() -> bool:
            return all(
                [
                    await job_status(editor.client, j) == jobs_pb2.JOB_STATUS_COMPLETED
                    for j in (job, later)
                ]
            )

        await eventually(both_completed, "both jobs completed after NATS came back")
        stored = await editor.client.files.FinishUpload(finish, timeout=CALL)
        assert stored.file.size_bytes == len(audio)
        assert worker.poll() is None, "the worker died after the NATS outage"

        async def serving_again() -> bool:
            return await serving(harness.channel) == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving_again, "health SERVING again", 20)
    await ended_exactly_once(harness, job)
    await ended_exactly_once(harness, later)


# --- PostgreSQL -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def own_database(
    tmp_path: Path, nats: EmbeddedNats
) -> AsyncIterator[tuple[Harness, EmbeddedPostgres]]:
    """A control plane on a PostgreSQL of its own, which this test may kill."""
    pg = await asyncio.to_thread(
        EmbeddedPostgres, tmp_path / "own-pg" / "pgdata", delete_on_exit=True
    )
    url = await asyncio.to_thread(pg.ensure_database)
    await asyncio.to_thread(migrate.upgrade, url)
    try:
        async with control_plane(url, tmp_path, nats) as h:
            yield h, pg
    finally:
        await asyncio.to_thread(pg.stop)


async def test_postgres_killed_mid_job(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async with own_database(tmp_path, nats_server) as (h, pg):
        editor = await h.user(UserRole.EDITOR)
        with worker_process(nats_server, "steady") as worker:
            job = await start_running(h, editor, "sleep:5")
            watch = editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job))
            assert (await asyncio.wait_for(watch.read(), CALL)).WhichOneof("event") == "snapshot"
            pid = pg.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the postmaster: PostgreSQL is gone

            async def refused() -> bool:
                try:
                    await job_status(editor.client, job)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == UNAVAILABLE, (err.code(), err.details())
                    assert "database is unreachable" in (err.details() or "")
                    return True
                return False  # a connection still open from before: the next call will fail

            await eventually(refused, "GetJob UNAVAILABLE while PostgreSQL is down", 30)
            for call in (
                h.anonymous.auth.Login(
                    auth_pb2.LoginRequest(username=editor.username, password=editor.password),
                    timeout=CALL,
                ),
                editor.client.jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(
                        project_id=str(uuid.uuid4()), tts=jobs_pb2.TtsParams(text="steps:1")
                    ),
                    timeout=CALL,
                ),
            ):
                err = await rpc_error(call)
                assert err.code() == UNAVAILABLE, (err.code(), err.details())

            async def not_serving() -> bool:
                return await serving(h.channel) == health_pb2.HealthCheckResponse.NOT_SERVING

            await eventually(not_serving, "health NOT_SERVING while PostgreSQL is down", 20)
            await asyncio.to_thread(pg.ensure_running)

            async def serving_again() -> bool:
                return await serving(h.channel) == health_pb2.HealthCheckResponse.SERVING

            await eventually(serving_again, "health SERVING once PostgreSQL is back", 30)

            async def completed() -> bool:
                return await job_status(editor.client, job) == jobs_pb2.JOB_STATUS_COMPLETED

            await eventually(completed, "the job completed after the outage")
            # The watcher opened before the outage either saw the job through or was told
            # UNAVAILABLE (it then resumes after its last seq); either way, no hang.
            events: list[jobs_pb2.WatchJobResponse] = []
            try:
                async with asyncio.timeout(DEADLINE):
                    while (event := await watch.read()) is not grpc.aio.EOF:
                        events.append(event)
                assert events and events[-1].WhichOneof("event") == "result"
            except grpc.aio.AioRpcError as err:
                assert err.code() == UNAVAILABLE, (err.code(), err.details())
                after = events[-1].seq if events else 0
                rest = [
                    e
                    async for e in editor.client.jobs.WatchJob(
                        jobs_pb2.WatchJobRequest(job_id=job, after_seq=after), timeout=CALL
                    )
                ]
                assert rest[-1].WhichOneof("event") == "result"
            assert worker.poll() is None
        await ended_exactly_once(h, job)


# --- the control plane ------------------------------------------------------------------


def _control(data_dir: Path, port: int, nats_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXMESH_", "NATS_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        VOXMESH_DATA_DIR=str(data_dir),
        VOXMESH_NATS_PORT=str(nats_port),
        VOXMESH_MESH__ACK_WAIT_SECONDS="2",
        PYTHONPATH=str(ROOT),
    )
    log = (data_dir / "control.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "control", "serve", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def _healthy(target: str, proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    async def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"control exited ({proc.returncode}):\n{(data_dir / 'control.log').read_text()[-3000:]}"
            )
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                return await serving(channel) == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            return False

    await eventually(up, f"control plane healthy on {target}", 120)


async def test_control_plane_killed_mid_job(tmp_path: Path) -> None:
    """kill -9 of `voxmesh-control serve` (embedded PostgreSQL and NATS): the open watch gets
    UNAVAILABLE, the worker goes on, and a restart on the same data directory adopts the
    nats-server and PostgreSQL left running (no "port in use") and sees the job end once."""
    port, nats_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    password = "faulty-password"
    subprocess.run(
        [sys.executable, "-m", "control", "create-user", "fiona", "--role", "editor"],
        env={**os.environ, "VOXMESH_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
        input=password + "\n", text=True, check=True, timeout=120, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    control = _control(tmp_path, port, nats_port)
    worker: subprocess.Popen[bytes] | None = None
    try:
        await _healthy(target, control, tmp_path)
        creds = Credentials(tmp_path / "nats" / CREDENTIALS_FILE, ())
        worker_url = creds.url(f"nats://127.0.0.1:{nats_port}", worker_user("tts"))
        worker = spawn(worker_url, "outlives-control")
        async with grpc.aio.insecure_channel(target) as channel:
            login = await auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username="fiona", password=password), timeout=CALL
            )
            md = (("authorization", f"Bearer {login.tokens.access_token}"),)
            project = await projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
                projects_pb2.CreateProjectRequest(name="faults"), metadata=md, timeout=CALL
            )
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            job = (
                await jobs.CreateJob(
                    jobs_pb2.CreateJobRequest(
                        project_id=project.project.id, tts=jobs_pb2.TtsParams(text="sleep:6")
                    ),
                    metadata=md,
                    timeout=CALL,
                )
            ).job.id

            async def running() -> bool:
                got = await jobs.GetJob(
                    jobs_pb2.GetJobRequest(job_id=job), metadata=md, timeout=CALL
                )
                return got.job.status == jobs_pb2.JOB_STATUS_RUNNING and got.job.progress > 0

            await eventually(running, "job running")
            watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job), metadata=md)
            assert (await asyncio.wait_for(watch.read(), CALL)).WhichOneof("event") == "snapshot"
            control.kill()  # SIGKILL: no shutdown, nothing cleaned up
            control.wait(30)
            err = await rpc_error(asyncio.wait_for(watch.read(), CALL))
            assert err.code() == UNAVAILABLE, (err.code(), err.details())
            nats_pid = int((tmp_path / "nats" / "nats-server.pid").read_text())
            os.kill(nats_pid, 0)  # the embedded nats-server outlived it, with the job in flight

        control = _control(tmp_path, port, nats_port)
        await _healthy(target, control, tmp_path)
        assert "adopted the embedded nats-server" in (tmp_path / "control.log").read_text()
        async with grpc.aio.insecure_channel(target) as channel:
            jobs = jobs_pb2_grpc.JobServiceStub(channel)

            async def completed() -> bool:
                got = await jobs.GetJob(
                    jobs_pb2.GetJobRequest(job_id=job), metadata=md, timeout=CALL
                )
                return got.job.status == jobs_pb2.JOB_STATUS_COMPLETED

            await eventually(completed, "the job completed after the control plane came back")
            events = [
                e
                async for e in jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(job_id=job), metadata=md, timeout=CALL
                )
            ]
        kinds = [e.WhichOneof("event") for e in events[1:]]
        assert kinds.count("result") == 1, kinds
        completions = [
            e for e in events[1:]
            if e.WhichOneof("event") == "status" and e.status.status == jobs_pb2.JOB_STATUS_COMPLETED
        ]  # fmt: skip
        assert len(completions) == 1
        assert worker.poll() is None, "the worker died while the control plane was down"
        control.send_signal(signal.SIGTERM)
        control.wait(60)
        assert control.returncode == 0

        # A clean stop leaves nothing listening: the adopted nats-server is stopped too.
        async def nats_gone() -> bool:  # a zombie has ended (its reaper may be slow)
            with contextlib.suppress(psutil.NoSuchProcess):
                return psutil.Process(nats_pid).status() == psutil.STATUS_ZOMBIE
            return True

        await eventually(nats_gone, "the adopted nats-server stopped with the control plane", 10)
    finally:
        for proc in (worker, control):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp_path / "nats" / "nats-server.pid").read_text()), signal.SIGKILL)
        if (tmp_path / "pgdata" / "postmaster.pid").exists():  # a failed run: stop PostgreSQL
            with contextlib.suppress(Exception):
                EmbeddedPostgres(tmp_path / "pgdata").stop()


def test_only_outages_are_unavailable() -> None:
    """Dependency outages map to UNAVAILABLE; other errors from the same libraries do not (a
    bad JetStream request is a bug, reported as INTERNAL with a reference)."""
    import nats.errors
    import nats.js.errors
    import psycopg
    from sqlalchemy.exc import OperationalError

    from control.faults import unavailable

    down = [
        OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused")),
        nats.errors.NoServersError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.TimeoutError(),
    ]
    for exc in down:
        found = unavailable(exc)
        assert found is not None and found.code == UNAVAILABLE, exc
    for exc in (nats.js.errors.BadRequestError(), ValueError("x"), KeyError("k")):
        assert unavailable(exc) is None, exc


async def test_embedded_servers_that_die_are_started_again(tmp_path: Path) -> None:
    """`make run`'s embedded PostgreSQL and nats-server have nobody else to look after them:
    killed with -9, the control plane's health probe starts them again and serves again."""
    port, nats_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    control = _control(tmp_path, port, nats_port)
    try:
        await _healthy(target, control, tmp_path)
        for pid_file in (
            tmp_path / "nats" / "nats-server.pid",
            tmp_path / "pgdata" / "postmaster.pid",
        ):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)

            async def replaced(pid_file: Path = pid_file, pid: int = pid) -> bool:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    return int(pid_file.read_text().split()[0]) != pid
                return False

            await eventually(replaced, f"{pid_file.name} names a new process", 30)
            await _healthy(target, control, tmp_path)
        async with grpc.aio.insecure_channel(target) as channel:

            async def answers() -> bool:  # UNAVAILABLE while PostgreSQL finishes its recovery
                name = f"nobody-{uuid.uuid4().hex[:8]}"  # each a new name: no sign-in throttle
                err = await rpc_error(
                    auth_pb2_grpc.AuthServiceStub(channel).Login(
                        auth_pb2.LoginRequest(username=name, password="nobody-pw"),
                        timeout=CALL,
                    )
                )
                assert err.code() in (UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), err
                return err.code() == grpc.StatusCode.UNAUTHENTICATED

            await eventually(answers, "sign-in answers from the database again", 60)
        log = (tmp_path / "control.log").read_text()
        assert "starting the embedded PostgreSQL again" in log
        assert "starting the embedded NATS again" in log
    finally:
        control.send_signal(signal.SIGTERM)
        control.wait(60)


async def test_a_running_job_no_worker_holds_is_failed_not_watched_for_ever(
    harness: Harness,
) -> None:
    """A job RUNNING with no worker (its worker lost and the max-deliveries advisory missed, or
    left so by an import) is failed with a reason once ack_wait * max_deliver has passed with
    no event and no connected worker says it holds it; a job a worker holds is left alone, and
    a watcher of the orphan gets its end instead of waiting for ever."""
    from control.db.models import Job, JobStatus
    from control.dispatch import reaper
    from tests.harness import run_workers
    from tests.test_dispatch import create, wait_for
    from tests.workers import behave

    assert harness.app.mesh is not None
    presence = harness.app.mesh.presence
    editor = await harness.user(UserRole.EDITOR)
    project = await harness.project(editor.user_id)
    orphan = await harness.job(project, editor.user_id, status=JobStatus.RUNNING)
    async with run_workers(harness, "tts", behave):
        held = await create(editor, str(project), "sleep:20")
        await wait_for(harness, held.id, {jobs_pb2.JOB_STATUS_RUNNING})

        async def announced() -> bool:
            return held.id in presence.held_jobs()

        await eventually(announced, "the worker's announcement of the job it holds", timeout=15)
        async with harness.app.sessions() as session:  # both silent for an hour
            for job_id in (orphan, uuid.UUID(held.id)):
                row = await session.get(Job, job_id)
                assert row is not None
                row.updated_at = row.updated_at.replace(year=row.updated_at.year - 1)
            await session.commit()
        watcher = asyncio.create_task(
            collect(editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=str(orphan))))
        )
        presence.listening_since = None  # a replica that only just began listening cannot tell
        assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60) == []
        presence.listening_since = 0.0
        # Nor while worker events have not been flowing for the whole grace (NATS failing
        # over: a busy job looks silent only because its events wait in the stream).
        assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60, 59) == []
        presence.lost()  # this replica's own NATS connection dropped: it hears nobody
        assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60) == []
        presence.listening_since = 0.0
        assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60) == [orphan]
        events = await asyncio.wait_for(watcher, 10)
        await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=held.id))
    final = await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=str(orphan)))
    assert final.job.status == jobs_pb2.JOB_STATUS_FAILED
    assert "no worker has held this job" in final.job.error, final.job.error
    assert events[-1].WhichOneof("event") == "result"
    still = await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=held.id))
    assert still.job.status != jobs_pb2.JOB_STATUS_FAILED  # the held one was not touched


async def collect(call: Any) -> list[Any]:
    return [event async for event in call]


async def test_a_silent_job_whose_worker_just_left_is_left_to_jetstream(harness: Harness) -> None:
    """A job may run silently for long (one long model step), so its last event is old. When
    its worker then leaves or dies, JetStream gives the run to another worker within ack_wait:
    the reaper counts the silence from the last sign of life (an event, or a worker saying it
    holds the job), so it does not fail a job that was held a moment ago."""
    from types import SimpleNamespace

    from control.db.models import Job, JobStatus
    from control.dispatch import reaper

    assert harness.app.mesh is not None
    presence = harness.app.mesh.presence
    editor = await harness.user(UserRole.EDITOR)
    project = await harness.project(editor.user_id)
    job_id = await harness.job(project, editor.user_id, status=JobStatus.RUNNING)
    async with harness.app.sessions() as session:  # its last event: an hour ago
        row = await session.get(Job, job_id)
        assert row is not None
        row.updated_at = row.updated_at.replace(year=row.updated_at.year - 1)
        await session.commit()

    async def announce(**body: object) -> None:
        msg = SimpleNamespace(subject=mesh.presence_subject("tts"), data=json.dumps(
            {"worker_id": "tts-silent", "capabilities": {}, **body}).encode())  # fmt: skip
        await presence._on_announce(msg)  # type: ignore[arg-type]

    presence.listening_since = 0.0  # this replica has listened long enough to know absence
    await announce(jobs=[str(job_id)])
    await announce(jobs=[str(job_id)], leaving=True)  # held until now; its worker left
    assert str(job_id) not in presence.held_jobs()
    assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60) == []
    presence._last_held[str(job_id)] -= 61  # a minute later, nobody has taken it up
    assert await reaper.reap(harness.app.sessions, presence, harness.app.mesh, 60) == [job_id]
    # What it remembers stays bounded: a job last held longer ago than it keeps is dropped.
    from control.dispatch.presence import FORGET_AFTER, HELD_MEMORY_SECONDS

    presence._last_held["long-gone"] = presence._pruned_at - HELD_MEMORY_SECONDS - 1
    presence._pruned_at -= FORGET_AFTER + 1
    await announce(jobs=[])
    assert "long-gone" not in presence._last_held and str(job_id) in presence._last_held


async def test_a_stopping_worker_says_it_holds_the_job_it_is_finishing(harness: Harness) -> None:
    """Told to stop mid-job, a worker finishes the job in hand and keeps announcing that it
    holds it until it leaves: the control plane never takes a job being finished for an orphan."""
    import time

    from tests.harness import run_workers
    from tests.test_dispatch import create, wait_for
    from tests.workers import behave

    assert harness.app.mesh is not None
    presence = harness.app.mesh.presence
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    running = run_workers(harness, "tts", behave)
    await running.__aenter__()
    job = await create(editor, project, f"sleep:{2 * mesh.PRESENCE_SECONDS + 2}")
    await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_RUNNING})
    stopped_at = time.monotonic()
    stopping = asyncio.create_task(running.__aexit__(None, None, None))  # stop: finish, then go

    async def announced_since_stop() -> bool:
        return presence._last_held.get(job.id, 0.0) > stopped_at

    await eventually(announced_since_stop, "an announcement of the job after the stop",
                     timeout=2 * mesh.PRESENCE_SECONDS)  # fmt: skip
    assert job.id in presence.held_jobs() and not stopping.done()
    await asyncio.wait_for(stopping, 60)
    await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=10)
