"""Test helpers: typed clients bound to a token, users per role, and rows made directly in
the database (so a test of one RPC does not depend on the rules of another)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from sqlalchemy import text

from control import accounts, files
from control.app import ControlApp
from control.convert import params_to_json
from control.db.models import Job, JobResult, JobStatus, JobType, Project, Setting, UserRole
from voxmesh.blobs import BlobRef, blob_key
from voxmesh.nats_auth import worker_user
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    projects_pb2_grpc,
    results_pb2_grpc,
    settings_pb2_grpc,
    users_pb2_grpc,
    voices_pb2_grpc,
    webhooks_pb2_grpc,
)
from voxmesh.worker import Handler, ShardHandler, Worker


class _Bound:
    """A stub whose calls all carry the same metadata."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            return method(request, **kwargs)

        return call


class Client:
    """All six services, as one caller (token or none)."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None = None) -> None:
        md = (("authorization", f"Bearer {token}"),) if token else ()
        self.auth = _Bound(auth_pb2_grpc.AuthServiceStub(channel), md)
        self.users = _Bound(users_pb2_grpc.UserServiceStub(channel), md)
        self.projects = _Bound(projects_pb2_grpc.ProjectServiceStub(channel), md)
        self.jobs = _Bound(jobs_pb2_grpc.JobServiceStub(channel), md)
        self.results = _Bound(results_pb2_grpc.JobResultServiceStub(channel), md)
        self.files = _Bound(files_pb2_grpc.FileServiceStub(channel), md)
        self.voices = _Bound(voices_pb2_grpc.VoiceServiceStub(channel), md)
        self.settings = _Bound(settings_pb2_grpc.SettingsServiceStub(channel), md)
        self.keys = _Bound(keys_pb2_grpc.KeyServiceStub(channel), md)
        self.webhooks = _Bound(webhooks_pb2_grpc.WebhookServiceStub(channel), md)


@dataclass
class Caller:
    user_id: uuid.UUID
    username: str
    password: str
    role: UserRole
    access: str = ""
    refresh: str = ""
    client: Client = field(init=False)


class Harness:
    def __init__(self, app: ControlApp, port: int, nats: Any = None, server: Any = None) -> None:
        self.app = app
        self.server = server
        self.port = port
        self.nats = nats
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.anonymous = Client(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def reconnect(self, port: int) -> None:
        """Point every client at a restarted server."""
        await self.channel.close()
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.anonymous = Client(self.channel)

    def client(self, token: str | None) -> Client:
        return Client(self.channel, token)

    # --- users ----------------------------------------------------------------------
    async def user(self, role: UserRole, *, login: bool = True, name: str = "") -> Caller:
        username = name or f"{role.value.lower()}_{uuid.uuid4().hex[:8]}"
        password = f"pw-{uuid.uuid4().hex}"
        async with self.app.sessions() as session:
            user = await accounts.create_user(
                session, username=username, password=password, role=role
            )
            await session.commit()
        caller = Caller(user.id, username, password, role)
        if login:
            await self.login(caller)
        else:
            caller.client = self.anonymous
        return caller

    async def login(self, caller: Caller) -> Caller:
        response = await self.anonymous.auth.Login(
            auth_pb2.LoginRequest(username=caller.username, password=caller.password)
        )
        caller.access = response.tokens.access_token
        caller.refresh = response.tokens.refresh_token
        caller.client = self.client(caller.access)
        return caller

    async def key(self, caller: Caller, **fields: Any) -> str:
        """A new API key of `caller` (made through the API, as a user would): its secret."""
        response = await caller.client.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name=fields.pop("name", "test key"), **fields)
        )
        return str(response.secret)

    # --- rows -----------------------------------------------------------------------
    async def project(self, owner: uuid.UUID, name: str = "") -> uuid.UUID:
        async with self.app.sessions() as session:
            row = Project(name=name or f"project {uuid.uuid4().hex[:8]}", owner_id=owner)
            session.add(row)
            await session.commit()
            return row.id

    async def file(
        self, owner: uuid.UUID, data: bytes = b"RIFF....WAVE", project: uuid.UUID | None = None
    ) -> uuid.UUID:
        """A file row of `data` owned by `owner` (from `project`), its bytes in the store when
        the mesh runs."""
        if self.app.mesh is not None:
            blob = await self.app.mesh.blobs.put(data)
        else:
            blob = BlobRef(hashlib.sha256(data).hexdigest(), blob_key(data))
        async with self.app.sessions() as session:
            row = await files.record(
                session, blob, owner_id=owner, filename="input.wav", content_type="audio/wav",
                size_bytes=len(data), sealed_here=True, project_id=project,
            )  # fmt: skip
            await session.commit()
            return row.id

    async def job(
        self,
        project_id: uuid.UUID,
        created_by: uuid.UUID,
        *,
        status: JobStatus = JobStatus.PENDING,
        text_: str = "Hello from a test.",
        title: str = "",
        job_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        async with self.app.sessions() as session:
            row = Job(
                id=job_id or uuid.uuid4(),
                project_id=project_id,
                created_by=created_by,
                type=JobType.TTS,
                status=status,
                title=title,
                params=params_to_json(jobs_pb2.TtsParams(text=text_)),
                progress=100 if status is JobStatus.COMPLETED else 0,
                run=1,
            )
            session.add(row)
            await session.commit()
            return row.id

    async def result(self, job_id: uuid.UUID, meta: dict[str, Any] | None = None) -> None:
        async with self.app.sessions() as session:
            session.add(
                JobResult(
                    job_id=job_id,
                    logs="worker: done\n",
                    meta=meta or {"duration_seconds": 1.5},
                    finished_at=datetime.now(UTC),
                )
            )
            await session.commit()

    async def setting(self, key: str, value: Any, user_id: uuid.UUID | None = None) -> None:
        async with self.app.sessions() as session:
            session.add(Setting(key=key, value=value, user_id=user_id))
            await session.commit()

    async def fingerprint(self) -> dict[str, str]:
        """A digest of every row of every table: equal before and after means nothing changed."""
        tables = [
            "users",
            "profiles",
            "refresh_tokens",
            "projects",
            "files",
            "jobs",
            "job_results",
            "settings",
            "outbox",
            "job_events",
            "uploads",
            "upload_chunks",
        ]
        out = {}
        async with self.app.engine.connect() as conn:
            for table in tables:
                digest = await conn.scalar(
                    text(
                        f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
                    )
                )
                out[table] = str(digest)
        return out


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0
) -> None:
    """Poll until `check()` holds (the state we wait for, not a sleep), or fail saying what."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    """Await a call that must fail; return its error."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded but was expected to fail")


@contextlib.asynccontextmanager
async def run_workers(
    h: Harness,
    job_type: str,
    handler: Handler,
    *,
    count: int = 1,
    ack_wait: float = 5.0,
    shard_handler: ShardHandler | None = None,
    name: str = "",
    capabilities: dict[str, Any] | None = None,
) -> AsyncIterator[list[Worker]]:
    """`count` real workers (the shared runtime) of `job_type` in this process, on the test's
    NATS; stopped when the block ends."""
    stop = asyncio.Event()
    if h.app.mesh is not None and ack_wait != h.app.settings.mesh.ack_wait_seconds:
        # What an operator does: the control plane re-provisions the consumers; workers read
        # ack_wait from their consumer.
        await h.app.mesh.provision(
            h.app.settings.mesh.model_copy(update={"ack_wait_seconds": ack_wait})
        )
    workers = [
        Worker(job_type, handler, nats_url=h.nats.url_for(worker_user(job_type)),
               worker_id=f"{name or job_type}-{i}", shard_handler=shard_handler,
               capabilities=capabilities)
        for i in range(count)
    ]  # fmt: skip
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in workers)), 10)
    try:
        yield workers
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
