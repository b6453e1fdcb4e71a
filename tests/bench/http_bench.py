"""`make bench` (HTTP API): POST /v1/audio/speech for a two-sentence text through the HTTP API
(official `openai` client → Envoy → gateway/http → control plane → TTS worker), the same job
through gRPC (CreateJob → WatchJob → DownloadFile, straight to the control plane), and the
synthesis called directly; medians of interleaved runs in one process, printed as ratios.
Goal: the HTTP layer adds under 5 % over gRPC."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from openai import AsyncOpenAI

from control.db.models import UserRole
from gateway.http import compat
from tests.bench.platform import running_platform
from tests.test_files import download
from tests.test_http_api import front_door
from voxmesh import audio, eventloop
from voxmesh.speech import voices
from voxmesh.speech.text import split
from voxmesh.speech.tts import load
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
VOICE = "echo"  # OpenAI's name; Voxmesh's stock voice below
REPEATS = 9


def engine_direct(engine: object, voice: voices.Voice) -> float:
    """Seconds to synthesise TEXT as the TTS handler does (sentences, pauses, loudness, WAV)."""
    start = time.perf_counter()
    parts = []
    for sentence, _ in split(TEXT):
        parts += [
            engine.synthesize(sentence, voice, 1.0),  # type: ignore[attr-defined]
            np.zeros(int(0.25 * engine.sample_rate), np.float32),  # type: ignore[attr-defined]
        ]
    speech = audio.normalize_loudness(np.concatenate(parts[:-1]), engine.sample_rate)  # type: ignore[attr-defined]
    audio.encode(speech, engine.sample_rate, jobs_pb2.AUDIO_FORMAT_WAV)  # type: ignore[attr-defined]
    return time.perf_counter() - start


async def main() -> None:
    voice = voices.CATALOG[compat.OPENAI_VOICES[VOICE]]
    engine = load(voice)
    engine_direct(engine, voice)  # warm
    async with running_platform() as h:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NATS_URL": h.nats.url}
        worker = subprocess.Popen([sys.executable, "-m", "services.tts"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            with tempfile.TemporaryDirectory() as tmp:
                async with front_door(h, Path(tmp)) as base_url:
                    editor = await h.user(UserRole.EDITOR)
                    project = str(await h.project(editor.user_id))
                    key = await h.key(editor)
                    as_key = h.client(key)
                    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)

                    async def over_grpc() -> tuple[float, float]:
                        """The job the HTTP API makes (streamed), followed over gRPC: seconds to
                        its first announced part, and to the whole file downloaded."""
                        start = time.perf_counter()
                        first = 0.0
                        job = (await as_key.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                            project_id=project, tts=jobs_pb2.TtsParams(
                                text=TEXT, voice=voice.id, stream=True,
                                format=jobs_pb2.AUDIO_FORMAT_WAV)))).job  # fmt: skip
                        async for event in as_key.jobs.WatchJob(
                            jobs_pb2.WatchJobRequest(job_id=job.id)
                        ):
                            if event.progress.part.file_id and not first:
                                first = time.perf_counter() - start
                            if event.WhichOneof("event") == "result":
                                result = event.result
                                break
                        audio = next(f for f in result.files if f.role == "audio")
                        _, data = await download(editor, audio.file_id)
                        assert len(data) > 10_000
                        return first, time.perf_counter() - start

                    async def over_http() -> tuple[float, float]:
                        """Seconds to the first audio bytes, and to the last."""
                        start = time.perf_counter()
                        first, size = 0.0, 0
                        async with client.audio.speech.with_streaming_response.create(
                            model="tts-1", voice=VOICE, input=TEXT, response_format="wav",
                            extra_headers={"voxmesh-project": project},
                        ) as reply:  # fmt: skip
                            async for chunk in reply.iter_bytes():
                                first = first or time.perf_counter() - start
                                size += len(chunk)
                        assert size > 10_000
                        return first, time.perf_counter() - start

                    await over_grpc()
                    await over_http()
                    runs: dict[str, list[float]] = {k: [] for k in
                                                    ("engine", "grpc", "http", "grpc1", "http1")}  # fmt: skip
                    for _ in range(REPEATS):  # interleaved: drift hits all three alike
                        runs["engine"].append(engine_direct(engine, voice))
                        runs["grpc1"], runs["grpc"] = _add(runs["grpc1"], runs["grpc"],
                                                           await over_grpc())  # fmt: skip
                        runs["http1"], runs["http"] = _add(runs["http1"], runs["http"],
                                                           await over_http())  # fmt: skip
                    await client.close()
        finally:
            worker.terminate()
            worker.wait(30)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"Voxmesh HTTP API bench (/v1/audio/speech, {len(TEXT)} characters, {voice.id}, WAV; "
          f"medians of {REPEATS} interleaved runs)")  # fmt: skip
    print(f"  {'synthesis called directly':<48} {med['engine'] * 1000:7.0f} ms")
    print(f"  {'gRPC: CreateJob → WatchJob → DownloadFile':<48} {med['grpc'] * 1000:7.0f} ms")
    print(f"  {'HTTP: openai client → Envoy → HTTP API':<48} {med['http'] * 1000:7.0f} ms")
    print(f"  {'first audio: gRPC (first part announced)':<48} {med['grpc1'] * 1000:7.0f} ms")
    print(f"  {'first audio: HTTP (first bytes to the client)':<48} {med['http1'] * 1000:7.0f} ms")
    print(f"  gRPC / engine: {med['grpc'] / med['engine']:.2f}x   "
          f"HTTP / gRPC: {med['http'] / med['grpc']:.3f}x "
          f"(HTTP layer adds {100 * (med['http'] / med['grpc'] - 1):+.1f} %; goal < 5 %)")  # fmt: skip


def _add(
    firsts: list[float], wholes: list[float], run: tuple[float, float]
) -> tuple[list[float], list[float]]:
    return [*firsts, run[0]], [*wholes, run[1]]


if __name__ == "__main__":
    eventloop.run(main())  # the loop the platform runs on
