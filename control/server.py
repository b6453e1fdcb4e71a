"""The control-plane gRPC server: `create_server` builds and binds it (port 0 in tests),
`serve` runs it until SIGTERM/SIGINT with the embedded database and migrations."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
from nats.errors import Error as NatsError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from control import webhooks
from control.api.auth import AuthService
from control.api.files import FileService
from control.api.jobs import JobService
from control.api.keys import KeyService
from control.api.projects import ProjectService
from control.api.results import JobResultService
from control.api.settings import SettingsService
from control.api.users import UserService
from control.api.voices import VoiceService
from control.api.webhooks import WebhookService
from control.app import ControlApp
from control.auth.guard import AuthGuard
from control.auth.rules import method_rules
from control.auth.tokens import MIN_SECRET_LENGTH, TokenService
from control.config import ControlSettings
from control.db import embedded, migrate
from control.db.session import create_engine, create_sessionmaker, normalize_url
from control.dispatch.runtime import MeshRuntime
from control.faults import unavailable
from control.janitor import UploadJanitor
from control.kinds import FIELDS
from control.readiness import Readiness
from voxmesh import heap
from voxmesh.grpc_server import GuardInterceptor, add_operator_services, set_serving
from voxmesh.nats_auth import redacted
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.observability import serve_metrics
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    files_pb2,
    files_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
    settings_pb2,
    settings_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
    voices_pb2,
    voices_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

log = logging.getLogger(__name__)

# Every service the control plane serves: (descriptor, registration function, servicer class).
NATS_START_SECONDS = 120.0
"""How long startup waits for NATS to take the mesh's streams (a cluster may be electing)."""

SERVICES = [
    (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], auth_pb2_grpc.add_AuthServiceServicer_to_server, AuthService),
    (users_pb2.DESCRIPTOR.services_by_name["UserService"], users_pb2_grpc.add_UserServiceServicer_to_server, UserService),
    (projects_pb2.DESCRIPTOR.services_by_name["ProjectService"], projects_pb2_grpc.add_ProjectServiceServicer_to_server, ProjectService),
    (jobs_pb2.DESCRIPTOR.services_by_name["JobService"], jobs_pb2_grpc.add_JobServiceServicer_to_server, JobService),
    (results_pb2.DESCRIPTOR.services_by_name["JobResultService"], results_pb2_grpc.add_JobResultServiceServicer_to_server, JobResultService),
    (files_pb2.DESCRIPTOR.services_by_name["FileService"], files_pb2_grpc.add_FileServiceServicer_to_server, FileService),
    (voices_pb2.DESCRIPTOR.services_by_name["VoiceService"], voices_pb2_grpc.add_VoiceServiceServicer_to_server, VoiceService),
    (settings_pb2.DESCRIPTOR.services_by_name["SettingsService"], settings_pb2_grpc.add_SettingsServiceServicer_to_server, SettingsService),
    (keys_pb2.DESCRIPTOR.services_by_name["KeyService"], keys_pb2_grpc.add_KeyServiceServicer_to_server, KeyService),
    (webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"], webhooks_pb2_grpc.add_WebhookServiceServicer_to_server, WebhookService),
]  # fmt: skip
SERVICE_NAMES = [descriptor.full_name for descriptor, _, _ in SERVICES]


class ConfigurationError(Exception):
    """The server cannot start as configured; the message says what to set."""


def jwt_secret(settings: ControlSettings) -> str:
    """The configured signing secret; in embedded (demo) mode, one generated and kept in the
    data directory. With an external database, a missing secret is a configuration error."""
    if settings.auth.jwt_secret is not None:
        secret = settings.auth.jwt_secret.get_secret_value()
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"VOXMESH_AUTH__JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters"
            )
        return secret
    if not settings.embedded:
        raise ConfigurationError(
            "VOXMESH_AUTH__JWT_SECRET is not set. With DATABASE_URL (a real deployment) the "
            "signing secret must be configured: e.g. `export VOXMESH_AUTH__JWT_SECRET="
            "$(python -c 'import secrets; print(secrets.token_urlsafe(48))')`"
        )
    path: Path = settings.data_dir / "jwt-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
        log.warning("embedded demo mode: generated a JWT signing secret in %s", path)
    return path.read_text().strip()


def run_secret(settings: ControlSettings) -> bytes:
    """The key run tokens are made with: derived from the signing secret, so every replica
    has the same one and nothing more needs configuring."""
    return hmac.new(jwt_secret(settings).encode(), b"voxmesh run tokens", hashlib.sha256).digest()


def build_app(settings: ControlSettings, database_url: str) -> ControlApp:
    engine = create_engine(database_url)
    tokens = TokenService(
        jwt_secret(settings),
        issuer=settings.auth.issuer,
        access_ttl=timedelta(seconds=settings.auth.access_ttl_seconds),
        refresh_ttl=timedelta(seconds=settings.auth.refresh_ttl_seconds),
    )
    return ControlApp(settings, engine, create_sessionmaker(engine), tokens)


