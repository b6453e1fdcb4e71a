"""WorkerEvents -> PostgreSQL -> watchers. Events are applied in stream order, each in its own
transaction with the job row locked; events of an older run, or for a finished job, are
dropped, so a duplicate or late completion never stores a second result."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.db.models import File, Job, JobStatus, JobType, SavedVoice
from control.dispatch.journal import TERMINAL, Journal
from voxmesh import mesh
from voxmesh.v1 import jobs_pb2, worker_pb2

log = logging.getLogger(__name__)


def _job_id(event: worker_pb2.WorkerEvent) -> uuid.UUID | None:
    try:
        return uuid.UUID(event.job_id)
    except ValueError:
        return None


async def apply_event(
    session: AsyncSession, journal: Journal, event: worker_pb2.WorkerEvent, job: Job | None
) -> Job | None:
    """Apply one worker event to its job (locked by the caller); returns the job if changed."""
    if job is None or event.attempt != job.run or job.status in TERMINAL:
        return None
    kind = event.WhichOneof("event")
    if kind == "started":
        job.started_at = job.started_at or datetime.now(UTC)
        job.attempts += 1
        journal.log(
            session,
            job,
            f"worker {event.worker_id} started run {job.run} (delivery {event.delivery})",
        )
        journal.status(session, job, JobStatus.RUNNING)
        journal.started(job)
    elif job.status is not JobStatus.RUNNING:
        return None  # nothing but a start moves a job to RUNNING
    elif kind == "progress":
        percent = max(0, min(100, event.progress.percent))
        if percent < job.progress:  # a redelivered run starting over: keep the bar where it was
            return None
        job.progress = percent
        journal.record(
            session,
            job,
            progress=jobs_pb2.JobProgress(
                percent=percent,
                stage=event.progress.stage[:200],
                message=event.progress.message[:2000],
            ),
        )
    elif kind == "log":
        journal.log(session, job, event.log.line)
    elif kind == "completed":
        files = []
        for stored in event.completed.files:
            row = File(
                id=uuid.uuid4(),
                owner_id=job.created_by,
                filename=stored.filename[:255] or "output",
                content_type=stored.content_type[:127] or "application/octet-stream",
                size_bytes=stored.size_bytes,
                sha256=stored.sha256,
            )
            session.add(row)
            files.append({"file_id": str(row.id), "name": row.filename,
                          "content_type": row.content_type, "size_bytes": row.size_bytes})  # fmt: skip
        meta = json_format.MessageToDict(event.completed.meta)
        if event.completed.HasField("voice_profile"):
            await _save_voice(
                session,
                journal,
                job,
                json_format.MessageToDict(event.completed.voice_profile),
                meta,
            )
        result_url = event.completed.result_url or (
            f"voxmesh://files/{files[0]['file_id']}" if files else ""
        )
        await journal.finish(
            session, job, JobStatus.COMPLETED, files=files, meta=meta, result_url=result_url
        )
    elif kind == "failed":
        await journal.finish(
            session, job, JobStatus.FAILED, error=event.failed.reason[:2000],
            failure=event.failed.category if event.failed.category in ("input", "error") else "",
        )  # fmt: skip
    elif kind == "cancelled":
        await journal.finish(session, job, JobStatus.CANCELLED, error="cancelled")
    else:
        return None
    return job


async def _save_voice(
    session: AsyncSession, journal: Journal, job: Job, profile: dict[str, Any], meta: dict[str, Any]
) -> None:
    """A voice cloning job asked to save its voice: store the profile in the job's project."""
    name = str(job.params.get("save_as_voice", "")).strip()
    if job.type is not JobType.VOICE_CLONING or not name:
        return
    taken = await session.scalar(
        select(SavedVoice.id).where(
            SavedVoice.project_id == job.project_id, func.lower(SavedVoice.name) == name.lower()
        )
    )
    pending = any(
        isinstance(o, SavedVoice)
        and o.project_id == job.project_id
        and o.name.lower() == name.lower()
        for o in session.new
    )  # saved by another job of this batch
    if taken is not None or pending:  # saved by another job since this one was created
        journal.log(session, job, f"not saved: the project already has a voice named {name!r}")
        return
    keep = bool(job.params.get("keep_reference"))
    figures = {
        k: meta[k] for k in ("similarity_clone", "similarity_base", "wer", "method") if k in meta
    }
    session.add(SavedVoice(
        project_id=job.project_id, name=name, created_by=job.created_by, source_job_id=job.id,
        reference_file_id=job.input_file_id if keep else None, profile=profile, meta=figures,
    ))  # fmt: skip
    journal.log(session, job, f"saved the voice {name!r} in the project"
                + (" with its reference recording" if keep else " (profile only)"))  # fmt: skip


