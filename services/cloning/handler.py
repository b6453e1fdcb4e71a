"""The VOICE_CLONING handler: analyse the reference → fit a voice profile → synthesise (text) or
take the source recording (voice conversion) → convert into the reference voice → loudness and
encoding → measure: speaker similarity to the reference of the output and of the unconverted
speech (resemblyzer), and intelligibility by a Whisper round trip (text mode)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

from services.cloning import reference as ref_check
from services.cloning.config import CloningSettings, WorkerSettings
from voxmesh import audio, roles
from voxmesh.speech import bark_prompt, speaker, voice_profile, voices
from voxmesh.speech import text as text_split
from voxmesh.speech.fitting import CALIBRATION_TEXT, fit
from voxmesh.speech.measures import word_error_rate
from voxmesh.speech.tts import BarkEngine, EngineError, for_voice, speak
from voxmesh.stages import Stages
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import Handler, JobContext, JobFailed, Outcome, Output

RATE = voice_profile.RATE
METHOD = "world-vocoder conversion fitted by speaker encoder"
PROGRESS = {
    "analysing reference": (0, 40),
    "synthesising": (40, 80),
    "post-processing": (80, 100),
}


def decode(data: bytes, what: str, max_seconds: float | None) -> np.ndarray:
    try:
        return audio.decode(data, RATE, max_seconds)
    except audio.AudioError as e:
        raise JobFailed(f"the {what} cannot be used: {e}") from None
    except Exception as e:
        raise JobFailed(f"the {what} could not be decoded as audio: {e}") from None


def synthesize(text: str, settings: WorkerSettings) -> np.ndarray:
    """The base voice speaking `text`, at 16 kHz (sentence pauses as TTS makes them)."""
    speech = speak(text, voices.CATALOG[voices.DEFAULT_VOICE], settings.tts,
                   pause_seconds=settings.tts.sentence_pause_seconds, rate=RATE)  # fmt: skip
    if not len(speech):
        raise JobFailed("there is no text to speak")
    return speech


def transcribe(samples: np.ndarray, settings: CloningSettings) -> str:
    from voxmesh.speech.stt import Options, load

    engine = load(settings.asr_model)
    result = engine.transcribe(samples, Options(language="en", beam_size=5))
    return " ".join(segment.text.strip() for segment in result.segments)


def make_handler(settings: WorkerSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        params = ctx.params_as(jobs_pb2.VoiceCloningParams)
        stages: Stages[None] = Stages(ctx, PROGRESS)
        text = params.text.strip()
        mode = "text" if text else "conversion"
        await stages.report("analysing reference", 0.02, "decoding")
        reference = decode(await ctx.input_bytes(), "reference recording", ctx.max_audio_seconds)
        try:
            report = await ctx.run_blocking(ref_check.check, reference, settings.cloning)
        except ref_check.UnusableReference as e:
            raise JobFailed(str(e)) from None
        reference = audio.normalize_loudness(reference, RATE, settings.tts.target_lufs)
        await ctx.log(f"reference: {report.seconds:.1f} s, {report.speech_seconds:.1f} s of speech, "
                      f"{report.loudness_lufs:.0f} LUFS")  # fmt: skip
        if settings.cloning.engine == "bark-prompt":
            return await _bark_clone(ctx, stages, settings, reference, report, params)
        await stages.report("analysing reference", 0.12, "fitting the voice")
        loop = asyncio.get_running_loop()
        progress: list[tuple[int, int]] = []

        def step(done: int, total: int) -> None:
            progress.append((done, total))

        calibration = await ctx.run_blocking(synthesize, CALIBRATION_TEXT, settings)
        fitting = loop.run_in_executor(
            None, lambda: fit(reference, calibration, voices.DEFAULT_VOICE, speaker.fitter(), step)
        )
        while not fitting.done():  # progress and cancellation while the fit runs
            await asyncio.sleep(0.25)
            if progress:
                done, total = progress[-1]
                await stages.report("analysing reference", 0.12 + 0.88 * done / total,
                                    f"candidate {done} of {total}", coalesce=True)  # fmt: skip
        try:
            profile, fit_score = await fitting
        except ValueError as e:
            raise JobFailed(f"the reference recording cannot be used: {e}") from None
        await ctx.log(
            f"fitted warp {profile.warp:g}, eq {profile.eq:g} (fit score {fit_score:.3f})"
        )

        started = time.perf_counter()
        if mode == "text":
            await stages.report("synthesising", 0.1, f"{len(text)} characters in the base voice")
            try:
                base = await ctx.run_blocking(synthesize, text, settings)
            except EngineError as e:
                raise JobFailed(str(e)) from None
        else:
            source = ctx.dispatch.files.get(roles.SOURCE)
            if source is None or not source.sha256:
                raise JobFailed("voice conversion needs the source recording (source_file_id)")
            await stages.report("synthesising", 0.1, "decoding the source recording")
            base = decode(await ctx.file_bytes(source), "source recording", ctx.max_audio_seconds)
            if await ctx.run_blocking(ref_check.speech_seconds, base) < 0.5:
                raise JobFailed("the source recording has no speech to convert")
        await stages.report("synthesising", 0.5, "converting into the reference voice")
        try:
            cloned = await ctx.run_blocking(voice_profile.convert, base, profile)
        except ValueError as e:
            raise JobFailed(f"the speech cannot be converted: {e}") from None
        compute = time.perf_counter() - started

        await stages.report("post-processing", 0, "loudness and encoding")
        cloned = audio.normalize_loudness(cloned, RATE, settings.tts.target_lufs)
        data, media_type, extension, out_rate = await ctx.run_blocking(
            audio.encode, cloned, RATE, params.format
        )
        meta: dict[str, Any] = {
            "mode": mode, "method": METHOD, "base_voice": profile.base_voice,
            "reference_seconds": round(report.seconds, 2),
            "reference_speech_seconds": round(report.speech_seconds, 2),
            "duration_seconds": round(len(cloned) / RATE, 3), "sample_rate": out_rate,
            "warp": profile.warp, "eq": profile.eq, "fit_score": round(fit_score, 4),
            "rtf": round(compute / (len(cloned) / RATE), 4),
        }  # fmt: skip
        if settings.cloning.measure:
            await stages.report("post-processing", 0.4, "measuring similarity and intelligibility")
            judge = await ctx.run_blocking(speaker.judge)
            target = await ctx.run_blocking(judge.embed, reference)
            clone_sim = speaker.cosine(target, await ctx.run_blocking(judge.embed, cloned))
            base_sim = speaker.cosine(target, await ctx.run_blocking(judge.embed, base))
            meta.update(similarity_clone=round(clone_sim, 4), similarity_base=round(base_sim, 4),
                        similarity_gain=round(clone_sim - base_sim, 4),
                        similarity_encoder=judge.name)  # fmt: skip
            if mode == "text":
                heard = await ctx.run_blocking(transcribe, cloned, settings.cloning)
                meta.update(
                    wer=round(word_error_rate(text, heard), 4), asr_model=settings.cloning.asr_model
                )
                await ctx.log(f"heard back: {heard}")
        files = [Output(f"cloned.{extension}", data, media_type, roles.AUDIO)]
        saved = params.save_as_voice.strip()
        if saved:
            files.append(Output("voice.json", json.dumps(profile.to_json()).encode(),
                                "application/json", roles.VOICE))  # fmt: skip
            meta["saved_voice"] = saved
        return Outcome(files=files, meta=meta, voice_profile=profile.to_json() if saved else None)

    return handle


async def _bark_clone(
    ctx: JobContext, stages: Stages[None], settings: WorkerSettings, reference: np.ndarray,
    report: ref_check.ReferenceReport, params: jobs_pb2.VoiceCloningParams,
) -> Outcome:  # fmt: skip
    """Text in the reference voice through a Bark speaker prompt (see bark_prompt.py)."""
    text = params.text.strip()
    if not text:
        raise JobFailed(
            "the bark-prompt engine speaks text; voice conversion needs the world engine"
        )
    if params.save_as_voice.strip():
        raise JobFailed(
            "voices made with the bark-prompt engine cannot be saved; use the world engine"
        )
    voice = voices.CATALOG[voices.DEFAULT_FOR_ENGINE["bark"]]
    try:
        engine = await ctx.run_blocking(for_voice, voice, settings.tts)
    except EngineError as e:
        raise JobFailed(str(e)) from None
    assert isinstance(engine, BarkEngine)
    await stages.report("analysing reference", 0.25, "transcribing the reference")
    transcript = await ctx.run_blocking(transcribe, reference, settings.cloning)
    await stages.report(
        "analysing reference", 0.6, "encoding the reference into a Bark speaker prompt"
    )
    prompt = await ctx.run_blocking(
        bark_prompt.speaker_prompt, engine, reference, RATE, transcript,
        settings.tts.bark_max_semantic_tokens,
    )  # fmt: skip
    await ctx.log(f"Bark speaker prompt: {len(prompt['semantic_prompt'])} semantic tokens, "
                  f"{prompt['coarse_prompt'].shape[1]} acoustic frames")  # fmt: skip
    pieces = text_split.split(text)
    parts: list[np.ndarray] = []
    started = time.perf_counter()
    for i, (sentence, _) in enumerate(pieces):
        said = await ctx.run_blocking(engine.generate, sentence, prompt)
        parts += [
            audio.resample(said, engine.sample_rate, RATE),
            np.zeros(int(0.25 * RATE), np.float32),
        ]
        await stages.report("synthesising", (i + 1) / len(pieces),
                            f"sentence {i + 1} of {len(pieces)}")  # fmt: skip
    cloned = np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)
    compute = time.perf_counter() - started
    await stages.report("post-processing", 0.25, "loudness and encoding")
    cloned = audio.normalize_loudness(cloned, RATE, settings.tts.target_lufs)
    data, media_type, extension, out_rate = await ctx.run_blocking(
        audio.encode, cloned, RATE, params.format
    )
    duration = len(cloned) / RATE
    meta: dict[str, Any] = {
        "mode": "text", "method": "bark speaker prompt (EnCodec codes + transcript semantics)",
        "engine": engine.name, "reference_seconds": round(report.seconds, 2),
        "prompt_semantic_tokens": len(prompt["semantic_prompt"]),
        "prompt_acoustic_frames": int(prompt["coarse_prompt"].shape[1]),
        "duration_seconds": round(duration, 3), "sample_rate": out_rate,
        "rtf": round(compute / duration, 4) if duration else 0.0,
    }  # fmt: skip
    if settings.cloning.measure:
        judge = await ctx.run_blocking(speaker.judge)
        target = await ctx.run_blocking(judge.embed, reference)
        meta["similarity_clone"] = round(
            speaker.cosine(target, await ctx.run_blocking(judge.embed, cloned)), 4
        )
    return Outcome(files=[Output(f"cloned.{extension}", data, media_type, roles.AUDIO)], meta=meta)
