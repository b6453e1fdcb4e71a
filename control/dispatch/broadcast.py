"""Fan-out of persisted job events to this replica's WatchJob and WatchJobs streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from voxmesh.v1 import jobs_pb2

log = logging.getLogger(__name__)
QUEUE_SIZE = 1000
ALL = "*"


class Broadcaster:
    def __init__(self) -> None:
        self._jobs: dict[str, set[asyncio.Queue[jobs_pb2.WatchJobResponse]]] = defaultdict(set)
        self._projects: dict[str, set[asyncio.Queue[jobs_pb2.Job]]] = defaultdict(set)

    async def start(self, nc: NATS) -> None:
        await nc.subscribe("voxmesh.updates.>", cb=self._on_event)
        await nc.subscribe("voxmesh.jobstate.>", cb=self._on_state)

    async def _on_event(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        queues = self._jobs.get(job_id)
        if not queues:
            return
        event = jobs_pb2.WatchJobResponse.FromString(msg.data)
        for queue in list(queues):
            with contextlib.suppress(asyncio.QueueFull):  # a slow watcher refills from the DB
                queue.put_nowait(event)

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

    @contextlib.contextmanager
    def watch_job(self, job_id: str) -> Iterator[asyncio.Queue[jobs_pb2.WatchJobResponse]]:
        queue: asyncio.Queue[jobs_pb2.WatchJobResponse] = asyncio.Queue(QUEUE_SIZE)
        self._jobs[job_id].add(queue)
        try:
            yield queue
        finally:
            self._jobs[job_id].discard(queue)
            if not self._jobs[job_id]:
                del self._jobs[job_id]

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
