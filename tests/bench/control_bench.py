"""`make bench` (control plane): what the gRPC API costs over the database work it does.

Measured in one run, on the embedded PostgreSQL, against a server in this process:
- CreateJob latency (sequential) and throughput (concurrent clients), against inserting the
  same job row with raw psycopg on the same database;
- ListJobs latency (a 50-job page out of 2,000, with the total count), against the same two
  queries in raw SQL;
- Login latency (Argon2id verification dominates by design).
Prints medians, p99s and ratios. These machines are noisy: compare ratios, not absolutes.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from control.config import AuthSettings, ControlSettings
from control.db import migrate
from control.db.embedded import EmbeddedPostgres
from control.db.models import UserRole
from control.server import build_app, create_server
from tests.harness import Harness
from voxmesh import eventloop
from voxmesh.v1 import auth_pb2, jobs_pb2, pagination_pb2

SEQUENTIAL = 400
CONCURRENT_CLIENTS = 16
CONCURRENT_CALLS = 1600
LIST_ROWS = 2000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(name: str, ms: list[float]) -> str:
    return f"  {name:<44} p50 {statistics.median(ms):7.2f} ms   p99 {pct(ms, 0.99):7.2f} ms"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata", delete_on_exit=True)
        url = pg.ensure_database("bench")
        migrate.upgrade(url)
        settings = ControlSettings(
            data_dir=Path(tmp), database_url=url, auth=AuthSettings(jwt_secret=SecretStr("b" * 48))
        )
        app = build_app(settings, url)
        server, port = await create_server(app, "127.0.0.1", 0)
        h = Harness(app, port)
        try:
            editor = await h.user(UserRole.EDITOR)
            project = str(await h.project(editor.user_id))
            request = jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="Benchmark sentence.")
            )
            await timed(20, lambda: editor.client.jobs.CreateJob(request))  # warm up

            grpc_create = await timed(SEQUENTIAL, lambda: editor.client.jobs.CreateJob(request))

            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)

            async def raw_insert() -> None:
                await conn.execute(
                    "INSERT INTO jobs (id, project_id, created_by, type, params) "
                    "VALUES (%s, %s, %s, 'TTS', %s::jsonb)",
                    (uuid.uuid4(), project, editor.user_id, '{"text": "Benchmark sentence."}'),
                )

            raw_create = await timed(SEQUENTIAL, raw_insert)

            start = time.perf_counter()
            per_client = CONCURRENT_CALLS // CONCURRENT_CLIENTS
            await asyncio.gather(
                *(
                    timed(per_client, lambda: editor.client.jobs.CreateJob(request))
                    for _ in range(CONCURRENT_CLIENTS)
                )
            )
            throughput = CONCURRENT_CALLS / (time.perf_counter() - start)

            existing = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
            assert existing is not None
            for _ in range(max(0, LIST_ROWS - int(existing[0]))):
                await raw_insert()
            list_request = jobs_pb2.ListJobsRequest(
                project_id=project, page=pagination_pb2.PageRequest(page_size=50)
            )
            grpc_list = await timed(200, lambda: editor.client.jobs.ListJobs(list_request))

            async def raw_list() -> None:
                await conn.execute("SELECT count(*) FROM jobs WHERE project_id = %s", (project,))
                cur = await conn.execute(
                    "SELECT * FROM jobs WHERE project_id = %s ORDER BY created_at DESC, id DESC LIMIT 51",
                    (project,),
                )
                await cur.fetchall()

            raw_list_ms = await timed(200, raw_list)
            login = auth_pb2.LoginRequest(username=editor.username, password=editor.password)
            login_ms = await timed(20, lambda: h.anonymous.auth.Login(login))
            await conn.close()
        finally:
            await h.close()
            await server.stop(None)
            await app.close()
            pg.stop()

    create_ratio = statistics.median(grpc_create) / statistics.median(raw_create)
    list_ratio = statistics.median(grpc_list) / statistics.median(raw_list_ms)
    print("Voxmesh control-plane bench (embedded PostgreSQL 18, one process, loopback gRPC)")
    print(row(f"CreateJob via gRPC (sequential, n={SEQUENTIAL})", grpc_create))
    print(row(f"INSERT job row, raw psycopg (n={SEQUENTIAL})", raw_create))
    print(f"  {'CreateJob / raw insert (median ratio)':<44} {create_ratio:7.2f}x")
    print(
        f"  {'CreateJob throughput':<44} {throughput:7.0f} jobs/s "
        f"({CONCURRENT_CLIENTS} concurrent clients, {CONCURRENT_CALLS} calls)"
    )
    print(row(f"ListJobs page of 50 of {LIST_ROWS} + total via gRPC", grpc_list))
    print(row("same count + page, raw psycopg", raw_list_ms))
    print(f"  {'ListJobs / raw queries (median ratio)':<44} {list_ratio:7.2f}x")
    print(row("Login (Argon2id verify + token issue)", login_ms))


if __name__ == "__main__":
    eventloop.run(main())  # the loop the platform runs on
