"""Every job transition, checked against `states.ALLOWED`, recorded as the job's next events in
the same transaction, with its after-commit effects collected for `after_commit`.

Nothing else in the control plane writes `job.status` (or the PENDING sub-state fields
`awaiting_start` and `queued_at`). Callers lock the job row, ask for a transition, commit, then
call `after_commit`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from sqlalchemy import Select, bindparam, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from control import webhooks
from control.convert import job_status_to_pb, job_to_pb, result_to_pb, ts
from control.db.models import Job, JobEvent, JobResult, JobStatus, OutboxEntry
from control.kinds import kind_of
from control.lifecycle.states import DISPATCHED, State, Transition, allowed, require, state_of
from voxmesh import mesh
from voxmesh.observability import (
    ADMISSION_WAIT,
    DISPATCH_LATENCY,
    JOB_FAILURES,
    JOB_SECONDS,
    current_traceparent,
)
from voxmesh.v1 import jobs_pb2

log = logging.getLogger(__name__)


class Mesh(Protocol):
    """What after-commit effects need of the mesh (control.dispatch.runtime.MeshRuntime)."""

    nc: NATS
    kv: KeyValue

    def wake(self) -> None: ...


_STORED_LOGS = select(JobEvent.job_id, JobEvent.seq, JobEvent.payload).where(
    JobEvent.job_id.in_(bindparam("jobs", expanding=True))
)


_NEW_JOB_COLUMNS = (
    "id", "project_id", "created_by", "type", "status", "progress", "title", "params",
    "input_file_id", "attempts", "run", "awaiting_start", "queued_at", "last_event_seq", "error",
    "stage", "webhooks", "started_at", "finished_at",
)  # fmt: skip


def _creation_statements() -> tuple[Select[Any], Select[Any]]:
    """A new job's row, and the same with its first run's outbox entry: one statement each,
    built once (every value is bound), answering the job's created_at and updated_at."""
    table = Job.__table__
    new_job = (
        insert(Job)
        .values({c: bindparam(c, type_=table.c[c].type) for c in _NEW_JOB_COLUMNS})
        .returning(Job.id, Job.run, Job.created_at, Job.updated_at)
        .cte("new_job")
    )
    plain = select(new_job.c.created_at, new_job.c.updated_at)
    queued = (
        insert(OutboxEntry)
        .from_select(
            ["job_id", "run", "partition", "traceparent"],
            select(
                new_job.c.id,
                new_job.c.run,
                bindparam("partition", type_=OutboxEntry.__table__.c.partition.type),
                bindparam("traceparent", type_=OutboxEntry.__table__.c.traceparent.type),
            ),
        )
        .cte("queued")
    )
    return plain, plain.add_cte(queued)


_CREATE, _CREATE_QUEUED = _creation_statements()


def jobstate_subject(project_id: uuid.UUID | str, job_id: uuid.UUID | str) -> str:
    return f"voxmesh.jobstate.{project_id}.{job_id}"


def _log_line(message: jobs_pb2.WatchJobResponse) -> str | None:
    stamp = message.time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    kind = message.WhichOneof("event")
    if kind == "log":
        return f"{stamp} {message.log.line}"
    if kind == "status":
        status = jobs_pb2.JobStatus.Name(message.status.status).removeprefix("JOB_STATUS_")
        error = f": {message.status.error}" if message.status.error else ""
        return f"{stamp} {status}{error}"
    return None


