"""Recording job events: each gets the job's next seq and a row in `job_events`, in the same
transaction as the change it describes; after commit they are published to watchers."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control.api.convert import job_status_to_pb, job_to_pb, result_to_pb, ts
from control.db.models import Job, JobEvent, JobResult, JobStatus, OutboxEntry
from control.job_params import PREFIX as PARAMS_FIELD
from voxmesh import mesh
from voxmesh.observability import (
    DISPATCH_LATENCY,
    JOB_FAILURES,
    JOB_SECONDS,
    current_traceparent,
)
from voxmesh.v1 import jobs_pb2

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


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


@dataclass
class Journal:
    """The events recorded in one transaction, to publish once it has committed."""

    events: list[tuple[Job, jobs_pb2.WatchJobResponse]] = field(default_factory=list)
    changed: dict[uuid.UUID, Job] = field(default_factory=dict)
    finished: list[Job] = field(default_factory=list)
    _metrics: list[Callable[[], None]] = field(default_factory=list)

    def record(self, session: AsyncSession, job: Job, **event: Any) -> jobs_pb2.WatchJobResponse:
        job.last_event_seq += 1
        message = jobs_pb2.WatchJobResponse(
            job_id=str(job.id), seq=job.last_event_seq, time=ts(datetime.now(UTC)), **event
        )
        session.add(
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

    def log(self, session: AsyncSession, job: Job, line: str) -> None:
        self.record(session, job, log=jobs_pb2.JobLogLine(line=line[:2000]))

    def status(self, session: AsyncSession, job: Job, status: JobStatus, error: str = "") -> None:
        job.status = status
        self.record(
            session,
            job,
            status=jobs_pb2.JobStatusChange(
                status=job_status_to_pb(status), error=error, attempt=job.attempts
            ),
        )

    def queue(self, session: AsyncSession, job: Job) -> None:
        """Start a new run of `job`: PENDING, with an outbox entry for the dispatcher."""
        job.run += 1
        job.status = JobStatus.PENDING
        job.awaiting_start = False
        job.queued_at = None
        job.progress = 0
        job.error = ""
        job.finished_at = None
        session.add(OutboxEntry(job_id=job.id, run=job.run, traceparent=current_traceparent()))
        self.changed[job.id] = job

    async def finish(
        self,
        session: AsyncSession,
        job: Job,
        status: JobStatus,
        *,
        error: str = "",
        files: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        result_url: str = "",
        failure: str = "",
    ) -> None:
        """End the run: final status, a JobResult whose logs are the job's event log, and the
        status and result events (the result is always a finished job's last event). The job
        must have no result yet (RetryJob deletes the previous run's)."""
        now = datetime.now(UTC)
        job.finished_at = now
        job.queued_at = None
        job.error = error
        if status is JobStatus.COMPLETED:
            job.progress = 100
        self.status(session, job, status, error)
        with session.no_autoflush:  # the log: what is stored, plus what this journal holds
            rows = await session.execute(
                select(JobEvent.seq, JobEvent.payload).where(JobEvent.job_id == job.id)
            )
        messages = {seq: jobs_pb2.WatchJobResponse.FromString(p) for seq, p in rows}
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
        session.add(result)
        self.record(session, job, result=result_to_pb(result))
        self.finished.append(job)
        kind = PARAMS_FIELD[job.type]
        if job.started_at is not None:
            seconds = (now - job.started_at).total_seconds()
            self._metrics.append(
                lambda: JOB_SECONDS.labels(kind, status.value.lower()).observe(seconds)
            )
        if status is JobStatus.FAILED:
            self._metrics.append(lambda: JOB_FAILURES.labels(kind, failure or "error").inc())

    def started(self, job: Job) -> None:
        """A worker started the run: how long it waited in JetStream (after commit)."""
        if job.queued_at is not None:
            waited = (datetime.now(UTC) - job.queued_at).total_seconds()
            kind = PARAMS_FIELD[job.type]
            self._metrics.append(lambda: DISPATCH_LATENCY.labels(kind).observe(max(0.0, waited)))

    async def publish(self, nc: NATS | None) -> None:
        """After commit: metrics, every event to its job's watchers, every changed job's new
        state to project watchers."""
        for observe in self._metrics:
            observe()
        self._metrics.clear()
        if nc is None or nc.is_closed:
            return
        for job, message in self.events:
            await nc.publish(mesh.updates_subject(str(job.id)), message.SerializeToString())
        for job in self.changed.values():
            await nc.publish(
                jobstate_subject(job.project_id, job.id), job_to_pb(job).SerializeToString()
            )
