"""Jobs through the whole mesh: real PostgreSQL, real nats-server with JetStream, real workers
(the shared runtime), the control plane's dispatcher, event ingestion and WatchJob."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from control.convert import job_to_pb
from control.db.models import File, Job, JobEvent, JobResult, JobStatus, OutboxEntry, UserRole
from control.dispatch import dispatcher
from control.dispatch.dispatcher import build_dispatch
from tests.harness import Caller, Harness, eventually, rpc_error, run_workers
from tests.workers import behave, spawn
from voxmesh import mesh
from voxmesh.v1 import files_pb2, jobs_pb2, results_pb2, worker_pb2
from voxmesh.worker import LIVE_BYTES

ROOT = Path(__file__).resolve().parents[1]
TERMINAL_PB = {
    jobs_pb2.JOB_STATUS_COMPLETED,
    jobs_pb2.JOB_STATUS_FAILED,
    jobs_pb2.JOB_STATUS_CANCELLED,
}


@contextlib.asynccontextmanager
async def workers(h: Harness, count: int = 1) -> AsyncIterator[list[Any]]:
    """`count` test workers pulling TTS jobs, in this process."""
    async with run_workers(
        h, "tts", behave, count=count, ack_wait=2.0, name="test-worker"
    ) as started:
        yield started


async def setup(h: Harness) -> tuple[Caller, str]:
    editor = await h.user(UserRole.EDITOR)
    return editor, str(await h.project(editor.user_id))


async def create(editor: Caller, project: str, text: str) -> jobs_pb2.Job:
    request = jobs_pb2.CreateJobRequest(project_id=project, tts=jobs_pb2.TtsParams(text=text))
    return (await editor.client.jobs.CreateJob(request)).job


async def watch(editor: Caller, job_id: str, after: int = 0, limit: int | None = None,
                timeout: float = 30) -> list[jobs_pb2.WatchJobResponse]:  # fmt: skip
    """Read a job's stream to its end (or `limit` events)."""
    out: list[jobs_pb2.WatchJobResponse] = []
    call = editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id, after_seq=after))

    async def read() -> None:
        async for event in call:
            out.append(event)
            if limit is not None and len(out) >= limit:
                call.cancel()
                return

    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(read(), timeout)
    return out


async def wait_for(
    h: Harness, job_id: str, statuses: set[int], timeout: float = 30
) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with h.app.sessions() as session:
            job = await session.get(Job, uuid.UUID(job_id))
            assert job is not None
            pb = job_to_pb(job)
        if pb.status in statuses and (pb.status != jobs_pb2.JOB_STATUS_RUNNING or pb.progress > 0):
            return pb
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout}s (now {pb.status})")


async def event_kinds(h: Harness, job_id: str) -> list[str]:
    async with h.app.sessions() as session:
        rows = await session.scalars(
            select(JobEvent.kind).where(JobEvent.job_id == uuid.UUID(job_id)).order_by(JobEvent.seq)
        )
        return list(rows)


async def test_job_runs_through_the_mesh_with_streamed_progress(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "steps:4")
        events = await watch(editor, job.id)
    assert events[0].WhichOneof("event") == "snapshot"
    body = events[1:]
    assert [e.seq for e in body] == list(range(1, len(body) + 1))  # every event, in order
    statuses = [e.status.status for e in body if e.WhichOneof("event") == "status"]
    assert statuses == [jobs_pb2.JOB_STATUS_RUNNING, jobs_pb2.JOB_STATUS_COMPLETED]
    percents = [e.progress.percent for e in body if e.WhichOneof("event") == "progress"]
    assert percents == [25, 50, 75, 100]
    assert next(e.progress.stage for e in body if e.WhichOneof("event") == "progress") == "step 1/4"
    assert body[-1].WhichOneof("event") == "result"  # the stream ends with the result
    result = body[-1].result
    assert [f.name for f in result.files] == ["result.txt"] and result.meta["steps"] == "steps:4"
    assert "did step 4" in result.logs and "COMPLETED" in result.logs
    got = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))).job
    assert got.status == jobs_pb2.JOB_STATUS_COMPLETED and got.progress == 100
    assert got.last_event_seq == body[-1].seq and got.attempts == 1
    # A watcher arriving after the end gets the final state at once, then the stream ends.
    late = await watch(editor, job.id, after=got.last_event_seq, timeout=5)
    assert len(late) == 1 and late[0].snapshot.status == jobs_pb2.JOB_STATUS_COMPLETED


