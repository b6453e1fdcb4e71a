"""The TTS job handler: sentence by sentence with progress and cancellation between sentences,
natural pauses, loudness normalisation, the requested format."""

from __future__ import annotations

import time

import numpy as np

from services.tts import text as text_split
from services.tts.config import TtsSettings
from services.tts.engines import EngineError, for_voice
from voxmesh import audio, voice_profile, voices
from voxmesh.worker import Handler, JobContext, JobFailed, Outcome, Output


def saved_voice(ctx: JobContext) -> voice_profile.VoiceProfile | None:
    """The project's saved (cloned) voice the job names, or None for a stock voice."""
    name = str(ctx.params.get("voice", ""))
    if not name or name in voices.CATALOG:
        return None
    if ctx.voice_profile is None:
        raise JobFailed(f"the saved voice {name!r} no longer exists in this project")
    return voice_profile.VoiceProfile.from_json(ctx.voice_profile)


def apply_profile(speech: np.ndarray, rate: int, profile: voice_profile.VoiceProfile) -> np.ndarray:
    """Base-voice speech at `rate` → the saved voice, at the profile's 16 kHz."""
    try:
        return voice_profile.convert(audio.resample(speech, rate, voice_profile.RATE), profile)
    except ValueError as e:
        raise JobFailed(f"the saved voice cannot be applied: {e}") from None


def make_handler(settings: TtsSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        params = ctx.params
        spoken = str(params.get("text", ""))
        profile = saved_voice(ctx)
        try:
            voice = voices.resolve(
                profile.base_voice if profile else str(params.get("voice", "")),
                "" if profile else str(params.get("engine", "")),
            )
        except (KeyError, ValueError) as e:
            raise JobFailed(f"voice: {e}") from None
        speed = float(params.get("speed") or 1.0)
        await ctx.progress(0, "loading voice", voice.id)
        try:
            engine = await ctx.run_blocking(for_voice, voice, settings)
        except EngineError as e:
            raise JobFailed(str(e)) from None
        pieces = text_split.split(spoken)
        if not pieces:
            raise JobFailed("there is no text to speak")
        await ctx.log(f"{len(pieces)} sentences, voice {voice.id} ({engine.name})")
        rate = engine.sample_rate
        parts: list[np.ndarray] = []
        compute = 0.0
        for i, (sentence, ends_paragraph) in enumerate(pieces):
            started = time.perf_counter()
            try:
                samples = await ctx.run_blocking(engine.synthesize, sentence, voice, speed)
            except EngineError as e:
                raise JobFailed(str(e)) from None
            compute += time.perf_counter() - started
            pause = (
                settings.paragraph_pause_seconds
                if ends_paragraph
                else settings.sentence_pause_seconds
            )
            parts += [samples, np.zeros(int(pause * rate), np.float32)]
            await ctx.progress(
                5 + 85 * (i + 1) / len(pieces), f"sentence {i + 1} of {len(pieces)}", sentence[:80],
                coalesce=True,
            )  # also the cancellation checkpoint between sentences  # fmt: skip
        speech = np.concatenate(parts[:-1])
        if profile is not None:
            await ctx.progress(
                90, "post-processing", f"speaking in the saved voice {params['voice']}"
            )
            speech = await ctx.run_blocking(apply_profile, speech, rate, profile)
            rate = voice_profile.RATE
        await ctx.progress(92, "post-processing", "loudness and encoding")
        speech = audio.normalize_loudness(speech, rate, settings.target_lufs)
        data, media_type, extension, out_rate = await ctx.run_blocking(
            audio.encode, speech, rate, str(params.get("format") or "AUDIO_FORMAT_WAV")
        )
        duration = len(speech) / rate
        return Outcome(
            files=[Output(f"speech.{extension}", data, media_type)],
            meta={
                "duration_seconds": round(duration, 3), "sample_rate": out_rate,
                "voice": str(params["voice"]) if profile else voice.id,
                "engine": f"{engine.name} + saved voice" if profile else engine.name, "characters": len(spoken),
                "sentences": len(pieces), "loudness_lufs": settings.target_lufs,
                "rtf": round(compute / duration, 4) if duration else 0.0,
                "characters_per_second": round(len(spoken) / compute, 1) if compute else 0.0,
            },
        )  # fmt: skip

    return handle
