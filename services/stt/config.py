"""Settings of the STT worker (environment: VOXMESH_STT__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from voxmesh.settings import BaseWorkerSettings


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


class WorkerSettings(BaseWorkerSettings):
    stt: SttSettings = SttSettings()
    """The model and how it runs."""