async def test_reports_sent_behind_the_handlers_back_land_in_order_through_a_failure(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's start, progress and logs are sent while its handler goes on (it does not wait
    a round trip for each), one after another, and the outcome only once they are all in the
    stream. Here JetStream refuses the second progress report at first (no stream leader, as
    while a cluster fails over): it is sent again, and the ones behind it wait for it, so the
    job's events still come in order, each once, the result last."""
    from nats.js.errors import NoStreamResponseError

    editor, project = await setup(harness)
    async with workers(harness) as (worker,):
        publish = worker.js.publish
        refused: list[int] = []

        async def leaderless_once(subject: str, payload: bytes = b"", **kw: Any) -> Any:
            if not subject.startswith("voxmesh.events."):  # blobs go through publish too
                return await publish(subject, payload, **kw)
            event = worker_pb2.WorkerEvent.FromString(payload)
            if (
                event.WhichOneof("event") == "progress"
                and event.progress.percent == 50
                and not refused
            ):
                refused.append(event.local_seq)
                raise NoStreamResponseError
            return await publish(subject, payload, **kw)

        monkeypatch.setattr(worker.js, "publish", leaderless_once)
        job = await create(editor, project, "steps:4")
        events = await watch(editor, job.id)
    assert refused, "no report was refused: the test proves nothing"
    body = events[1:]
    assert [e.seq for e in body] == list(range(1, len(body) + 1))
    percents = [e.progress.percent for e in body if e.WhichOneof("event") == "progress"]
    assert percents == [25, 50, 75, 100]  # every one, once, in order
    logs = [e.log.line for e in body if e.WhichOneof("event") == "log" and "did" in e.log.line]
    assert logs == [f"did step {i}" for i in range(1, 5)]
    assert body[-1].WhichOneof("event") == "result"
    statuses = [e.status.status for e in body if e.WhichOneof("event") == "status"]
    assert statuses == [jobs_pb2.JOB_STATUS_RUNNING, jobs_pb2.JOB_STATUS_COMPLETED]


