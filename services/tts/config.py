"""Settings of the TTS worker (environment: VOXMESH_TTS__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from voxmesh.settings import BaseWorkerSettings


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


class WorkerSettings(BaseWorkerSettings):
    tts: TtsSettings = TtsSettings()
    """Engines and output."""
