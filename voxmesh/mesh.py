"""The NATS side of the mesh, shared by the control plane and every worker: names of streams,
subjects, consumers and buckets, and their idempotent creation.

    VOXMESH_JOBS    work queue   voxmesh.jobs.<type>       one JobDispatch per attempt
    VOXMESH_EVENTS  limits       voxmesh.events.<job_id>   WorkerEvents from workers, stored as
                                 voxmesh.events.<p>.<job_id>  (p: the job's partition, see below)
    voxmesh.updates.<job_id>     core NATS                 persisted events, fanned out to watchers
    voxmesh_job_control  KV      <job_id>.<run> -> cancel|done   what workers check at checkpoints
    voxmesh_files   object store <sha256>                  inputs and outputs, content-addressed

Only the control plane creates or changes these (`ensure`, from its MeshSettings); a worker
binds to what exists and reads ack_wait and max_deliver from its consumer (`consumer_limits`),
so one setting on the control plane governs every process.

Partitions: jobs are split by id into PARTITIONS partitions, each worked (dispatched and
ingested) by one control-plane replica at a time (control/dispatch/leases.py). The events
stream files each event under its job's partition with a subject transform, NATS's own
`partition()` (FNV-1a of the job id), which `partition_of` computes the same way; each
partition has its own events consumer, so replicas ingest side by side and a job's events stay
in order. PARTITIONS is fixed: changing it moves jobs between partitions (drain first).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import nats
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from voxmesh import nats_tls
from voxmesh.nats_auth import inbox_prefix, redacted, user_of
from voxmesh.settings import MeshSettings

log = logging.getLogger(__name__)

JOBS_STREAM = "VOXMESH_JOBS"
EVENTS_STREAM = "VOXMESH_EVENTS"
TASKS_STREAM = "VOXMESH_TASKS"
SHARDS_BUCKET = "voxmesh_shards"
EVENTS_CONSUMER = "control-events"
"""Events published before partitions existed (voxmesh.events.<job_id> as stored); drained by
the holder of partition 0."""
PARTITIONS = 8
CONTROL_BUCKET = "voxmesh_job_control"
FILES_BUCKET = "voxmesh_files"

CANCEL = b"cancel"
DONE = b"done"


PRESENCE_SECONDS = 5.0
"""How often a worker announces itself; the control plane forgets one silent for 3 times this."""


def presence_subject(job_type: str) -> str:
    """Where workers of a type announce what they can do (core NATS; each worker user may
    publish only on its own type's subject, so the subject, not the payload, names the type)."""
    return f"voxmesh.presence.{job_type}"


def jobs_subject(job_type: str) -> str:
    return f"voxmesh.jobs.{job_type}"


def events_subject(job_id: str) -> str:
    """Where a worker publishes a job's events (the stream files them under the partition)."""
    return f"voxmesh.events.{job_id}"


def partition_of(job_id: str) -> int:
    """A job's partition: what NATS's `{{partition(PARTITIONS,1)}}` gives for its id (FNV-1a,
    32 bits, of the token's bytes, modulo the count)."""
    h = 0x811C9DC5
    for byte in str(job_id).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


def partition_consumer(partition: int) -> str:
    """The durable consumer of one partition's events (worked by the replica leasing it)."""
    return f"control-events-{partition}"


def partition_events(partition: int) -> str:
    """The subject one partition's events are stored under."""
    return f"voxmesh.events.{partition}.*"


EVENTS_TRANSFORM = api.SubjectTransform(
    src="voxmesh.events.*",
    dest=f"voxmesh.events.{{{{partition({PARTITIONS},1)}}}}.{{{{wildcard(1)}}}}",
)
"""How the events stream files an event under its job's partition."""


def updates_subject(job_id: str) -> str:
    return f"voxmesh.updates.{job_id}"


def worker_consumer(job_type: str) -> str:
    return f"worker-{job_type}"


def tasks_subject(job_type: str) -> str:
    return f"voxmesh.tasks.{job_type}"


def shard_consumer(job_type: str) -> str:
    return f"shards-{job_type}"


def run_key(job_id: str, run: int) -> str:
    """A run's key: its dispatch's Nats-Msg-Id (JetStream drops a second publish of the same
    run), its cancel|done mark in the control bucket, the prefix of its shard keys."""
    return f"{job_id}.{run}"


def run_token(secret: bytes, job_id: str, run: int) -> str:
    """A run's token: only the control plane (which holds `secret`) can make it, and only a
    holder of the run's dispatch knows it; a worker's events carry it as proof."""
    return hmac.new(secret, run_key(job_id, run).encode(), hashlib.sha256).hexdigest()


def shard_secret(run_token: str) -> bytes:
    """The key a run's shard results are sealed with in the shards bucket (which every worker
    may read): derived from the run's token, so only the run's holder, even after a
    redelivery, opens them."""
    return hmac.new(run_token.encode(), b"voxmesh shard results", hashlib.sha256).digest()


def seal_shard_result(secret: bytes, key: str, result: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(secret).encrypt(nonce, result, key.encode())


def open_shard_result(secret: bytes, key: str, sealed: bytes) -> bytes:
    """The result's bytes; ValueError if it does not open (not written by a holder of a
    shard task of this run)."""
    try:
        return AESGCM(secret).decrypt(sealed[:12], sealed[12:], key.encode())
    except (InvalidTag, ValueError):
        raise ValueError(
            "its result in the shards bucket does not open with the run's key"
        ) from None


def holds_run(secret: bytes, job_id: str, run: int, token: str) -> bool:
    """True when `token` is the run's (compared in constant time)."""
    return hmac.compare_digest(run_token(secret, job_id, run), token)


@dataclass(frozen=True)
class ConsumerLimits:
    """What a worker learns from its consumer: the control plane's mesh settings."""

    ack_wait_seconds: float
    max_deliver: int

    @property
    def heartbeat_seconds(self) -> float:
        """How often a busy worker says it is alive: four times per ack_wait."""
        return max(0.1, self.ack_wait_seconds / 4)


async def consumer_limits(
    js: JetStreamContext, stream: str, durable: str, *, wait: float = 2.0
) -> ConsumerLimits:
    """The consumer's ack_wait and max_deliver; waits (logging) until the control plane has
    provisioned it."""
    while True:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            log.warning("consumer %s on %s does not exist yet: waiting for the control plane "
                        "to provision the mesh", durable, stream)  # fmt: skip
            await asyncio.sleep(wait)
            continue
        return ConsumerLimits(
            ack_wait_seconds=float(info.config.ack_wait or 30.0),
            max_deliver=int(info.config.max_deliver or 1),
        )


async def connect(
    url: str, name: str, *, reconnected: Callable[[], Awaitable[None]] | None = None,
    disconnected: Callable[[], Awaitable[None]] | None = None,
) -> NATS:  # fmt: skip
    """A connection that reconnects forever (a NATS outage delays work; it loses nothing),
    logging one line per problem instead of a traceback per retry; `reconnected` runs after
    each reconnect (what was published meanwhile on core NATS is lost). Credentials: in the URL
    (nats://user:password@host), else NATS_USER and NATS_PASSWORD, or a creds file in
    NATS_CREDS. TLS (between hosts): `tls://` URLs, the servers verified against the CA in
    NATS_CA (see `voxmesh.nats_tls`)."""

    where = redacted(url)
    user = user_of(url) or os.environ.get("NATS_USER") or None
    password = os.environ.get("NATS_PASSWORD") if not user_of(url) else None

    async def error(exc: Exception) -> None:
        log.warning("%s: NATS at %s: %s", name, where, exc or type(exc).__name__)

    client: list[NATS] = []

    async def on_disconnect() -> None:
        if client and client[0].is_closed:  # closed on purpose (shutting down): nothing wrong
            log.debug("%s: NATS connection closed", name)
        else:
            log.warning("%s: disconnected from NATS; reconnecting", name)
        if disconnected is not None:
            await disconnected()

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", name)
        if reconnected is not None:
            await reconnected()

    connection = await nats.connect(
        url.split(",") if "," in url else url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        drain_timeout=5,
        error_cb=error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        user=user if password else None,
        password=password or None,
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
        user_credentials=os.environ.get("NATS_CREDS") or None,
        tls=nats_tls.client_context(),
    )
    client.append(connection)
    return connection


async def _stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        existing = (await js.stream_info(config.name or "")).config
        config.num_replicas = max(config.num_replicas or 1, existing.num_replicas or 1)
        await js.update_stream(config)


async def ensure(js: JetStreamContext, config: MeshSettings, job_types: Iterable[str]) -> None:
    """Create or update every stream, consumer and bucket (the control plane, at start; safe to
    repeat: the last call's settings hold)."""
    job_types = tuple(job_types)
    await _stream(
        js,
        api.StreamConfig(
            name=JOBS_STREAM,
            num_replicas=config.replicas,
            subjects=["voxmesh.jobs.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=config.duplicate_window_seconds,
        ),
    )
    await _stream(
        js,
        api.StreamConfig(
            name=EVENTS_STREAM,
            num_replicas=config.replicas,
            subjects=["voxmesh.events.>"],
            subject_transform=EVENTS_TRANSFORM,
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=config.events_max_age_seconds,
            duplicate_window=config.duplicate_window_seconds,
        ),
    )
    for job_type in job_types:
        await js.add_consumer(
            JOBS_STREAM,
            api.ConsumerConfig(
                durable_name=worker_consumer(job_type),
                filter_subject=jobs_subject(job_type),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=config.ack_wait_seconds,
                max_deliver=config.max_deliver,
                max_ack_pending=10_000,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
    await _stream(
        js,
        api.StreamConfig(
            name=TASKS_STREAM,
            num_replicas=config.replicas,
            subjects=["voxmesh.tasks.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        ),
    )
    for job_type in job_types:
        await js.add_consumer(
            TASKS_STREAM,
            api.ConsumerConfig(
                durable_name=shard_consumer(job_type),
                filter_subject=tasks_subject(job_type),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=config.ack_wait_seconds,
                max_deliver=config.max_deliver,
                max_ack_pending=10_000,
            ),
        )
    for durable, subject in (
        (EVENTS_CONSUMER, "voxmesh.events.*"),  # stored before partitions: three tokens
        *((partition_consumer(p), partition_events(p)) for p in range(PARTITIONS)),
    ):
        await js.add_consumer(
            EVENTS_STREAM,
            api.ConsumerConfig(
                durable_name=durable,
                filter_subject=subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=-1,
                max_ack_pending=10_000,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
    try:
        await js.key_value(CONTROL_BUCKET)
    except (NotFoundError, BadRequestError):
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=CONTROL_BUCKET, history=1, ttl=30 * 24 * 3600, replicas=config.replicas
            )
        )
    try:
        await js.key_value(SHARDS_BUCKET)
    except (NotFoundError, BadRequestError):
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=SHARDS_BUCKET, history=1, ttl=24 * 3600, replicas=config.replicas
            )
        )
    try:
        await js.object_store(FILES_BUCKET)
    except (NotFoundError, BadRequestError):
        await js.create_object_store(
            FILES_BUCKET,
            config=api.ObjectStoreConfig(bucket=FILES_BUCKET, replicas=config.replicas),
        )
