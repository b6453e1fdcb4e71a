"""Settings of the STT worker (environment: VOXMESH_STT__*, NATS_URL)."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SttSettings(BaseModel):
    model: str = "tiny.en"
    """A packaged model name ("tiny.en"), a CTranslate2 model directory, or an openai-whisper
    `.pt` checkpoint file."""

    compute_type: str = "int8"
    """CTranslate2 compute type on CPU (int8, int8_float32, float32)."""

    cpu_threads: int = Field(default=2, ge=1, le=64)
    """Threads one transcription uses."""

    beam_size: int = Field(default=5, ge=1, le=10)
    """Beam search width (1 = greedy, fastest)."""

    shard_seconds: float = Field(default=120.0, ge=0)
    """Audio longer than 1.5x this is cut at silences into parts of about this length, which
    all STT workers transcribe at once; 0 turns that off."""


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXMESH_", env_nested_delimiter="__", extra="ignore"
    )

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "VOXMESH_NATS_URL"),
    )
    """The mesh's NATS (the control plane's embedded one by default)."""

    stt: SttSettings = SttSettings()
    """The model and how it runs."""
