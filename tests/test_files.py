"""Resumable uploads into the shared store, limits enforced while receiving, content-checked
types, streamed downloads of inputs and of job results."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from control.db.models import UserRole
from control.sample_data import tone_wav
from tests.harness import Caller, Client, Harness, rpc_error
from tests.test_dispatch import create, setup, wait_for, workers
from voxmesh import blobs
from voxmesh.v1 import files_pb2, jobs_pb2, results_pb2


async def download(who: Caller, file_id: str) -> tuple[files_pb2.StoredFileInfo, bytes]:
    parts = [
        p
        async for p in who.client.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id))
    ]
    assert parts[0].WhichOneof("part") == "file"
    return parts[0].file, b"".join(p.data for p in parts[1:])


async def upload(
    who: Caller, data: bytes, name: str = "speech.wav", chunk: int = 0
) -> files_pb2.StoredFileInfo:
    """Upload as a client should: in the chunk size the server recommends (unless told)."""
    f = who.client.files
    started = await f.StartUpload(files_pb2.StartUploadRequest(filename=name, size_bytes=len(data)))
    chunk = chunk or started.chunk_size_bytes
    for offset in range(0, len(data), chunk):
        await f.UploadChunk(
            files_pb2.UploadChunkRequest(
                upload_id=started.upload_id, offset=offset, data=data[offset : offset + chunk]
            )
        )
    sha = hashlib.sha256(data).hexdigest()
    return (
        await f.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id, sha256=sha))
    ).file


async def test_resumable_upload_and_download(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    viewer = await harness.user(UserRole.VIEWER)
    audio = tone_wav(seconds=3.0)  # ~96 KB of real WAV
    f = editor.client.files
    started = await f.StartUpload(
        files_pb2.StartUploadRequest(
            filename="../../etc/passwd.wav", content_type="audio/x-wav", size_bytes=len(audio)
        )
    )
    assert started.chunk_size_bytes > 0 and started.max_chunk_bytes >= started.chunk_size_bytes
    chunk = 20_000
    for offset in range(0, 60_000, chunk):  # part of it, then the connection "breaks"
        await f.UploadChunk(
            files_pb2.UploadChunkRequest(
                upload_id=started.upload_id, offset=offset, data=audio[offset : offset + chunk]
            )
        )
    state = await f.GetUpload(files_pb2.GetUploadRequest(upload_id=started.upload_id))
    assert state.received_bytes == 60_000 and state.size_bytes == len(audio)
    # Re-sending a chunk that already arrived is harmless; skipping ahead is refused.
    again = await f.UploadChunk(
        files_pb2.UploadChunkRequest(
            upload_id=started.upload_id, offset=40_000, data=audio[40_000:60_000]
        )
    )
    assert again.received_bytes == 60_000
    gap = await rpc_error(
        f.UploadChunk(
            files_pb2.UploadChunkRequest(
                upload_id=started.upload_id, offset=80_000, data=audio[80_000:90_000]
            )
        )
    )
    assert gap.code() == grpc.StatusCode.FAILED_PRECONDITION and "offset 60000" in (
        gap.details() or ""
    )
    early = await rpc_error(
        f.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id, sha256="0" * 64))
    )
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
    for offset in range(state.received_bytes, len(audio), chunk):  # resume where it stood
        await f.UploadChunk(
            files_pb2.UploadChunkRequest(
                upload_id=started.upload_id, offset=offset, data=audio[offset : offset + chunk]
            )
        )
    sha = hashlib.sha256(audio).hexdigest()
    stored = (
        await f.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id, sha256=sha))
    ).file
    assert stored.sha256 == sha and stored.size_bytes == len(audio)
    assert stored.content_type == "audio/wav"  # detected from the content
    assert stored.filename == "../../etc/passwd.wav"  # kept as a label only; the store uses the sha
    info, data = await download(viewer, stored.id)
    assert data == audio and info.id == stored.id
    # The same content uploaded again is stored once in the content-addressed store.
    second = await upload(editor, audio)
    assert second.sha256 == stored.sha256 and second.id != stored.id
    # A file of several chunks in the object store (over 512 KiB) comes back whole too.
    longer = tone_wav(seconds=40.0)
    assert len(longer) > 2 * blobs.CHUNK_BYTES
    assert (await download(viewer, (await upload(editor, longer)).id))[1] == longer
    # An uploaded file is a job input.
    project = str(await harness.project(editor.user_id))
    job = await editor.client.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(
            project_id=project, input_file_id=stored.id, stt=jobs_pb2.SttParams()
        )
    )
    assert job.job.input_file_id == stored.id


async def test_limits_and_types_are_enforced_while_receiving(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    other = await harness.user(UserRole.EDITOR)
    await harness.setting("max_file_size_mb", 1, editor.user_id)
    f = editor.client.files
    before = await harness.fingerprint()
    too_big = await rpc_error(
        f.StartUpload(files_pb2.StartUploadRequest(filename="big.wav", size_bytes=2 * 1024 * 1024))
    )
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT and "the limit is 1 MB" in (
        too_big.details() or ""
    )
    assert before == await harness.fingerprint()

    wav = tone_wav(seconds=0.5)
    started = await f.StartUpload(
        files_pb2.StartUploadRequest(filename="a.wav", size_bytes=len(wav))
    )
    text = await rpc_error(
        f.UploadChunk(
            files_pb2.UploadChunkRequest(
                upload_id=started.upload_id, offset=0, data=b"hello, not audio at all"
            )
        )
    )
    assert text.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an audio or video file" in (
        text.details() or ""
    )
    over = await rpc_error(
        f.UploadChunk(
            files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=0, data=wav + b"extra")
        )
    )
    assert over.code() == grpc.StatusCode.INVALID_ARGUMENT and "declared as" in (
        over.details() or ""
    )
    theirs = await rpc_error(
        other.client.files.UploadChunk(
            files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=0, data=wav)
        )
    )
    assert theirs.code() == grpc.StatusCode.PERMISSION_DENIED

    liar = await f.StartUpload(
        files_pb2.StartUploadRequest(
            filename="a.flac", content_type="audio/flac", size_bytes=len(wav)
        )
    )
    mismatch = await rpc_error(
        f.UploadChunk(files_pb2.UploadChunkRequest(upload_id=liar.upload_id, offset=0, data=wav))
    )
    assert mismatch.code() == grpc.StatusCode.INVALID_ARGUMENT and "content is audio/wav" in (
        mismatch.details() or ""
    )
    # "application/octet-stream" (what curl -F sends for an .mp3) declares nothing: the content
    # decides the type.
    generic = await f.StartUpload(
        files_pb2.StartUploadRequest(
            filename="a.bin", content_type="application/octet-stream", size_bytes=len(wav)
        )
    )
    await f.UploadChunk(
        files_pb2.UploadChunkRequest(upload_id=generic.upload_id, offset=0, data=wav)
    )
    stored = await f.FinishUpload(
        files_pb2.FinishUploadRequest(
            upload_id=generic.upload_id, sha256=hashlib.sha256(wav).hexdigest()
        )
    )
    assert stored.file.content_type == "audio/wav"

    await f.UploadChunk(
        files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=0, data=wav)
    )
    corrupt = await rpc_error(
        f.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id, sha256="ab" * 32))
    )
    assert corrupt.code() == grpc.StatusCode.INVALID_ARGUMENT and "corrupted" in (
        corrupt.details() or ""
    )
    for bad in ("", "xyz"):
        err = await rpc_error(
            f.FinishUpload(files_pb2.FinishUploadRequest(upload_id=started.upload_id, sha256=bad))
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = await rpc_error(
        editor.client.files.GetFile(
            files_pb2.GetFileRequest(file_id="6f1d3c2e-8b7a-4e55-9a61-0c5d2b7e9f10")
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_job_results_are_downloadable(harness: Harness) -> None:
    editor, project = await setup(harness)
    async with workers(harness):
        job = await create(editor, project, "steps:1")
        await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED})
    result = (
        await editor.client.results.GetJobResult(results_pb2.GetJobResultRequest(job_id=job.id))
    ).result
    assert result.result_url == f"voxmesh://files/{result.files[0].file_id}"
    info, data = await download(editor, result.files[0].file_id)
    assert info.filename == "result.txt" and info.content_type == "text/plain"
    assert data == f"job {job.id} run 1 delivery 1\n".encode() and info.size_bytes == len(data)


def silent_flac(seconds: int, *, hide_length: bool = False) -> bytes:
    """FLAC of silence: tiny on disk, long when decoded. `hide_length` zeroes the total sample
    count in STREAMINFO (as a hostile or broken encoder may), so no header says how long."""
    import io

    import av
    import numpy as np

    out = io.BytesIO()
    rate = 16_000
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        minute = np.zeros((1, rate * 60), dtype=np.int16)
        left = seconds
        while left > 0:
            n = min(60, left)
            frame = av.AudioFrame.from_ndarray(minute[:, : rate * n], format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):  # type: ignore[attr-defined]
                container.mux(packet)
            left -= n
        for packet in stream.encode(None):  # type: ignore[attr-defined]
            container.mux(packet)
    data = bytearray(out.getvalue())
    if hide_length:
        head = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = head.to_bytes(8, "big")
    return bytes(data)


async def test_content_is_checked_beyond_the_first_bytes(harness: Harness) -> None:
    """Attacks: a WAV header followed by an ELF body was stored as audio/wav (64 bytes were
    sniffed); a 6.9 MB FLAC of 10 hours of silence went through to a worker. Now the finished
    file is inspected whole, refused with a sentence, and the upload discarded."""
    editor = await harness.user(UserRole.EDITOR)
    good = tone_wav(seconds=1.0)
    elf = good[:44] + b"\x7fELF\x02\x01\x01" + bytes(len(good) - 51)
    streamed = good[:4] + b"\xff\xff\xff\x7f" + good[8:40] + b"\xff\xff\xff\x7f" + good[44:]
    appended = good + b"PK\x03\x04" + bytes(100)
    await harness.setting("max_audio_minutes", 1, None)
    too_long = silent_flac(120)
    for data, says in [
        (elf, "samples are an ELF executable"),
        (appended, "after its end"),
        (too_long, "the audio is 2 min 0 s long; the limit is 1 min 0 s"),
    ]:
        err = await rpc_error(upload(editor, data))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert says in (err.details() or "") and "discarded" in (err.details() or "")
    stored = await upload(editor, good)  # and a real recording still goes in,
    assert stored.content_type == "audio/wav"
    assert (await upload(editor, streamed)).size_bytes == len(good)  # as does a streamed WAV
    from sqlalchemy import func, select

    from control.db.models import Upload

    async with harness.app.sessions() as session:
        left = await session.scalar(
            select(func.count()).select_from(Upload).where(Upload.file_id.is_(None))
        )
    assert left == 0  # the refused ones take no room


def test_decoding_is_bounded_by_the_limit_even_when_the_header_lies() -> None:
    from voxmesh import audio

    with_length = silent_flac(180)
    hidden = silent_flac(180, hide_length=True)
    assert len(audio.decode(hidden, 16_000)) == 180 * 16_000  # it really is 3 minutes
    with pytest.raises(audio.AudioError, match="3 min 0 s long; the limit is 1 min 0 s"):
        audio.decode(with_length, 16_000, max_seconds=60)  # refused from its header
    with pytest.raises(audio.AudioError, match="decodes to more than 1 min 0 s"):
        audio.decode(hidden, 16_000, max_seconds=60)  # stopped at the limit


async def test_unfinished_uploads_are_capped_per_user_and_expire(harness: Harness) -> None:
    """Attack: 100 abandoned 2 MiB uploads grew the database by 416 MB. Now a user's unfinished
    uploads are capped (count and declared MB) and expire, chunks and all."""
    from sqlalchemy import func, select, update

    from control.db.models import Upload, UploadChunk
    from control.janitor import UploadJanitor

    editor = await harness.user(UserRole.EDITOR)
    other = await harness.user(UserRole.EDITOR)
    await harness.setting("max_open_uploads", 3, editor.user_id)
    audio = tone_wav(seconds=1.0)
    start = files_pb2.StartUploadRequest(filename="a.wav", size_bytes=len(audio))
    ids = []
    for _ in range(3):
        started = await editor.client.files.StartUpload(start)
        await editor.client.files.UploadChunk(
            files_pb2.UploadChunkRequest(upload_id=started.upload_id, offset=0, data=audio[:1000])
        )
        ids.append(started.upload_id)
    full = await rpc_error(editor.client.files.StartUpload(start))
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_open_uploads" in (full.details() or "")
    await other.client.files.StartUpload(start)  # another user is not affected
    await harness.setting("max_open_upload_mb", 1, other.user_id)
    big = await rpc_error(
        other.client.files.StartUpload(
            files_pb2.StartUploadRequest(filename="b.wav", size_bytes=2 * 1024 * 1024)
        )
    )
    assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_open_upload_mb" in (
        big.details() or ""
    )
    # Two days pass for the first upload: the janitor deletes it and what it received.
    async with harness.app.sessions() as session:
        await session.execute(
            update(Upload)
            .where(Upload.id == ids[0])
            .values(updated_at=func.now() - func.make_interval(0, 0, 0, 2))
        )
        await session.commit()
    assert harness.app.janitor is not None
    assert await UploadJanitor(harness.app).sweep() == 1
    async with harness.app.sessions() as session:
        gone = await session.get(Upload, ids[0])
        chunks = await session.scalar(
            select(func.count()).select_from(UploadChunk).where(UploadChunk.upload_id == ids[0])
        )
    assert gone is None and chunks == 0
    gone_err = await rpc_error(
        editor.client.files.GetUpload(files_pb2.GetUploadRequest(upload_id=ids[0]))
    )
    assert gone_err.code() == grpc.StatusCode.NOT_FOUND
    await editor.client.files.StartUpload(start)  # room again


async def test_a_small_file_goes_in_one_call_with_the_same_checks(harness: Harness) -> None:
    """UploadFile: a clip stored in one call, downloadable as sent, with no upload left
    behind; refused as a finished upload is (content, duration, size, sha256, role)."""
    from sqlalchemy import func, select

    from control.db.models import Upload

    editor = await harness.user(UserRole.EDITOR)
    viewer = await harness.user(UserRole.VIEWER)
    good = tone_wav(seconds=1.0)

    def request(data: bytes, **kw: str) -> files_pb2.UploadFileRequest:
        return files_pb2.UploadFileRequest(filename="clip.wav", data=data, **kw)

    stored = (
        await editor.client.files.UploadFile(request(good, sha256=hashlib.sha256(good).hexdigest()))
    ).file
    assert stored.content_type == "audio/wav" and stored.size_bytes == len(good)
    info, body = await download(editor, stored.id)
    assert body == good and info.sha256 == hashlib.sha256(good).hexdigest()
    elf = good[:44] + b"\x7fELF\x02\x01\x01" + bytes(len(good) - 51)
    await harness.setting("max_audio_minutes", 1, None)
    await harness.setting("max_file_size_mb", 1, editor.user_id)
    for call, code, says in [
        (request(b"plain text, not audio"), "INVALID_ARGUMENT", "not an audio or video file"),
        (request(good, content_type="audio/mpeg"), "INVALID_ARGUMENT", "declared as audio/mpeg"),
        (request(elf), "INVALID_ARGUMENT", "ELF executable"),
        (request(silent_flac(120)), "INVALID_ARGUMENT", "the limit is 1 min 0 s"),
        (request(good, sha256="0" * 64), "INVALID_ARGUMENT", "corrupted on the way"),
        (request(good, sha256="not hex"), "INVALID_ARGUMENT", "64 hexadecimal"),
        (request(b""), "INVALID_ARGUMENT", "1 to"),
        (request(tone_wav(seconds=40.0)), "INVALID_ARGUMENT", "max_file_size_mb"),
        (request(bytes(3 * 1024 * 1024)), "INVALID_ARGUMENT", "goes through StartUpload"),
    ]:
        err = await rpc_error(editor.client.files.UploadFile(call))
        assert err.code().name == code, (says, err.details())
        assert says in (err.details() or ""), err.details()
    err = await rpc_error(viewer.client.files.UploadFile(request(good)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    async with harness.app.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Upload)) == 0


async def _read(client: Client, file_id: str) -> bytes:
    parts = [
        p async for p in client.files.DownloadFile(files_pb2.DownloadFileRequest(file_id=file_id))
    ]
    return b"".join(p.data for p in parts[1:])


async def test_a_project_scoped_key_reads_and_uses_only_its_projects_files(
    harness: Harness,
) -> None:
    """A key scoped to one project reads what was uploaded through it, what its project's jobs
    take and produce, and nothing else of its owner's: not another project's inputs or results,
    not an upload made outside the scope; nor can it pull such a file into a job."""
    editor, other = await setup(harness)
    mine = str(await harness.project(editor.user_id, name="scoped"))
    key = harness.client(await harness.key(editor, name="scoped", project_id=mine))
    wav = tone_wav()
    here, there, loose, source = [
        await upload(editor, wav, f"{n}.wav") for n in ("here", "there", "loose", "source")
    ]
    for project, used in ((mine, here), (other, there)):
        await editor.client.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(project_id=project, input_file_id=used.id,
                                      stt=jobs_pb2.SttParams())
        )  # fmt: skip
    await editor.client.jobs.CreateJob(  # a file a job names in its parameters
        jobs_pb2.CreateJobRequest(project_id=mine, input_file_id=here.id,
                                  voice_cloning=jobs_pb2.VoiceCloningParams(
                                      source_file_id=source.id))
    )  # fmt: skip
    own = (
        await key.files.UploadFile(
            files_pb2.UploadFileRequest(filename="own.wav", content_type="audio/wav", data=wav)
        )
    ).file
    async with workers(harness):
        done_here = await create(editor, mine, "steps:1")
        done_there = await create(editor, other, "steps:1")
        for job in (done_here, done_there):
            await wait_for(harness, job.id, {jobs_pb2.JOB_STATUS_COMPLETED})

    async def result_file(job: jobs_pb2.Job) -> str:
        request = results_pb2.GetJobResultRequest(job_id=job.id)
        return str((await editor.client.results.GetJobResult(request)).result.files[0].file_id)

    readable = [own.id, here.id, source.id, await result_file(done_here)]
    refused = [there.id, loose.id, await result_file(done_there)]
    for file_id in readable:
        got = await key.files.GetFile(files_pb2.GetFileRequest(file_id=file_id))
        assert got.file.id == file_id
        assert await _read(key, file_id) == await _read(editor.client, file_id)
    for file_id in refused:
        for call in (
            key.files.GetFile(files_pb2.GetFileRequest(file_id=file_id)),
            _read(key, file_id),
        ):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
            assert f"acts only in project {mine}" in err.details()
        # Unscoped, its owner still reads it.
        assert (await editor.client.files.GetFile(files_pb2.GetFileRequest(file_id=file_id))).file
    err = await rpc_error(
        key.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=mine, input_file_id=loose.id, stt=jobs_pb2.SttParams()))
    )  # fmt: skip
    assert (
        err.code() == grpc.StatusCode.PERMISSION_DENIED and "not one of its files" in err.details()
    )
    made = await key.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(project_id=mine, input_file_id=own.id, stt=jobs_pb2.SttParams())
    )
    assert made.job.input_file_id == own.id
