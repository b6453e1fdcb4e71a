"""One mesh configuration: the control plane provisions the consumers; a worker reads ack_wait
and max_deliver from its consumer, whatever its own environment says."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from control.db.models import Job
from tests.conftest import TEST_MESH, provision
from tests.harness import Harness, run_workers
from tests.test_dispatch import create, setup, wait_for
from tests.workers import behave, spawn
from voxmesh import mesh
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
ACK_WAIT = 3.0


@pytest.mark.slow
async def test_a_killed_job_is_redelivered_after_the_control_planes_ack_wait(
    harness: Harness,
) -> None:
    assert harness.app.mesh is not None
    await harness.app.mesh.provision(TEST_MESH.model_copy(update={"ack_wait_seconds": ACK_WAIT}))
    editor, project = await setup(harness)
    # A worker whose own environment says something else: it must not matter.
    doomed = spawn(harness.nats.url_for("worker-tts"), "doomed",
                   VOXMESH_MESH__ACK_WAIT_SECONDS="60", VOXMESH_MESH__MAX_DELIVER="9")  # fmt: skip
    try:
        job = await create(editor, project, "sleep:4")
        running = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_RUNNING}, timeout=30)
        assert running.attempts == 1
        os.kill(doomed.pid, signal.SIGKILL)  # mid-job, no goodbye
        doomed.wait()
        killed = time.monotonic()
        async with run_workers(harness, "tts", behave, ack_wait=ACK_WAIT, name="rescuer") as ws:
            assert ws[0].limits == mesh.ConsumerLimits(ack_wait_seconds=ACK_WAIT, max_deliver=3)
            deadline = killed + 30
            while True:  # the second start is the redelivery
                async with harness.app.sessions() as session:
                    row = await session.get(Job, uuid.UUID(job.id))
                    assert row is not None
                    if row.attempts >= 2:
                        redelivered = time.monotonic() - killed
                        break
                assert time.monotonic() < deadline, "the run was never redelivered"
                await asyncio.sleep(0.1)
            done = await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED}, timeout=30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    # Redelivered once ack_wait (3 s, from the control plane) passed without a heartbeat: not
    # after the worker's 60 s. The last heartbeat may precede the kill by up to ack_wait / 4,
    # and the rescuer polls once a second.
    assert ACK_WAIT * 0.7 <= redelivered <= ACK_WAIT + 4, redelivered
    assert done.attempts == 2


async def test_a_worker_waits_for_the_control_plane_to_provision(
    nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker binds to what the control plane made; it creates and changes nothing."""
    worker = Worker("tts", behave, nats_url=nats_server.url_for("worker-tts"), worker_id="early")
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 15
        while "waiting for the control plane" not in caplog.text:  # it looked, found nothing
            assert time.monotonic() < deadline, "the worker never said it was waiting"
            await asyncio.sleep(0.05)
        assert not worker.ready.is_set()
        nc = await mesh.connect(nats_server.url, "test-inspect")
        try:
            assert [s async for s in _streams(nc)] == []
        finally:
            await nc.close()
        await provision(nats_server.url, TEST_MESH.model_copy(update={"ack_wait_seconds": 7.0}))
        await asyncio.wait_for(worker.ready.wait(), 15)
        assert worker.limits == mesh.ConsumerLimits(ack_wait_seconds=7.0, max_deliver=3)
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)


async def _streams(nc: NATS) -> AsyncIterator[str]:
    for info in await nc.jetstream().streams_info():
        yield info.config.name or ""
