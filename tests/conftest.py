"""Fixtures chaining real servers: embedded PostgreSQL -> migrated template database -> a fresh
copy per test -> the control-plane gRPC server on a free port -> clients signed in per role.

No mocks: every test talks gRPC to the real server, which talks to a real PostgreSQL 18.
Set VOXMESH_TEST_DATABASE_URL to run against another PostgreSQL server instead (its user needs
CREATEDB).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from control.config import AuthSettings, ControlSettings, MeshSettings
from control.db import migrate
from control.db.embedded import EmbeddedPostgres
from control.dispatch.runtime import MeshRuntime
from control.kinds import FIELDS
from control.server import build_app, create_server, run_secret
from tests.harness import Harness
from voxmesh import heap
from voxmesh.nats_embedded import EmbeddedNats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEMPLATE = "voxmesh_template"
TEST_SECRET = "test-secret-" + "x" * 40


class DatabaseServer:
    """Creates per-test databases as copies of one migrated template."""

    def __init__(self, admin_url: str, url_for: object) -> None:
        self.admin_url = admin_url
        self._url_for = url_for

    def url(self, database: str) -> str:
        return self._url_for(database)  # type: ignore[operator,no-any-return]

    def execute(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def create(self, name: str, template: str | None = None) -> str:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        self.execute(stmt)
        return self.url(name)

    def drop(self, name: str) -> None:
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def db_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseServer]:
    external = os.environ.get("VOXMESH_TEST_DATABASE_URL")
    embedded: EmbeddedPostgres | None = None
    if external:
        from sqlalchemy.engine import make_url

        base = make_url(external)
        server = DatabaseServer(
            external, lambda db: base.set(database=db).render_as_string(hide_password=False)
        )
    else:
        embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pgdata", delete_on_exit=True)
        server = DatabaseServer(embedded.url("postgres"), embedded.url)
    server.drop(TEMPLATE)
    migrate.upgrade(server.create(TEMPLATE))
    yield server
    server.drop(TEMPLATE)
    if embedded is not None:
        embedded.stop()


@pytest.fixture
def database_url(db_server: DatabaseServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = db_server.create(name, template=TEMPLATE)
    yield url
    db_server.drop(name)


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> ControlSettings:
    return ControlSettings(
        data_dir=data_dir,
        database_url=database_url,
        auth=AuthSettings(jwt_secret=SecretStr(TEST_SECRET)),
        **overrides,  # type: ignore[arg-type]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream of this test's own (a few ms to start)."""
    server = EmbeddedNats(tmp_path / "nats", port=free_port(), worker_types=FIELDS).start()
    yield server
    server.stop()


async def provision(url: str, settings: MeshSettings | None = None) -> None:
    """Create the mesh's streams, consumers and buckets as the control plane does at start (for
    tests that run workers without a control plane)."""
    from control.kinds import FIELDS
    from voxmesh import mesh

    nc = await mesh.connect(url, "test-provision")
    try:
        await mesh.ensure(nc.jetstream(), settings or TEST_MESH, FIELDS)
    finally:
        await nc.close()


TEST_MESH = MeshSettings(ack_wait_seconds=2.0, max_deliver=3, dispatch_poll_seconds=0.2)


@contextlib.asynccontextmanager
async def control_plane(
    database_url: str, tmp_path: Path, nats_server: EmbeddedNats
) -> AsyncIterator[Harness]:
    """The control plane as `make run` runs it, on a given database and NATS."""
    app = build_app(make_settings(tmp_path, database_url, mesh=TEST_MESH), database_url)
    app.mesh = await MeshRuntime.start(
        nats_server.url, app.engine, app.sessions, TEST_MESH, run_secret=run_secret(app.settings)
    )
    server, port = await create_server(app, "127.0.0.1", 0)
    h = Harness(app, port, nats_server, server)
    try:
        yield h
    finally:
        await h.close()
        await h.server.stop(None)
        await app.close()


@pytest.fixture
async def harness(
    database_url: str, tmp_path: Path, nats_server: EmbeddedNats
) -> AsyncIterator[Harness]:
    """The control plane as `make run` runs it: PostgreSQL, NATS, dispatch, gRPC."""
    async with control_plane(database_url, tmp_path, nats_server) as h:
        yield h


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    """Every test ends with the tasks it started finished: a task left running would keep the
    shared event loop from closing at the end of the session."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    left = [
        t
        for t in asyncio.all_tasks()
        if t not in before and not t.done() and t is not asyncio.current_task()
    ]
    if left:
        for task in left:
            task.cancel()
        _, pending = await asyncio.wait(left, timeout=10)
        assert not pending, f"tasks that ignore cancellation: {[t.get_coro() for t in pending]}"


@pytest.fixture(autouse=True)
def no_permission_violations(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Every NATS operation of the platform is one its user may do: a refused one (logged by
    the connection's error callback) fails the test, unless the test is about refusals."""
    yield
    if request.node.get_closest_marker("refusals") is None:
        records = [r for when in ("setup", "call") for r in caplog.get_records(when)]
        refused = [r.getMessage() for r in records if "permissions violation" in r.getMessage()]
        assert not refused, f"NATS refused an operation of the platform: {refused[:3]}"


@pytest.fixture(autouse=True)
def settled_heap() -> None:
    """Before each test, everything alive is left out of later garbage collections, as every
    service does once it is up (voxmesh.heap). The tests' control planes and workers run in
    this process, beside the models earlier tests loaded. Without this, the heap grew to
    725,000 objects over three test files, and each full collection stalled the event loop for
    up to 0.5 s on a quiet machine (with it: 0.13 s at most, the heap no longer growing). Two
    fresh clones failed after a replica missed its lease rounds for 5 s and gave its partitions
    away mid-test; long collections on a loaded machine are the likeliest cause."""
    heap.freeze_startup_objects()
