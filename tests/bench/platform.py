"""The platform, started for a benchmark: embedded PostgreSQL and nats-server in a temporary
directory, migrations, and the control plane (gRPC + dispatch) in this process."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import SecretStr

from control.config import AuthSettings, ControlSettings, MeshSettings
from control.db import migrate
from control.db.embedded import EmbeddedPostgres
from control.dispatch.runtime import MeshRuntime
from control.kinds import FIELDS
from control.server import build_app, create_server, run_secret
from tests.conftest import free_port
from tests.harness import Harness
from voxmesh import heap
from voxmesh.nats_embedded import EmbeddedNats


@contextlib.asynccontextmanager
async def running_platform(mesh_settings: MeshSettings | None = None) -> AsyncIterator[Harness]:
    mesh_settings = mesh_settings or MeshSettings(dispatch_poll_seconds=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata", delete_on_exit=True)
        nats_server = EmbeddedNats(
            Path(tmp) / "nats", port=free_port(), worker_types=FIELDS
        ).start()
        url = pg.ensure_database("bench")
        migrate.upgrade(url)
        settings = ControlSettings(
            data_dir=Path(tmp), database_url=url, mesh=mesh_settings,
            auth=AuthSettings(jwt_secret=SecretStr("b" * 48)),
        )  # fmt: skip
        app = build_app(settings, url)
        app.mesh = await MeshRuntime.start(
            nats_server.url,
            app.engine,
            app.sessions,
            mesh_settings,
            run_secret=run_secret(app.settings),
        )
        server, port = await create_server(app, "127.0.0.1", 0)
        heap.freeze_startup_objects()  # as `control serve` does once it is up
        harness = Harness(app, port, nats_server, server)
        try:
            yield harness
        finally:
            await harness.close()
            await harness.server.stop(None)
            await app.close()
            nats_server.stop()
            pg.stop()