async def test_events_handed_back_in_a_database_outage_land_before_later_ones(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL refuses the batch holding a job's first progress event (an outage, as the
    ingester sees one); the job's next progress event is sent meanwhile. Both must land, in
    order: the refused one is handed back at once and redelivered ahead of the newer one. (A
    fresh clone once lost a dubbing stage this way: handed back with a delay, the refused event
    came after the newer one and fell below its bar.)"""
    import psycopg

    from control.dispatch.ingest import EventIngester

    editor, project = await setup(harness)
    job = await create(editor, project, "steps:1")  # no worker: the events come from here

    async def queued() -> bool:
        async with harness.app.sessions() as session:
            row = await session.get(Job, uuid.UUID(job.id))
            return row is not None and row.queued_at is not None

    await eventually(queued, "the job was dispatched", 15)
    assert harness.app.mesh is not None
    token = mesh.run_token(harness.app.mesh.run_secret, job.id, 1)
    apply = EventIngester._apply
    refused = asyncio.Event()

    async def outage_once(self: EventIngester, pairs: list[Any]) -> None:
        stages = [event.progress.stage for _, event in pairs]
        if "first" in stages and not refused.is_set():
            refused.set()
            raise psycopg.OperationalError("connection refused (a simulated outage)")
        await apply(self, pairs)

    monkeypatch.setattr(EventIngester, "_apply", outage_once)
    nc = await mesh.connect(harness.nats.url, "test-events")
    js = nc.jetstream()

    async def send(seq: int, **event: Any) -> None:
        message = worker_pb2.WorkerEvent(
            job_id=job.id, attempt=1, worker_id="test", local_seq=seq, delivery=1,
            run_token=token, **event,
        )  # fmt: skip
        await js.publish(mesh.events_subject(job.id), message.SerializeToString(),
                         headers={"Nats-Msg-Id": f"{job.id}.1.1.test.{seq}"})  # fmt: skip

    async def stages() -> list[str]:
        async with harness.app.sessions() as session:
            payloads = await session.scalars(
                select(JobEvent.payload)
                .where(JobEvent.job_id == uuid.UUID(job.id), JobEvent.kind == "progress")
                .order_by(JobEvent.seq)
            )
            return [jobs_pb2.WatchJobResponse.FromString(p).progress.stage for p in payloads]

    try:
        await send(1, started=worker_pb2.WorkerStarted())
        await send(2, progress=jobs_pb2.JobProgress(percent=40, stage="first"))
        await asyncio.wait_for(refused.wait(), 15)
        await send(3, progress=jobs_pb2.JobProgress(percent=60, stage="second"))

        async def both() -> bool:
            return len(await stages()) >= 2

        with contextlib.suppress(AssertionError):
            await eventually(both, "both progress events stored", 15)
        assert await stages() == ["first", "second"]
    finally:
        await nc.close()


async def test_a_job_created_while_the_dispatcher_looks_is_dispatched_at_once(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateJob wakes the dispatcher. A wake that came while it was looking (its query already
    run, the new job not in it) was lost: the dispatcher cleared it after looking, and the job
    waited for the next poll (a second by default). Here the poll is 60 s: the job must still
    start at once."""
    editor, project = await setup(harness)
    assert harness.app.mesh is not None
    dispatcher = harness.app.mesh.dispatcher
    assert dispatcher is not None
    look = dispatcher.dispatch_once
    looked, resume = asyncio.Event(), asyncio.Event()

    async def slow_look() -> int:
        if looked.is_set():
            return await look()
        found = await look()  # nothing to publish yet...
        looked.set()
        await resume.wait()  # ...while the job is created and wakes the dispatcher
        return found

    async with workers(harness):
        monkeypatch.setattr(dispatcher, "_poll", 60.0)
        monkeypatch.setattr(dispatcher, "dispatch_once", slow_look)
        dispatcher.wake()
        await asyncio.wait_for(looked.wait(), 10)
        job = await create(editor, project, "steps:1")
        resume.set()
        done = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=15)
    assert done.status == jobs_pb2.JOB_STATUS_COMPLETED


async def test_result_files_are_in_the_shared_store(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "steps:1")
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED})
    async with harness.app.sessions() as session:
        result = await session.get(JobResult, uuid.UUID(job.id))
        assert result is not None and len(result.files) == 1
        row = await session.get(File, uuid.UUID(result.files[0]["file_id"]))
        assert row is not None and row.owner_id == editor.user_id
    assert harness.app.mesh is not None
    data = await harness.app.mesh.blobs.get(row.sha256, row.blob_key or b"")
    assert data.startswith(f"job {job.id} run 1".encode())


async def download(editor: Caller, file_id: str) -> bytes:
    request = files_pb2.DownloadFileRequest(file_id=file_id)
    return b"".join([m.data async for m in editor.client.files.DownloadFile(request)])


async def live_end(editor: Caller, job: jobs_pb2.Job) -> jobs_pb2.WatchJobResponse:
    """Start a job awaiting StartJob once a watcher has its snapshot; the watcher's last event
    (so the result reaches it live, never replayed)."""
    call = editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id))
    events = aiter(call)
    snapshot = await asyncio.wait_for(anext(events), 30)
    assert snapshot.WhichOneof("event") == "snapshot"
    await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=job.id))
    rest = await asyncio.wait_for(collect_all(events), 30)
    return rest[-1]


async def collect_all(events: AsyncIterator[jobs_pb2.WatchJobResponse]) -> list[Any]:
    return [event async for event in events]


