"""What every worker's settings share: the environment prefix (`VOXMESH_`, nested with `__`)
and the mesh's NATS address. A service's WorkerSettings adds its own section to this."""

from __future__ import annotations

import os

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MeshSettings(BaseModel):
    """How work travels over NATS: set once, on the control plane (VOXMESH_MESH__*), which
    provisions the streams and consumers with it; workers read it back from their consumer."""

    ack_wait_seconds: float = Field(default=30.0, ge=0.5)
    """A worker silent this long (no heartbeat) is presumed dead; its job is redelivered."""

    max_deliver: int = Field(default=3, ge=1, le=100)
    """Deliveries of one run (first run + redeliveries after crashes or transient errors)."""

    duplicate_window_seconds: float = Field(default=120.0, gt=0)
    """How long JetStream remembers dispatch ids to drop duplicates."""

    events_max_age_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    """How long raw worker events stay in NATS (they are persisted in PostgreSQL at once)."""

    replicas: int = Field(
        default_factory=lambda: int(os.environ.get("VOXMESH_NATS_REPLICAS", "1")), ge=1, le=5
    )
    """Copies JetStream keeps of every stream and bucket: 3 on a 3-node NATS cluster, so losing a
    node loses nothing (also VOXMESH_NATS_REPLICAS; never lowered on an existing stream)."""


class BaseWorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOXMESH_", env_nested_delimiter="__", extra="ignore"
    )

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=AliasChoices("NATS_URL", "VOXMESH_NATS_URL"),
    )
    """The mesh's NATS (the control plane's embedded one by default)."""
