"""Starts and stops the control plane's part of the mesh: the NATS connection, JetStream
objects, broadcaster (every replica), and dispatcher + event ingester (the leader only)."""

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
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from control.config import MeshSettings
from control.db.models import Job, JobStatus, JobType, OutboxEntry
from control.dispatch import reaper
from control.dispatch.broadcast import Broadcaster
from control.dispatch.dispatcher import Dispatcher
from control.dispatch.ingest import EventIngester, give_up_exhausted
from control.dispatch.presence import Presence
from control.kinds import FIELDS, kind_of
from voxmesh import mesh
from voxmesh.blobs import NatsBlobStore
from voxmesh.observability import JOBS, QUEUE_DEPTH

log = logging.getLogger(__name__)
LEADER_LOCK = 0x766F786D657368  # "voxmesh"
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
        self._tasks: list[asyncio.Task[Any]] = []
        self._leader_conn: AsyncConnection | None = None

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
        self.blobs = NatsBlobStore(files, reseal=True)
        await self.broadcaster.start(self.nc, sessions)
        await self.presence.start(self.nc)
        self.dispatcher = Dispatcher(
            sessions, self.js, settings.dispatch_poll_seconds, self, run_secret
        )
        self._tasks.append(asyncio.create_task(self._lead(engine, sessions), name="mesh-leader"))
        return self

    async def provision(self, settings: MeshSettings) -> None:
        """Create or update the mesh's streams, consumers and buckets with `settings`: the only
        place they are written (workers read ack_wait and max_deliver from their consumer)."""
        self.settings = settings
        await mesh.ensure(self.js, settings, FIELDS)

    async def _lead(self, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
        """Wait to hold the leader lock, then run the dispatcher and the event ingester."""
        assert self.dispatcher is not None
        while True:
            conn = await engine.connect()
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK})
            await conn.commit()
            if got:
                self._leader_conn = conn
                break
            await conn.close()
            await asyncio.sleep(2)
        log.info("this control plane leads dispatch and event ingestion")
        ingester = EventIngester(sessions, self.js, self, self.run_secret)

        async def exhausted(msg: Msg) -> None:
            try:
                await give_up_exhausted(sessions, self.js, self, msg.data)
            except Exception:
                log.exception("could not handle a max-deliveries advisory")

        await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{mesh.JOBS_STREAM}.*", cb=exhausted
        )
        await asyncio.gather(
            self.dispatcher.run(), ingester.run(), self._gauges(sessions),
            reaper.run(sessions, self.presence, self, self._orphan_grace, ingester.steady_for),
        )  # fmt: skip

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
        """Keep the job and queue gauges current (the leader only, so a metric scraped from
        every replica is not counted twice)."""
        while True:
            try:
                await refresh_gauges(sessions, self.js)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not refresh the job gauges: %s", exc)
            await asyncio.sleep(GAUGE_INTERVAL)

    def wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.broadcaster.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._leader_conn is not None:
            with contextlib.suppress(Exception):
                await self._leader_conn.close()
        with contextlib.suppress(Exception):
            await (
                self.nc.close()
            )  # nothing to drain: unacked events are redelivered to the next leader
