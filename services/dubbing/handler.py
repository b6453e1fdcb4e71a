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

import functools
import io
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from services.dubbing import mix, timing
from services.dubbing.config import WorkerSettings
from voxmesh import audio, roles
from voxmesh.speech import diarize, languages, speaker, voice_profile, voices
from voxmesh.speech import subtitles as formats
from voxmesh.speech.fitting import CALIBRATION_TEXT
from voxmesh.speech.fitting import fit as fit_profile
from voxmesh.speech.measures import word_error_rate
from voxmesh.speech.stt import Options, Segment
from voxmesh.speech.stt import load as load_stt
from voxmesh.speech.translate import LANGUAGES, Translator, translator
from voxmesh.speech.tts import EngineError, speak
from voxmesh.speech.voice_profile import VoiceProfile
from voxmesh.stages import Stages
from voxmesh.v1 import jobs_pb2
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
    speaker: str = ""
    """Who says it ("SPEAKER_01"), when more than one person speaks."""


def _transcribe(
    samples: np.ndarray, language: str, settings: WorkerSettings
) -> tuple[str, list[Segment]]:
    engine = load_stt(settings.dubbing.stt_model)
    result = engine.transcribe(
        samples, Options(language=language or None, beam_size=5, vad_filter=True)
    )
    return result.language, [s for s in result.segments if s.text.strip()]


