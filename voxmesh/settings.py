"""What every worker's settings share: the environment prefix (`VOXMESH_`, nested with `__`)
and the mesh's NATS address. A service's WorkerSettings adds its own section to this."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXMESH_", env_nested_delimiter="__", extra="ignore"
    )

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "VOXMESH_NATS_URL"),
    )
    """The mesh's NATS (the control plane's embedded one by default)."""