async def test_a_live_result_carries_small_outputs_and_stored_copies_do_not(
    harness: Harness,
) -> None:
    """A watcher waiting for a job gets a small output's bytes with the result (no download);
    the stored result (GetJobResult, a replay) has none, and big outputs are only in the store."""
    editor, project = await setup(harness)
    await harness.setting("auto_start_jobs", False, editor.user_id)
    async with workers(harness):
        small = await create(editor, project, "steps:1")
        big = await create(editor, project, f"big:{LIVE_BYTES + 1}")
        end_small, end_big = await asyncio.gather(live_end(editor, small), live_end(editor, big))
    assert end_small.WhichOneof("event") == "result"
    (carried,) = end_small.result.files
    assert carried.data == await download(editor, carried.file_id)
    assert carried.data.startswith(f"job {small.id} run 1".encode())
    (not_carried,) = end_big.result.files
    assert not not_carried.data and not_carried.size_bytes == LIVE_BYTES + 1
    assert len(await download(editor, not_carried.file_id)) == LIVE_BYTES + 1
    replayed = await watch(editor, small.id)
    assert replayed[-1].result.files[0].file_id == carried.file_id
    assert not replayed[-1].result.files[0].data
    stored = await editor.client.results.GetJobResult(
        results_pb2.GetJobResultRequest(job_id=small.id)
    )
    assert [f.file_id for f in stored.result.files] == [carried.file_id]
    assert not stored.result.files[0].data


async def test_reconnecting_watcher_misses_nothing_and_sees_nothing_twice(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "sleep:1.5")
        first = await watch(editor, job.id, limit=4)  # snapshot + 3 events, then disconnect
        last = first[-1].seq
        rest = await watch(editor, job.id, after=last)
    assert rest[0].WhichOneof("event") == "snapshot"
    seqs = [e.seq for e in first[1:]] + [e.seq for e in rest[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1].WhichOneof("event") == "result"
    assert len(seqs) == len(await event_kinds(harness, job.id))


async def test_nats_outage_delays_jobs_but_each_runs_exactly_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    editor, project = await setup(harness)
    harness.nats.kill()
    jobs = [await create(editor, project, "steps:1") for _ in range(8)]  # NATS is down

    async def tried() -> bool:  # the dispatcher tried to publish, and failed
        return "dispatch paused" in caplog.text

    await eventually(tried, "the dispatcher tried to publish", 15)
    async with harness.app.sessions() as session:
        unpublished = await session.scalar(
            select(func.count()).select_from(OutboxEntry).where(OutboxEntry.published_at.is_(None))
        )
    assert unpublished == 8  # stored, waiting: nothing lost
    harness.nats.start()
    async with workers(harness, count=2):
        for job in jobs:
            await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=60)
        # Publishing the same runs again (as after a crash between publish and commit) is
        # dropped by JetStream's deduplication: no job runs twice.
        assert harness.app.mesh is not None
        js = harness.app.mesh.js
        before = (await js.stream_info(mesh.JOBS_STREAM)).state.last_seq
        for job in jobs:
            async with harness.app.sessions() as session:
                row = await session.get(Job, uuid.UUID(job.id))
                assert row is not None
                dispatch = await build_dispatch(session, row, harness.app.mesh.run_secret)
            ack = await js.publish(
                mesh.jobs_subject("tts"),
                dispatch.SerializeToString(),
                headers={"Nats-Msg-Id": mesh.run_key(job.id, 1)},
            )
            assert ack.duplicate
        # Not stored at all, so never delivered: the stream did not move.
        assert (await js.stream_info(mesh.JOBS_STREAM)).state.last_seq == before
    for job in jobs:
        kinds = await event_kinds(harness, job.id)
        assert kinds.count("result") == 1
        async with harness.app.sessions() as session:
            row = await session.get(Job, uuid.UUID(job.id))
            assert row is not None and row.attempts == 1


async def test_cancel_a_running_job(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "sleep:20")
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_RUNNING})
        cancelled = (
            await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
        ).job
        assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLED
        started = time.monotonic()
        again = await rpc_error(
            editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
        )
        assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The only worker stopped the cancelled job (20 s long) at once: it is free for the
        # next one well before that job could have finished.
        nxt = await create(editor, project, "steps:1")
        await wait_for(harness, nxt.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=10)
        assert time.monotonic() - started < 10
    events = await watch(editor, job.id, timeout=5)
    assert events[-1].WhichOneof("event") == "result" and "cancelled by" in events[-1].result.logs


