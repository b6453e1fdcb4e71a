"""A mesh that trusts no one: worker events must prove they come from a holder of the run.

The attack this answers (from the outside test): a process on NATS published a "started" and a
"completed" event for a job no worker had started, naming another user's private file as the
result, and the job became COMPLETED with that file attached."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from prometheus_client import REGISTRY

from control.db.models import JobResult, UserRole
from tests.harness import Harness, run_workers
from tests.test_dispatch import create, setup, wait_for
from tests.test_lifecycle import pending_state_of
from tests.workers import behave
from voxmesh import mesh
from voxmesh.nats_auth import with_user
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


async def test_nats_refuses_a_client_without_credentials(harness: Harness) -> None:
    for url in (harness.nats.address, with_user(harness.nats.address, "control", "guess")):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0,
                               allow_reconnect=False)  # fmt: skip


@pytest.mark.refusals
async def test_a_worker_user_may_only_do_its_own_work(harness: Harness) -> None:
    """What the tts worker's credentials refuse: dispatching, watching, marking runs, reading
    the event stream, and another type's consumer."""
    editor, project = await setup(harness)
    audio = await harness.file(editor.user_id)
    stt = await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
        project_id=project, input_file_id=str(audio), stt=jobs_pb2.SttParams()))  # fmt: skip
    await pending_state_of(editor, stt.job.id, jobs_pb2.PENDING_STATE_QUEUED)
    assert harness.app.mesh is not None
    control_js = harness.app.mesh.js
    info = await control_js.consumer_info(mesh.JOBS_STREAM, "worker-stt")
    assert info.num_pending == 1
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(harness.nats.url_for("worker-tts"), error_cb=on_error,
                            inbox_prefix="_INBOX.worker-tts", max_reconnect_attempts=0)  # fmt: skip
    try:
        js = nc.jetstream(timeout=2)
        refused = {
            "voxmesh.jobs.tts": lambda: nc.publish("voxmesh.jobs.tts", b"x"),
            "voxmesh.updates.x": lambda: nc.publish("voxmesh.updates.x", b"x"),
            "voxmesh.jobstate.p.j": lambda: nc.publish("voxmesh.jobstate.p.j", b"x"),
            # announcing itself as another type's worker
            "voxmesh.presence.stt": lambda: nc.publish("voxmesh.presence.stt", b"{}"),
            "$KV.voxmesh_job_control.j.1": lambda: nc.publish("$KV.voxmesh_job_control.j.1", b"done"),
            "voxmesh.updates.>": lambda: nc.subscribe("voxmesh.updates.>"),
            "_INBOX.>": lambda: nc.subscribe("_INBOX.>"),
        }  # fmt: skip
        for subject, attempt in refused.items():
            await attempt()
            await nc.flush(timeout=2)
            deadline = time.monotonic() + 5
            while not any(subject.lower() in e.lower() for e in errors):
                assert time.monotonic() < deadline, f"{subject} was not refused: {errors}"
                await asyncio.sleep(0.05)
        # JetStream API calls it may not make time out (the server drops them).
        stt_jobs = await js.pull_subscribe_bind(durable="worker-stt", stream=mesh.JOBS_STREAM)
        with pytest.raises(Exception):  # noqa: B017 - the refusal's error type varies by call
            await stt_jobs.fetch(1, timeout=1)
        with pytest.raises(Exception):  # noqa: B017
            await js.add_consumer(mesh.EVENTS_STREAM, durable_name="snoop")
        with pytest.raises(Exception):  # noqa: B017
            await js.delete_stream(mesh.JOBS_STREAM)
    finally:
        await nc.close()
    streams = {s.config.name for s in await control_js.streams_info()}
    assert mesh.JOBS_STREAM in streams
    info = await control_js.consumer_info(mesh.JOBS_STREAM, "worker-stt")
    assert info.num_pending == 1 and info.num_ack_pending == 0  # the STT run was not taken


