"""Settings of the dubbing worker (environment: VOXMESH_DUBBING__*, NATS_URL)."""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.tts.config import TtsSettings


class DubbingSettings(BaseModel):
    stt_model: str = "base"
    """Whisper model for the transcript and the round trip (multilingual: "base")."""
    background_db: float = Field(default=-20.0, le=0)
    """How far the original track is ducked under the dub when keep_background is on."""
    max_reference_seconds: float = Field(default=30.0, ge=5)
    """Speech of the source speaker used to fit their voice."""
    measure: bool = True
    """Measure intelligibility (Whisper round trip) and speaker similarity (resemblyzer)."""


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXMESH_", env_nested_delimiter="__", extra="ignore"
    )

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "VOXMESH_NATS_URL"),
    )
    dubbing: DubbingSettings = DubbingSettings()
    tts: TtsSettings = TtsSettings()