async def test_cancel_a_queued_job_before_any_worker_takes_it(harness: Harness) -> None:
    editor, project = await setup(harness)
    job = await create(editor, project, "steps:1")

    async def queued() -> bool:  # dispatched to NATS, no worker yet
        async with harness.app.sessions() as session:
            row = await session.get(Job, uuid.UUID(job.id))
            return row is not None and row.queued_at is not None

    await eventually(queued, "the job was dispatched", 15)
    await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.id))
    async with workers(harness):
        # The worker takes messages in order: once the next job is done, it has seen (and
        # skipped) the cancelled one.
        nxt = await create(editor, project, "steps:1")
        await wait_for(harness, nxt.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=15)
    assert "status" in await event_kinds(harness, job.id)
    async with harness.app.sessions() as session:
        row = await session.get(Job, uuid.UUID(job.id))
        assert row is not None and row.status is JobStatus.CANCELLED and row.attempts == 0


async def test_permanent_failure_then_retry(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "fail-run:1")
        failed = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_FAILED})
        assert "failing run 1 on purpose" in failed.error
        result = await editor.client.results.GetJobResult(
            results_pb2.GetJobResultRequest(job_id=job.id)
        )
        assert "failing run 1 on purpose" in result.result.logs  # the reason in the result logs
        retried = (await editor.client.jobs.RetryJob(jobs_pb2.RetryJobRequest(job_id=job.id))).job
        assert retried.status == jobs_pb2.JOB_STATUS_PENDING and retried.progress == 0
        # Watching from the start replays the failed attempt, and follows on to the end of the
        # newest one (an earlier attempt's end does not end the stream).
        following = asyncio.create_task(watch(editor, job.id, timeout=30))
        done = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED})
        assert done.attempts == 2
        events = await following
        statuses = [e.status.status for e in events if e.WhichOneof("event") == "status"]
        assert (
            jobs_pb2.JOB_STATUS_FAILED in statuses and statuses[-1] == jobs_pb2.JOB_STATUS_COMPLETED
        )
        assert events[-1].WhichOneof("event") == "result" and events[-1].result.files
    not_again = await rpc_error(
        editor.client.jobs.RetryJob(jobs_pb2.RetryJobRequest(job_id=job.id))
    )
    assert not_again.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_transient_errors_are_retried_with_backoff_then_give_up(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        flaky = await create(editor, project, "flaky")
        broken = await create(editor, project, "always-broken")
        done = await wait_for(harness, flaky.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=20)
        assert done.attempts == 2
        failed = await wait_for(harness, broken.id, {jobs_pb2.JOB_STATUS_FAILED}, timeout=40)
    assert "failed 3 times" in failed.error and "still broken" in failed.error
    logs = (await watch(editor, broken.id, timeout=5))[-1].result.logs
    assert "retrying in 1s" in logs and "retrying in 4s" in logs


async def test_admission_caps_running_jobs_per_user(harness: Harness) -> None:
    editor, project = await setup(harness)
    await harness.setting("max_concurrent_jobs", 2, editor.user_id)
    peak = 0
    async with workers(harness, count=4):
        jobs = [await create(editor, project, "sleep:0.6") for _ in range(6)]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            async with harness.app.sessions() as session:
                active = await session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        (Job.status == JobStatus.RUNNING)
                        | ((Job.status == JobStatus.PENDING) & Job.queued_at.is_not(None))
                    )
                )
                done = await session.scalar(
                    select(func.count()).select_from(Job).where(Job.status == JobStatus.COMPLETED)
                )
            peak = max(peak, active or 0)
            if done == len(jobs):
                break
            await asyncio.sleep(0.02)
    assert done == 6 and peak == 2


async def test_one_creators_backlog_does_not_hold_back_anothers_jobs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A creator at their cap with more waiting jobs than a dispatch round looks at must not
    keep other people's jobs waiting: each round looks only at the jobs that may start."""
    monkeypatch.setattr(dispatcher, "BATCH", 4)  # a backlog longer than a round, made small
    busy, busy_project = await setup(harness)
    other, other_project = await setup(harness)
    await harness.setting("max_concurrent_jobs", 1, busy.user_id)
    backlog = [await create(busy, busy_project, "steps:1") for _ in range(9)]

    async def state(who: Caller, job: jobs_pb2.Job) -> int:
        got = await who.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))
        return int(got.job.pending_state)

    async def queued(who: Caller, job: jobs_pb2.Job) -> bool:
        return await state(who, job) == jobs_pb2.PENDING_STATE_QUEUED

    await eventually(lambda: queued(busy, backlog[0]), "the busy creator's one job queued")
    mine = await create(other, other_project, "steps:1")
    await eventually(lambda: queued(other, mine), "another creator's job queued", timeout=15)
    # No worker runs: the busy creator's slot stays taken and the rest of its jobs wait.
    assert [await state(busy, job) for job in backlog[1:]] == [
        jobs_pb2.PENDING_STATE_WAITING_FOR_SLOT
    ] * 8


