"""Settings of the stories worker (environment: VOXMESH_STORIES__*, NATS_URL)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from voxmesh.settings import BaseWorkerSettings
from voxmesh.speech.tts import TtsSettings
from voxmesh.speech.writer import DEFAULT_WRITER


class StoriesSettings(BaseModel):
    writer: str = DEFAULT_WRITER
    """The shipped writer a job gets when it names none (voxmesh.speech.writer.WRITERS:
    "qwen2.5-coder-1.5b-instruct", or "gemma-3-270m", the fast one); it runs in this worker."""

    drafts: int = Field(default=3, ge=1, le=5)
    """Drafts an instruction-tuned writer may make when one leaves out what the premise names."""

    base_url: str = ""
    """An OpenAI-compatible endpoint (e.g. "https://llm.example/v1") to write with instead of
    the shipped writers; empty: they run in this worker."""

    chat: bool = True
    """The endpoint's model is instruction-tuned (asked through /v1/chat/completions); false: a
    base model, given a story's opening to continue (/v1/completions)."""

    api_key: SecretStr | None = None
    """The endpoint's API key, sent as `Authorization: Bearer`."""

    model: str = "default"
    """The model name sent to the endpoint."""

    threads: int = Field(default=2, ge=1, le=64)
    """CPU threads of the local model."""

    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature."""

    repeat_penalty: float = Field(default=1.1, ge=1, le=2)
    """Penalty on repeated tokens (keeps a small model out of loops)."""


class WorkerSettings(BaseWorkerSettings):
    stories: StoriesSettings = StoriesSettings()
    """The writer."""

    tts: TtsSettings = TtsSettings()
    """The narrator (the TTS service's engines and settings)."""
