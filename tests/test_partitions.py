"""Control-plane replicas share the work by partition (control/dispatch/leases.py): each
dispatches and ingests the jobs of the partitions it leases, so a second replica adds capacity,
admission still holds per person across replicas, and a replica that stops has its partitions
taken over. (tests/test_cluster.py kills a replica with -9 on a NATS cluster.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from control.db.models import Job, JobEvent, JobResult, JobStatus
from control.dispatch import leases
from control.dispatch.runtime import MeshRuntime
from control.server import run_secret
from tests.conftest import TEST_MESH
from tests.harness import Harness, eventually
from tests.test_dispatch import create, setup, workers
from voxmesh import mesh

JOBS = 16
CAP = 3


async def test_events_are_filed_under_their_jobs_partition(harness: Harness) -> None:
    """NATS's partition() and voxmesh.mesh.partition_of agree, for every partition."""
    nc = await mesh.connect(harness.nats.url, "test-partitions")
    try:
        js = nc.jetstream()
        seen: set[int] = set()
        for _ in range(64):
            job_id = str(uuid.uuid4())
            ack = await js.publish(mesh.events_subject(job_id), b"not an event")
            stored = await js.get_msg(mesh.EVENTS_STREAM, ack.seq)
            expected = mesh.partition_of(job_id)
            assert stored.subject == f"voxmesh.events.{expected}.{job_id}"
            seen.add(expected)
        assert seen == set(range(mesh.PARTITIONS))  # 64 ids reach all 8 (1 - 8·(7/8)^64 ≈ 1)
    finally:
        await nc.close()


