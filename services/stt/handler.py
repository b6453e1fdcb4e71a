"""The STT job handler: decode, transcribe with progress from the real decoding position,
honour cancellation between segments, write the transcript files."""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from typing import Any

import numpy as np

from services.stt import shards
from services.stt.config import SttSettings
from voxmesh import roles
from voxmesh.audio import SAMPLE_RATE, AudioError, decode
from voxmesh.speech import diarize
from voxmesh.speech import subtitles as formats
from voxmesh.speech.languages import NoModel, route_stt
from voxmesh.speech.stt import Engine, ModelError, Options, Segment, catalog, from_settings
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
DIARIZED = {  # diarization takes about a third of what transcription does on CPU
    "decoding": (0, 3),
    "loading model": (3, 5),
    "transcribing": (5, 70),
    "diarizing": (70, 95),
    "writing": (95, 100),
}


async def choose(
    ctx: JobContext | ShardContext, engines: dict[str, Engine], params: jobs_pb2.SttParams,
    audio: np.ndarray,
) -> tuple[Engine, str, float | None]:  # fmt: skip
    """The engine for this job and the language to transcribe: the one given, else the one a
    multilingual model hears (then the job goes to the first model that speaks it, e.g.
    English to tiny.en), with the detection's probability (None when the language was given or
    could not be detected)."""
    task = "translate" if params.task == jobs_pb2.STT_TASK_TRANSLATE else "transcribe"
    models = catalog(engines)
    try:
        chosen = route_stt(models, params.language, task, params.model)
        if params.language:
            return engines[chosen.name], params.language, None
        if not chosen.multilingual:
            return engines[chosen.name], "en", None
        language, probability = await ctx.run_blocking(engines[chosen.name].detect, audio)
        routed = route_stt(models, language, task, params.model)
    except NoModel as e:
        raise JobFailed(f"{e} (the language heard is not one it speaks)") from None
    return engines[routed.name], language, probability


def options_from(params: jobs_pb2.SttParams, settings: SttSettings) -> Options:
    return Options(
        language=params.language or None,
        task="translate" if params.task == jobs_pb2.STT_TASK_TRANSLATE else "transcribe",
        word_timestamps=params.word_timestamps,
        vad_filter=params.vad_filter,
        initial_prompt=params.initial_prompt or None,
        beam_size=settings.beam_size,
        temperature=params.temperature,
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


async def diarized(
    ctx: JobContext, stages: Stages[None], audio: np.ndarray, segments: list[Segment],
    params: jobs_pb2.SttParams,
) -> tuple[list[Segment], dict[str, Any]]:  # fmt: skip
    """The segments labelled with their speakers (one diarization of the whole recording, so
    a transcript decoded in parts keeps one set of labels), and the meta about them."""
    await stages.report("diarizing", 0, "loading the diarizer")
    try:
        await ctx.run_blocking(diarize.load)
        await stages.report("diarizing", 0.1, "finding who speaks when")
        turns = await ctx.run_blocking(
            functools.partial(
                diarize.diarize, audio, num_speakers=params.num_speakers,
                min_speakers=params.min_speakers, max_speakers=params.max_speakers,
            )
        )  # fmt: skip
    except diarize.DiarizationError as e:
        raise JobFailed(str(e)) from None
    if not turns:
        await ctx.log("diarization found no speech to label")
        return segments, {"speakers": 0}
    talk = diarize.talk_time(turns)
    await ctx.log(
        f"{len(talk)} speaker(s): "
        + ", ".join(f"{formats.display(k)} {v:.1f} s" for k, v in talk.items())
    )
    labelled = diarize.assign(segments, turns)
    return labelled, {
        "speakers": len(talk),
        "talk_time_seconds": {formats.display(k): v for k, v in talk.items()},
        "turns": [{"speaker": t.speaker, "start": t.start, "end": t.end} for t in turns],
    }


def make_handler(settings: SttSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        started = time.perf_counter()
        params = ctx.params_as(jobs_pb2.SttParams)
        progress = DIARIZED if params.diarize else PROGRESS
        stages: Stages[None] = Stages(ctx, progress)
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
        await stages.report("loading model", 0, params.model or ", ".join(settings.models))
        try:
            engines = await ctx.run_blocking(from_settings, settings)
        except ModelError as e:
            raise JobFailed(str(e)) from None
        engine, language, probability = await choose(ctx, engines, params, audio)
        if probability is not None:
            await ctx.log(f"language detected: {language} ({probability:.0%}); model {engine.name}")
        elif not params.language:
            await ctx.log(
                f"no multilingual model is installed: the speech is taken as English ({engine.name})"
            )
        settled = jobs_pb2.SttParams()
        settled.CopyFrom(params)
        settled.language, settled.model = language, engine.name
        options = options_from(settled, settings)
        decode_started = time.perf_counter()
        cuts = (
            shards.split_points(audio, settings.shard_seconds)
            if settings.shard_seconds and duration > settings.shard_seconds * 1.5
            else []
        )
        if cuts:  # long audio: every STT worker takes parts at once
            pieces = shards.parts(audio, cuts)
            await ctx.log(f"split into {len(pieces)} parts at silences for parallel workers")
            low, high = progress["transcribing"]
            results = await ctx.run_shards(
                [shards.to_wav(samples) for _, samples in pieces],
                low=low,
                high=high,
                stage="transcribing",
                params=settled,
            )
            segments = []
            for (offset, _), data in zip(pieces, results, strict=True):
                part, _ = shards.decode_result(data, offset)
                segments += part
        else:
            low, high = progress["transcribing"]
            segments, _ = await transcribe_streaming(
                ctx, engine, audio, options, low=low, high=high
            )
        speakers: dict[str, Any] = {}
        if params.diarize:
            segments, speakers = await diarized(ctx, stages, audio, segments, params)
        compute = time.perf_counter() - decode_started
        await stages.report("writing", 0.4, "transcript files")
        meta = summarize(segments, language, duration)
        turns = speakers.pop("turns", None)
        meta.update(speakers)
        meta.update(
            model=engine.name, task=options.task, parts=len(cuts) + 1,
            language_detected=probability is not None,
            **({"language_probability": round(probability, 4)} if probability is not None else {}),
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
                    formats.to_json(segments, meta, {"turns": turns} if turns else None).encode(),
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
            engines = await shard.run_blocking(from_settings, settings)
            if not isinstance(shard.params, jobs_pb2.SttParams):
                raise JobFailed("an STT shard needs STT params")
            engine, _, _ = await choose(shard, engines, shard.params, audio)
            options = options_from(shard.params, settings)

            def run() -> tuple[list[Segment], str]:
                result = engine.transcribe(audio, options)
                return list(result.segments), result.language

            segments, language = await shard.run_blocking(run)
        except (AudioError, ModelError) as e:
            raise JobFailed(str(e)) from None
        return shards.encode_result(segments, language)

    return handle_shard