class Lifecycle:
    """The transitions of one transaction, and what to do once it has committed."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.events: list[tuple[Job, jobs_pb2.WatchJobResponse]] = []
        self.changed: dict[uuid.UUID, Job] = {}
        self.run_marks: dict[str, bytes] = {}
        """KV `<job>.<run>` → cancel|done: what workers check at their checkpoints."""
        self.queued = False
        self.webhooks = False
        """Webhook deliveries were added: the sender is poked after commit."""
        self._metrics: list[Callable[[], None]] = []
        self._stored_logs: dict[uuid.UUID, dict[int, bytes]] = {}
        """Event logs read ahead (`read_logs`) for the jobs this transaction may finish."""

    async def read_logs(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Read the stored event logs of jobs this transaction may finish, in one query rather
        than one per finished job. The caller holds the jobs' rows locked, so nothing else adds
        to those logs; what this transaction adds, `_result` takes from `self.events`."""
        ids = [i for i in job_ids if i not in self._stored_logs]
        if not ids:
            return
        for i in ids:
            self._stored_logs[i] = {}
        with self.session.no_autoflush:
            rows = await self.session.execute(_STORED_LOGS, {"jobs": ids})
        for job_id, seq, payload in rows:
            self._stored_logs[job_id][seq] = payload

    # --- events -----------------------------------------------------------------------------
    def record(self, job: Job, **event: Any) -> jobs_pb2.WatchJobResponse:
        """The job's next event (seq + 1), stored in this transaction."""
        job.last_event_seq += 1
        message = jobs_pb2.WatchJobResponse(
            job_id=str(job.id), seq=job.last_event_seq, time=ts(datetime.now(UTC)), **event
        )
        self.session.add(
            JobEvent(
                job_id=job.id,
                seq=message.seq,
                kind=message.WhichOneof("event") or "",
                payload=message.SerializeToString(),
            )
        )
        self.events.append((job, message))
        self.changed[job.id] = job
        return message

    def log(self, job: Job, line: str) -> None:
        self.record(job, log=jobs_pb2.JobLogLine(line=line[:2000]))

    def _status(self, job: Job, status: JobStatus, error: str = "") -> None:
        job.status = status
        self.record(
            job,
            status=jobs_pb2.JobStatusChange(
                status=job_status_to_pb(status), error=error, attempt=job.attempts
            ),
        )

    def _next_run(self, job: Job) -> None:
        """`job`'s fields for a new run, waiting for a slot (its outbox entry is the caller's)."""
        job.run += 1
        job.status = JobStatus.PENDING
        job.awaiting_start = False
        job.queued_at = None
        job.progress = 0
        job.stage = ""
        job.error = ""
        job.finished_at = None
        self.changed[job.id] = job
        self.queued = True

    def _new_run(self, job: Job) -> None:
        """A new run of `job`, waiting for a slot: an outbox entry for the dispatcher."""
        self._next_run(job)
        self.session.add(OutboxEntry(job_id=job.id, run=job.run, traceparent=current_traceparent()))

    # --- caller transitions -----------------------------------------------------------------
    async def create(self, job: Job, *, auto_start: bool) -> None:
        """A new job (made by the caller, not added to the session): waiting for a slot, or for
        StartJob when its creator has auto_start_jobs off. Written here at once, the job and
        its first run's outbox entry in one statement (the ORM's flush of the two took two
        round trips and about half of CreateJob's time)."""
        job.status, job.run, job.attempts, job.progress, job.last_event_seq = (
            JobStatus.PENDING, 0, 0, 0, 0,
        )  # fmt: skip
        job.awaiting_start, job.queued_at, job.stage, job.error = True, None, "", ""
        job.started_at = job.finished_at = None
        if auto_start:
            self._next_run(job)
        values = {column: getattr(job, column) for column in _NEW_JOB_COLUMNS}
        values |= {
            "partition": mesh.partition_of(str(job.id)),
            "traceparent": current_traceparent(),
        }
        job.created_at, job.updated_at = (
            await self.session.execute(_CREATE_QUEUED if auto_start else _CREATE, values)
        ).one()
        self.changed[job.id] = job

    def start(self, job: Job) -> None:
        require(job, Transition.START)
        self._new_run(job)

    async def cancel(self, job: Job, *, by: str) -> None:
        require(job, Transition.CANCEL)
        self.log(job, f"cancelled by {by}")
        await self._result(job, JobStatus.CANCELLED, error="cancelled")

    async def retry(self, job: Job, *, by: str) -> None:
        require(job, Transition.RETRY)
        await self.session.execute(delete(JobResult).where(JobResult.job_id == job.id))
        self._new_run(job)
        self.log(job, f"retried by {by} as run {job.run}")
        self._status(job, JobStatus.PENDING)

    def check_params_editable(self, job: Job) -> None:
        require(job, Transition.EDIT_PARAMS)

    async def delete(self, job: Job) -> None:
        state = require(job, Transition.DELETE)
        if state in DISPATCHED:  # a worker that takes the run skips it
            self.run_marks[mesh.run_key(str(job.id), job.run)] = mesh.CANCEL
        await self.session.delete(job)

    # --- mesh transitions -------------------------------------------------------------------
    def admit(self, job: Job, row: OutboxEntry) -> None:
        """The dispatcher handed the run to JetStream (after its ack)."""
        require(job, Transition.ADMIT)
        row.published_at = job.queued_at = datetime.now(UTC)
        self.changed[job.id] = job
        kind, waited = kind_of(job.type).field, (row.published_at - row.created_at).total_seconds()
        self._metrics.append(lambda: ADMISSION_WAIT.labels(kind).observe(max(0.0, waited)))

    def worker_started(self, job: Job, *, worker_id: str, delivery: int) -> bool:
        if not allowed(job, Transition.WORKER_STARTED):
            return False
        if state_of(job) is State.WAITING_FOR_SLOT:  # its publish ack was lost; it got there
            job.queued_at = datetime.now(UTC)
        elif state_of(job) is State.QUEUED and job.queued_at is not None:
            waited = (datetime.now(UTC) - job.queued_at).total_seconds()
            kind = kind_of(job.type).field
            self._metrics.append(lambda: DISPATCH_LATENCY.labels(kind).observe(max(0.0, waited)))
        job.started_at = job.started_at or datetime.now(UTC)
        job.attempts += 1
        self.log(job, f"worker {worker_id} started run {job.run} (delivery {delivery})")
        self._status(job, JobStatus.RUNNING)
        return True

    def progress(self, job: Job, progress: jobs_pb2.JobProgress) -> bool:
        if not allowed(job, Transition.PROGRESS):
            return False
        percent = max(0, min(100, progress.percent))
        if percent < job.progress:  # a redelivered run starting over: keep the bar where it was
            return False
        job.progress = percent
        stage = progress.stage[:200]
        if stage and stage != job.stage:
            job.stage = stage
            self.webhooks |= webhooks.enqueue(self.session, job, webhooks.STAGE_EVENT)
        self.record(
            job,
            progress=jobs_pb2.JobProgress(
                percent=percent,
                stage=stage,
                message=progress.message[:2000],
                text=progress.text[:8000],
                part=progress.part if progress.HasField("part") else None,
            ),
        )
        return True

    def worker_log(self, job: Job, line: str) -> bool:
        if not allowed(job, Transition.PROGRESS):
            return False
        self.log(job, line)
        return True

    async def complete(
        self,
        job: Job,
        *,
        files: list[dict[str, Any]],
        meta: dict[str, Any],
        result_url: str,
        live: dict[str, bytes] | None = None,
    ) -> None:
        """`live`: the bytes of small outputs by file id, for the live watchers' result only."""
        require(job, Transition.COMPLETE)
        await self._result(
            job, JobStatus.COMPLETED, files=files, meta=meta, result_url=result_url, live=live
        )

    async def fail(self, job: Job, *, error: str, failure: str) -> None:
        require(job, Transition.FAIL)
        await self._result(job, JobStatus.FAILED, error=error, failure=failure)

    async def give_up(self, job: Job, *, error: str) -> None:
        require(job, Transition.GIVE_UP)
        await self._result(job, JobStatus.FAILED, error=error, failure="lost")

    async def worker_cancelled(self, job: Job) -> None:
        """The worker stopped at a checkpoint (the job was cancelled, so usually a no-op)."""
        if allowed(job, Transition.CANCEL):
            await self._result(job, JobStatus.CANCELLED, error="cancelled")

    # --- finishing --------------------------------------------------------------------------
    async def _result(
        self,
        job: Job,
        status: JobStatus,
        *,
        error: str = "",
        files: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        result_url: str = "",
        failure: str = "",
        live: dict[str, bytes] | None = None,
    ) -> None:
        """End the run: final status, a JobResult whose logs are the job's event log, and the
        status and result events (the result is always a finished job's last event). `live`
        bytes go only to the watchers of this commit's result (the stored event has none)."""
        now = datetime.now(UTC)
        job.finished_at = now
        job.queued_at = None
        job.error = error
        if status is JobStatus.COMPLETED:
            job.progress = 100
        self._status(job, status, error)
        await self.read_logs([job.id])  # the log: what is stored, plus what this holds
        stored = self._stored_logs[job.id]
        messages = {seq: jobs_pb2.WatchJobResponse.FromString(p) for seq, p in stored.items()}
        messages.update({m.seq: m for j, m in self.events if j is job})
        lines = [_log_line(messages[seq]) for seq in sorted(messages)]
        result = JobResult(
            job_id=job.id,
            result_url=result_url,
            files=files or [],
            logs="".join(f"{line}\n" for line in lines if line),
            meta=meta or {},
            finished_at=now,
        )
        result.job = job
        self.session.add(result)
        message = self.record(job, result=result_to_pb(result))  # stored as it is now
        if live:
            for file in message.result.files:
                file.data = live.get(file.file_id, b"")
        self.webhooks |= webhooks.enqueue(self.session, job, webhooks.TERMINAL_EVENT[status])
        self.run_marks[mesh.run_key(str(job.id), job.run)] = (
            mesh.CANCEL if status is JobStatus.CANCELLED else mesh.DONE
        )
        kind = kind_of(job.type).field
        if job.started_at is not None:
            seconds = (now - job.started_at).total_seconds()
            self._metrics.append(
                lambda: JOB_SECONDS.labels(kind, status.value.lower()).observe(seconds)
            )
        if status is JobStatus.FAILED:
            self._metrics.append(lambda: JOB_FAILURES.labels(kind, failure or "error").inc())

    # --- after commit -----------------------------------------------------------------------
    async def after_commit(self, mesh_: Mesh | None) -> None:
        """Once the transaction has committed: metrics, every event to its job's watchers,
        every changed job's state to project watchers, run marks in KV (workers stop or skip
        the run), and the dispatcher woken if a run was queued or a slot freed."""
        for observe in self._metrics:
            observe()
        self._metrics.clear()
        if self.webhooks:
            webhooks.poke()
        if mesh_ is None:
            return
        nc = mesh_.nc
        if not nc.is_closed:  # watchers first: they wait on these; nothing waits on the marks
            for job, message in self.events:
                await nc.publish(mesh.updates_subject(str(job.id)), message.SerializeToString())
            for job in self.changed.values():
                await nc.publish(
                    jobstate_subject(job.project_id, job.id), job_to_pb(job).SerializeToString()
                )
        if self.run_marks:

            async def mark(key: str, value: bytes) -> None:
                try:
                    await mesh_.kv.put(key, value)
                except Exception as exc:  # the worker finds out at its own checkpoint or ack
                    log.warning("could not mark run %s %s in KV: %s", key, value, exc)

            await asyncio.gather(*(mark(k, v) for k, v in self.run_marks.items()))
        if self.queued or self.run_marks:
            mesh_.wake()
