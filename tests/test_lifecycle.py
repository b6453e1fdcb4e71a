"""One lifecycle: PENDING's sub-states as a client sees them, and the transition table's
refusals, each a FAILED_PRECONDITION with a sentence."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf import field_mask_pb2

from control.lifecycle.states import ALLOWED, REFUSALS, State, Transition
from tests.harness import Caller, Harness, rpc_error
from tests.test_dispatch import create, setup
from voxmesh.v1 import jobs_pb2

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def pending_state_of(who: Caller, job_id: str, want: int, timeout: float = 15) -> None:
    """Wait (with a deadline) until the job's pending_state is `want`, as GetJob shows it."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await who.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job
        if job.pending_state == want:
            return
        assert time.monotonic() < deadline, (
            f"pending_state stayed {jobs_pb2.PendingState.Name(job.pending_state)}, "
            f"not {jobs_pb2.PendingState.Name(want)}"
        )
        await asyncio.sleep(0.05)


async def test_a_client_can_tell_what_a_pending_job_waits_for(harness: Harness) -> None:
    editor, project = await setup(harness)
    await harness.setting("auto_start_jobs", False, editor.user_id)
    await harness.setting("max_concurrent_jobs", 1, editor.user_id)
    first = await create(editor, project, "steps:1")  # no worker runs: it stays queued
    assert first.status == jobs_pb2.JOB_STATUS_PENDING
    assert first.pending_state == jobs_pb2.PENDING_STATE_AWAITING_START and first.awaiting_start
    started = (await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=first.id))).job
    assert started.pending_state in (
        jobs_pb2.PENDING_STATE_WAITING_FOR_SLOT, jobs_pb2.PENDING_STATE_QUEUED
    )  # fmt: skip
    await pending_state_of(editor, first.id, jobs_pb2.PENDING_STATE_QUEUED)

    second = await create(editor, project, "steps:1")
    await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=second.id))
    # The first holds the user's only slot.
    await pending_state_of(editor, second.id, jobs_pb2.PENDING_STATE_WAITING_FOR_SLOT)
    await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=first.id))
    await pending_state_of(editor, second.id, jobs_pb2.PENDING_STATE_QUEUED)
    cancelled = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=first.id))).job
    assert cancelled.status == jobs_pb2.JOB_STATUS_CANCELLED
    assert cancelled.pending_state == jobs_pb2.PENDING_STATE_UNSPECIFIED


async def test_illegal_transitions_are_refused_with_a_sentence(harness: Harness) -> None:
    editor, project = await setup(harness)
    queued = await create(editor, project, "steps:1")  # no worker: it stays QUEUED
    await pending_state_of(editor, queued.id, jobs_pb2.PENDING_STATE_QUEUED)
    jobs = editor.client.jobs
    cases = [
        (jobs.StartJob(jobs_pb2.StartJobRequest(job_id=queued.id)),
         "only a PENDING job waiting for StartJob can be started; this one is PENDING (queued"),
        (jobs.RetryJob(jobs_pb2.RetryJobRequest(job_id=queued.id)),
         "only FAILED or CANCELLED jobs can be retried"),
        (jobs.UpdateJob(jobs_pb2.UpdateJobRequest(
            job_id=queued.id, update_mask=field_mask_pb2.FieldMask(paths=["params"]),
            tts=jobs_pb2.TtsParams(text="changed"))),
         "not yet queued for a worker; it is PENDING (queued for a worker)"),
    ]  # fmt: skip
    for call, sentence in cases:
        err = await rpc_error(call)
        assert err.code() == PRECONDITION and sentence in (err.details() or ""), err.details()
    await jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=queued.id))
    again = await rpc_error(jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=queued.id)))
    assert again.code() == PRECONDITION
    assert "the job is CANCELLED; only PENDING or RUNNING jobs can be cancelled" in (
        again.details() or ""
    )
    # Nothing changed by the refused requests: one run, cancelled.
    job = (await jobs.GetJob(jobs_pb2.GetJobRequest(job_id=queued.id))).job
    assert job.status == jobs_pb2.JOB_STATUS_CANCELLED and job.tts.text == "steps:1"


def test_the_table_names_every_transition_and_state() -> None:
    assert set(ALLOWED) == set(Transition)
    reachable = {to for _, to in ALLOWED.values() if to is not None}
    assert reachable | {State.AWAITING_START} == set(State)
    for transition, (sources, _) in ALLOWED.items():
        assert sources or transition is Transition.CREATE
    for transition in REFUSALS:
        assert "{state}" in REFUSALS[transition]


