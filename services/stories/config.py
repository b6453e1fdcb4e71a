"""Settings of the stories worker (environment: VOXMESH_STORIES__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from voxmesh.settings import BaseWorkerSettings
from voxmesh.speech.tts import TtsSettings


class StoriesSettings(BaseModel):
    base_url: str = ""
    """An OpenAI-compatible endpoint (e.g. "https://llm.example/v1") to write with instead of
    the local model; empty: the shipped Gemma 3 270M runs in this worker."""

    api_key: SecretStr | None = None
    """The endpoint's API key, sent as `Authorization: Bearer`."""

    model: str = "gemma-3-270m"
    """The model name sent to the endpoint."""

    threads: int = Field(default=2, ge=1, le=64)
    """CPU threads of the local model."""

    temperature: float = Field(default=0.8, ge=0, le=2)
    """Sampling temperature."""

    repeat_penalty: float = Field(default=1.15, ge=1, le=2)
    """Penalty on repeated tokens (keeps a small model out of loops)."""


class WorkerSettings(BaseWorkerSettings):
    stories: StoriesSettings = StoriesSettings()
    """The writer."""

    tts: TtsSettings = TtsSettings()
    """The narrator (the TTS service's engines and settings)."""
