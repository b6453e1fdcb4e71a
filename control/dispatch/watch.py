"""One job's events as a watcher sees them: the snapshot, then the stored events after the
watcher's `after_seq`, then live ones, refilled from PostgreSQL only when a gap shows (a seq
skipped, or the broadcaster's resync signal). Ends after a finished job's result. A watcher that
asks to coalesce progress gets only the latest of the progress events waiting for it when it
falls behind (WatchJobRequest.coalesce_progress)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.convert import job_to_pb
from control.db.models import Job, JobEvent
from control.dispatch.broadcast import Broadcaster
from control.lifecycle.states import FINISHED, state_of
from voxmesh.errors import InvalidArgument, NotFound
from voxmesh.observability import COALESCED_PROGRESS
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


def _superseded(events: Sequence[jobs_pb2.WatchJobResponse | None]) -> set[int]:
    """The seqs of the progress events a later progress event among `events` supersedes: a
    watcher that asked to coalesce and is this far behind needs only the latest. Progress with
    text (live captions) or a part (streamed audio) carries what no later event repeats: kept."""
    skip: set[int] = set()
    later = False
    for event in reversed(events):
        if event is None or event.WhichOneof("event") != "progress":
            continue
        if later and not event.progress.text and not event.progress.HasField("part"):
            skip.add(event.seq)
        later = True
    return skip


async def job_events(
    sessions: async_sessionmaker[AsyncSession],
    broadcaster: Broadcaster,
    job_id: uuid.UUID,
    after_seq: int,
    *,
    coalesce: bool = False,
) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
    """`coalesce`: skip the progress events a later one supersedes whenever several wait to be
    sent (the watcher fell behind, or catches up from the log), so a display that shows only
    where the job stands is never late for the many steps it would not show."""

    def thinned(events: list[jobs_pb2.WatchJobResponse]) -> list[jobs_pb2.WatchJobResponse]:
        skip = _superseded(events) if coalesce else set()
        if skip:
            COALESCED_PROGRESS.inc(len(skip))
        return [e for e in events if e.seq not in skip]

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
        for old in thinned(await _stored(sessions, job_id, last)):
            yield old
            last = old.seq
            if _is_end(old) and old.seq >= snapshot.last_event_seq:
                return  # the end of the latest attempt (an earlier attempt's end is history)
        if finished and last >= snapshot.last_event_seq:
            return
        while True:
            waiting = [await live.get()]
            while coalesce and not live.empty():  # behind: take all that waits, to thin it
                waiting.append(live.get_nowait())
            skip = _superseded(waiting) if coalesce else set()
            for event in waiting:
                if event is not None and event.seq <= last:
                    continue  # already replayed
                if event is None or event.seq > last + 1:  # a gap: refill from the log
                    for missed in thinned(await _stored(sessions, job_id, last)):
                        yield missed
                        last = missed.seq
                        if _is_end(missed):
                            return
                    continue
                last = event.seq
                if event.seq in skip:
                    COALESCED_PROGRESS.inc()
                    continue
                yield event
                if _is_end(event):
                    return
