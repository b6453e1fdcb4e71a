"""Starts and stops the control plane's part of the mesh: the NATS connection, JetStream
objects, the broadcaster, and the dispatcher and event ingesters of the partitions this replica
leases (control/dispatch/leases.py); the holder of partition 0 also runs the cluster's
singletons (reaper, gauges, max-deliveries advisories, pre-partition events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from control.config import MeshSettings
from control.db.models import Job, JobStatus, JobType, OutboxEntry
from control.dispatch import reaper
from control.dispatch.broadcast import Broadcaster
from control.dispatch.dispatcher import Dispatcher
from control.dispatch.ingest import Coalescer, EventIngester, give_up_exhausted
from control.dispatch.leases import Leases
from control.dispatch.presence import Presence
from control.kinds import FIELDS, kind_of
from voxmesh import mesh
from voxmesh.blobs import NatsBlobStore
from voxmesh.observability import JOBS, QUEUE_DEPTH

log = logging.getLogger(__name__)
WAKE_SUBJECT = "voxmesh.control.wake"
"""Core NATS: a replica queued a run or freed a slot; every dispatcher looks (the job's
partition, or the creator's waiting jobs, may be another replica's)."""
GAUGE_INTERVAL = 5.0
PROVISION_SECONDS = 90.0
"""How long a starting replica keeps trying to provision the mesh on a NATS that is not ready."""
ORPHAN_GRACE_FLOOR = 60.0


async def refresh_gauges(sessions: async_sessionmaker[AsyncSession], js: JetStreamContext) -> None:
    """Jobs by type and status, and the queue depth per type, from PostgreSQL and JetStream."""
    counts: dict[tuple[JobType, JobStatus], int] = {}
    held: dict[JobType, int] = {}
    async with sessions() as session:
        for job_type, status, count in await session.execute(
            select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)
        ):
            counts[job_type, status] = count
        for job_type, count in await session.execute(
            select(Job.type, func.count())
            .join(OutboxEntry, (OutboxEntry.job_id == Job.id) & (OutboxEntry.run == Job.run))
            .where(Job.status == JobStatus.PENDING, OutboxEntry.published_at.is_(None))
            .group_by(Job.type)
        ):
            held[job_type] = count
    for job_type in JobType:
        kind = kind_of(job_type).field
        for status in JobStatus:
            JOBS.labels(kind, status.value.lower()).set(counts.get((job_type, status), 0))
        QUEUE_DEPTH.labels(kind, "admission").set(held.get(job_type, 0))
        info = await js.consumer_info(mesh.JOBS_STREAM, mesh.worker_consumer(kind))
        QUEUE_DEPTH.labels(kind, "jetstream").set(info.num_pending or 0)


class MeshRuntime:
    def __init__(self) -> None:
        self.nc: NATS
        self.js: JetStreamContext
        self.kv: KeyValue
        self.blobs: NatsBlobStore
        self.run_secret = b""
        """The key run tokens are made and checked with."""
        self.broadcaster = Broadcaster()
        self.presence = Presence()
        """The workers connected now and what they can run (ListVoices)."""
        self.dispatcher: Dispatcher | None = None
        self._sessions: async_sessionmaker[AsyncSession]
        self.leases: Leases | None = None
        self._coalescer: Coalescer
        self._applier: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._partition_work: dict[int, tuple[list[EventIngester], list[asyncio.Task[Any]]]] = {}
        self._wake_pending = False
        self._ingested_before = 0

    @classmethod
    async def start(
        cls,
        url: str,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        settings: MeshSettings,
        *,
        run_secret: bytes,
    ) -> MeshRuntime:
        """`run_secret`: the key run tokens are made with (the same on every replica)."""
        self = cls()
        self.run_secret = run_secret
        self.settings = settings
        self.nc = await mesh.connect(
            url,
            "voxmesh-control",
            reconnected=self._reconnected,
            disconnected=self._disconnected,
        )
        self.js = self.nc.jetstream()
        # A cluster that is still electing leaders, or busy with another replica's provisioning,
        # answers JetStream API calls late: keep trying for a while rather than give up.
        deadline = time.monotonic() + PROVISION_SECONDS
        while True:
            try:
                await self.provision(settings)
                self.kv = await self.js.key_value(mesh.CONTROL_BUCKET)
                files = await self.js.object_store(mesh.FILES_BUCKET)
                break
            except (NatsError, TimeoutError) as e:  # also a bucket another replica is creating
                if time.monotonic() > deadline:
                    raise
                log.warning("NATS is not ready to provision the mesh (%s); retrying",
                            str(e) or type(e).__name__)  # fmt: skip
                await asyncio.sleep(1)
        self.blobs = NatsBlobStore(self.js, files, mesh.FILES_BUCKET, reseal=True)
        await self.broadcaster.start(self.nc, sessions)
        await self.presence.start(self.nc)
        self._sessions = sessions
        self.leases = Leases(engine, self._gain, self._lose)
        # One applier for all this replica's partitions: their batches share transactions.
        self._coalescer = Coalescer(EventIngester(sessions, self.js, self, run_secret).handle_batch)
        self.dispatcher = Dispatcher(
            sessions, self.js, settings.dispatch_poll_seconds, self, run_secret, self.leases.held
        )
        await self.nc.subscribe(WAKE_SUBJECT, cb=self._woken)
        self._applier = asyncio.create_task(self._coalescer.run(), name="event-applier")
        self._tasks += [
            self._applier,
            asyncio.create_task(self.leases.run(), name="partition-leases"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
        ]
        return self

    async def provision(self, settings: MeshSettings) -> None:
        """Create or update the mesh's streams, consumers and buckets with `settings`: the only
        place they are written (workers read ack_wait and max_deliver from their consumer)."""
        self.settings = settings
        await mesh.ensure(self.js, settings, FIELDS)

    async def _gain(self, partition: int) -> None:
        """Work a partition just leased: ingest its events and publish its runs (the
        dispatcher reads the leases); partition 0 brings the cluster's singletons."""
        assert self.dispatcher is not None
        sessions = self._sessions
        apply = self._coalescer.submit
        ingesters = [EventIngester(sessions, self.js, self, self.run_secret,
                                   mesh.partition_consumer(partition), apply)]  # fmt: skip
        tasks = [asyncio.create_task(ingesters[0].run(), name=f"ingest-{partition}")]
        if partition == 0:
            legacy = EventIngester(
                sessions, self.js, self, self.run_secret, mesh.EVENTS_CONSUMER, apply
            )
            ingesters.append(legacy)

            async def exhausted(msg: Msg) -> None:
                try:
                    await give_up_exhausted(sessions, self.js, self, msg.data)
                except Exception:
                    log.exception("could not handle a max-deliveries advisory")

            advisories = await self.nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{mesh.JOBS_STREAM}.*", cb=exhausted
            )

            async def unsubscribe() -> None:
                try:
                    await asyncio.Event().wait()
                finally:
                    with contextlib.suppress(Exception):
                        await advisories.unsubscribe()

            reaping = reaper.run(
                sessions, self.presence, self, self._orphan_grace, ingesters[0].steady_for
            )
            tasks += [
                asyncio.create_task(legacy.run(), name="ingest-before-partitions"),
                asyncio.create_task(self._gauges(sessions), name="gauges"),
                asyncio.create_task(unsubscribe(), name="advisories"),
                asyncio.create_task(reaping, name="reaper"),
            ]
        self._partition_work[partition] = (ingesters, tasks)
        self.dispatcher.wake()

    async def _lose(self, partition: int) -> None:
        """Stop working a partition: ingesters finish the batch in hand, the rest stops."""
        ingesters, tasks = self._partition_work.pop(partition, ([], []))
        for ingester in ingesters:
            ingester.stop()
        for task in tasks[len(ingesters) :]:
            task.cancel()
        # An ingester returns within its fetch timeout once stopped; past that, cancel it. If
        # this is cancelled meanwhile (the replica stops), none of them outlives it either.
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        finally:
            for task in tasks:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._ingested_before += sum(ingester.applied for ingester in ingesters)

    async def _reconnected(self) -> None:
        self.presence.regained()
        await self.broadcaster.reconnected()

    async def _disconnected(self) -> None:
        self.presence.lost()

    def _orphan_grace(self) -> float:
        """How long JetStream may keep redelivering a run: past this, a RUNNING job no worker
        holds is lost. Never under ORPHAN_GRACE_FLOOR: a redelivery waits for its consumer's
        new leader when a NATS node fails, which short ack_waits would not cover."""
        return max(self.settings.ack_wait_seconds * self.settings.max_deliver, ORPHAN_GRACE_FLOOR)

    async def _gauges(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Keep the job and queue gauges current (the holder of partition 0 only, so a metric scraped from
        every replica is not counted twice)."""
        while True:
            try:
                await refresh_gauges(sessions, self.js)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not refresh the job gauges: %s", exc)
            await asyncio.sleep(GAUGE_INTERVAL)

    @property
    def ingested(self) -> int:
        """Worker events this replica applied (its share of the work, for benches and tests)."""
        work = self._partition_work.values()
        return self._ingested_before + sum(i.applied for ingesters, _ in work for i in ingesters)

    def wake(self) -> None:
        """A run was queued or a slot freed: this replica's dispatcher looks at once, and,
        when there are others, so do theirs (one wake message per loop turn at most)."""
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.leases is not None and self.leases.replicas > 1 and not self._wake_pending:
            self._wake_pending = True
            self._tasks.append(asyncio.create_task(self._wake_others()))

    async def _wake_others(self) -> None:
        self._wake_pending = False
        with contextlib.suppress(Exception):
            await self.nc.publish(WAKE_SUBJECT, b"")
        with contextlib.suppress(ValueError):
            self._tasks.remove(asyncio.current_task())  # type: ignore[arg-type]

    async def _woken(self, _msg: Msg) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def stop(self) -> None:
        applier = self._applier
        for task in self._tasks:
            if task is not applier:
                task.cancel()
        self.broadcaster.stop()
        for task in list(self._tasks):
            if task is not applier:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.leases is not None:
            # The partitions' work stops (their batches in hand still applied), locks go back.
            await self.leases.stop()
        if applier is not None:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await applier
        with contextlib.suppress(Exception):
            await (
                self.nc.close()
            )  # nothing to drain: unacked events are redelivered to the partitions' next holders