async def test_tls_between_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/'s NATS: clients verify the servers against the deployment's CA, and the
    cluster's routes are mutual TLS. Two real nats-servers with the configuration deploy/ uses;
    a message published on one reaches a subscriber on the other (over the TLS route)."""
    import subprocess

    from tests.conftest import free_port
    from voxmesh import nats_tls
    from voxmesh.nats_embedded import binary

    certs = tmp_path / "certs"
    nats_tls.write_certs(certs, ["localhost"])
    assert oct((certs / "tls.key").stat().st_mode & 0o777) == "0o600"
    conf = tmp_path / "nats.conf"
    conf.write_text(
        'authorization { users: [ {user: "control", password: "pw"} ] }\n'
        + nats_tls.server_tls_conf(str(certs))
    )
    ports = [free_port() for _ in range(4)]  # two client ports, two route ports
    routes = f"nats://localhost:{ports[2]},nats://localhost:{ports[3]}"

    def node(i: int) -> subprocess.Popen[bytes]:
        args = ["--config", str(conf), "--name", f"n{i}", "-p", str(ports[i]),
                "--cluster_name", "vx", "--cluster", f"nats://127.0.0.1:{ports[2 + i]}",
                "--routes", routes]  # fmt: skip
        return subprocess.Popen(
            [binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    servers = [node(0), node(1)]
    try:
        monkeypatch.setenv("NATS_CA", str(certs / "ca.crt"))
        url = "tls://control:pw@localhost:{}"
        deadline = time.monotonic() + 20
        while True:
            try:
                a = await asyncio.wait_for(mesh.connect(url.format(ports[0]), "tls-a"), 5)
                b = await asyncio.wait_for(mesh.connect(url.format(ports[1]), "tls-b"), 5)
                break
            except Exception:
                assert time.monotonic() < deadline, "the TLS servers never accepted a client"
                await asyncio.sleep(0.2)
        try:
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def on(msg: Any) -> None:
                await got.put(msg.data)

            await a.subscribe("probe", cb=on)
            await a.flush()
            deadline = time.monotonic() + 20
            while got.empty():  # until the route is up, a publish on b may not reach a
                assert time.monotonic() < deadline, "no message crossed the TLS route"
                await b.publish("probe", b"over tls")
                await b.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got.get(), 0.5)
                    break
        finally:
            await a.close()
            await b.close()
        # Without the CA the server is not trusted; without TLS the server refuses.
        monkeypatch.delenv("NATS_CA")
        for bad in (url.format(ports[0]), f"nats://control:pw@127.0.0.1:{ports[0]}"):
            with pytest.raises(Exception):  # noqa: B017 - certificate or "TLS required" error
                nc = await asyncio.wait_for(
                    nats.connect(bad, max_reconnect_attempts=0, allow_reconnect=False), 10
                )
                await nc.close()
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


@pytest.mark.refusals  # replacing an object makes the client purge the old chunks: refused
async def test_a_blob_overwritten_by_a_worker_is_refused_not_used(harness: Harness) -> None:
    """Worker users may write to the file store (their results). One that overwrites another
    job's input under its name cannot make anyone use forged bytes: content addressing is
    checked on every read (DATA_LOSS for a download, a failed job for a worker)."""
    from tests.test_files import upload
    from voxmesh.blobs import CorruptBlobError, NatsBlobStore
    from voxmesh.v1 import files_pb2

    editor = await harness.user(UserRole.EDITOR)
    from control.sample_data import tone_wav

    stored = await upload(editor, tone_wav(seconds=1.0))
    nc = await mesh.connect(harness.nats.url_for("worker-tts"), "tampering-worker")
    try:
        store = await nc.jetstream().object_store(mesh.FILES_BUCKET)
        blobs = await NatsBlobStore.open(nc.jetstream(), mesh.FILES_BUCKET)
        with contextlib.suppress(Exception):  # the new meta lands; the old chunks' purge is refused
            await store.put(stored.sha256, b"forged bytes")
        with pytest.raises(CorruptBlobError):
            await blobs.get(stored.sha256, b"")
    finally:
        await nc.close()
    call = editor.client.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=stored.id))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS
    assert "corrupted" in (refused.value.details() or "")


async def test_a_worker_cannot_read_files_it_was_not_given(harness: Harness) -> None:
    """The outside test read another editor's private upload straight from the object store.
    Every worker user may read the store (its jobs' inputs are there), but what it finds is
    sealed: the key of a file travels only with the dispatch of a job that uses it."""
    from control.db.models import File
    from control.sample_data import tone_wav
    from tests.test_files import upload
    from voxmesh.blobs import BlobKeyError, NatsBlobStore, blob_key

    editor = await harness.user(UserRole.EDITOR)
    plain = tone_wav(seconds=1.0)
    stored = await upload(editor, plain)
    nc = await mesh.connect(harness.nats.url_for("worker-stt"), "curious-worker")
    try:
        store = await nc.jetstream().object_store(mesh.FILES_BUCKET)
        blobs = await NatsBlobStore.open(nc.jetstream(), mesh.FILES_BUCKET)
        raw = bytes((await store.get(stored.sha256)).data or b"")
        assert len(raw) > len(plain) // 2  # the blob is there, and readable...
        for start in range(0, len(plain) - 64, 4096):  # ...but none of the recording shows
            assert plain[start : start + 64] not in raw
        with pytest.raises(BlobKeyError):
            await blobs.get(stored.sha256, b"")
        with pytest.raises(BlobKeyError):
            await blobs.get(stored.sha256, blob_key(b"a guess"))
        async with harness.app.sessions() as session:
            row = await session.get(File, uuid.UUID(stored.id))
        assert row is not None and row.blob_key
        assert await blobs.get(stored.sha256, row.blob_key) == plain
    finally:
        await nc.close()


def test_shard_results_open_only_with_their_runs_key() -> None:
    """Shard results sit in a bucket every worker may read: they are sealed with a key derived
    from the run's token, which only the run's holder has."""
    secret = mesh.shard_secret(mesh.run_token(b"control key", "job", 1))
    result = worker_pb2.ShardResult(data=b"the words of part two", worker_id="w1")
    sealed = mesh.seal_shard_result(secret, "job.1.1", result.SerializeToString())
    assert b"the words" not in sealed
    opened = mesh.open_shard_result(secret, "job.1.1", sealed)
    assert worker_pb2.ShardResult.FromString(opened).data == b"the words of part two"
    other = mesh.shard_secret(mesh.run_token(b"control key", "job", 2))
    with pytest.raises(ValueError, match="does not open"):
        mesh.open_shard_result(other, "job.1.1", sealed)
    with pytest.raises(ValueError, match="does not open"):  # moved to another shard's key
        mesh.open_shard_result(secret, "job.1.0", sealed)


async def test_files_stored_before_sealing_get_sealed(harness: Harness) -> None:
    """An upgraded store holds blobs written in clear, which any worker user could read. The
    janitor's sweep seals them: their rows get the key, workers without it read nothing, and
    downloads go on working."""
    from control import files
    from control.db.models import File
    from control.sample_data import tone_wav
    from tests.test_files import download
    from voxmesh.blobs import BlobKeyError, NatsBlobStore

    assert harness.app.mesh is not None
    editor = await harness.user(UserRole.EDITOR)
    plain = tone_wav(seconds=1.0)
    digest = hashlib.sha256(plain).hexdigest()
    store = await harness.app.mesh.js.object_store(mesh.FILES_BUCKET)
    await store.put(digest, plain)  # as stores before sealing held it
    async with harness.app.sessions() as session:
        row = File(owner_id=editor.user_id, filename="old.wav", content_type="audio/wav",
                   size_bytes=len(plain), sha256=digest)  # fmt: skip
        session.add(row)
        await session.commit()
        file_id = row.id
    nc = await mesh.connect(harness.nats.url_for("worker-tts"), "curious-worker")
    try:
        as_worker = await NatsBlobStore.open(nc.jetstream(), mesh.FILES_BUCKET)
        assert await as_worker.get(digest, b"") == plain  # the exposure being closed
        async with harness.app.sessions() as session:
            assert await files.seal_stored_before(session, harness.app.mesh.blobs) >= 1
            await session.commit()
        with pytest.raises(BlobKeyError):
            await as_worker.get(digest, b"")
    finally:
        await nc.close()
    async with harness.app.sessions() as session:
        sealed = await session.get(File, file_id)
    assert sealed is not None and sealed.blob_key
    _, data = await download(editor, str(file_id))
    assert data == plain
