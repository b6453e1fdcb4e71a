"""No job stays RUNNING for ever with no worker: the holder of partition 0 fails a RUNNING job that no worker
has held (by its presence announcements) and that has had no event for ack_wait * max_deliver,
the longest JetStream keeps redelivering a run whose worker died; both counted from the latest
sign of life (a job that ran silently for an hour, until its worker died a moment ago, is
redelivered by JetStream, not failed). This catches what the
max-deliveries advisory cannot: an advisory missed while no control plane listened, or a job
left RUNNING by something other than a dispatch (an import, a restore)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.db.models import Job, JobStatus
from control.dispatch.presence import Presence
from control.lifecycle.transitions import Lifecycle, Mesh

log = logging.getLogger(__name__)
REAP_SECONDS = 10.0


async def reap(
    sessions: async_sessionmaker[AsyncSession], presence: Presence, mesh: Mesh, grace: float,
    steady_for: float = float("inf"),
) -> list[uuid.UUID]:  # fmt: skip
    """Fail the orphaned RUNNING jobs (silent for `grace` seconds, held by no worker); their
    ids. Only on evidence: this replica has heard the workers' announcements long enough to
    know who is absent, and worker events have been flowing for `steady_for` >= `grace`
    seconds (while NATS fails over, a busy job looks silent only because its events wait)."""
    presence.remember_held_for(grace)
    if not presence.knows_absence() or steady_for < grace:
        return []
    held = presence.held_jobs()
    cutoff = datetime.now(UTC) - timedelta(seconds=grace)
    reaped = []
    async with sessions() as session:
        stale = await session.scalars(
            select(Job).where(Job.status == JobStatus.RUNNING, Job.updated_at < cutoff)
            .order_by(Job.updated_at).limit(100).with_for_update(skip_locked=True)
        )  # fmt: skip
        lifecycle = Lifecycle(session)
        for job in stale:
            if str(job.id) in held:
                continue
            silent = int(min((datetime.now(UTC) - job.updated_at).total_seconds(),
                             presence.unheld_for(str(job.id))))  # fmt: skip
            if silent < grace:  # its worker left only lately: JetStream gives the run to another
                continue
            await lifecycle.give_up(job, error=(
                f"no worker has held this job for {silent} s: the worker running it stopped "
                "or was lost, and no other took it over (run it again with RetryJob)"))  # fmt: skip
            reaped.append(job.id)
        await session.commit()
    await lifecycle.after_commit(mesh)
    for job_id in reaped:
        log.warning("failed job %s: RUNNING with no worker holding it", job_id)
    return reaped


async def run(
    sessions: async_sessionmaker[AsyncSession], presence: Presence, mesh: Mesh,
    grace: Callable[[], float], steady_for: Callable[[], float], interval: float = REAP_SECONDS,
) -> None:  # fmt: skip
    """Reap every `interval` seconds; `grace()` is ack_wait * max_deliver as now provisioned,
    `steady_for()` how long worker events have been flowing."""
    while True:
        await asyncio.sleep(interval)
        try:
            await reap(sessions, presence, mesh, grace(), steady_for())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down: the next sweep tries again
            log.warning("could not look for orphaned jobs: %s", exc)
