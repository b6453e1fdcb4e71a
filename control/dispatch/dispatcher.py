"""Outbox -> JetStream, with admission: a job's run is published when its creator has fewer
than max_concurrent_jobs jobs queued or running; the rest wait PENDING and go as slots free.

Every replica runs a dispatcher over the partitions it leases (control/dispatch/leases.py).
A creator's jobs may sit in several partitions, so admission takes a transaction lock per
creator (ADMISSION_LOCKS) before counting: two replicas never admit past one person's cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from sqlalchemy import Integer, Select, String, bindparam, cast, column, func, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control import settings_catalog
from control.convert import job_type_to_pb
from control.db.models import File, Job, OutboxEntry
from control.kinds import kind_of
from control.kinds.base import stored_file
from control.lifecycle.states import State, holding_slot_sql, state_of, waiting_for_slot_sql
from control.lifecycle.transitions import Lifecycle, Mesh
from voxmesh import mesh
from voxmesh.v1 import worker_pb2

log = logging.getLogger(__name__)
BATCH = 200
ADMISSION_LOCKS = 0x766F7803
ALL_PARTITIONS = list(range(mesh.PARTITIONS))


def _round_statements() -> tuple[
    Select[Any, Any], Select[*tuple[Any, ...]], Select[OutboxEntry, Job, File]
]:
    """A dispatch round's statements, built once: what varies (the partitions, the creators,
    their free slots, the batch size) goes in as parameters."""
    unpublished = OutboxEntry.published_at.is_(None) & OutboxEntry.partition.in_(
        bindparam("parts", expanding=True)
    )
    hashed = (
        select(Job.created_by.label("user"), func.hashtext(cast(Job.created_by, String)).label("h"))
        .join(OutboxEntry, OutboxEntry.job_id == Job.id)
        .where(unpublished)
        .distinct()
        .order_by("h")
        .subquery()
    )  # each creator with runs waiting here, locked in one order on every replica: no deadlock
    lock = select(hashed.c.user, func.pg_advisory_xact_lock(ADMISSION_LOCKS, hashed.c.h))
    creators = (
        func.unnest(bindparam("users", type_=ARRAY(UUID(as_uuid=True))))
        .table_valued(column("user_id", UUID(as_uuid=True)))
        .render_derived(name="creators")
    )
    held = select(
        creators.c.user_id,
        select(func.count())
        .where(Job.created_by == creators.c.user_id, holding_slot_sql())
        .scalar_subquery(),
        settings_catalog.stored_rows(creators.c.user_id),
    )  # each creator's slots in use and settings, in one round trip
    room = (
        func.unnest(
            bindparam("room_users", type_=ARRAY(UUID(as_uuid=True))),
            bindparam("room_free", type_=ARRAY(Integer)),
        )
        .table_valued(column("user_id", UUID(as_uuid=True)), column("free", Integer))
        .render_derived(name="room")
    )
    waiting = waiting_for_slot_sql() & (Job.run == OutboxEntry.run)
    rows_here = (
        select(
            OutboxEntry.id,
            Job.created_by,
            waiting.label("waiting"),
            func.row_number()
            .over(partition_by=(Job.created_by, waiting), order_by=OutboxEntry.id)
            .label("nth"),
        )
        .join(Job, Job.id == OutboxEntry.job_id)
        .where(unpublished)
        .subquery()
    )  # a creator's waiting runs numbered oldest first: as many go as they have free slots
    may_go = (
        select(OutboxEntry, Job, File)
        .join(Job, Job.id == OutboxEntry.job_id)
        .outerjoin(File, File.id == Job.input_file_id)
        .where(
            OutboxEntry.id.in_(
                select(rows_here.c.id)
                .join(room, room.c.user_id == rows_here.c.created_by)
                .where(~rows_here.c.waiting | (rows_here.c.nth <= room.c.free))
            )
        )
        .order_by(OutboxEntry.id)
        .limit(bindparam("batch"))
        .with_for_update(of=[OutboxEntry, Job], skip_locked=True)
    )
    return lock, held, may_go


_LOCK_WAITING_CREATORS, _SLOTS_HELD, _MAY_GO = _round_statements()


async def build_dispatch(
    session: AsyncSession, job: Job, run_secret: bytes, values: dict[str, Any] | None = None
) -> worker_pb2.JobDispatch:
    """A run as its worker receives it: the typed params, the input file, what the job's kind
    adds (other files, a saved voice's profile), and the run's token."""
    kind = kind_of(job.type)
    params = kind.parse(job.params)
    dispatch = worker_pb2.JobDispatch(
        job_id=str(job.id), type=job_type_to_pb(job.type), attempt=job.run,
        created_by=str(job.created_by), run_token=mesh.run_token(run_secret, str(job.id), job.run),
    )  # fmt: skip
    getattr(dispatch, kind.field).CopyFrom(params)
    values = values or await settings_catalog.resolve(session, job.created_by)
    dispatch.max_audio_seconds = 60.0 * int(values["max_audio_minutes"][0])
    if job.input_file_id is not None:
        row = await session.get(File, job.input_file_id)
        if row is not None:
            dispatch.input_file.CopyFrom(stored_file(row))
    await kind.prepare_dispatch(session, job, params, dispatch)
    return dispatch


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        js: JetStreamContext,
        poll: float,
        mesh_: Mesh,
        run_secret: bytes,
        partitions: set[int] | None = None,
    ) -> None:
        """`partitions`: the ones to publish (a live view of the leases; None: all)."""
        self._partitions = partitions
        self._sessions = sessions
        self._js = js
        self._mesh = mesh_
        self._run_secret = run_secret
        self._poll = poll
        self._wake = asyncio.Event()
        self._full = False
        """Whether the last look found a whole batch (so more may wait behind it)."""
        self.published = 0
        """Runs this replica published (its share of the work, for benches and tests)."""

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            # Cleared before looking, not after: a run queued while we look wakes us again.
            # (Cleared after, that wake was lost and the run waited for the next poll.)
            self._wake.clear()
            try:
                published = await self.dispatch_once()
                backoff = 0.5
                if published and self._full:  # there may be more: go again without waiting
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS or PostgreSQL unreachable: keep the rows, try later
                log.warning("dispatch paused (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation
            # that meets a wake, and the loop (and the replica's shutdown) would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def dispatch_once(self) -> int:
        """Publish what may start now; return how many were published."""
        published = 0
        parts = sorted(self._partitions) if self._partitions is not None else ALL_PARTITIONS
        if not parts:
            return 0
        async with self._sessions() as session:
            # Whose runs wait here, their caps first: a round then reads only runs that may
            # start now (and rows of cancelled or retried runs, to set aside). Read in order
            # of arrival instead, one creator's backlog past BATCH kept everyone else's jobs
            # waiting behind it.
            users = [u for u, _ in await session.execute(_LOCK_WAITING_CREATORS, {"parts": parts})]
            if not users:
                self._full = False
                return 0
            active: dict[uuid.UUID, int] = {}
            settings: dict[uuid.UUID, dict[str, Any]] = {}
            for user, count, stored in await session.execute(_SLOTS_HELD, {"users": users}):
                active[user], settings[user] = count, settings_catalog.values_of(stored)
            free = [int(settings[u]["max_concurrent_jobs"][0]) - active[u] for u in users]
            # Those runs with their jobs, both locked, and the jobs' input files, in one
            # statement. A job another transaction holds is skipped with its rows, never
            # waited for (a delete cascading to its outbox rows would then wait for us: a
            # deadlock); it goes next round.
            found = (
                await session.execute(
                    _MAY_GO,
                    {"parts": parts, "room_users": users, "room_free": free, "batch": BATCH},
                )
            ).all()
            self._full = len(found) >= BATCH
            if not found:
                return 0
            rows = [row for row, _, _ in found]
            jobs = {job.id: job for _, job, _ in found}  # build_dispatch finds the files loaded
            now = datetime.now(UTC)
            ready: list[tuple[OutboxEntry, Job, worker_pb2.JobDispatch]] = []
            for row in rows:
                job = jobs.get(row.job_id)
                if job is None:
                    continue  # locked elsewhere right now (a deleted job takes its rows along)
                if state_of(job) is not State.WAITING_FOR_SLOT or job.run != row.run:
                    row.published_at = now  # superseded (cancelled or retried)
                    continue
                user = job.created_by
                if active[user] >= int(settings[user]["max_concurrent_jobs"][0]):
                    continue  # waits for a slot
                dispatch = await build_dispatch(session, job, self._run_secret, settings[user])
                dispatch.traceparent = row.traceparent
                ready.append((row, job, dispatch))
                active[user] += 1
            # Publish the batch concurrently; mark exactly the ones JetStream acknowledged.
            acks = await asyncio.gather(
                *(
                    self._js.publish(
                        mesh.jobs_subject(kind_of(job.type).field),
                        dispatch.SerializeToString(),
                        headers={"Nats-Msg-Id": mesh.run_key(str(job.id), row.run)},
                    )
                    for row, job, dispatch in ready
                ),
                return_exceptions=True,
            )
            failure: BaseException | None = None
            lifecycle = Lifecycle(session)
            for (row, job, _), ack in zip(ready, acks, strict=True):
                if isinstance(ack, BaseException):
                    failure = failure or ack
                    continue
                lifecycle.admit(job, row)
                published += 1
            await session.commit()
            await lifecycle.after_commit(self._mesh)  # metrics, and project watchers see QUEUED
            if failure is not None and not published:
                raise failure  # NATS is unreachable: back off
        self.published += published
        return published
