"""The STT job handler: decode, transcribe with progress from the real decoding position,
honour cancellation between segments, write the transcript files."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import numpy as np

from services.stt import shards
from services.stt.config import SttSettings
from voxmesh import roles
from voxmesh.audio import SAMPLE_RATE, AudioError, decode
from voxmesh.speech import subtitles as formats
from voxmesh.speech.stt import Engine, ModelError, Options, Segment, from_settings
from voxmesh.stages import Stages
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import (
    Handler,
    JobContext,
    JobFailed,
    Outcome,
    Output,
    ShardContext,
    ShardHandler,
)

MIN_SECONDS = 0.1
PROGRESS = {
    "decoding": (0, 3),
    "loading model": (3, 5),
    "transcribing": (5, 95),
    "writing": (95, 100),
}


def options_from(params: jobs_pb2.SttParams, settings: SttSettings) -> Options:
    return Options(
        language=params.language or None,
        task="translate" if params.task == jobs_pb2.STT_TASK_TRANSLATE else "transcribe",
        word_timestamps=params.word_timestamps,
        vad_filter=params.vad_filter,
        initial_prompt=params.initial_prompt or None,
        beam_size=settings.beam_size,
    )


def summarize(segments: list[Segment], language: str, duration: float) -> dict[str, Any]:
    spoken = [s for s in segments if s.text]
    weight = sum(max(s.end - s.start, 0.01) for s in spoken)
    confidence = (
        sum(math.exp(s.avg_logprob) * max(s.end - s.start, 0.01) for s in spoken) / weight
        if spoken
        else 0.0
    )
    words = sum(len(s.words) if s.words else len(s.text.split()) for s in spoken)
    return {
        "language": language,
        "duration_seconds": round(duration, 3),
        "word_count": words,
        "confidence": round(confidence, 4),
        "segments": len(spoken),
    }


async def transcribe_streaming(
    ctx: JobContext, engine: Engine, audio: np.ndarray, options: Options, *, low: float, high: float
) -> tuple[list[Segment], str]:
    """Transcribe in a worker thread, reporting progress (low..high %) as segments are decoded;
    a cancellation stops decoding at the next segment."""
    duration = len(audio) / SAMPLE_RATE
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Segment | BaseException | None] = asyncio.Queue()
    stop = threading.Event()
    language: list[str] = []

    def pump() -> None:
        try:
            result = engine.transcribe(audio, options)
            language.append(result.language)
            for segment in result.segments:
                loop.call_soon_threadsafe(queue.put_nowait, segment)
                if stop.is_set():
                    break
        except BaseException as e:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    pumping = loop.run_in_executor(None, pump)
    segments: list[Segment] = []
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, ModelError):
                raise JobFailed(str(item))
            if isinstance(item, BaseException):
                raise item
            segments.append(item)
            done = min(1.0, item.end / duration) if duration else 1.0
            await ctx.progress(
                low + (high - low) * done,
                "transcribing",
                f"{item.end:.1f} s of {duration:.1f} s",
                text=item.text,
            )
    finally:
        stop.set()
        await pumping
    return segments, (language[0] if language else options.language or "en")


def make_handler(settings: SttSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        started = time.perf_counter()
        params = ctx.params_as(jobs_pb2.SttParams)
        stages: Stages[None] = Stages(ctx, PROGRESS)
        await stages.report("decoding", 0, "reading the input")
        data = await ctx.input_bytes()
        try:
            audio = await ctx.run_blocking(decode, data, SAMPLE_RATE, ctx.max_audio_seconds)
        except AudioError as e:
            raise JobFailed(str(e)) from None
        duration = len(audio) / SAMPLE_RATE
        if duration < MIN_SECONDS:
            raise JobFailed(f"the audio is {duration:.2f} s long; nothing to transcribe")
        await ctx.log(f"decoded {duration:.1f} s of audio")
        await stages.report("loading model", 0, settings.model)
        try:
            engine = await ctx.run_blocking(from_settings, settings)
        except ModelError as e:
            raise JobFailed(str(e)) from None
        options = options_from(params, settings)
        decode_started = time.perf_counter()
        cuts = (
            shards.split_points(audio, settings.shard_seconds)
            if settings.shard_seconds and duration > settings.shard_seconds * 1.5
            else []
        )
        if cuts:  # long audio: every STT worker takes parts at once
            pieces = shards.parts(audio, cuts)
            await ctx.log(f"split into {len(pieces)} parts at silences for parallel workers")
            low, high = PROGRESS["transcribing"]
            results = await ctx.run_shards(
                [shards.to_wav(samples) for _, samples in pieces],
                low=low,
                high=high,
                stage="transcribing",
            )
            segments, language = [], ""
            for (offset, _), data in zip(pieces, results, strict=True):
                part, part_language = shards.decode_result(data, offset)
                segments += part
                language = language or part_language
        else:
            low, high = PROGRESS["transcribing"]
            segments, language = await transcribe_streaming(
                ctx, engine, audio, options, low=low, high=high
            )
        compute = time.perf_counter() - decode_started
        await stages.report("writing", 0.4, "transcript files")
        meta = summarize(segments, language, duration)
        meta.update(
            model=engine.name, task=options.task, parts=len(cuts) + 1,
            rtf=round(compute / duration, 4), processing_seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip
        return Outcome(
            files=[
                Output(
                    "transcript.txt",
                    formats.to_text(segments).encode(),
                    "text/plain",
                    roles.TRANSCRIPT,
                ),
                Output(
                    "transcript.srt",
                    formats.to_srt(segments).encode(),
                    "application/x-subrip",
                    roles.SUBTITLES,
                ),
                Output(
                    "transcript.vtt", formats.to_vtt(segments).encode(), "text/vtt", roles.SUBTITLES
                ),
                Output(
                    "transcript.json",
                    formats.to_json(segments, meta).encode(),
                    "application/json",
                    roles.TRANSCRIPT,
                ),
            ],
            meta=meta,
        )

    return handle


def make_shard_handler(settings: SttSettings) -> ShardHandler:
    """Transcribe one part of a long file (any worker may get it)."""

    async def handle_shard(shard: ShardContext) -> bytes:
        try:
            audio = await shard.run_blocking(decode, shard.data)
            engine = await shard.run_blocking(from_settings, settings)
            if not isinstance(shard.params, jobs_pb2.SttParams):
                raise JobFailed("an STT shard needs STT params")
            options = options_from(shard.params, settings)

            def run() -> tuple[list[Segment], str]:
                result = engine.transcribe(audio, options)
                return list(result.segments), result.language

            segments, language = await shard.run_blocking(run)
        except (AudioError, ModelError) as e:
            raise JobFailed(str(e)) from None
        return shards.encode_result(segments, language)

    return handle_shard
