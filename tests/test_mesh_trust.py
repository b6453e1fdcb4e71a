"""A mesh that trusts no one: worker events must prove they come from a holder of the run.

The attack this answers (from the outside test): a process on NATS published a "started" and a
"completed" event for a job no worker had started, naming another user's private file as the
result, and the job became COMPLETED with that file attached."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

from prometheus_client import REGISTRY

from control.db.models import JobResult, UserRole
from tests.harness import Harness, run_workers
from tests.test_dispatch import create, setup, wait_for
from tests.workers import behave
from voxmesh import mesh
from voxmesh.v1 import jobs_pb2, worker_pb2


def rejected() -> float:
    return REGISTRY.get_sample_value("voxmesh_rejected_events_total", {"reason": "forged"}) or 0.0


async def until_rejected(count: float, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while rejected() < count:
        assert time.monotonic() < deadline, f"only {rejected()} forged events were rejected"
        await asyncio.sleep(0.05)


async def test_forged_and_replayed_worker_events_are_dropped(harness: Harness) -> None:
    editor, project = await setup(harness)
    victim = await harness.user(UserRole.EDITOR)
    secret = b"the victim's private recording"
    stolen = await harness.file(victim.user_id, secret)
    job = await create(editor, project, "steps:1")  # no worker yet: it stays queued
    other = await create(editor, project, "steps:1")
    before = rejected()

    nc = await mesh.connect(harness.nats.url, "attacker")
    js = nc.jetstream()
    forged_file = worker_pb2.StoredFile(
        file_id=str(stolen), sha256=hashlib.sha256(secret).hexdigest(), size_bytes=len(secret),
        content_type="audio/wav", filename="loot.wav",
    )  # fmt: skip
    # A guessed token, no token, and the token of another run (a replay from elsewhere).
    tokens = ["0" * 64, "", mesh.run_token(b"not the control plane's key", job.id, 1)]
    try:
        for i, token in enumerate(tokens):
            for seq, event in enumerate(
                (
                    {"started": worker_pb2.WorkerStarted()},
                    {"completed": worker_pb2.WorkerCompleted(files=[forged_file])},
                )
            ):
                message = worker_pb2.WorkerEvent(
                    job_id=job.id, attempt=1, worker_id="attacker", local_seq=seq,
                    delivery=1, run_token=token, **event,
                )  # type: ignore[arg-type]  # fmt: skip
                await js.publish(
                    mesh.events_subject(job.id), message.SerializeToString(),
                    headers={"Nats-Msg-Id": f"forged-{i}-{seq}-{uuid.uuid4()}"},
                )  # fmt: skip
    finally:
        await nc.close()
    await until_rejected(before + 2 * len(tokens))

    got = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job.id))).job
    assert got.status == jobs_pb2.JOB_STATUS_PENDING and got.attempts == 0
    async with harness.app.sessions() as session:
        assert await session.get(JobResult, uuid.UUID(job.id)) is None

    # The real worker's events carry the run's token: both jobs complete as usual.
    async with run_workers(harness, "tts", behave, ack_wait=2.0):
        for job_id in (job.id, other.id):
            done = await wait_for(harness, job_id, {jobs_pb2.JOB_STATUS_COMPLETED})
            assert done.attempts == 1
    events = [e async for e in editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id))]
    result = events[-1].result
    assert [f.name for f in result.files] == ["result.txt"]
    assert str(stolen) not in {f.file_id for f in result.files}
    assert rejected() == before + 2 * len(tokens)  # nothing genuine was dropped