class EventIngester:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        nc: NATS,
        js: JetStreamContext,
        kv: KeyValue,
        on_finished: Callable[[], None],
    ) -> None:
        self._sessions = sessions
        self._nc = nc
        self._js = js
        self._kv = kv
        self._on_finished = on_finished

    async def _apply(self, pairs: list[tuple[Msg, worker_pb2.WorkerEvent]]) -> None:
        """Apply events in order in one transaction, then publish, then ack."""
        journal = Journal()
        ids = {i for _, event in pairs if (i := _job_id(event)) is not None}
        async with self._sessions() as session:
            # Lock every job of the batch at once, in a fixed order (no deadlocks).
            jobs = {
                job.id: job
                for job in await session.scalars(
                    select(Job).where(Job.id.in_(ids)).order_by(Job.id).with_for_update()
                )
            }
            with session.no_autoflush:  # inserts go out together at commit
                for _, event in pairs:
                    job_id = _job_id(event)
                    await apply_event(session, journal, event, jobs.get(job_id) if job_id else None)
            await session.commit()
        await finalize(journal, self._nc, self._kv)
        if journal.finished:
            self._on_finished()  # slots freed: the dispatcher may start waiting jobs
        for msg, _ in pairs:
            await msg.ack()

    async def handle_batch(self, msgs: list[Msg]) -> None:
        pairs = []
        for msg in msgs:
            try:
                pairs.append((msg, worker_pb2.WorkerEvent.FromString(msg.data)))
            except Exception:
                log.warning("dropping an unreadable worker event on %s", msg.subject)
                await msg.term()
        try:
            await self._apply(pairs)  # one transaction for the whole batch
        except Exception:
            log.exception("a batch of worker events failed; applying them one by one")
            for pair in pairs:  # isolate the event that fails; the others still land
                try:
                    await self._apply([pair])
                except Exception:
                    log.exception("could not apply a worker event; it will be redelivered")
                    await pair[0].nak(delay=1)

    async def run(self) -> None:
        sub = await self._js.pull_subscribe_bind(
            durable=mesh.EVENTS_CONSUMER, stream=mesh.EVENTS_STREAM
        )
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1)
            except (NatsTimeout, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            await self.handle_batch(msgs)


async def finalize(journal: Journal, nc: NATS | None, kv: KeyValue | None) -> None:
    """After commit: tell workers a run is over, and publish the events."""
    if kv is not None and journal.finished:

        async def mark(job: Job) -> None:
            value = mesh.CANCEL if job.status is JobStatus.CANCELLED else mesh.DONE
            try:
                await kv.put(f"{job.id}.{job.run}", value)
            except Exception as exc:  # the worker will find out from its own checkpoint or ack
                log.warning("could not mark %s.%s %s in KV: %s", job.id, job.run, value, exc)

        await asyncio.gather(*(mark(job) for job in journal.finished))
    await journal.publish(nc)


async def fail_exhausted(
    sessions: async_sessionmaker[AsyncSession],
    nc: NATS,
    js: JetStreamContext,
    kv: KeyValue,
    advisory: bytes,
) -> Job | None:
    """A run JetStream stopped delivering (max_deliver reached, e.g. its workers crashed):
    mark the job FAILED with the reason."""
    info = json.loads(advisory)
    raw = await js.get_msg(mesh.JOBS_STREAM, int(info["stream_seq"]))
    dispatch = worker_pb2.JobDispatch.FromString(raw.data or b"")
    journal = Journal()
    async with sessions() as session:
        job = await session.scalar(
            select(Job).where(Job.id == uuid.UUID(dispatch.job_id)).with_for_update()
        )
        if job is None or job.run != dispatch.attempt or job.status in TERMINAL:
            return None
        await journal.finish(
            session, job, JobStatus.FAILED,
            error=f"gave up after {info.get('deliveries', '?')} deliveries: the worker stopped "
                  "responding each time (crashed, killed or lost its connection)",
            failure="lost",
        )  # fmt: skip
        await session.commit()
    await finalize(journal, nc, kv)
    await js.delete_msg(mesh.JOBS_STREAM, int(info["stream_seq"]))
    return job
