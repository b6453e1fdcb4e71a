"""Settings of the STT worker (environment: VOXMESH_STT__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from voxmesh.settings import BaseWorkerSettings


class SttSettings(BaseModel):
    models: list[str] = Field(default_factory=lambda: ["tiny.en", "base"], min_length=1)
    """The models this worker serves, in order of preference: packaged names ("tiny.en",
    "base"), CTranslate2 model directories or openai-whisper `.pt` files. A job goes to the
    model it names, else to the first that speaks its language; with no language given, the
    first multilingual model detects it (English-only models cannot: with none multilingual,
    speech is taken as English and the job says so)."""

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
