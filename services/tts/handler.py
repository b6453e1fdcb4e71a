"""The TTS job handler: sentence by sentence with progress and cancellation between sentences,
natural pauses, a saved voice applied, loudness normalisation, the requested format."""

from __future__ import annotations

import time

import numpy as np

from services.tts.config import TtsSettings
from voxmesh import audio, roles
from voxmesh.speech import text as text_split
from voxmesh.speech import voice_profile, voices
from voxmesh.speech.tts import EngineError, for_voice
from voxmesh.stages import Stages
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import Handler, JobContext, JobFailed, Outcome, Output

PROGRESS = {
    "loading voice": (0, 5),
    "synthesising": (5, 90),
    "post-processing": (90, 100),
}


def make_handler(settings: TtsSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        p = ctx.params_as(jobs_pb2.TtsParams)
        stages: Stages[None] = Stages(ctx, PROGRESS)
        profile = ctx.saved_voice(p.voice)
        try:
            voice = voices.resolve(
                profile.base_voice if profile else p.voice, "" if profile else p.engine
            )
        except (KeyError, ValueError) as e:
            raise JobFailed(f"voice: {e}") from None
        speed = p.speed or 1.0
        await stages.report("loading voice", 0, voice.id)
        try:
            engine = await ctx.run_blocking(for_voice, voice, settings)
        except EngineError as e:
            raise JobFailed(str(e)) from None
        pieces = text_split.split(p.text)
        if not pieces:
            raise JobFailed("there is no text to speak")
        await ctx.log(f"{len(pieces)} sentences, voice {voice.id} ({engine.name})")
        rate = engine.sample_rate
        parts: list[np.ndarray] = []
        compute = 0.0
        gain: float | None = None  # streaming: the loudness gain, set from the first sentence
        for i, (sentence, ends_paragraph) in enumerate(pieces):
            started = time.perf_counter()
            try:
                samples = await ctx.run_blocking(engine.synthesize, sentence, voice, speed)
            except EngineError as e:
                raise JobFailed(str(e)) from None
            compute += time.perf_counter() - started
            last = i == len(pieces) - 1
            pause = (
                settings.paragraph_pause_seconds
                if ends_paragraph
                else settings.sentence_pause_seconds
            )
            piece = [samples] if last else [samples, np.zeros(int(pause * rate), np.float32)]
            message = f"sentence {i + 1} of {len(pieces)}: {sentence[:80]}"
            if not p.stream:
                parts += piece
                await stages.report(
                    "synthesising", (i + 1) / len(pieces), message, coalesce=True
                )  # also the cancellation checkpoint between sentences
                continue
            said = np.concatenate(piece)
            if profile is not None:
                said = await ctx.run_blocking(ctx.in_saved_voice, said, rate, profile)
            part_rate = voice_profile.RATE if profile is not None else rate
            if gain is None:
                gain = audio.loudness_gain(said, part_rate, settings.target_lufs)
            said = audio.limit(said * gain)
            parts.append(said)
            wav, _, _, _ = await ctx.run_blocking(audio.encode, said, part_rate)
            await stages.report(
                "synthesising", (i + 1) / len(pieces), message,
                part=Output(f"part-{i + 1:04d}.wav", wav, "audio/wav", roles.PART),
            )  # fmt: skip
        speech = np.concatenate(parts)
        if p.stream:  # already spoken in the saved voice and at the first sentence's loudness
            rate = voice_profile.RATE if profile is not None else rate
            await stages.report("post-processing", 0.2, "encoding")
        else:
            if profile is not None:
                await stages.report("post-processing", 0, f"speaking in the saved voice {p.voice}")
                speech = await ctx.run_blocking(ctx.in_saved_voice, speech, rate, profile)
                rate = voice_profile.RATE
            await stages.report("post-processing", 0.2, "loudness and encoding")
            speech = audio.normalize_loudness(speech, rate, settings.target_lufs)
        data, media_type, extension, out_rate = await ctx.run_blocking(
            audio.encode, speech, rate, p.format
        )
        duration = len(speech) / rate
        return Outcome(
            files=[Output(f"speech.{extension}", data, media_type, roles.AUDIO)],
            meta={
                "duration_seconds": round(duration, 3), "sample_rate": out_rate,
                "voice": p.voice if profile else voice.id,
                "engine": f"{engine.name} + saved voice" if profile else engine.name,
                "characters": len(p.text), "sentences": len(pieces),
                "loudness_lufs": settings.target_lufs,
                "rtf": round(compute / duration, 4) if duration else 0.0,
                "characters_per_second": round(len(p.text) / compute, 1) if compute else 0.0,
            },
        )  # fmt: skip

    return handle
