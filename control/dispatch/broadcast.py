"""Fan-out of persisted job events to this replica's WatchJob and WatchJobs streams.

Each watcher gets a bounded queue. A `None` in a job watcher's queue means "you may have missed
something: refill from PostgreSQL after your last seq"; it is put there when the queue
overflowed (a slow watcher), after a NATS reconnect (core NATS drops what was published
meanwhile), and by the sweep: once every SWEEP_SECONDS one query for all watched jobs of this
replica finds any whose stored last seq is past what reached it over NATS (an event committed
by a replica that died before publishing it). Idle watchers cost the database nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.db.models import Job
from voxmesh.v1 import jobs_pb2

log = logging.getLogger(__name__)
QUEUE_SIZE = 1000
SWEEP_SECONDS = 5.0
ALL = "*"
JobQueue = asyncio.Queue[jobs_pb2.WatchJobResponse | None]


def _resync(queue: JobQueue) -> None:
    """Tell one watcher to refill from the database (dropping what it has queued: the refill
    brings it again, in order)."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


class Broadcaster:
    def __init__(self) -> None:
        self._jobs: dict[str, set[JobQueue]] = defaultdict(set)
        self._seen: dict[str, int] = {}
        """Per watched job: the highest seq that reached this replica over NATS."""
        self._projects: dict[str, set[asyncio.Queue[jobs_pb2.Job]]] = defaultdict(set)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, nc: NATS, sessions: async_sessionmaker[AsyncSession]) -> None:
        await nc.subscribe("voxmesh.updates.>", cb=self._on_event)
        await nc.subscribe("voxmesh.jobstate.>", cb=self._on_state)
        self._sweeper = asyncio.create_task(self._sweep(sessions), name="watch-sweep")

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def reconnected(self) -> None:
        """NATS came back: every job watcher refills from the database."""
        for queues in self._jobs.values():
            for queue in queues:
                _resync(queue)

    async def _on_event(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        queues = self._jobs.get(job_id)
        if not queues:
            return
        event = jobs_pb2.WatchJobResponse.FromString(msg.data)
        self._seen[job_id] = max(self._seen.get(job_id, 0), event.seq)
        for queue in list(queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a slow watcher: it refills from the database
                _resync(queue)

    async def _on_state(self, msg: Msg) -> None:
        project_id = msg.subject.split(".")[2]
        targets = self._projects.get(project_id, set()) | self._projects.get(ALL, set())
        if not targets:
            return
        job = jobs_pb2.Job.FromString(msg.data)
        for queue in list(targets):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # drop the oldest state: newer ones supersede it
            queue.put_nowait(job)

    async def _sweep(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            watched = list(self._jobs)
            if not watched:
                continue
            try:
                async with sessions() as session:
                    stored = dict(
                        (str(i), seq)
                        for i, seq in await session.execute(
                            select(Job.id, Job.last_event_seq).where(
                                Job.id.in_([uuid.UUID(j) for j in watched])
                            )
                        )
                    )
            except Exception as exc:  # the database is down: nothing new can be stored either
                log.warning("watch sweep skipped: %s", exc)
                continue
            for job_id, seq in stored.items():
                if seq > self._seen.get(job_id, 0):
                    self._seen[job_id] = seq
                    for queue in self._jobs.get(job_id, ()):
                        _resync(queue)

    def watching(self, job_id: str) -> int:
        """How many streams of this replica follow the job now."""
        return len(self._jobs.get(job_id, ()))

    @contextlib.contextmanager
    def watch_job(self, job_id: str, after_seq: int = 0) -> Iterator[JobQueue]:
        queue: JobQueue = asyncio.Queue(QUEUE_SIZE)
        self._jobs[job_id].add(queue)
        self._seen.setdefault(job_id, after_seq)
        try:
            yield queue
        finally:
            self._jobs[job_id].discard(queue)
            if not self._jobs[job_id]:
                del self._jobs[job_id]
                self._seen.pop(job_id, None)

    @contextlib.contextmanager
    def watch_project(self, project_id: str | None) -> Iterator[asyncio.Queue[jobs_pb2.Job]]:
        key = project_id or ALL
        queue: asyncio.Queue[jobs_pb2.Job] = asyncio.Queue(QUEUE_SIZE)
        self._projects[key].add(queue)
        try:
            yield queue
        finally:
            self._projects[key].discard(queue)
            if not self._projects[key]:
                del self._projects[key]
