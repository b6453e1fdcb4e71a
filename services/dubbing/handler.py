"""The DUBBING handler, in stages with progress:

decoding → transcribing (Whisper, segments) → translating (Bergamot, per segment) → voice (the
source speaker's voice profile, fitted from the recording itself, or a saved/stock voice) →
synthesising (the target language's voice, converted into the speaker's) → fitting (each
segment into its time slot: spill into silence, WSOLA stretch up to max_stretch, re-phrase) →
mixing (at the original timestamps, over the ducked original or silence) → encoding (audio, or
back into the video) → measuring (duration ratios and overflow, Whisper round-trip WER against
the translation, speaker similarity to the source with and without the voice conversion).

A revision (`revise_job_id` + `edits`) reuses the revised job's transcript, translations, voice
profile and the speech of every unedited segment: only edited segments are synthesised again.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.cloning import speaker
from services.cloning.fitting import CALIBRATION_TEXT
from services.cloning.fitting import fit as fit_profile
from services.dubbing import mix, timing
from services.dubbing.config import WorkerSettings
from services.dubbing.translate import LANGUAGES, PAIRS, Translator, translator
from services.stt import formats
from services.stt.engines import Options, Segment
from services.stt.engines import load as load_stt
from services.tts.engines import EngineError, speak
from voxmesh import audio, voice_profile, voices
from voxmesh.voice_profile import VoiceProfile
from voxmesh.worker import Handler, JobContext, JobFailed, Outcome, Output

RATE = voice_profile.RATE


@dataclass
class DubSegment:
    index: int
    start: float
    end: float
    text: str
    translation: str
    natural_seconds: float = 0.0
    duration_ratio: float = 0.0
    """Synthesised speech length / source slot length, before fitting."""
    stretch: float = 1.0
    spilled: bool = False
    rephrased: bool = False
    overflow_seconds: float = 0.0
    """How far it runs past the next segment's start in the dub (the goal: 0)."""
    delay_seconds: float = 0.0
    """How much later than in the source it starts (a previous segment spilled into its slot)."""
    placed_start: float = 0.0
    placed_end: float = 0.0


def _transcribe(
    samples: np.ndarray, language: str, settings: WorkerSettings
) -> tuple[str, list[Segment]]:
    engine = load_stt(settings.dubbing.stt_model)
    result = engine.transcribe(
        samples, Options(language=language or None, beam_size=5, vad_filter=True)
    )
    return result.language, [s for s in result.segments if s.text.strip()]


def _speak(text: str, voice: voices.Voice, settings: WorkerSettings) -> np.ndarray:
    """`text` in `voice`, 16 kHz, sentences joined with short pauses (a dub is tight on time)."""
    return speak(text, voice, settings.tts, pause_seconds=0.15, rate=RATE)