def _trim(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.where(np.abs(samples) > threshold)[0]
    return samples[max(0, loud[0] - 480) : loud[-1] + 480] if len(loud) else samples


def _subtitles(segments: list[DubSegment], attr: str) -> tuple[str, str]:
    as_stt = [Segment(s.start, max(s.end, s.placed_end if attr == "translation" else s.end),
                      getattr(s, attr), 0.0, 0.0, speaker=s.speaker) for s in segments]  # fmt: skip
    return formats.to_srt(as_stt), formats.to_vtt(as_stt)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


PROGRESS = {
    "decoding": (0, 3),
    "transcribing": (3, 20),
    "diarizing": (20, 25),
    "translating": (25, 35),
    "voice": (35, 40),
    "synthesising": (40, 80),
    "mixing": (80, 85),
    "encoding": (85, 90),
    "measuring": (90, 100),
}


@dataclass
class Dub:
    """The state the stages share: each reads what earlier ones filled in."""

    ctx: JobContext
    settings: WorkerSettings
    params: jobs_pb2.DubbingParams
    target: str
    source_lang: str
    revising: bool
    raw: bytes = b""
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    total: float = 0.0
    is_video: bool = False
    found: list[Segment] = field(default_factory=list)
    segments: list[DubSegment] = field(default_factory=list)
    previous_audio: dict[str, np.ndarray] = field(default_factory=dict)
    profile: VoiceProfile | None = None
    base_voice: voices.Voice | None = None
    """The first speaker's voice (the only one's, in a one-person recording)."""
    voices: dict[str, tuple[voices.Voice, VoiceProfile | None]] = field(default_factory=dict)
    """Each speaker's base voice and profile, by label ("" when one person speaks)."""
    profiles: dict[str, VoiceProfile] = field(default_factory=dict)
    """A revision: the revised job's profile per speaker."""
    placements: list[tuple[float, np.ndarray]] = field(default_factory=list)
    plain: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """The same placements without voice conversion, for the similarity comparison."""
    synthesized: int = 0
    dubbed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    files: list[Output] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def speak(self, text: str, speaker: str = "", *, trim: bool = True) -> np.ndarray:
        """`text` in the speaker's base voice, 16 kHz, sentences joined with short pauses (a
        dub is tight on time), leading and trailing silence trimmed unless `trim` is off."""
        base_voice = self.voices[speaker][0] if speaker in self.voices else self.base_voice
        assert base_voice is not None
        said = speak(text, base_voice, self.settings.tts, pause_seconds=0.15, rate=RATE)
        return _trim(said) if trim else said

    def in_voice(self, base: np.ndarray, speaker: str = "") -> np.ndarray:
        profile = self.voices[speaker][1] if speaker in self.voices else self.profile
        return base if profile is None else voice_profile.convert(base, profile)

    @property
    def speakers(self) -> list[str]:
        """The speaker labels, in order of first appearance ("" alone in a one-person dub)."""
        return list(dict.fromkeys(s.speaker for s in self.segments)) or [""]


async def decoding(st: Stages[Dub], dub: Dub) -> None:
    dub.raw = await dub.ctx.input_bytes()
    try:
        dub.source = await dub.ctx.run_blocking(
            audio.decode, dub.raw, RATE, dub.ctx.max_audio_seconds
        )
    except audio.AudioError as e:
        raise JobFailed(f"the input cannot be dubbed: {e}") from None
    except Exception as e:
        raise JobFailed(f"the input could not be decoded as audio or video: {e}") from None
    dub.total = len(dub.source) / RATE
    if dub.total < 1:
        raise JobFailed("the input is shorter than a second; there is nothing to dub")
    dub.is_video = await dub.ctx.run_blocking(mix.video_stream, dub.raw)


async def transcribing(st: Stages[Dub], dub: Dub) -> None:
    ctx = dub.ctx
    if dub.revising:
        (dub.segments, dub.profile, dub.profiles, dub.previous_audio,
         dub.source_lang) = await _load_revision(ctx, dub.params, dub.target)  # fmt: skip
        await st.report(
            "transcribing", 1, f"reusing {len(dub.segments)} segments of the revised job"
        )
        return
    await st.report("transcribing", 0, f"{dub.total:.0f} s of audio")
    diarizing = dub.params.num_speakers != 1 and dub.settings.dubbing.diarize
    # Segment timestamps as Whisper gives them without word timestamps (those move segment
    # edges, and the dub's slots follow the edges); a segment goes to whoever says most of it.
    detected, found = await ctx.run_blocking(_transcribe, dub.source, dub.source_lang, dub.settings)
    dub.source_lang = dub.source_lang or detected
    if not found:
        raise JobFailed("no speech was found in the input")
    if diarizing:
        await st.report("diarizing", 0, "finding who speaks when")
        try:
            await ctx.run_blocking(diarize.load)
            turns = await ctx.run_blocking(
                functools.partial(diarize.diarize, dub.source, num_speakers=dub.params.num_speakers)
            )
        except diarize.DiarizationError as e:
            raise JobFailed(str(e)) from None
        talk = diarize.talk_time(turns)
        if len(talk) > 1:
            found = diarize.assign(found, turns)
            await ctx.log(
                f"{len(talk)} speakers: "
                + ", ".join(f"{formats.display(k)} {v:.1f} s" for k, v in talk.items())
            )
        else:
            found = [replace(s, speaker="", words=[]) for s in found]
    if (dub.source_lang, dub.target) not in languages.TRANSLATION_PAIRS:
        raise JobFailed(
            f"dubbing {dub.source_lang} → {dub.target} is not available: the shipped "
            f"translation models cover {languages.pairs_text()}"
        )
    dub.found = sentences(found)
    await ctx.log(f"{len(dub.found)} segments in {dub.source_lang}")


async def translating(st: Stages[Dub], dub: Dub) -> None:
    if dub.revising:
        return
    mt = translator()
    for i, s in enumerate(dub.found):
        translated = await dub.ctx.run_blocking(mt.translate, s.text, dub.source_lang, dub.target)
        dub.segments.append(DubSegment(
            i, round(s.start, 3), round(s.end, 3), s.text.strip(), translated, speaker=s.speaker
        ))  # fmt: skip
        await st.report("translating", (i + 1) / len(dub.found),
                        f"segment {i + 1} of {len(dub.found)}, {dub.source_lang} → {dub.target}",
                        coalesce=True)  # fmt: skip


async def voicing(st: Stages[Dub], dub: Dub) -> None:
    """Each speaker's voice: a stock voice as named (per speaker, or for all), else the target
    language's voice nearest their pitch, converted into a saved voice or into the speaker's
    own voice (fitted from their own segments). Speakers of the same gender get different base
    voices while there are enough."""
    used: set[str] = set()
    for label in dub.speakers:
        dub.voices[label] = await _voice_for(st, dub, label, used)
        used.add(dub.voices[label][0].id)
    dub.base_voice, dub.profile = dub.voices[dub.speakers[0]]


async def _voice_for(
    st: Stages[Dub], dub: Dub, label: str, used: set[str]
) -> tuple[voices.Voice, VoiceProfile | None]:
    ctx = dub.ctx
    chosen = dub.params.speaker_voices.get(label) or dub.params.voice
    own = [s for s in dub.segments if s.speaker == label]
    reference = _speaker_reference(dub.source, own, dub.settings.dubbing.max_reference_seconds)
    gender = await ctx.run_blocking(_voice_gender, reference)
    who = f" of {formats.display(label)}" if label else ""
    if chosen in voices.CATALOG:
        base_voice = voices.CATALOG[chosen]
        if languages.base(base_voice.language) != dub.target:
            raise JobFailed(f"the voice {chosen} speaks {base_voice.language}, not {dub.target}")
        return base_voice, None
    try:
        choices = voices.all_for_language(dub.target, gender)
    except KeyError as e:
        raise JobFailed(str(e)) from None
    base_voice = next((v for v in choices if v.id not in used), choices[0])
    if chosen:
        return base_voice, ctx.saved_voice(chosen)
    if label in dub.profiles or (not label and dub.profile is not None):  # a revision
        profile = dub.profiles.get(label) or dub.profile
        assert profile is not None
        return voices.CATALOG.get(profile.base_voice, base_voice), profile
    await st.report("voice", 0.2, f"fitting the voice{who} from the recording")
    mt = translator()
    calibration_text = (
        await ctx.run_blocking(mt.translate, CALIBRATION_TEXT, "en", dub.target)
        if dub.target != "en"
        else CALIBRATION_TEXT
    )
    calibration = await ctx.run_blocking(
        lambda: speak(calibration_text, base_voice, dub.settings.tts, pause_seconds=0.15, rate=RATE)
    )
    try:
        fitted, score = await ctx.run_blocking(
            fit_profile, reference, calibration, base_voice.id, speaker.fitter()
        )
    except ValueError as e:
        raise JobFailed(f"the voice{who} could not be analysed: {e}") from None
    await ctx.log(
        f"voice{who} fitted on {base_voice.id}: warp {fitted.warp:g}, eq {fitted.eq:g} "
        f"(score {score:.3f})"
    )
    return base_voice, fitted


async def synthesising(st: Stages[Dub], dub: Dub) -> None:
    """Each segment in the voice, fitted into its slot: spill into silence, stretch up to
    max_stretch, re-phrase shorter; a revision reuses every unedited segment's speech."""
    ctx, segments = dub.ctx, dub.segments
    max_stretch = dub.params.max_stretch or 1.3
    edited = {e.index for e in dub.params.edits}
    prev_end = 0.0
    mt_shorter: Translator | None = None
    for n, seg in enumerate(segments):
        next_start = segments[n + 1].start if n + 1 < len(segments) else dub.total + 2.0
        key = f"segment_{seg.index}"
        reuse = dub.revising and seg.index not in edited and key in dub.previous_audio
        if reuse:
            spoken = base = dub.previous_audio[key]
        else:
            try:
                base = await ctx.run_blocking(dub.speak, seg.translation, seg.speaker)
            except EngineError as e:
                raise JobFailed(str(e)) from None
            spoken = await ctx.run_blocking(dub.in_voice, base, seg.speaker)
            dub.synthesized += 1
        seg.natural_seconds = round(len(spoken) / RATE, 3)
        seg.duration_ratio = round(seg.natural_seconds / max(0.05, seg.end - seg.start), 3)
        # Where it starts: on time, or a little late (at most MAX_DELAY) if the previous
        # segment spilled past this one's start.
        place = min(max(seg.start, prev_end), seg.start + timing.MAX_DELAY)
        slot_end = max(seg.end, place + 0.05)
        fitted = timing.fit(spoken, place, slot_end, next_start, max_stretch)
        if fitted.overflow_seconds > 0.05 and not reuse and dub.source_lang in LANGUAGES:
            mt_shorter = mt_shorter or translator()
            shorter = await ctx.run_blocking(
                mt_shorter.shorter, seg.text, dub.source_lang, dub.target
            )
            if shorter and len(shorter) < len(seg.translation):
                again = await ctx.run_blocking(dub.speak, shorter, seg.speaker)
                again = await ctx.run_blocking(dub.in_voice, again, seg.speaker)
                refit = timing.fit(again, place, slot_end, next_start, max_stretch)
                if refit.overflow_seconds < fitted.overflow_seconds:
                    seg.translation, seg.rephrased, fitted, base = shorter, True, refit, again
        seg.stretch = round(fitted.stretch, 3)
        seg.spilled = fitted.spilled
        seg.delay_seconds = round(place - seg.start, 3)
        seg.placed_start = round(place, 3)
        seg.placed_end = round(place + len(fitted.audio) / RATE, 3)
        prev_end = seg.placed_end
        dub.placements.append((place, fitted.audio))
        dub.plain.append((place, timing.fit(base, place, slot_end, next_start, max_stretch).audio))
        await st.report("synthesising", (n + 1) / len(segments),
                        f"segment {n + 1} of {len(segments)}", coalesce=True)  # fmt: skip
    for seg, following in zip(segments, [*segments[1:], None], strict=True):
        # Overflow: how far a segment runs past the start of the next one, as placed.
        limit = following.placed_start if following is not None else dub.total + 2.0
        seg.overflow_seconds = round(max(0.0, seg.placed_end - limit), 3)


async def mixing(st: Stages[Dub], dub: Dub) -> None:
    await st.report("mixing", 0, "placing segments at their original times")
    keep = dub.params.keep_background
    dub.dubbed = mix.mix(
        dub.total, dub.placements, dub.source if keep else None, dub.settings.dubbing.background_db
    )


async def encoding(st: Stages[Dub], dub: Dub) -> None:
    ctx, segments = dub.ctx, dub.segments
    dub.dubbed = audio.normalize_loudness(dub.dubbed, RATE, dub.settings.tts.target_lufs)
    data, media_type, extension, out_rate = await ctx.run_blocking(
        audio.encode, dub.dubbed, RATE, dub.params.format
    )
    dub.files = [Output(f"dubbed.{extension}", data, media_type, roles.AUDIO)]
    if dub.is_video:
        try:
            video, video_type, video_ext = await ctx.run_blocking(
                mix.mux, dub.raw, dub.dubbed, RATE
            )
            dub.files.insert(0, Output(f"dubbed.{video_ext}", video, video_type, roles.VIDEO))
        except Exception as e:  # the audio is still delivered
            await ctx.log(f"could not put the dub back into the video: {e}")
    assert dub.base_voice is not None
    dub.meta = {
        "source_language": dub.source_lang, "target_language": dub.target,
        "segments": len(segments), "synthesized_segments": dub.synthesized,
        "revised_job_id": dub.params.revise_job_id,
        "voice": dub.params.voice or "the speaker's own (fitted)", "base_voice": dub.base_voice.id,
        "speakers": len(dub.voices),
        **({"speaker_voices": {formats.display(k): v.id + (" (fitted)" if p else "")
                               for k, (v, p) in dub.voices.items()}}
           if len(dub.voices) > 1 else {}),
        "duration_seconds": round(len(dub.dubbed) / RATE, 3), "sample_rate": out_rate,
        "overflow_seconds": round(sum(s.overflow_seconds for s in segments), 3),
        "segments_overflowing": sum(s.overflow_seconds > 0.05 for s in segments),
        "max_duration_ratio": max(s.duration_ratio for s in segments),
        "mean_duration_ratio": round(float(np.mean([s.duration_ratio for s in segments])), 3),
        "max_stretch_applied": max(s.stretch for s in segments),
        "max_delay_seconds": max(s.delay_seconds for s in segments),
        "rephrased_segments": sum(s.rephrased for s in segments),
        "video": dub.is_video, "keep_background": dub.params.keep_background,
    }  # fmt: skip


async def measuring(st: Stages[Dub], dub: Dub) -> None:
    await st.report("measuring", 0, "intelligibility and speaker similarity")
    dub.meta.update(
        await _measure(dub.ctx, dub.settings, dub.source, dub.segments, dub.placements,
                       dub.plain, dub.total, dub.target)
    )  # fmt: skip
    if len(dub.speakers) > 1:
        dub.meta["speaker_similarity"] = await _similarity_matrix(dub)


async def _similarity_matrix(dub: Dub) -> dict[str, dict[str, float]]:
    """How close each speaker's dubbed voice is to each source speaker (resemblyzer cosine):
    {dubbed speaker: {source speaker: similarity}}; each row's best should be its own."""
    ctx = dub.ctx
    judge = await ctx.run_blocking(speaker.judge)
    sources, dubbed = {}, {}
    for label in dub.speakers:
        own = [s for s in dub.segments if s.speaker == label]
        sources[label] = await ctx.run_blocking(
            judge.embed, _speaker_reference(dub.source, own, 30.0)
        )
        placed = [
            p for p, s in zip(dub.placements, dub.segments, strict=True) if s.speaker == label
        ]
        dubbed[label] = await ctx.run_blocking(
            judge.embed, np.concatenate([samples for _, samples in placed])
        )
    matrix = {
        formats.display(d): {
            formats.display(src): round(speaker.cosine(dubbed[d], sources[src]), 4)
            for src in dub.speakers
        }
        for d in dub.speakers
    }
    await ctx.log(f"speaker similarity (dubbed → source): {matrix}")
    return matrix


def _documents(dub: Dub) -> list[Output]:
    """Subtitles in both languages, the segments, their speech and the voice (what a revision
    reuses, by role)."""
    source_srt, source_vtt = _subtitles(dub.segments, "text")
    target_srt, target_vtt = _subtitles(dub.segments, "translation")
    document = {"meta": dub.meta, "segments": [asdict(s) for s in dub.segments]}
    out = [
        Output(f"subtitles.{dub.source_lang}.srt", source_srt.encode(), "application/x-subrip", roles.SUBTITLES),
        Output(f"subtitles.{dub.source_lang}.vtt", source_vtt.encode(), "text/vtt", roles.SUBTITLES),
        Output(f"subtitles.{dub.target}.srt", target_srt.encode(), "application/x-subrip", roles.SUBTITLES),
        Output(f"subtitles.{dub.target}.vtt", target_vtt.encode(), "text/vtt", roles.SUBTITLES),
        Output("segments.json", json.dumps(document, ensure_ascii=False, indent=1).encode(),
               "application/json", roles.SEGMENTS),
        Output("segment-audio.npz",
               _npz({f"segment_{s.index}": a for s, (_, a) in zip(dub.segments, dub.placements, strict=True)}),
               "application/octet-stream", roles.SEGMENT_AUDIO),
    ]  # fmt: skip
    fitted = {label: p for label, (_, p) in dub.voices.items() if p is not None}
    if len(dub.voices) > 1 and fitted:
        document_voices = {"speakers": {label: p.to_json() for label, p in fitted.items()}}
        out.append(Output("voice.json", json.dumps(document_voices).encode(),
                          "application/json", roles.VOICE))  # fmt: skip
    elif dub.profile is not None:
        out.append(Output("voice.json", json.dumps(dub.profile.to_json()).encode(),
                          "application/json", roles.VOICE))  # fmt: skip
    return out


def make_handler(settings: WorkerSettings) -> Handler:
    async def handle(ctx: JobContext) -> Outcome:
        p = ctx.params_as(jobs_pb2.DubbingParams)
        dub = Dub(
            ctx, settings, p, target=languages.base(p.target_language),
            source_lang=languages.base(p.source_language) if p.source_language else "",
            revising=bool(p.revise_job_id),
        )  # fmt: skip
        plan = [("decoding", decoding), ("transcribing", transcribing),
                ("translating", translating), ("voice", voicing),
                ("synthesising", synthesising), ("mixing", mixing), ("encoding", encoding)]  # fmt: skip
        if settings.dubbing.measure:
            plan.append(("measuring", measuring))
        stages: Stages[Dub] = Stages(ctx, PROGRESS)
        await stages.run(dub, plan)
        return Outcome(files=dub.files + _documents(dub), meta=dub.meta)

    return handle


def sentences(found: list[Segment], max_seconds: float = 15.0) -> list[Segment]:
    """Whisper's segments merged into whole sentences where it cut one in two (no sentence end,
    no pause between, the same speaker): a sentence translates better whole, and its parts'
    time slots pool."""
    merged: list[Segment] = []
    for seg in found:
        last = merged[-1] if merged else None
        if (last is not None and not re.search(r"[.!?…]['\"»”]?$", last.text.strip())
                and seg.start - last.end < 0.3 and seg.end - last.start <= max_seconds
                and seg.speaker == last.speaker):  # fmt: skip
            merged[-1] = Segment(last.start, seg.end, f"{last.text.strip()} {seg.text.strip()}",
                                 min(last.avg_logprob, seg.avg_logprob), last.no_speech_prob,
                                 speaker=seg.speaker)  # fmt: skip
        else:
            merged.append(Segment(seg.start, seg.end, seg.text.strip(), seg.avg_logprob,
                                  seg.no_speech_prob, speaker=seg.speaker))  # fmt: skip
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
    ctx: JobContext, p: jobs_pb2.DubbingParams, target: str
) -> tuple[
    list[DubSegment], VoiceProfile | None, dict[str, VoiceProfile], dict[str, np.ndarray], str
]:
    """The revised job's segments (with the edits applied), voice profile (or one per speaker)
    and segment speech, from the files its dispatch carried by role."""
    stored = ctx.dispatch.files
    segments_key, audio_key = roles.revised(roles.SEGMENTS), roles.revised(roles.SEGMENT_AUDIO)
    if segments_key not in stored or audio_key not in stored:
        raise JobFailed("the revised job's segments are missing; dub the recording again instead")
    document = json.loads(await ctx.file_bytes(stored[segments_key]))
    with np.load(io.BytesIO(await ctx.file_bytes(stored[audio_key]))) as npz:
        previous = {k: npz[k] for k in npz.files}
    profile, profiles = None, {}
    if roles.revised(roles.VOICE) in stored:
        saved = json.loads(await ctx.file_bytes(stored[roles.revised(roles.VOICE)]))
        if "speakers" in saved:
            profiles = {k: VoiceProfile.from_json(v) for k, v in saved["speakers"].items()}
        else:
            profile = VoiceProfile.from_json(saved)
    source_lang = str(document["meta"]["source_language"])
    if document["meta"]["target_language"] != target:
        raise JobFailed("a revision keeps the revised job's target language")
    segments = [DubSegment(**{k: v for k, v in s.items() if k in DubSegment.__dataclass_fields__})
                for s in document["segments"]]  # fmt: skip
    by_index = {s.index: s for s in segments}
    mt: Translator | None = None
    for edit in p.edits:
        seg = by_index.get(edit.index)
        if seg is None:
            raise JobFailed(f"segment {edit.index} does not exist (0 to {len(segments) - 1})")
        if edit.text:
            seg.text = edit.text
        if edit.translation:
            seg.translation = edit.translation
        elif edit.text:
            mt = mt or translator()
            seg.translation = await ctx.run_blocking(mt.translate, seg.text, source_lang, target)
        await ctx.log(f"segment {seg.index} edited: {seg.translation}")
    return segments, profile, profiles, previous, source_lang
