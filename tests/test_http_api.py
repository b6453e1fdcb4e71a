"""The open door: the HTTP API (/v1) through Envoy, called with the official `openai` package,
unmodified; API keys on gRPC and HTTP; signed, durable webhooks.

Everything is real: PostgreSQL, NATS, the control plane, Envoy, the HTTP API as its own process
(`python -m gateway.http`, as `make run` starts it), and the STT/TTS workers with their models.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import grpc
import httpx
import jiwer
import numpy as np
import openai
import pytest
import uvicorn
from google.protobuf import field_mask_pb2
from standardwebhooks.webhooks import Webhook as Verifier
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.db.models import UserRole
from gateway.http.compat import PCM_RATE
from services.stt.config import SttSettings
from services.stt.handler import make_handler as stt_handler
from services.tts.config import TtsSettings
from services.tts.handler import make_handler as tts_handler
from tests.conftest import free_port
from tests.harness import Harness, eventually, rpc_error, run_workers
from tests.speech import RATE, clips, normalize, wav_bytes
from tests.test_dispatch import create, wait_for
from tests.test_files import download
from tests.test_gateway import gateway
from tests.workers import behave
from voxmesh.v1 import auth_pb2, jobs_pb2, keys_pb2, projects_pb2, users_pb2, webhooks_pb2

ROOT = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def http_api(h: Harness, control: str | None = None) -> AsyncIterator[str]:
    """The HTTP API in its own process, as `make run` starts it; its host:port once it answers.
    `control`: the control plane it calls (the harness's by default)."""
    port = free_port()
    # Its log goes to a file, not a pipe nobody drains (a full pipe would stall the process).
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.http", "--control", control or h.target, "--port", str(port)],
        cwd=ROOT, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"the HTTP API exited: {log.read().decode()[-3000:]}")
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/v1/openapi.json")).is_success:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the HTTP API did not come up"
                await asyncio.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@contextlib.asynccontextmanager
async def front_door(h: Harness, tmp_path: Path) -> AsyncIterator[str]:
    """Envoy + the HTTP API: the base URL clients are given (http://127.0.0.1:PORT/v1)."""
    async with http_api(h) as api, gateway(h, tmp_path, http_api=api) as gw:
        yield f"{gw.url}/v1"


async def test_health_follows_the_control_plane(harness: Harness) -> None:
    """/healthz (what Compose and Kubernetes probe) is 200 only while the control plane serves."""
    closed = f"127.0.0.1:{_closed_port()}"
    async with (
        http_api(harness) as up,
        http_api(harness, closed) as down,
        httpx.AsyncClient() as client,
    ):
        ok = await client.get(f"http://{up}/healthz")
        bad = await client.get(f"http://{down}/healthz")
    assert ok.status_code == 200 and ok.json() == {"control_plane": "SERVING"}
    assert bad.status_code == 503 and bad.json() == {"control_plane": "NOT_SERVING"}


def speech_wav() -> tuple[bytes, str]:
    samples, text = clips()[0]
    return wav_bytes(samples), text


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