def _trim(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.where(np.abs(samples) > threshold)[0]
    return samples[max(0, loud[0] - 480) : loud[-1] + 480] if len(loud) else samples


def _subtitles(segments: list[DubSegment], attr: str) -> tuple[str, str]:
    as_stt = [Segment(s.start, max(s.end, s.placed_end if attr == "translation" else s.end),
                      getattr(s, attr), 0.0, 0.0) for s in segments]  # fmt: skip
    return formats.to_srt(as_stt), formats.to_vtt(as_stt)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def make_handler(settings: WorkerSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        p = ctx.params
        target = str(p.get("target_language", "")).split("-")[0].lower()
        source_lang = str(p.get("source_language", "")).split("-")[0].lower()
        max_stretch = float(p.get("max_stretch") or 1.3)
        revising = bool(p.get("revise_job_id"))

        await ctx.progress(1, "decoding", "")
        raw = await ctx.input_bytes()
        try:
            source = await ctx.run_blocking(audio.decode, raw, RATE)
        except Exception as e:
            raise JobFailed(f"the input could not be decoded as audio or video: {e}") from None
        total = len(source) / RATE
        if total < 1:
            raise JobFailed("the input is shorter than a second; there is nothing to dub")
        is_video = await ctx.run_blocking(mix.video_stream, raw)

        previous_audio: dict[str, np.ndarray] = {}
        profile: VoiceProfile | None = None
        if revising:
            segments, profile, previous_audio, source_lang = await _load_revision(ctx, p, target)
            await ctx.progress(
                30, "transcribing", f"reusing {len(segments)} segments of the revised job"
            )
        else:
            await ctx.progress(3, "transcribing", f"{total:.0f} s of audio")
            detected, found = await ctx.run_blocking(_transcribe, source, source_lang, settings)
            source_lang = source_lang or detected
            if not found:
                raise JobFailed("no speech was found in the input")
            if (source_lang, target) not in PAIRS:
                raise JobFailed(
                    f"dubbing {source_lang} → {target} is not available: the shipped translation "
                    f"models cover {', '.join(f'{a} → {b}' for a, b in sorted(PAIRS))}"
                )
            found = sentences(found)
            await ctx.log(f"{len(found)} segments in {source_lang}")
            await ctx.progress(
                25, "translating", f"{len(found)} segments, {source_lang} → {target}"
            )
            mt = translator()
            segments = []
            for i, s in enumerate(found):
                translated = await ctx.run_blocking(mt.translate, s.text, source_lang, target)
                segments.append(
                    DubSegment(i, round(s.start, 3), round(s.end, 3), s.text.strip(), translated)
                )
                await ctx.progress(25 + 10 * (i + 1) / len(found), "translating",
                                   f"segment {i + 1} of {len(found)}", coalesce=True)  # fmt: skip

        # The voice: a stock voice as named, else the target language's voice converted into a
        # saved voice or into the source speaker's own voice (fitted from the recording).
        chosen = str(p.get("voice", ""))
        reference = _speaker_reference(source, segments, settings.dubbing.max_reference_seconds)
        gender = await ctx.run_blocking(_voice_gender, reference)
        try:
            base_voice = (
                voices.CATALOG[chosen]
                if chosen in voices.CATALOG
                else voices.for_language(target, gender)
            )
        except KeyError as e:
            raise JobFailed(str(e)) from None
        if chosen in voices.CATALOG:
            if not base_voice.language.lower().startswith(target):
                raise JobFailed(f"the voice {chosen} speaks {base_voice.language}, not {target}")
            profile = None
        elif chosen:
            if ctx.voice_profile is None:
                raise JobFailed(f"the saved voice {chosen!r} no longer exists in this project")
            profile = VoiceProfile.from_json(ctx.voice_profile)
        elif profile is None:
            await ctx.progress(38, "voice", "fitting the speaker's voice from the recording")
            mt = translator()
            calibration_text = (
                await ctx.run_blocking(mt.translate, CALIBRATION_TEXT, "en", target)
                if target != "en"
                else CALIBRATION_TEXT
            )
            calibration = await ctx.run_blocking(_speak, calibration_text, base_voice, settings)
            try:
                speaker_profile, score = await ctx.run_blocking(
                    fit_profile, reference, calibration, base_voice.id, speaker.fitter()
                )
            except ValueError as e:
                raise JobFailed(f"the speaker's voice could not be analysed: {e}") from None
            profile = speaker_profile
            await ctx.log(
                f"speaker voice fitted: warp {speaker_profile.warp:g}, eq {speaker_profile.eq:g} "
                f"(score {score:.3f})"
            )

        edited = {int(e.get("index", -1)) for e in p.get("edits", [])}
        placements: list[tuple[float, np.ndarray]] = []
        plain: list[tuple[float, np.ndarray]] = []  # without conversion, for the comparison
        synthesized = 0
        prev_end = 0.0
        mt_shorter: Translator | None = None
        for n, seg in enumerate(segments):
            next_start = segments[n + 1].start if n + 1 < len(segments) else total + 2.0
            key = f"segment_{seg.index}"
            reuse = revising and seg.index not in edited and key in previous_audio
            if reuse:
                spoken = previous_audio[key]
                base = spoken
            else:
                try:
                    base = _trim(
                        await ctx.run_blocking(_speak, seg.translation, base_voice, settings)
                    )
                except EngineError as e:
                    raise JobFailed(str(e)) from None
                spoken = (
                    base
                    if profile is None
                    else await ctx.run_blocking(voice_profile.convert, base, profile)
                )
                synthesized += 1
            seg.natural_seconds = round(len(spoken) / RATE, 3)
            seg.duration_ratio = round(seg.natural_seconds / max(0.05, seg.end - seg.start), 3)
            # Where it starts: on time, or a little late (at most MAX_DELAY) if the previous
            # segment spilled past this one's start.
            place = min(max(seg.start, prev_end), seg.start + timing.MAX_DELAY)
            slot_end = max(seg.end, place + 0.05)
            fitted = timing.fit(spoken, place, slot_end, next_start, max_stretch)
            if fitted.overflow_seconds > 0.05 and not reuse and source_lang in LANGUAGES:
                mt_shorter = mt_shorter or translator()
                shorter = await ctx.run_blocking(mt_shorter.shorter, seg.text, source_lang, target)
                if shorter and len(shorter) < len(seg.translation):
                    again = _trim(await ctx.run_blocking(_speak, shorter, base_voice, settings))
                    again = (
                        again
                        if profile is None
                        else await ctx.run_blocking(voice_profile.convert, again, profile)
                    )
                    refit = timing.fit(again, place, slot_end, next_start, max_stretch)
                    if refit.overflow_seconds < fitted.overflow_seconds:
                        seg.translation, seg.rephrased, fitted, base = shorter, True, refit, again
            seg.stretch = round(fitted.stretch, 3)
            seg.spilled = fitted.spilled
            seg.delay_seconds = round(place - seg.start, 3)
            seg.placed_start = round(place, 3)
            seg.placed_end = round(place + len(fitted.audio) / RATE, 3)
            prev_end = seg.placed_end
            placements.append((place, fitted.audio))
            plain.append((place, timing.fit(base, place, slot_end, next_start, max_stretch).audio))
            await ctx.progress(40 + 40 * (n + 1) / len(segments), "synthesising",
                               f"segment {n + 1} of {len(segments)}", coalesce=True)  # fmt: skip

        for seg, following in zip(segments, [*segments[1:], None], strict=True):
            # Overflow: how far a segment runs past the start of the next one, as placed.
            limit = following.placed_start if following is not None else total + 2.0
            seg.overflow_seconds = round(max(0.0, seg.placed_end - limit), 3)
        await ctx.progress(82, "mixing", "placing segments at their original times")
        keep = bool(p.get("keep_background"))
        dubbed = mix.mix(
            total, placements, source if keep else None, settings.dubbing.background_db
        )
        await ctx.progress(86, "encoding", "")
        dubbed = audio.normalize_loudness(dubbed, RATE, settings.tts.target_lufs)
        fmt = str(p.get("format") or "AUDIO_FORMAT_WAV")
        data, media_type, extension, out_rate = await ctx.run_blocking(
            audio.encode, dubbed, RATE, fmt
        )
        files = [Output(f"dubbed.{extension}", data, media_type)]
        if is_video:
            try:
                video, video_type, video_ext = await ctx.run_blocking(mix.mux, raw, dubbed, RATE)
                files.insert(0, Output(f"dubbed.{video_ext}", video, video_type))
            except Exception as e:  # the audio is still delivered
                await ctx.log(f"could not put the dub back into the video: {e}")

        overflow = round(sum(s.overflow_seconds for s in segments), 3)
        meta: dict[str, Any] = {
            "source_language": source_lang, "target_language": target, "segments": len(segments),
            "synthesized_segments": synthesized, "revised_job_id": str(p.get("revise_job_id", "")),
            "voice": chosen or "the speaker's own (fitted)", "base_voice": base_voice.id,
            "duration_seconds": round(len(dubbed) / RATE, 3), "sample_rate": out_rate,
            "overflow_seconds": overflow,
            "segments_overflowing": sum(s.overflow_seconds > 0.05 for s in segments),
            "max_duration_ratio": max(s.duration_ratio for s in segments),
            "mean_duration_ratio": round(float(np.mean([s.duration_ratio for s in segments])), 3),
            "max_stretch_applied": max(s.stretch for s in segments),
            "max_delay_seconds": max(s.delay_seconds for s in segments),
            "rephrased_segments": sum(s.rephrased for s in segments),
            "video": is_video, "keep_background": keep,
        }  # fmt: skip
        if settings.dubbing.measure:
            await ctx.progress(90, "measuring", "intelligibility and speaker similarity")
            meta.update(
                await _measure(ctx, settings, source, segments, placements, plain, total, target)
            )
        source_srt, source_vtt = _subtitles(segments, "text")
        target_srt, target_vtt = _subtitles(segments, "translation")
        document = {"meta": meta, "segments": [asdict(s) for s in segments]}
        files += [
            Output(f"subtitles.{source_lang}.srt", source_srt.encode(), "application/x-subrip"),
            Output(f"subtitles.{source_lang}.vtt", source_vtt.encode(), "text/vtt"),
            Output(f"subtitles.{target}.srt", target_srt.encode(), "application/x-subrip"),
            Output(f"subtitles.{target}.vtt", target_vtt.encode(), "text/vtt"),
            Output("segments.json", json.dumps(document, ensure_ascii=False, indent=1).encode(), "application/json"),
            Output("segment-audio.npz", _npz({f"segment_{s.index}": a for s, (_, a) in zip(segments, placements, strict=True)}),
                   "application/octet-stream"),
        ]  # fmt: skip
        if profile is not None:
            files.append(
                Output("voice.json", json.dumps(profile.to_json()).encode(), "application/json")
            )
        return Outcome(files=files, meta=meta)

    return handle


def sentences(found: list[Segment], max_seconds: float = 15.0) -> list[Segment]:
    """Whisper's segments merged into whole sentences where it cut one in two (no sentence end,
    no pause between): a sentence translates better whole, and its parts' time slots pool."""
    merged: list[Segment] = []
    for seg in found:
        last = merged[-1] if merged else None
        if (last is not None and not re.search(r"[.!?…]['\"»”]?$", last.text.strip())
                and seg.start - last.end < 0.3 and seg.end - last.start <= max_seconds):  # fmt: skip
            merged[-1] = Segment(last.start, seg.end, f"{last.text.strip()} {seg.text.strip()}",
                                 min(last.avg_logprob, seg.avg_logprob), last.no_speech_prob)  # fmt: skip
        else:
            merged.append(
                Segment(seg.start, seg.end, seg.text.strip(), seg.avg_logprob, seg.no_speech_prob)
            )
    return merged


def _voice_gender(reference: np.ndarray) -> str:
    """The base voice to convert from: the one nearer in pitch (a median F0 above 165 Hz picks a
    female base voice), so the conversion shifts less and stays intelligible."""
    try:
        mean, _ = voice_profile.pitch_stats(voice_profile.analyse(reference[: RATE * 15]).f0)
    except ValueError:
        return "male"
    return "female" if float(np.exp(mean)) > 165 else "male"


def _speaker_reference(source: np.ndarray, segments: list[DubSegment], limit: float) -> np.ndarray:
    """The source speaker's speech (the transcribed segments), up to `limit` seconds."""
    parts, seconds = [], 0.0
    for s in segments:
        piece = source[int(s.start * RATE) : int(s.end * RATE)]
        parts.append(piece)
        seconds += len(piece) / RATE
        if seconds >= limit:
            break
    return np.concatenate(parts) if parts else source[: int(limit * RATE)]


async def _measure(
    ctx: JobContext, settings: WorkerSettings, source: np.ndarray, segments: list[DubSegment],
    placements: list[tuple[float, np.ndarray]], plain: list[tuple[float, np.ndarray]],
    total: float, target: str,
) -> dict[str, Any]:  # fmt: skip
    from services.cloning.handler import word_error_rate

    voice_only = mix.mix(total, placements, None, 0.0)
    engine = await ctx.run_blocking(load_stt, settings.dubbing.stt_model)
    result = await ctx.run_blocking(
        engine.transcribe, voice_only, Options(language=target, beam_size=5)
    )
    heard = " ".join(s.text.strip() for s in result.segments)
    expected = " ".join(s.translation for s in segments)
    judge = await ctx.run_blocking(speaker.judge)
    reference = await ctx.run_blocking(judge.embed, _speaker_reference(source, segments, 30.0))
    dub_similarity = speaker.cosine(reference, await ctx.run_blocking(judge.embed, voice_only))
    plain_similarity = speaker.cosine(
        reference, await ctx.run_blocking(judge.embed, mix.mix(total, plain, None, 0.0))
    )
    await ctx.log(f"heard back: {heard}")
    return {
        "wer": round(word_error_rate(expected, heard), 4), "asr_model": settings.dubbing.stt_model,
        "similarity_to_source": round(dub_similarity, 4),
        "similarity_without_voice": round(plain_similarity, 4),
        "similarity_encoder": judge.name,
    }  # fmt: skip


async def _load_revision(
    ctx: JobContext, p: dict[str, Any], target: str
) -> tuple[list[DubSegment], VoiceProfile | None, dict[str, np.ndarray], str]:
    """The revised job's segments (with the edits applied), voice profile and segment speech."""
    stored = ctx.dispatch.files
    if "revise:segments.json" not in stored or "revise:segment-audio.npz" not in stored:
        raise JobFailed("the revised job's segments are missing; dub the recording again instead")
    document = json.loads(await ctx.file_bytes(stored["revise:segments.json"]))
    with np.load(io.BytesIO(await ctx.file_bytes(stored["revise:segment-audio.npz"]))) as npz:
        previous = {k: npz[k] for k in npz.files}
    profile = None
    if "revise:voice.json" in stored:
        profile = VoiceProfile.from_json(
            json.loads(await ctx.file_bytes(stored["revise:voice.json"]))
        )
    source_lang = str(document["meta"]["source_language"])
    if document["meta"]["target_language"] != target:
        raise JobFailed("a revision keeps the revised job's target language")
    segments = [DubSegment(**{k: v for k, v in s.items() if k in DubSegment.__dataclass_fields__})
                for s in document["segments"]]  # fmt: skip
    by_index = {s.index: s for s in segments}
    mt: Translator | None = None
    for edit in p.get("edits", []):
        seg = by_index.get(int(edit.get("index", -1)))
        if seg is None:
            raise JobFailed(
                f"segment {edit.get('index')} does not exist (0 to {len(segments) - 1})"
            )
        if edit.get("text"):
            seg.text = str(edit["text"])
        if edit.get("translation"):
            seg.translation = str(edit["translation"])
        elif edit.get("text"):
            mt = mt or translator()
            seg.translation = await ctx.run_blocking(mt.translate, seg.text, source_lang, target)
        await ctx.log(f"segment {seg.index} edited: {seg.translation}")
    return segments, profile, previous, source_lang
