"""Settings of the voice cloning worker (environment: VOXMESH_CLONING__*, NATS_URL)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from voxmesh.settings import BaseWorkerSettings
from voxmesh.speech.tts import TtsSettings


class CloningSettings(BaseModel):
    engine: Literal["world", "bark-prompt"] = "world"
    """How voices are cloned: "world" (WORLD-vocoder conversion fitted per reference; ships
    with Voxmesh) or "bark-prompt" (a Bark speaker prompt made from the reference; needs Bark
    weights on the host, VOXMESH_TTS__BARK_DIR; text only, not saved as a project voice)."""
    min_reference_seconds: float = Field(default=3.0, ge=1)
    max_reference_seconds: float = Field(default=60.0, ge=5)
    min_speech_seconds: float = Field(default=2.0, ge=0.5)
    """Speech (by Silero VAD) the reference must contain."""
    min_loudness_lufs: float = -50.0
    """Quieter references are refused (mostly noise floor)."""
    measure: bool = True
    """Measure speaker similarity (resemblyzer) and intelligibility (Whisper) of every result."""
    asr_model: str = "tiny.en"
    """The Whisper model for the intelligibility round trip."""


class WorkerSettings(BaseWorkerSettings):
    cloning: CloningSettings = CloningSettings()
    tts: TtsSettings = TtsSettings()
    """The base voice's synthesis (text-to-speech cloning)."""