@pytest.mark.slow
async def test_openai_client_transcribes_in_every_format(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR)
    key = await harness.key(editor, name="subtitle tool")
    audio, said = speech_wav()
    async with run_workers(harness, "stt", stt_handler(SttSettings()), ack_wait=30.0), \
            front_door(harness, tmp_path) as base:  # fmt: skip
        client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)

        plain = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio, "audio/wav")
        )
        assert wer(said, plain.text) < 0.35, (said, plain.text)

        text = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio), response_format="text"
        )
        assert isinstance(text, str) and wer(said, text) < 0.35

        srt = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio), response_format="srt", temperature=0.2
        )
        assert "-->" in srt and srt.strip().startswith("1"), srt
        vtt = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio), response_format="vtt"
        )
        assert vtt.startswith("WEBVTT") and "-->" in vtt, vtt

        verbose = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio), response_format="verbose_json",
            timestamp_granularities=["word", "segment"], language="en",
        )  # fmt: skip
        assert verbose.language == "en" and verbose.duration > 1.0
        assert verbose.words and verbose.segments, verbose
        starts = [w.start for w in verbose.words]
        assert starts == sorted(starts) and verbose.words[-1].end <= verbose.duration + 0.5
        assert wer(said, " ".join(w.word for w in verbose.words)) < 0.35

        # Streamed: deltas as the worker decodes segments, then the whole text.
        deltas, done = [], None
        stream = await client.audio.transcriptions.create(
            model="whisper-1", file=("clip.wav", audio), stream=True
        )
        async for event in stream:
            if event.type == "transcript.text.delta":
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done = event.text
        assert deltas and done is not None and wer(said, done) < 0.35, (deltas, done)

        # Translation: routed to the multilingual model (tiny.en cannot translate).
        translated = await client.audio.translations.create(
            model="whisper-1", file=("clip.wav", audio)
        )
        assert wer(said, translated.text) < 0.5, (said, translated.text)

        # Diarized, in OpenAI's diarized_json (speakers A, B, ...): one reader here.
        diarized = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=("clip.wav", audio),
            response_format="diarized_json",
        )  # fmt: skip
        assert diarized.segments and {seg.speaker for seg in diarized.segments} == {"A"}
        assert diarized.segments[0].type == "transcript.text.segment"
        assert wer(said, diarized.text) < 0.35, diarized.text

        # A job that fails answers with the worker's sentence (from the job's own stream).
        blip = wav_bytes(np.zeros(RATE // 20, dtype=np.float32))
        with pytest.raises(openai.BadRequestError) as failed:
            await client.audio.transcriptions.create(model="whisper-1", file=("blip.wav", blip))
        body = failed.value.body
        assert body["code"] == "job_failed" and "nothing to transcribe" in body["message"], body  # type: ignore[index]

        # Errors a client handles by type.
        bad = openai.AsyncOpenAI(base_url=base, api_key="vxk_not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e401:
            await bad.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
        assert "not valid" in str(e401.value)
        with pytest.raises(openai.NotFoundError) as e404:
            await client.audio.transcriptions.create(model="whisper-9", file=("a.wav", audio))
        assert e404.value.body["code"] == "model_not_found"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as e400:
            await client.audio.transcriptions.create(
                model="whisper-1",
                file=("a.wav", audio),
                response_format="docx",  # type: ignore[arg-type]
            )
        assert e400.value.body["param"] == "response_format"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as not_audio:
            await client.audio.transcriptions.create(
                model="whisper-1", file=("notes.wav", b"these are not sounds", "audio/wav")
            )
        assert not_audio.value.body["param"] == "file", not_audio.value.body  # type: ignore[index]
        assert "not an audio or video file" in not_audio.value.body["message"]  # type: ignore[index]
        await harness.setting("max_file_size_mb", 1, editor.user_id)
        big = audio * (2 * 1024 * 1024 // len(audio) + 1)
        with pytest.raises(openai.APIStatusError) as e413:
            await client.audio.transcriptions.create(model="whisper-1", file=("big.wav", big))
        assert e413.value.status_code == 413, e413.value

        # Every request was a real job, in the caller's "API" project.
        jobs = await editor.client.jobs.ListJobs(
            jobs_pb2.ListJobsRequest(created_by=str(editor.user_id))
        )
        assert (
            len(jobs.jobs) == 9
            and sum(j.status == jobs_pb2.JOB_STATUS_COMPLETED for j in jobs.jobs) == 8
        ), [(j.title, j.status) for j in jobs.jobs]
        # temperature reached the job (the worker decodes from it: SttParams.temperature).
        assert sorted(round(j.stt.temperature, 3) for j in jobs.jobs)[-1] == 0.2


def _decoded_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / PCM_RATE
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / (stream.rate or 1)


@pytest.mark.slow
async def test_openai_client_speaks_in_every_format(harness: Harness, tmp_path: Path) -> None:
    editor = await harness.user(UserRole.EDITOR)
    key = await harness.key(editor)
    text = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
    async with run_workers(harness, "tts", tts_handler(TtsSettings()), ack_wait=30.0), \
            front_door(harness, tmp_path) as base:  # fmt: skip
        client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=300)
        for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
            async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="onyx", input=text, response_format=fmt
            ) as response:
                data = await response.read()
            seconds = _decoded_seconds(data, fmt)
            assert 3.0 < seconds < 12.0, (fmt, seconds, len(data))
        # OpenAI's voice names map to distinct shipped voices; a Voxmesh id works as well.
        for voice in ("nova", "en_US-joe-medium"):
            spoken = await client.audio.speech.create(
                model="tts-1-hd", voice=voice, input="Hello there.", response_format="wav"
            )
            assert _decoded_seconds(spoken.content, "wav") > 0.3
        # Server-sent events: base64 audio deltas, then done.
        sse = httpx.AsyncClient(timeout=120)
        async with sse.stream(
            "POST", f"{base}/audio/speech", headers={"authorization": f"Bearer {key}"},
            json={"model": "tts-1", "voice": "alloy", "input": "Short.", "response_format": "wav",
                  "stream_format": "sse"},
        ) as streamed:  # fmt: skip
            events = [json.loads(line[6:]) async for line in streamed.aiter_lines() if line]
        await sse.aclose()
        assert (
            events[-1]["type"] == "speech.audio.done" and events[0]["type"] == "speech.audio.delta"
        )
        with pytest.raises(openai.BadRequestError) as bad_speed:
            await client.audio.speech.create(model="tts-1", voice="alloy", input="x", speed=4.0)
        assert bad_speed.value.body["param"] == "speed"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad_voice:  # refused by the control plane
            await client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
        assert bad_voice.value.body["param"] == "voice"  # type: ignore[index]

        # Long work without holding a request open: 202, poll, fetch.
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            auth = {"authorization": f"Bearer {key}"}
            accepted = await http.post(
                "/audio/speech?async=true", headers=auth,
                json={"model": "tts-1", "voice": "echo", "input": text, "response_format": "flac"},
            )  # fmt: skip
            assert accepted.status_code == 202, accepted.text
            job_url = accepted.json()["status_url"].removeprefix("/v1")
            assert accepted.headers["location"].endswith(job_url)

            async def finished() -> bool:
                return (await http.get(job_url, headers=auth)).json()["status"] == "completed"

            await eventually(finished, "the async speech job to complete", timeout=120)
            job = (await http.get(job_url, headers=auth)).json()
            audio_file = next(f for f in job["files"] if f["role"] == "audio")
            fetched = await http.get(audio_file["url"].removeprefix("/v1"), headers=auth)
            assert fetched.status_code == 200 and _decoded_seconds(fetched.content, "flac") > 3
            missing = await http.get(f"{job_url}/files/nothing.bin", headers=auth)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            models = (await http.get("/models", headers=auth)).json()
            assert {"whisper-1", "tts-1", "tts-1-hd"} <= {m["id"] for m in models["data"]}
            voices = (await http.get("/audio/voices", headers=auth)).json()
            assert voices["openai_voices"]["onyx"] in {v["id"] for v in voices["voices"]}


@pytest.mark.slow
async def test_speech_streams_sentence_by_sentence(harness: Harness, tmp_path: Path) -> None:
    """/v1/audio/speech sends each sentence's audio as soon as the worker has spoken it: the
    first bytes arrive while the job is still running, and what streams is the whole speech."""
    editor = await harness.user(UserRole.EDITOR)
    key = await harness.key(editor)
    sentences = [
        "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
        "It is easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
        "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
        "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    ]  # fmt: skip
    body = {"model": "tts-1", "voice": "onyx", "input": " ".join(sentences),
            "response_format": "pcm"}  # fmt: skip
    async with run_workers(harness, "tts", tts_handler(TtsSettings()), ack_wait=30.0), \
            front_door(harness, tmp_path) as base, httpx.AsyncClient(timeout=300) as http, \
            http.stream("POST", f"{base}/audio/speech", json=body,
                        headers={"authorization": f"Bearer {key}"}) as response:  # fmt: skip
        assert response.status_code == 200
        job_id = response.headers["voxmesh-job-id"]
        chunks = response.aiter_bytes()
        first = await anext(chunks)
        then = (await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id))).job
        rest = b"".join([chunk async for chunk in chunks])
    assert first and then.status == jobs_pb2.JOB_STATUS_RUNNING, jobs_pb2.JobStatus.Name(
        then.status
    )
    events = [e async for e in editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id))]
    parts = [e.progress.part for e in events if e.progress.part.file_id]
    assert [p.name for p in parts] == [f"part-{i:04d}.wav" for i in range(1, len(sentences) + 1)]
    result = next(e.result for e in events if e.WhichOneof("event") == "result")
    audio = next(f for f in result.files if f.role == "audio")
    _, whole = await download(editor, audio.file_id)
    # The streamed speech is the final file's, resampled to 24 kHz (to within a few samples).
    assert abs(_decoded_seconds(first + rest, "pcm") - _decoded_seconds(whole, "wav")) < 0.02
    part_seconds = sum([_decoded_seconds((await download(editor, p.file_id))[1], "wav")
                        for p in parts])  # fmt: skip
    assert abs(part_seconds - _decoded_seconds(whole, "wav")) < 0.01
    said = await asyncio.to_thread(_transcribed, first + rest)
    assert wer(" ".join(sentences), said) < 0.2, said