async def create_server(
    app: ControlApp,
    host: str = "127.0.0.1",
    port: int = 0,
    revive: dict[str, Callable[[], None]] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build the server with every service, health and reflection; bind; return the bound port.
    `revive` starts embedded servers again if the health probe finds them dead
    ({"PostgreSQL": ..., "NATS": ...}).

    Started but not awaited: the caller owns its lifetime (`await server.stop(grace)`)."""
    rules = method_rules(descriptor for descriptor, _, _ in SERVICES)
    server = grpc.aio.server(
        interceptors=[
            GuardInterceptor(
                AuthGuard(rules, app.tokens, app.engine, app.streams), classify=unavailable
            )
        ],
        options=[
            ("grpc.max_receive_message_length", app.settings.max_message_bytes),
            ("grpc.max_send_message_length", app.settings.max_message_bytes),
        ],
    )
    for _, register, servicer in SERVICES:
        register(servicer(app), server)  # type: ignore[operator]
    health = add_operator_services(server, SERVICE_NAMES)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ConfigurationError(f"cannot listen on {host}:{port} (is the port in use?)")
    await server.start()
    await set_serving(health, SERVICE_NAMES, True)
    if app.readiness is not None:  # a restarted server in the same process (tests)
        await app.readiness.stop()
    if app.janitor is not None:
        await app.janitor.stop()
    app.readiness = Readiness(app, health, SERVICE_NAMES, revive=revive)
    app.readiness.start()
    app.janitor = UploadJanitor(app)
    app.janitor.start()
    if app.webhooks is not None:
        await app.webhooks.stop()
    app.webhooks = webhooks.Sender(app.sessions)
    app.webhooks.start()
    return server, bound


def database_url(settings: ControlSettings) -> tuple[str, embedded.EmbeddedPostgres | None]:
    if settings.database_url:
        return settings.database_url, None
    pg = embedded.start(settings.data_dir)
    return pg.ensure_database(), pg


def prepare_nats(settings: ControlSettings) -> tuple[str, EmbeddedNats | None]:
    """NATS_URL, or the embedded nats-server (JetStream store in `<data_dir>/nats`)."""
    if settings.nats_url:
        return settings.nats_url, None
    server = EmbeddedNats(settings.data_dir / "nats", port=settings.nats_port, worker_types=FIELDS)
    try:
        server.start()
    except RuntimeError as e:
        raise ConfigurationError(str(e)) from None
    return server.url, server


def prepare_database(settings: ControlSettings) -> tuple[str, embedded.EmbeddedPostgres | None]:
    """The database URL, with the embedded server started if needed and migrations applied.
    An unreachable database is a ConfigurationError that says where it looked."""
    url, pg = database_url(settings)
    try:
        migrate.upgrade(url)
    except OperationalError as e:
        where = make_url(normalize_url(url)).render_as_string(hide_password=True)
        raise ConfigurationError(f"cannot reach PostgreSQL at {where}: {e.orig}") from None
    return url, pg


async def check_database(app: ControlApp) -> None:
    async with app.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def serve(settings: ControlSettings) -> None:
    jwt_secret(settings)  # configuration errors first, before touching any database
    url, _pg = await asyncio.to_thread(prepare_database, settings)
    app = build_app(settings, url)
    await check_database(app)
    nats_url, nats_server = prepare_nats(settings)
    try:
        app.mesh = await asyncio.wait_for(
            MeshRuntime.start(
                nats_url,
                app.engine,
                app.sessions,
                settings.mesh,
                run_secret=run_secret(settings),
            ),
            NATS_START_SECONDS,
        )
    except (OSError, NatsError, TimeoutError) as e:
        raise ConfigurationError(
            f"cannot reach NATS at {redacted(nats_url)}: "
            f"{str(e) or f'not ready in {NATS_START_SECONDS:g} s'}"
        ) from None
    revive = {}  # embedded servers: nobody else looks after them
    if _pg is not None:
        revive["PostgreSQL"] = _pg.ensure_running
    if nats_server is not None:
        revive["NATS"] = nats_server.ensure_running
    server, port = await create_server(app, settings.host, settings.port, revive)
    serve_metrics()
    heap.freeze_startup_objects()
    log.info(
        "Voxmesh control plane listening on %s:%d (%s database, NATS at %s, %s event loop)",
        settings.host,
        port,
        "embedded" if settings.embedded else "external",
        redacted(nats_url),
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "shutting down: letting in-flight RPCs finish (%.0fs grace)",
        settings.shutdown_grace_seconds,
    )
    await server.stop(settings.shutdown_grace_seconds)
    await app.close()
    if nats_server is not None:
        nats_server.stop()