async def test_auto_start_false_waits_for_start_job(harness: Harness) -> None:
    editor, project = await setup(harness)
    await harness.setting("auto_start_jobs", False, editor.user_id)
    async with workers(harness):
        job = await create(editor, project, "steps:1")
        assert job.awaiting_start and job.status == jobs_pb2.JOB_STATUS_PENDING
        # A job that does start (another user's) runs to the end meanwhile: the worker was
        # there and idle, and still did not get the one awaiting StartJob.
        other = await harness.user(UserRole.EDITOR)
        started = await create(other, str(await harness.project(other.user_id)), "steps:1")
        await wait_for(harness, started.id, {jobs_pb2.JOB_STATUS_COMPLETED})
        still = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))).job
        assert still.status == jobs_pb2.JOB_STATUS_PENDING and still.attempts == 0
        await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=job.id))
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED})
    twice = await rpc_error(editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=job.id)))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_watch_jobs_streams_a_projects_changes(harness: Harness) -> None:
    editor, project = await setup(harness)
    seen: list[jobs_pb2.Job] = []
    call = editor.client.jobs.WatchJobs(jobs_pb2.WatchJobsRequest(project_id=project))

    async def read() -> None:
        async for update in call:
            seen.append(update.job)
            if update.job.status == jobs_pb2.JOB_STATUS_COMPLETED:
                return

    await asyncio.wait_for(call.initial_metadata(), 10)  # subscribed: nothing after is missed
    reader = asyncio.create_task(read())
    async with workers(harness):
        job = await create(editor, project, "steps:2")
        await asyncio.wait_for(reader, 20)
    call.cancel()
    assert {j.id for j in seen} == {job.id}
    assert seen[-1].status == jobs_pb2.JOB_STATUS_COMPLETED and seen[-1].progress == 100
    assert jobs_pb2.JOB_STATUS_RUNNING in [j.status for j in seen]
    # Naming no project follows every job the caller may list (one stream for a whole page).
    viewer = await harness.user(UserRole.VIEWER)
    everything = viewer.client.jobs.WatchJobs(jobs_pb2.WatchJobsRequest())
    await asyncio.wait_for(everything.initial_metadata(), 10)
    async with workers(harness):
        other = await create(editor, project, "steps:1")
        while True:
            update = await asyncio.wait_for(everything.read(), 20)
            assert update.job.id == other.id
            if update.job.status == jobs_pb2.JOB_STATUS_COMPLETED:
                break
    everything.cancel()