def _transcribed(pcm: bytes) -> str:
    from voxmesh.audio import resample
    from voxmesh.speech import stt

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767
    engine = stt.load("tiny.en")
    segments = engine.transcribe(resample(samples, PCM_RATE, 16_000), stt.Options()).segments
    return " ".join(s.text for s in segments)


async def test_api_keys_roles_scope_revocation_and_service_accounts(
    harness: Harness, tmp_path: Path
) -> None:
    admin = await harness.user(UserRole.ADMIN)
    editor = await harness.user(UserRole.EDITOR)
    viewer = await harness.user(UserRole.VIEWER)
    # A key's role is at most its owner's; the secret is shown once and stored as a hash only.
    err = await rpc_error(
        viewer.client.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name="too much", role=users_pb2.USER_ROLE_EDITOR)
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "at most" in err.details()
    made = await editor.client.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="ci"))
    assert made.secret.startswith("vxk_") and made.key.prefix == made.secret[:12]
    async with harness.app.engine.connect() as conn:
        stored = (await conn.exec_driver_sql("SELECT * FROM api_keys")).all()
    assert made.secret not in repr(stored)
    # It works on gRPC, and records its use.
    as_key = harness.client(made.secret)
    me = await as_key.users.GetCurrentUser(users_pb2.GetCurrentUserRequest())
    assert me.user.username == editor.username
    listed = await editor.client.keys.ListApiKeys(keys_pb2.ListApiKeysRequest())
    assert listed.keys[0].HasField("last_used_time")
    # Keys cannot make keys.
    err = await rpc_error(as_key.keys.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="child")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    # Project scope: the key acts only in its project.
    mine = await harness.project(editor.user_id, name="scoped")
    other = await harness.project(editor.user_id, name="other")
    scoped = harness.client(await harness.key(editor, name="scoped", project_id=str(mine)))
    got = await scoped.projects.ListProjects(projects_pb2.ListProjectsRequest())
    assert [p.id for p in got.projects] == [str(mine)]
    err = await rpc_error(
        scoped.projects.GetProject(projects_pb2.GetProjectRequest(project_id=str(other)))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "only in project" in err.details()
    err = await rpc_error(
        scoped.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=str(other), tts=jobs_pb2.TtsParams(text="hi")))
    )  # fmt: skip
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    # A service account: no password sign-in, acts through the keys an admin makes for it.
    bot = await admin.client.users.CreateUser(
        users_pb2.CreateUserRequest(username="transcribe-bot", role=users_pb2.USER_ROLE_EDITOR,
                                    service_account=True)
    )  # fmt: skip
    assert bot.user.service_account
    for password in ("", "anything-at-all"):
        err = await rpc_error(harness.anonymous.auth.Login(
            auth_pb2.LoginRequest(
                username="transcribe-bot", password=password)))  # fmt: skip
        assert err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT)
    bot_key = await admin.client.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="bot", owner_id=bot.user.id)
    )
    err = await rpc_error(editor.client.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="steal", owner_id=bot.user.id)))  # fmt: skip
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    # Revocation applies to the very next call: gRPC, gRPC-web's Envoy and the HTTP API alike.
    async with front_door(harness, tmp_path) as base:
        client = openai.AsyncOpenAI(base_url=base, api_key=bot_key.secret, max_retries=0)
        assert {m.id async for m in client.models.list()} >= {"whisper-1", "tts-1"}
        bot_client = harness.client(bot_key.secret)
        await bot_client.projects.CreateProject(projects_pb2.CreateProjectRequest(name="bot work"))
        await admin.client.keys.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(key_id=bot_key.key.id))
        err = await rpc_error(bot_client.projects.ListProjects(projects_pb2.ListProjectsRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.details()
        with pytest.raises(openai.AuthenticationError) as revoked:
            await client.models.retrieve("whisper-1")
        assert "revoked" in str(revoked.value)


async def test_a_waiting_request_past_the_concurrency_cap_is_refused_and_an_async_one_queued(
    harness: Harness, tmp_path: Path
) -> None:
    """A request that waits for its result is answered 429 (OpenAI's rate-limit error, with
    retry-after) while its caller already runs max_concurrent_jobs jobs, rather than held open
    behind them; the same request with ?async=true is accepted (202) and queued. The check runs
    alongside the upload, so both must come out of it as before."""
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    key = await harness.key(editor)
    await harness.setting("max_concurrent_jobs", 1, editor.user_id)
    audio, _ = speech_wav()
    async with run_workers(harness, "tts", behave), front_door(harness, tmp_path) as base:
        held = await create(editor, project, "sleep:60")  # the one job it may run
        await wait_for(harness, held.id, {jobs_pb2.JOB_STATUS_RUNNING})
        client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=60,
                                    default_headers={"voxmesh-project": project})  # fmt: skip
        with pytest.raises(openai.RateLimitError) as refused:
            await client.audio.transcriptions.create(
                model="whisper-1", file=("clip.wav", audio, "audio/wav")
            )
        assert refused.value.body["code"] == "concurrency_limit"  # type: ignore[index]
        assert "you already run 1 job at once (max_concurrent_jobs)" in refused.value.message
        assert refused.value.response.headers["retry-after"] == "5"
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            queued = await http.post(
                "/audio/transcriptions?async=true",
                headers={"authorization": f"Bearer {key}", "voxmesh-project": project},
                files={"file": ("clip.wav", audio, "audio/wav")}, data={"model": "whisper-1"},
            )  # fmt: skip
        assert queued.status_code == 202, queued.text
        waiting = (
            await editor.client.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=queued.json()["id"]))
        ).job
        assert waiting.status == jobs_pb2.JOB_STATUS_PENDING  # behind the running one
        listed = await editor.client.jobs.ListJobs(jobs_pb2.ListJobsRequest())
        assert len(listed.jobs) == 2  # the refused request made no job
        for job_id in (held.id, waiting.id):
            await editor.client.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id))
        await client.close()


