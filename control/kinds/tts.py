"""TTS: text to speech in a stock voice or a voice the project saved (services/tts)."""

from __future__ import annotations

from control.db.models import JobType
from control.kinds.base import (
    JobKind,
    UserDefaults,
    any_voice,
    audio_format,
    spoken_text,
    voice_id,
)
from control.validate import number_range
from voxmesh.errors import InvalidArgument
from voxmesh.speech import voices
from voxmesh.v1 import jobs_pb2


class Tts(JobKind[jobs_pb2.TtsParams]):
    job_type = JobType.TTS
    field = "tts"
    voice_field = "voice"
    params_type = jobs_pb2.TtsParams

    def fill(self, out: jobs_pb2.TtsParams, defaults: UserDefaults) -> None:
        out.text = spoken_text(out.text, "tts.text", defaults.max_text_length)
        out.engine = out.engine.strip().lower()
        if out.engine and out.engine not in voices.ENGINES:
            raise InvalidArgument(
                f"tts.engine {out.engine[:32]!r} is not one of {', '.join(voices.ENGINES)}",
                field="tts.engine",
            )
        chosen = voice_id(out.voice, "tts.voice")
        if not chosen and defaults.preferred_voice in voices.CATALOG:
            preferred = voices.CATALOG[defaults.preferred_voice]
            chosen = preferred.id if not out.engine or preferred.engine == out.engine else ""
        out.voice = any_voice(chosen, out.engine, "tts.voice", defaults)
        saved = out.voice.lower() in defaults.saved_voices
        out.engine = voices.CATALOG[voices.DEFAULT_VOICE if saved else out.voice].engine
        out.format = audio_format(out.format, "tts.format")
        out.speed = number_range(out.speed, "tts.speed", low=0.5, high=2.0, zero_means=1.0)