async def test_watch_bad_input(harness: Harness) -> None:
    editor, project = await setup(harness)
    job = await create(editor, project, "steps:1")
    for request, code in [
        (jobs_pb2.WatchJobRequest(job_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (jobs_pb2.WatchJobRequest(job_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND),
        (jobs_pb2.WatchJobRequest(job_id=job.id, after_seq=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (jobs_pb2.WatchJobRequest(job_id=job.id, after_seq=999), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        err = await rpc_error(editor.client.jobs.WatchJob(request).read())
        assert err.code() == code, (request, err.details())


async def test_control_plane_restart_watchers_miss_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    """The control plane goes away mid-job and comes back; the worker keeps going, and a
    watcher that reconnects with its last seq gets every event exactly once."""
    from control.dispatch.runtime import MeshRuntime
    from control.server import create_server, run_secret
    from tests.conftest import TEST_MESH

    editor, project = await setup(harness)
    app = harness.app
    async with workers(harness):
        job = await create(editor, project, "sleep:4")
        first = await watch(editor, job.id, limit=4)
        assert app.mesh is not None
        # Stop the whole control plane: its gRPC server and its NATS side.
        await harness.server.stop(None)
        await app.mesh.stop()
        # The worker goes on: its events wait in JetStream for a control plane to take them.
        nc = await mesh.connect(harness.nats.url, "test-inspect")
        try:
            js = nc.jetstream()
            seen = (await js.stream_info(mesh.EVENTS_STREAM)).state.last_seq

            async def sent() -> bool:
                return (await js.stream_info(mesh.EVENTS_STREAM)).state.last_seq >= seen + 3

            await eventually(sent, "the worker sent events while control was down", 15)
        finally:
            await nc.close()
        app.mesh = await MeshRuntime.start(
            harness.nats.url,
            app.engine,
            app.sessions,
            TEST_MESH,
            run_secret=run_secret(app.settings),
        )
        harness.server, port = await create_server(app, "127.0.0.1", 0)
        await harness.reconnect(port)
        await harness.login(editor)
        rest = await watch(editor, job.id, after=first[-1].seq)
    seqs = [e.seq for e in first[1:]] + [e.seq for e in rest[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1].WhichOneof("event") == "result"
    assert rest[-1].result.meta["delivery"] == 1  # the same worker finished it


@pytest.mark.slow
async def test_run_whose_workers_always_crash_fails_with_the_reason(harness: Harness) -> None:
    """Every delivery's worker is killed mid-job: after max_deliver (3) JetStream gives up, its
    advisory reaches the control plane, and the job is FAILED saying why."""
    editor, project = await setup(harness)
    job = await create(editor, project, "sleep:60")
    for delivery in (1, 2, 3):
        doomed = spawn(harness.nats.url_for("worker-tts"), f"doomed-{delivery}")
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with harness.app.sessions() as session:
                    row = await session.get(Job, uuid.UUID(job.id))
                    assert row is not None
                    if row.attempts == delivery:
                        break
                await asyncio.sleep(0.05)
            assert row.attempts == delivery, f"delivery {delivery} never started"
        finally:
            os.kill(doomed.pid, signal.SIGKILL)
            doomed.wait()
    async with workers(harness):  # a healthy worker keeps pulling: JetStream gives up the run
        failed = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_FAILED}, timeout=30)
    assert "gave up after 3 deliveries" in failed.error
    events = await watch(editor, job.id, timeout=5)
    assert events[-1].WhichOneof("event") == "result"
    assert "gave up after 3 deliveries" in events[-1].result.logs


async def test_watch_ends_when_the_job_finishes_between_snapshot_and_replay(
    harness: Harness,
) -> None:
    """The snapshot can say RUNNING while the log read just after already holds the result (the
    job finished in between): the stream must end with that result, not wait for more."""
    editor, project = await setup(harness)
    job_id = await harness.job(uuid.UUID(project), editor.user_id, status=JobStatus.RUNNING)
    async with harness.app.sessions() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        job.last_event_seq = 1  # what the snapshot sees
        events = [
            jobs_pb2.WatchJobResponse(job_id=str(job_id), seq=1, log=jobs_pb2.JobLogLine(line="started")),
            jobs_pb2.WatchJobResponse(job_id=str(job_id), seq=2, status=jobs_pb2.JobStatusChange(
                status=jobs_pb2.JOB_STATUS_COMPLETED)),
            jobs_pb2.WatchJobResponse(job_id=str(job_id), seq=3, result=jobs_pb2.JobResult(job_id=str(job_id))),
        ]  # fmt: skip
        for event in events:
            session.add(JobEvent(job_id=job_id, seq=event.seq, kind=event.WhichOneof("event"),
                                 payload=event.SerializeToString()))  # fmt: skip
        await session.commit()
    got = await watch(editor, str(job_id), timeout=10)
    assert [e.WhichOneof("event") for e in got] == ["snapshot", "log", "status", "result"]


async def test_a_stalled_watcher_holds_no_one_up_and_its_buffer_stays_bounded() -> None:
    """Events reach every watcher's own bounded queue without waiting for any of them: one
    that stopped reading loses its queue (never more than QUEUE_SIZE held for it) and is told
    to refill from the database after its last seq; the one that reads gets every event."""
    from types import SimpleNamespace

    from control.dispatch import broadcast

    hub = broadcast.Broadcaster()
    job_id = str(uuid.uuid4())
    total = 3 * broadcast.QUEUE_SIZE
    with hub.watch_job(job_id) as stalled, hub.watch_job(job_id) as live:
        got: list[int] = []
        peak = 0
        for seq in range(1, total + 1):
            event = jobs_pb2.WatchJobResponse(job_id=job_id, seq=seq)
            msg = SimpleNamespace(
                subject=mesh.updates_subject(job_id), data=event.SerializeToString()
            )
            await hub._on_event(msg)  # type: ignore[arg-type]
            peak = max(peak, stalled.qsize())
            while not live.empty():
                item = live.get_nowait()
                assert item is not None
                got.append(item.seq)
        assert got == list(range(1, total + 1))
        assert peak <= broadcast.QUEUE_SIZE
        # What the stalled watcher finds when it reads again: at most a queue's worth, then
        # (after an overflow) the marker that makes it refill from PostgreSQL after its last seq.
        left = [stalled.get_nowait() for _ in range(stalled.qsize())]
        assert None in left and len(left) <= broadcast.QUEUE_SIZE


def _kinds(events: list[jobs_pb2.WatchJobResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def test_a_watcher_that_coalesces_progress_gets_only_the_latest_when_behind(
    harness: Harness,
) -> None:
    """WatchJobRequest.coalesce_progress: a watcher that is behind (events wait for it, live or
    from the log) gets only the latest of the plain progress events waiting, never losing a
    status, a log line, progress with text, or the result; without it every event comes."""
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "steps:6")
        full = (await watch(editor, job.id))[1:]
    coalesced = []
    request = jobs_pb2.WatchJobRequest(job_id=job.id, coalesce_progress=True)
    async with asyncio.timeout(30):
        async for event in editor.client.jobs.WatchJob(request):
            coalesced.append(event)
    coalesced = coalesced[1:]  # from the log: all six progress events wait at once
    for file in full[-1].result.files:  # what only a live result carries
        file.ClearField("data")
    assert [e.seq for e in full] == list(range(1, len(full) + 1))
    progress = [e for e in full if e.WhichOneof("event") == "progress"]
    assert [e.progress.percent for e in progress] == [16, 33, 50, 66, 83, 100]
    assert [e for e in full if e not in progress[:-1]] == coalesced
    assert _kinds(coalesced).count("log") == _kinds(full).count("log") >= 6
    assert _kinds(coalesced).count("progress") == 1 and _kinds(coalesced)[-1] == "result"

    # Live: what a slow stream finds waiting in its queue, against the same without coalescing.
    from types import SimpleNamespace

    from control.dispatch.watch import job_events

    app = harness.app
    assert app.mesh is not None
    await harness.setting("auto_start_jobs", False, editor.user_id)
    held = await create(editor, project, "held")

    def progress_event(seq: int, percent: int, text: str = "") -> jobs_pb2.WatchJobResponse:
        return jobs_pb2.WatchJobResponse(
            job_id=held.id, seq=seq, progress=jobs_pb2.JobProgress(percent=percent, text=text)
        )

    async def seen(coalesce: bool) -> list[int]:
        events = job_events(
            app.sessions,
            app.mesh.broadcaster,
            uuid.UUID(held.id),
            0,
            coalesce=coalesce,  # type: ignore[union-attr]
        )
        snapshot = await anext(events)
        base = snapshot.seq
        waiting = [
            progress_event(base + 1, 10),
            progress_event(base + 2, 20),
            jobs_pb2.WatchJobResponse(
                job_id=held.id, seq=base + 3, log=jobs_pb2.JobLogLine(line="a line")
            ),
            progress_event(base + 4, 30, text="a caption"),
            progress_event(base + 5, 40),
            progress_event(base + 6, 50),
            jobs_pb2.WatchJobResponse(job_id=held.id, seq=base + 7, result=jobs_pb2.JobResult()),
        ]
        for event in waiting:
            msg = SimpleNamespace(
                subject=mesh.updates_subject(held.id), data=event.SerializeToString()
            )
            await app.mesh.broadcaster._on_event(msg)  # type: ignore[union-attr, arg-type]
        got = []
        async with asyncio.timeout(30):
            async for event in events:
                got.append(event.seq - base)
        return [s for s in got if s > 0]

    assert await seen(coalesce=False) == [1, 2, 3, 4, 5, 6, 7]
    assert await seen(coalesce=True) == [3, 4, 6, 7]