class Receiver:
    """A webhook receiver that verifies every delivery with the standardwebhooks package."""

    def __init__(self, secret: str) -> None:
        self.verifier = Verifier(secret)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.got = asyncio.Event()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        event = self.verifier.verify(body, dict(request.headers))  # raises if forged
        self.events.append((request.headers["webhook-id"], event))
        self.got.set()
        return Response(status_code=204)

    @contextlib.asynccontextmanager
    async def serve(self, port: int) -> AsyncIterator[None]:
        app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        task = asyncio.create_task(server.serve())
        await eventually(lambda: _started(server), "the webhook receiver to listen", timeout=10)
        try:
            yield
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)


async def _started(server: uvicorn.Server) -> bool:
    return bool(server.started)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_webhooks_are_signed_durable_and_refuse_private_addresses(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id, name="hooked"))
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/hook"
    mask = field_mask_pb2.FieldMask(paths=["webhooks"])

    # Loopback is refused (SSRF) until an admin allows private addresses.
    err = await rpc_error(editor.client.projects.UpdateProject(projects_pb2.UpdateProjectRequest(
        project_id=project, update_mask=mask, webhooks=[webhooks_pb2.Webhook(url=url)])))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "private" in err.details()
    for bad in ("ftp://example.com/x", "http://user:pw@example.com/", "http://10.0.0.8/"):
        err = await rpc_error(editor.client.projects.UpdateProject(projects_pb2.UpdateProjectRequest(
            project_id=project, update_mask=mask, webhooks=[webhooks_pb2.Webhook(url=bad)])))  # fmt: skip
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    await harness.setting("webhook_allow_private_addresses", True)
    updated = await editor.client.projects.UpdateProject(projects_pb2.UpdateProjectRequest(
        project_id=project, update_mask=mask,
        webhooks=[webhooks_pb2.Webhook(url=url, stages=True)]))  # fmt: skip
    secret = updated.project.webhook_secret
    assert secret.startswith("whsec_")

    # The receiver is down when the job finishes: the first attempt fails, a retry delivers.
    async with run_workers(harness, "tts", behave):
        job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text="steps:2")))).job  # fmt: skip

        async def failed_once() -> bool:
            listed = await editor.client.webhooks.ListWebhookDeliveries(
                webhooks_pb2.ListWebhookDeliveriesRequest(job_id=job.id)
            )
            done = [d for d in listed.deliveries if d.event_type == "job.completed"]
            return bool(done) and done[0].attempts >= 1

        await eventually(failed_once, "a first, failed attempt of job.completed", timeout=60)
        listed = await editor.client.webhooks.ListWebhookDeliveries(
            webhooks_pb2.ListWebhookDeliveriesRequest(job_id=job.id)
        )
        first = next(d for d in listed.deliveries if d.event_type == "job.completed")
        assert not first.HasField("delivered_time") and "reach" in first.last_error, first

        receiver = Receiver(secret)
        async with receiver.serve(port):

            async def delivered() -> bool:
                return any(e["type"] == "job.completed" for _, e in receiver.events)

            await eventually(delivered, "the retried job.completed delivery", timeout=60)
    completed = next(e for _, e in receiver.events if e["type"] == "job.completed")
    assert completed["data"]["job_id"] == job.id and completed["data"]["status"] == "COMPLETED"
    assert {e["type"] for _, e in receiver.events} >= {"job.stage", "job.completed"}
    ids = [i for i, _ in receiver.events]
    assert len(ids) == len(set(ids))  # one delivery per event, each with its own id
    listed = await editor.client.webhooks.ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(job_id=job.id)
    )
    final = next(d for d in listed.deliveries if d.event_type == "job.completed")
    assert (
        final.attempts >= 2 and final.last_status_code == 204 and final.HasField("delivered_time")
    )
    # A forged delivery would not verify.
    with pytest.raises(Exception, match=r"(?i)signature"):
        Verifier(secret).verify(b'{"type":"job.completed"}', {
            "webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())),
            "webhook-signature": "v1,AAAA"})  # fmt: skip
