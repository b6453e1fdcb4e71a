"""AI stories: a language model writes a story, TTS narrates it (services/stories)."""

from __future__ import annotations

from control.db.models import JobType
from control.kinds.base import (
    JobKind,
    UserDefaults,
    any_voice,
    audio_format,
    voice_id,
)
from control.validate import language_field, number_range, text_field
from voxmesh.errors import InvalidArgument
from voxmesh.speech import languages, voices, writer
from voxmesh.v1 import jobs_pb2


class AiStories(JobKind[jobs_pb2.AiStoriesParams]):
    job_type = JobType.AI_STORIES
    field = "ai_stories"
    voice_field = "voice"
    params_type = jobs_pb2.AiStoriesParams

    def fill(self, out: jobs_pb2.AiStoriesParams, defaults: UserDefaults) -> None:
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
        given = language_field(out.language, "ai_stories.language")
        out.language = given or defaults.default_language
        if languages.base(out.language) not in languages.STORY_LANGUAGES:
            source = "" if given else " (your default_language setting)"
            raise InvalidArgument(
                f"stories in {out.language!r}{source} are not available yet: the shipped writer "
                f"and narration voices cover {', '.join(sorted(languages.STORY_LANGUAGES))}; "
                "set ai_stories.language",
                field="ai_stories.language",
            )
        narrator = voice_id(out.voice, "ai_stories.voice")
        if not narrator and defaults.preferred_voice in voices.CATALOG:
            narrator = defaults.preferred_voice
        out.voice = any_voice(narrator, "", "ai_stories.voice", defaults)
        if out.dialogue_voice:
            out.dialogue_voice = any_voice(
                voice_id(out.dialogue_voice, "ai_stories.dialogue_voice"),
                "",
                "ai_stories.dialogue_voice",
                defaults,
            )
        out.writer = out.writer.strip().lower()
        if out.writer and out.writer not in writer.WRITERS:
            raise InvalidArgument(
                f"ai_stories.writer {out.writer[:40]!r} is not one of {', '.join(writer.WRITERS)}",
                field="ai_stories.writer",
            )
        if out.seed < 0:
            raise InvalidArgument("ai_stories.seed must be 0 or positive", field="ai_stories.seed")
        out.format = audio_format(out.format, "ai_stories.format")
