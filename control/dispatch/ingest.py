"""WorkerEvents -> PostgreSQL -> watchers. Events are applied in stream order, each batch in one
transaction with its jobs locked, through the lifecycle: an event the job's state does not allow
(of an older run, for a finished job, a repeat) is dropped, so a duplicate or late completion
never stores a second result."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from google.protobuf import json_format
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control import files as file_rows
from control.db.models import Job
from control.faults import unavailable
from control.kinds import kind_of
from control.lifecycle.states import Transition, allowed
from control.lifecycle.transitions import Lifecycle, Mesh
from voxmesh import mesh
from voxmesh.blobs import BlobRef, BlobStore
from voxmesh.observability import REJECTED_EVENTS
from voxmesh.v1 import jobs_pb2, worker_pb2

log = logging.getLogger(__name__)
BATCH = 256
BATCH_LINGER_SECONDS = 0.005
"""How long the ingester waits for the events said to be pending, to apply them together."""
OUTAGE_RETRY_SECONDS = 2.0
FINISHING = frozenset({"completed", "failed", "cancelled"})
"""The worker events that may end a run (and store its result with the job's log)."""


def _job_id(event: worker_pb2.WorkerEvent) -> uuid.UUID | None:
    try:
        return uuid.UUID(event.job_id)
    except ValueError:
        return None


class IngestMesh(Mesh, Protocol):
    """What ingesting needs of the mesh: the after-commit effects' parts, and the blob store
    the outputs a completion carries go to."""

    @property
    def blobs(self) -> BlobStore: ...


class CarriedOutputs:
    """The small outputs a batch's completions carry instead of storing them (StoredFile.data
    without a key): put in the store as the batch begins, side by side with its SQL, so a short
    job's end waits for neither a worker's puts nor ours in turn. A completion's file rows wait
    for their blobs before the commit; one that is a repeat leaves its blobs unreferenced, as a
    refused upload does (they are named by their bytes: a later store of them is a no-op)."""

    def __init__(self, blobs: BlobStore | None, events: Iterable[worker_pb2.WorkerEvent]) -> None:
        self._puts: dict[bytes, asyncio.Future[BlobRef]] = {}
        for event in events:
            if event.WhichOneof("event") != "completed" or blobs is None:
                continue
            for stored in event.completed.files:
                if stored.data and not stored.key and stored.data not in self._puts:
                    self._puts[stored.data] = asyncio.ensure_future(blobs.put(stored.data))

    async def ref(self, stored: worker_pb2.StoredFile) -> BlobRef:
        """Where the output is stored: the worker's blob, or the one put from its bytes here."""
        if stored.key or not stored.data:
            return BlobRef(stored.sha256, stored.key)
        put = self._puts.get(stored.data)
        if put is None:
            raise RuntimeError("a completion carries an output but no blob store is open")
        return await put

    def close(self) -> None:
        for put in self._puts.values():
            if put.done():
                if not put.cancelled():
                    put.exception()  # retrieved: a failed put failed its batch already
            else:
                put.cancel()


async def _completed(
    lifecycle: Lifecycle, job: Job, completed: worker_pb2.WorkerCompleted,
    carried: CarriedOutputs | None,
) -> None:  # fmt: skip
    """Store the outputs as the creator's files, let the job's kind do its part, complete."""
    if not allowed(job, Transition.COMPLETE):
        return
    session = lifecycle.session
    files = []
    live: dict[str, bytes] = {}
    carried = carried or CarriedOutputs(None, ())
    for stored in completed.files:  # not flushed one by one: all go in one INSERT at commit
        blob = await carried.ref(stored)
        row = await file_rows.record(
            session, blob, owner_id=job.created_by,
            filename=stored.filename[:255] or "output",
            content_type=stored.content_type[:127] or "application/octet-stream",
            size_bytes=len(stored.data) if stored.data else stored.size_bytes,
            sealed_here=False, project_id=job.project_id, flush=False,
        )  # fmt: skip
        files.append({"file_id": str(row.id), "name": row.filename, "role": stored.role[:32],
                      "content_type": row.content_type, "size_bytes": row.size_bytes})  # fmt: skip
        if stored.data and not stored.key:  # carried, not stored by the worker
            live[str(row.id)] = stored.data
    meta = json_format.MessageToDict(completed.meta)
    kind = kind_of(job.type)
    await kind.on_completed(
        session, job, kind.parse(job.params), completed, meta, lambda line: lifecycle.log(job, line)
    )
    result_url = completed.result_url or (f"voxmesh://files/{files[0]['file_id']}" if files else "")
    await lifecycle.complete(job, files=files, meta=meta, result_url=result_url, live=live)


async def _part(
    lifecycle: Lifecycle, job: Job, stored: worker_pb2.StoredFile
) -> jobs_pb2.ResultFile:
    """A piece of the result announced ahead of the end: stored as the creator's file (so
    they, and the HTTP API as them, can download it at once), announced with the progress."""
    row = await file_rows.record(
        lifecycle.session, BlobRef(stored.sha256, stored.key), owner_id=job.created_by,
        filename=stored.filename[:255] or "part",
        content_type=stored.content_type[:127] or "application/octet-stream",
        size_bytes=stored.size_bytes, sealed_here=False, project_id=job.project_id,
    )  # fmt: skip
    return jobs_pb2.ResultFile(
        file_id=str(row.id), name=row.filename, content_type=row.content_type,
        size_bytes=row.size_bytes, role=stored.role[:32],
    )  # fmt: skip


async def apply_event(
    lifecycle: Lifecycle, event: worker_pb2.WorkerEvent, job: Job | None,
    carried: CarriedOutputs | None = None,
) -> None:  # fmt: skip
    """Apply one worker event to its job (locked by the caller), if its state allows it.
    `carried`: the batch's outputs sent with completions, being stored."""
    if job is None or event.attempt != job.run:
        return
    kind = event.WhichOneof("event")
    if kind == "started":
        lifecycle.worker_started(job, worker_id=event.worker_id, delivery=event.delivery)
    elif kind == "progress":
        progress = event.progress
        fresh = event.progress.percent >= job.progress  # not a redelivered run's repeat
        if event.HasField("part") and fresh and allowed(job, Transition.PROGRESS):
            progress = jobs_pb2.JobProgress()
            progress.CopyFrom(event.progress)
            progress.part.CopyFrom(await _part(lifecycle, job, event.part))
        lifecycle.progress(job, progress)
    elif kind == "log":
        lifecycle.worker_log(job, event.log.line)
    elif kind == "completed":
        await _completed(lifecycle, job, event.completed, carried)
    elif kind == "failed" and allowed(job, Transition.FAIL):
        category = event.failed.category
        await lifecycle.fail(
            job, error=event.failed.reason[:2000],
            failure=category if category in ("input", "error") else "",
        )  # fmt: skip
    elif kind == "cancelled":
        await lifecycle.worker_cancelled(job)


class EventIngester:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        mesh_: IngestMesh,
        run_secret: bytes,
        durable: str = mesh.EVENTS_CONSUMER,
        apply: Callable[[list[Msg]], Awaitable[None]] | None = None,
    ) -> None:
        """`durable`: the events consumer to work (one partition's, or the pre-partition one);
        `apply`: where its batches go (a Coalescer shared by a replica's partitions), else
        applied here."""
        self._hand_in = apply or self.handle_batch
        self._sessions = sessions
        self._js = js
        self._mesh = mesh_
        self._run_secret = run_secret
        self._durable = durable
        self._steady_since: float | None = None
        self._stopping = False
        self.applied = 0
        """Events this ingester fetched and had applied (its share of the work, for benches and
        tests)."""

    def stop(self) -> None:
        """Finish the batch in hand (applied and acked), then return from `run`."""
        self._stopping = True

    def steady_for(self) -> float:
        """Seconds since worker events last could not be fetched (0 while they cannot): a job
        silent for less than this may only be silent because its events were stuck in NATS."""
        if self._steady_since is None:
            return 0.0
        return time.monotonic() - self._steady_since

    def _genuine(self, event: worker_pb2.WorkerEvent) -> bool:
        """Whether the event proves it comes from a holder of its run (the run token)."""
        if mesh.holds_run(self._run_secret, event.job_id, event.attempt, event.run_token):
            return True
        REJECTED_EVENTS.labels("forged").inc()
        log.warning("dropping a %s event for job %s run %s from %r: it does not carry the run's "
                    "token (forged or replayed from elsewhere)", event.WhichOneof("event"),
                    event.job_id[:36], event.attempt, event.worker_id[:100])  # fmt: skip
        return False

    async def _apply(self, pairs: list[tuple[Msg, worker_pb2.WorkerEvent]]) -> None:
        """Apply events in order in one transaction, then the after-commit effects, then ack."""
        ids = {i for _, event in pairs if (i := _job_id(event)) is not None}
        # The outputs completions carry go to the store while the jobs are locked and read.
        carried = CarriedOutputs(self._mesh.blobs, (event for _, event in pairs))
        try:
            async with self._sessions() as session:
                lifecycle = Lifecycle(session)
                # Lock every job of the batch at once, in a fixed order (no deadlocks).
                jobs = {
                    job.id: job
                    for job in await session.scalars(
                        select(Job).where(Job.id.in_(ids)).order_by(Job.id).with_for_update()
                    )
                }
                # The logs of the jobs these events may finish, in one query (a result keeps them).
                await lifecycle.read_logs(
                    job_id
                    for _, event in pairs
                    if event.WhichOneof("event") in FINISHING and (job_id := _job_id(event)) in jobs
                )
                with session.no_autoflush:  # inserts go out together at commit
                    for _, event in pairs:
                        job_id = _job_id(event)
                        job = jobs.get(job_id) if job_id else None
                        await apply_event(lifecycle, event, job, carried)
                await session.commit()
        finally:
            carried.close()
        await lifecycle.after_commit(self._mesh)
        for msg, _ in pairs:
            await msg.ack()

    async def handle_batch(self, msgs: list[Msg]) -> None:
        pairs = []
        for msg in msgs:
            try:
                event = worker_pb2.WorkerEvent.FromString(msg.data)
            except Exception:
                REJECTED_EVENTS.labels("unreadable").inc()
                log.warning("dropping an unreadable worker event on %s", msg.subject)
                await msg.term()
                continue
            if not self._genuine(event):
                await msg.term()
                continue
            pairs.append((msg, event))
        try:
            await self._apply(pairs)  # one transaction for the whole batch
        except Exception as exc:
            if unavailable(exc) is not None:  # PostgreSQL is down: all of them wait for it
                log.warning("cannot store %d worker events (%s); retrying in %g s",
                            len(pairs), exc.__class__.__name__, OUTAGE_RETRY_SECONDS)  # fmt: skip
                # Handed back at once, and nothing more is fetched until the pause is over:
                # JetStream redelivers before it delivers anything new, so these come back
                # ahead of the events after them. (Handed back with a delay, a job's later
                # progress overtook its earlier one, which then fell below the bar: lost.)
                for msg, _ in pairs:
                    await msg.nak()
                await asyncio.sleep(OUTAGE_RETRY_SECONDS)
                return
            log.exception("a batch of worker events failed; applying them one by one")
            for pair in pairs:  # isolate the event that fails; the others still land
                try:
                    await self._apply([pair])
                except Exception:
                    log.exception("could not apply a worker event; it will be redelivered")
                    await pair[0].nak(delay=1)

    async def run(self) -> None:
        sub = await self._js.pull_subscribe_bind(durable=self._durable, stream=mesh.EVENTS_STREAM)
        while not self._stopping:
            try:
                # Wait for the first event, then take what else is there within a few ms: a
                # single fetch of a batch would hold the first event until the batch filled or
                # its timeout passed (a second of latency on every progress event). An event
                # says how many wait behind it: when none do, nothing is worth waiting for.
                msgs = await sub.fetch(1, timeout=1)
                behind = msgs[-1].metadata.num_pending
                if behind:
                    with contextlib.suppress(NatsTimeout, TimeoutError):
                        msgs += await sub.fetch(
                            min(BATCH - 1, behind), timeout=BATCH_LINGER_SECONDS
                        )
            except (NatsTimeout, TimeoutError):  # nothing to fetch: NATS answers
                self._steady_since = self._steady_since or time.monotonic()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._steady_since = None
                log.warning("event fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            self._steady_since = self._steady_since or time.monotonic()
            try:
                await self._hand_in(msgs)
            except Exception:  # not acked: JetStream redelivers them after ack_wait
                log.exception("a batch of worker events was not applied")
                continue
            self.applied += len(msgs)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class Coalescer:
    """Applies the batches a replica's partition ingesters hand in, those that wait together in
    one transaction: 8 partitions commit as seldom as one stream did. A partition's next
    fetch waits for its batch to be applied, so each job's events stay in order."""

    def __init__(self, handle: Callable[[list[Msg]], Awaitable[None]]) -> None:
        self._handle = handle
        self._queue: asyncio.Queue[tuple[list[Msg], asyncio.Future[None]]] = asyncio.Queue()

    async def submit(self, msgs: list[Msg]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((msgs, done))
        await done

    async def run(self) -> None:
        while True:
            waiting = [await self._queue.get()]
            while not self._queue.empty() and sum(len(m) for m, _ in waiting) < BATCH:
                waiting.append(self._queue.get_nowait())
            try:
                await self._handle([msg for msgs, _ in waiting for msg in msgs])
            except Exception as exc:  # handle_batch settles its own failures; never strand one
                log.exception("applying a batch of worker events failed")
                for _, done in waiting:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in waiting:
                if not done.done():
                    done.set_result(None)


async def give_up_exhausted(
    sessions: async_sessionmaker[AsyncSession], js: JetStreamContext, mesh_: Mesh, advisory: bytes
) -> Job | None:
    """A run JetStream stopped delivering (max_deliver reached, e.g. its workers crashed):
    the job FAILED with the reason."""
    info = json.loads(advisory)
    raw = await js.get_msg(mesh.JOBS_STREAM, int(info["stream_seq"]))
    dispatch = worker_pb2.JobDispatch.FromString(raw.data or b"")
    async with sessions() as session:
        lifecycle = Lifecycle(session)
        job = await session.scalar(
            select(Job).where(Job.id == uuid.UUID(dispatch.job_id)).with_for_update()
        )
        if job is None or job.run != dispatch.attempt or not allowed(job, Transition.GIVE_UP):
            return None
        await lifecycle.give_up(
            job,
            error=f"gave up after {info.get('deliveries', '?')} deliveries: the worker stopped "
            "responding each time (crashed, killed or lost its connection)",
        )
        await session.commit()
    await lifecycle.after_commit(mesh_)
    await js.delete_msg(mesh.JOBS_STREAM, int(info["stream_seq"]))
    return job