def _peak(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


async def test_two_replicas_share_the_partitions_and_take_over(harness: Harness) -> None:
    app = harness.app
    assert app.mesh is not None and app.mesh.leases is not None
    a = app.mesh
    editor, project = await setup(harness)
    await harness.setting("max_concurrent_jobs", CAP, editor.user_id)
    b = await _second_replica(harness)
    try:
        assert b.leases is not None
        await _split_evenly(b, a)
        assert not a.leases.held & b.leases.held
        a_before, b_before = (a.dispatcher.published, b.dispatcher.published)  # type: ignore[union-attr]
        async with workers(harness, count=4):
            # All through replica A's API; B must publish and ingest those in its partitions.
            jobs = [await create(editor, project, "sleep:0.3") for _ in range(JOBS)]
            partitions = {mesh.partition_of(job.id) for job in jobs}
            assert partitions & b.leases.held and partitions & a.leases.held, partitions
            await _all_completed(harness, [job.id for job in jobs])
            assert b.dispatcher.published > b_before  # type: ignore[union-attr]
            assert a.dispatcher.published > a_before  # type: ignore[union-attr]
            assert b.ingested > 0 and a.ingested > 0
            # B goes away: A takes its partitions over and runs what comes next.
            await b.stop()
            async with asyncio.timeout(30):
                await a.leases.until(lambda leases: len(leases.held) == mesh.PARTITIONS)
            later = [await create(editor, project, "sleep:0.1") for _ in range(8)]
            await _all_completed(harness, [job.id for job in later])
    finally:
        await b.stop()
    ids = [uuid.UUID(job.id) for job in jobs + later]
    async with app.sessions() as session:
        # Each job completed exactly once: one completion in its log, one result.
        completions = dict(
            (
                await session.execute(
                    select(JobEvent.job_id, func.count())
                    .where(JobEvent.job_id.in_(ids), JobEvent.kind == "result")
                    .group_by(JobEvent.job_id)
                )
            ).all()
        )
        results = await _results_per_job(session, ids)
        spans = [
            (job.started_at, job.finished_at)
            for job in await session.scalars(select(Job).where(Job.id.in_(ids)))
        ]
    assert completions == {i: 1 for i in ids}
    assert results == {i: 1 for i in ids}
    # Admission held across the two dispatchers: never more than CAP running at once.
    assert all(start and end for start, end in spans)
    assert 1 < _peak(spans) <= CAP  # type: ignore[arg-type]


async def test_a_frozen_replica_stops_working_and_its_partitions_are_taken_over(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that freezes without closing its connection (a host that lost power, a process
    that hangs) stops working its partitions once its leases go unconfirmed, and PostgreSQL ends
    its idle lease session, so the other replica takes them over in seconds rather than the hours
    TCP takes to notice. When it wakes, it starts over with a new session and gets its share."""
    monkeypatch.setattr(leases, "LEASE_IDLE_SECONDS", 5.0)
    monkeypatch.setattr(leases, "TRUST_SECONDS", 2.5)
    app = harness.app
    assert app.mesh is not None and app.mesh.leases is not None
    a = app.mesh
    editor, project = await setup(harness)
    b = await _second_replica(harness)
    try:
        assert b.leases is not None
        await _split_evenly(b, a)
        frozen_at = b.dispatcher.published  # type: ignore[union-attr]
        # B's lease rounds stop (its session stays open and idle, as a frozen host's would).
        thaw = asyncio.Event()
        real_round = b.leases._round

        async def frozen_round() -> None:
            await thaw.wait()
            await real_round()

        monkeypatch.setattr(b.leases, "_round", frozen_round)

        async def let_go() -> bool:
            return not b.leases.held  # type: ignore[union-attr]

        await eventually(let_go, "the frozen replica letting go of its partitions", 30)
        async with asyncio.timeout(30):
            await a.leases.until(lambda leases: len(leases.held) == mesh.PARTITIONS)
        async with workers(harness, count=2):
            jobs = [await create(editor, project, "sleep:0.05") for _ in range(8)]
            await _all_completed(harness, [job.id for job in jobs])
        assert b.dispatcher.published == frozen_at  # type: ignore[union-attr]
        assert {mesh.partition_of(job.id) for job in jobs} - a.leases.held == set()
        # B thaws: its old session is gone, so it starts a new one and the two share again.
        thaw.set()
        await _split_evenly(b, a)
        assert not a.leases.held & b.leases.held
    finally:
        await b.stop()
    ids = [uuid.UUID(job.id) for job in jobs]
    async with app.sessions() as session:
        results = await _results_per_job(session, ids)
    assert results == {i: 1 for i in ids}


async def test_a_lease_query_that_never_answers_is_given_up_with_its_session(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease connection that died without a word (a NAT or firewall forgot it: no reply, no
    reset, ever) would hold its replica's lease loop in one query for as long as TCP takes to
    notice. The query is given up after QUERY_LIMIT_SECONDS with its session, and the replica
    starts over on a new one and gets its share back."""
    monkeypatch.setattr(leases, "TRUST_SECONDS", 2.5)
    monkeypatch.setattr(leases, "QUERY_LIMIT_SECONDS", 4.0)
    a = harness.app.mesh
    assert a is not None and a.leases is not None
    b = await _second_replica(harness)
    try:
        assert b.leases is not None
        await _split_evenly(b, a)
        dead = b.leases._conn
        assert dead is not None
        answered = AsyncConnection.execute

        async def never_answers(self: AsyncConnection, *args: object, **kw: object) -> object:
            if self is dead:
                await asyncio.Event().wait()  # the reply that never comes
            return await answered(self, *args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(AsyncConnection, "execute", never_answers)

        async def new_session() -> bool:
            return b.leases._conn is not None and b.leases._conn is not dead  # type: ignore[union-attr]

        await eventually(new_session, "the replica starting over on a new lease session", 30)
        assert "did not answer a lease query within 4 s" in caplog.text
        await _split_evenly(b, a)
        assert not a.leases.held & b.leases.held
    finally:
        await b.stop()


async def _results_per_job(session: AsyncSession, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many results each job has stored (exactly once: 1)."""
    rows = await session.execute(
        select(JobResult.job_id, func.count())
        .where(JobResult.job_id.in_(ids))
        .group_by(JobResult.job_id)
    )
    return {job_id: count for job_id, count in rows}


async def _second_replica(harness: Harness) -> MeshRuntime:
    """Another control-plane replica on the same database and NATS (stop it when done)."""
    app = harness.app
    return await MeshRuntime.start(
        harness.nats.url, app.engine, app.sessions, TEST_MESH, run_secret=run_secret(app.settings)
    )


async def _split_evenly(*replicas: MeshRuntime) -> None:
    """Until each replica holds half of the partitions (30 s at most)."""
    async with asyncio.timeout(30):
        for replica in replicas:
            assert replica.leases is not None
            await replica.leases.until(lambda leases: len(leases.held) == mesh.PARTITIONS // 2)


async def _all_completed(h: Harness, job_ids: list[str], timeout: float = 60) -> None:
    ids = [uuid.UUID(i) for i in job_ids]

    async def done() -> bool:
        async with h.app.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.id.in_(ids), Job.status == JobStatus.COMPLETED)
            )
        return count == len(ids)

    await eventually(done, f"{len(ids)} jobs completing", timeout)
