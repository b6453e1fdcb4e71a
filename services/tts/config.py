"""Settings of the TTS worker (environment: VOXMESH_TTS__*, NATS_URL)."""

from __future__ import annotations

from voxmesh.settings import BaseWorkerSettings
from voxmesh.speech.tts import TtsSettings

__all__ = ["TtsSettings", "WorkerSettings"]


class WorkerSettings(BaseWorkerSettings):
    tts: TtsSettings = TtsSettings()
    """Engines and output."""
