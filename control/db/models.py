"""Every table of Voxmesh, as typed SQLAlchemy 2 models.

The schema is created only by the Alembic migrations in `control/db/migrations/`; these models
are what the code reads and writes. Constraints the product promises live in the database
itself: foreign keys, one-to-one (Profile->User, JobResult->Job by primary key), unique settings
per (user, key) and per key for global ones, progress between 0 and 100, and native enums.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names, so migrations can refer to them (SQLAlchemy's recommended set).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Fetch server-generated values (created_at, updated_at, defaults) with RETURNING at flush,
    # so nothing needs a lazy load after commit (which async sessions cannot do).
    __mapper_args__ = {"eager_defaults": True}


class UserRole(enum.StrEnum):
    ADMIN = "ADMIN"
    EDITOR = "EDITOR"
    VIEWER = "VIEWER"


class JobType(enum.StrEnum):
    STT = "STT"
    TTS = "TTS"
    VOICE_CLONING = "VOICE_CLONING"
    DUBBING = "DUBBING"
    AI_STORIES = "AI_STORIES"


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


def _pg_enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=True, values_callable=lambda e: [m.value for m in e])


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _updated_at() -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class User(Base):
    """An account that can sign in. Its role lives in the one-to-one Profile."""

    __tablename__ = "users"
    __table_args__ = (
        # Usernames are unique regardless of case: "Admin" and "admin" are one user.
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
        CheckConstraint("char_length(username) BETWEEN 3 AND 64", name="username_length"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_service_account: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    """A service account never signs in with a password: it acts only through its API keys."""

    profile: Mapped[Profile] = relationship(
        back_populates="user", uselist=False, lazy="joined", cascade="all, delete-orphan"
    )


class Profile(Base):
    """One-to-one with User (the primary key is the user's id): role and display details."""

    __tablename__ = "profiles"
    __table_args__ = (CheckConstraint("char_length(bio) <= 2000", name="bio_length"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[UserRole] = mapped_column(_pg_enum(UserRole, "user_role"), nullable=False)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    bio: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()

    user: Mapped[User] = relationship(back_populates="profile")


class RefreshToken(Base):
    """One issued refresh token. Rotation marks it used; reuse revokes its whole family."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    family_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False, index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A long-lived credential for a service: `authorization: Bearer vxk_...` on every API.

    Only the SHA-256 of the key is stored (a key is 256 random bits, so a fast hash is as good
    as a slow one and keeps the per-call lookup an index probe). Its role is at most its owner's
    (checked at creation and again on every call, against the owner's role then)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("char_length(name) BETWEEN 1 AND 100", name="name_length"),
        CheckConstraint("secret_sha256 ~ '^[0-9a-f]{64}$'", name="secret_sha256_hex"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    role: Mapped[UserRole] = mapped_column(_pg_enum(UserRole, "user_role"), nullable=False)
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    """When set, the key acts only in this project."""
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    """The key's first characters, shown in lists so a person can tell keys apart."""
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created_at()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Project(Base):
    """A folder of jobs, owned by one user."""

    __tablename__ = "projects"
    __table_args__ = (
        UniqueConstraint("owner_id", "name"),
        CheckConstraint("char_length(name) BETWEEN 1 AND 200", name="name_length"),
        CheckConstraint("char_length(description) <= 2000", name="description_length"),
        Index("ix_projects_created_at_id", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()

    webhooks: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    """Callback URLs for the project's jobs: [{"url": ..., "stages": bool}]."""
    webhook_secret: Mapped[str] = mapped_column(String(100), nullable=False, server_default="")
    """The Standard Webhooks signing secret (whsec_...), made when a first webhook is set."""

    owner: Mapped[User] = relationship(lazy="joined")


class File(Base):
    """A stored blob's metadata: content-addressed by sha256, owned by who uploaded it."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint("size_bytes >= 0", name="size_non_negative"),
        CheckConstraint("sha256 ~ '^[0-9a-f]{64}$'", name="sha256_hex"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    blob_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The key that opens the sealed blob (voxmesh.blobs); NULL for one stored before
    sealing, until the same bytes are stored again."""
    project_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("projects.id", ondelete="SET NULL"), index=True
    )
    """The project it came from: the one of the API key that uploaded it, or of the job that
    produced it; NULL for an upload made outside any project scope."""
    created_at: Mapped[datetime] = _created_at()


class Job(Base):
    """One unit of speech work: its type, parameters, lifecycle and progress."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint("run >= 0", name="run_non_negative"),
        CheckConstraint("jsonb_typeof(params) = 'object'", name="params_object"),
        Index("ix_jobs_created_at_id", text("created_at DESC"), text("id DESC")),
        Index("ix_jobs_project_id_created_at", "project_id", text("created_at DESC")),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_type", "type"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    project_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    created_by: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    type: Mapped[JobType] = mapped_column(_pg_enum(JobType, "job_type"), nullable=False)
    status: Mapped[JobStatus] = mapped_column(
        _pg_enum(JobStatus, "job_status"), nullable=False, server_default=JobStatus.PENDING.value
    )
    progress: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, default=0, server_default="0"
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    input_file_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("files.id", ondelete="RESTRICT"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    """How many times a worker has started the job (crash redeliveries included)."""
    run: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    """The current run: 1 when first queued, +1 per RetryJob. Events of older runs are ignored."""
    awaiting_start: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )
    """A PENDING job that waits for StartJob (its creator has auto_start_jobs=false)."""
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the current run was published to NATS; a queued job holds an admission slot."""
    last_event_seq: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    """The seq of the job's latest persisted event."""
    error: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    stage: Mapped[str] = mapped_column(String(200), nullable=False, server_default="")
    """The stage of the latest progress event of the current run."""
    webhooks: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    """Where this job's events are delivered, fixed at creation: the job's own callback URLs
    if it named any, else its project's."""
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobResult(Base):
    """What a finished job produced; one-to-one with Job (the primary key is the job's id)."""

    __tablename__ = "job_results"
    __table_args__ = (
        CheckConstraint("jsonb_typeof(files) = 'array'", name="files_array"),
        CheckConstraint("jsonb_typeof(meta) = 'object'", name="meta_object"),
    )

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    result_url: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    files: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    logs: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    meta: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[datetime] = _created_at()

    job: Mapped[Job] = relationship(lazy="joined")


class Setting(Base):
    """A stored setting: global (no user) or one user's override of the global value."""

    __tablename__ = "settings"
    __table_args__ = (
        # One value per (user, key)...
        UniqueConstraint("user_id", "key"),
        # ...and one global value per key (NULL user ids are distinct to a plain UNIQUE).
        Index(
            "uq_settings_global_key", "key", unique=True, postgresql_where=text("user_id IS NULL")
        ),
        CheckConstraint("key ~ '^[a-z][a-z0-9_]{0,63}$'", name="key_format"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    key: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[Any] = mapped_column(JSONB, nullable=False)
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


def _partition(ctx: Any) -> int:
    from voxmesh.mesh import partition_of

    return partition_of(str(ctx.get_current_parameters()["job_id"]))


class OutboxEntry(Base):
    """A job run to publish to NATS, written in the same transaction as the job change, so a
    NATS outage delays dispatch but never loses it. Published rows keep their time."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_unpublished_by_partition", "partition", "id",
            postgresql_where=text("published_at IS NULL"),
        ),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    run: Mapped[int] = mapped_column(Integer, nullable=False)
    partition: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, default=lambda ctx: _partition(ctx)
    )
    """The job's partition (voxmesh.mesh.partition_of, filled in from job_id on insert): the
    replica leasing it publishes the row."""
    created_at: Mapped[datetime] = _created_at()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    traceparent: Mapped[str] = mapped_column(String(55), nullable=False, server_default="")
    """W3C trace context of the request that queued the run; the worker continues the trace."""


class JobEvent(Base):
    """Every event of a job, in order: the log WatchJob replays from."""

    __tablename__ = "job_events"
    __table_args__ = (CheckConstraint("seq > 0", name="seq_positive"),)

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    """The serialized voxmesh.v1.WatchJobResponse, exactly as watchers receive it."""
    created_at: Mapped[datetime] = _created_at()


class Upload(Base):
    """A resumable upload in progress: chunks arrive at offsets, then FinishUpload checks the
    sha256 and stores the file content-addressed."""

    __tablename__ = "uploads"
    __table_args__ = (
        CheckConstraint("size_bytes > 0", name="size_positive"),
        CheckConstraint("received_bytes BETWEEN 0 AND size_bytes", name="received_range"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content_type: Mapped[str] = mapped_column(String(127), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    received_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    file_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("files.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = _updated_at()


class UploadChunk(Base):
    """The bytes of an upload, kept in PostgreSQL so any control-plane replica can take the
    next chunk. Deleted when the upload finishes."""

    __tablename__ = "upload_chunks"

    upload_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("uploads.id", ondelete="CASCADE"), primary_key=True
    )
    offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class SavedVoice(Base):
    """A voice a voice cloning job saved in a project (save_as_voice): its profile (pitch
    statistics, spectral envelope, warp, speaker embedding), no audio unless the user chose to
    keep the reference. Only the project's jobs may use it; deleting it deletes its data."""

    __tablename__ = "voices"
    __table_args__ = (
        Index("uq_voices_project_name", "project_id", text("lower(name)"), unique=True),
        CheckConstraint("jsonb_typeof(profile) = 'object'", name="profile_object"),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    project_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    created_by: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    source_job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL")
    )
    """The voice cloning job that made it."""
    reference_file_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("files.id", ondelete="SET NULL")
    )
    """The reference recording, kept only if the user asked (keep_reference)."""
    profile: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    """Its measured figures (similarity to the reference, WER) from the cloning job."""
    created_at: Mapped[datetime] = _created_at()


class WebhookDelivery(Base):
    """One signed event for one callback URL, written in the transaction of the job change it
    reports and sent after commit by the delivery loop (control/webhooks.py), retried with
    backoff until delivered or given up. Its id is the `webhook-id` header (receivers
    deduplicate on it)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("delivered_at IS NULL AND given_up_at IS NULL"),
        ),
        Index("ix_webhook_deliveries_job_id_created_at", "job_id", "created_at"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_object"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(Text, nullable=False)
    event_type: Mapped[str] = mapped_column(String(40), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _created_at()
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    given_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
