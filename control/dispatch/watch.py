"""One job's events as a watcher sees them: the snapshot, then the stored events after the
watcher's `after_seq`, then live ones, refilled from PostgreSQL only when a gap shows (a seq
skipped, or the broadcaster's resync signal). Ends after a finished job's result."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.convert import job_to_pb
from control.db.models import Job, JobEvent
from control.dispatch.broadcast import Broadcaster
from control.lifecycle.states import FINISHED, state_of
from voxmesh.errors import InvalidArgument, NotFound
from voxmesh.v1 import jobs_pb2


async def _stored(
    sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID, after: int
) -> list[jobs_pb2.WatchJobResponse]:
    async with sessions() as session:
        payloads = await session.scalars(
            select(JobEvent.payload)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after)
            .order_by(JobEvent.seq)
        )
        return [jobs_pb2.WatchJobResponse.FromString(p) for p in payloads]


def _is_end(event: jobs_pb2.WatchJobResponse) -> bool:
    return event.WhichOneof("event") == "result"


async def job_events(
    sessions: async_sessionmaker[AsyncSession],
    broadcaster: Broadcaster,
    job_id: uuid.UUID,
    after_seq: int,
) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
    # Listen first, then read: whatever commits after the snapshot arrives live.
    with broadcaster.watch_job(str(job_id), after_seq) as live:
        async with sessions() as session:
            job = await session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job with id {job_id}", field="job_id")
            if after_seq > job.last_event_seq:
                raise InvalidArgument(
                    f"after_seq {after_seq} is beyond the job's last event "
                    f"({job.last_event_seq})", field="after_seq",
                )  # fmt: skip
            snapshot, finished = job_to_pb(job), state_of(job) in FINISHED
        yield jobs_pb2.WatchJobResponse(
            job_id=snapshot.id, seq=snapshot.last_event_seq, time=snapshot.update_time,
            snapshot=snapshot,
        )  # fmt: skip
        last = after_seq
        for old in await _stored(sessions, job_id, last):
            yield old
            last = old.seq
            if _is_end(old) and old.seq >= snapshot.last_event_seq:
                return  # the end of the latest attempt (an earlier attempt's end is history)
        if finished and last >= snapshot.last_event_seq:
            return
        while True:
            event = await live.get()
            if event is not None and event.seq <= last:
                continue  # already replayed
            if event is None or event.seq > last + 1:  # a gap: refill from the log
                for missed in await _stored(sessions, job_id, last):
                    yield missed
                    last = missed.seq
                    if _is_end(missed):
                        return
                continue
            yield event
            last = event.seq
            if _is_end(event):
                return