async def test_a_delivered_run_whose_publish_ack_was_lost_is_taken_up(harness: Harness) -> None:
    """NATS went away while a dispatch was in flight: the dispatcher saw a timeout (the job
    stays WAITING_FOR_SLOT), yet the client flushed the publish on reconnect and a worker ran
    it. Its events (run token checked) must move the job on, not be dropped: the job was
    stuck QUEUED forever after the dispatcher's duplicate re-publish otherwise."""
    import uuid

    from control.db.models import Job, JobStatus
    from control.dispatch.ingest import apply_event
    from control.lifecycle.states import state_of
    from control.lifecycle.transitions import Lifecycle
    from voxmesh.v1 import worker_pb2

    editor, project = await setup(harness)
    await harness.setting("auto_start_jobs", False, editor.user_id)
    job = await create(editor, project, "steps:1")
    async with harness.app.sessions() as session:
        row = await session.get(Job, uuid.UUID(job.id))
        assert row is not None
        row.awaiting_start = False  # as StartJob leaves it, with no dispatcher ack yet
        assert state_of(row) is State.WAITING_FOR_SLOT
        started = worker_pb2.WorkerEvent(
            job_id=job.id, attempt=row.run, worker_id="w", delivery=1,
            started=worker_pb2.WorkerStarted(),
        )  # fmt: skip
        await apply_event(Lifecycle(session), started, row)
        assert row.status is JobStatus.RUNNING and row.queued_at is not None
        await session.rollback()


async def test_jobs_finished_in_one_batch_each_keep_their_own_log(harness: Harness) -> None:
    """An ingest batch reads the stored logs of every job it finishes in one query
    (Lifecycle.read_logs): each result must hold its own job's lines, those stored before the
    batch and those the batch adds, and none of another job's."""
    import uuid

    from sqlalchemy import select

    from control.db.models import Job, JobResult
    from control.dispatch.ingest import apply_event
    from control.lifecycle.transitions import Lifecycle
    from voxmesh.v1 import worker_pb2

    editor, project = await setup(harness)
    await harness.setting("auto_start_jobs", False, editor.user_id)
    jobs = [uuid.UUID((await create(editor, project, f"job {n}")).id) for n in "ab"]

    def event(job: Job, worker: str, **kind: object) -> worker_pb2.WorkerEvent:
        return worker_pb2.WorkerEvent(
            job_id=str(job.id), attempt=job.run, worker_id=worker, delivery=1, **kind
        )  # type: ignore[arg-type]

    async with harness.app.sessions() as session:  # each started by its own worker, stored
        rows = list(await session.scalars(select(Job).where(Job.id.in_(jobs)).order_by(Job.id)))
        lifecycle = Lifecycle(session)
        for row, worker in zip(rows, ("worker-a", "worker-b"), strict=True):
            row.awaiting_start = False  # as StartJob leaves it, with no dispatcher ack yet
            await apply_event(
                lifecycle, event(row, worker, started=worker_pb2.WorkerStarted()), row
            )
        await session.commit()
    async with harness.app.sessions() as session:  # one batch: a log line and the end of each
        rows = list(
            await session.scalars(
                select(Job).where(Job.id.in_(jobs)).order_by(Job.id).with_for_update()
            )
        )
        lifecycle = Lifecycle(session)
        await lifecycle.read_logs(jobs)
        for row, worker in zip(rows, ("worker-a", "worker-b"), strict=True):
            line = jobs_pb2.JobLogLine(line=f"{worker} says goodbye")
            await apply_event(lifecycle, event(row, worker, log=line), row)
            done = worker_pb2.WorkerCompleted()
            await apply_event(lifecycle, event(row, worker, completed=done), row)
        await session.commit()
        logs = {
            result.job_id: result.logs
            for result in await session.scalars(select(JobResult).where(JobResult.job_id.in_(jobs)))
        }
    for row, (mine, theirs) in zip(
        rows, (("worker-a", "worker-b"), ("worker-b", "worker-a")), strict=True
    ):
        log = logs[row.id]
        assert f"worker {mine} started run" in log and f"{mine} says goodbye" in log, log
        assert "COMPLETED" in log and theirs not in log, log
