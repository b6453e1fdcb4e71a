"""`make bench` (replicas): jobs end to end with 1, then 2, control-plane replicas, and what a
job costs; the figures deploy/README.md's capacity model is built from.

One run, this machine: embedded PostgreSQL and nats-server, control-plane replicas as separate
processes (`python -m control serve`, sharing only the database and NATS), two worker processes
with a no-op handler (tests.bench.mesh_bench's), clients in another process. Measured:
- CreateJob -> handler start (p50/p99), one job at a time, with 1 and with 2 replicas (the
  jobs created through the first: half of them are dispatched by the second);
- jobs/s end to end (first created -> last COMPLETED) with 1 replica, then with 2 (the clients
  split between them; the replicas split the partitions);
- per job, in each throughput phase: SQL statements the control planes sent (their
  voxmesh_sql_statements), PostgreSQL transactions (pg_stat_database, pool pings included),
  NATS messages in and out of the server (/varz: the whole mesh), CPU ms of the control-plane
  processes, of the workers, and of PostgreSQL + nats-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from control.db.embedded import EmbeddedPostgres
from control.db.session import normalize_url
from control.dispatch.leases import PARTITION_LOCKS
from control.kinds import FIELDS
from tests.bench.control_bench import pct
from tests.conftest import free_port
from voxmesh import eventloop, mesh
from voxmesh.nats_auth import CONTROL, worker_user
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
LATENCY_JOBS = 200
THROUGHPUT_JOBS = 1200
CLIENTS = 24
TICK = os.sysconf("SC_CLK_TCK")


def env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VOXMESH_") and k not in ("DATABASE_URL", "NATS_URL")
    }
    return {**base, "PYTHONPATH": str(ROOT), "VOXMESH_LOG_LEVEL": "WARNING", **extra}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def servers_of(tmp: Path, name: str) -> list[int]:
    """This bench's PostgreSQL (postmaster and its backends) or nats-server: the processes
    whose command line names `tmp` and `name`, and their children."""
    parents: dict[int, int] = {}
    roots = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
                if str(tmp) in command and name in command:
                    roots.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return roots + [pid for pid, parent in parents.items() if parent in roots]


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # a backend that just ended (its time went to the postmaster's children)
        return 0.0


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return bytes(reply.read())


def metric(port: int, name: str) -> float:
    body = _get(f"http://127.0.0.1:{port}/metrics").decode()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " "))


@dataclass
class Replica:
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]


@dataclass
class Costs:
    statements: float
    transactions: float
    nats_msgs: float
    control_cpu: float
    worker_cpu: float
    postgres_cpu: float
    nats_cpu: float


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pg = EmbeddedPostgres(tmp / "pgdata", delete_on_exit=True)
        self.monitor = free_port()
        self.nats = EmbeddedNats(
            tmp / "nats", port=free_port(), worker_types=FIELDS, monitor_port=self.monitor
        ).start()
        self.database = self.pg.ensure_database("bench")
        self.engine = create_async_engine(normalize_url(self.database))
        self.replicas: list[Replica] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.base = env(
            DATABASE_URL=self.database,
            NATS_URL=self.nats.url_for(CONTROL),
            VOXMESH_AUTH__JWT_SECRET="replicas-bench-" + "r" * 40,
            VOXMESH_MESH__DISPATCH_POLL_SECONDS="0.5",
        )

    def start_replica(self) -> Replica:
        port, metrics_port = free_port(), free_port()
        i = len(self.replicas)
        proc = subprocess.Popen(
            [sys.executable, "-m", "control", "serve"],
            env={
                **self.base,
                "VOXMESH_PORT": str(port),
                "VOXMESH_METRICS_PORT": str(metrics_port),
                "VOXMESH_DATA_DIR": str(self.tmp / f"control-{i}"),
            },
            stdout=(self.tmp / f"control-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        replica = Replica(port, metrics_port, proc)
        self.replicas.append(replica)
        return replica

    async def token(self, port: int) -> str:
        deadline = time.monotonic() + 120
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            while True:
                try:
                    reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(
                        auth_pb2.LoginRequest(username="bench", password="bench-password"),
                        timeout=5,
                    )
                    return str(reply.tokens.access_token)
                except grpc.aio.AioRpcError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)

    async def sql(self, query: str, **params: object) -> list[tuple[object, ...]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(query), params)
            rows = list(result) if result.returns_rows else []
            await conn.commit()
            return [tuple(row) for row in rows]

    async def completed(self) -> int:
        rows = await self.sql("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'")
        return int(rows[0][0])  # type: ignore[call-overload]

    async def wait_completed(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while (done := await self.completed()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {count} jobs completed in {timeout:.0f} s")
            await asyncio.sleep(0.01)

    async def partitions_split(self, replicas: int) -> bool:
        rows = await self.sql(
            "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = :ns AND objsubid = 2 GROUP BY pid",
            ns=PARTITION_LOCKS,
        )
        held = sorted(int(n) for _, n in rows)  # type: ignore[call-overload]
        return len(held) == replicas and sum(held) == mesh.PARTITIONS and max(held) - min(held) <= 1

    async def costs(self) -> Costs:
        statements = sum(
            metric(r.metrics_port, "voxmesh_sql_statements_total") for r in self.replicas
        )
        xacts = await self.sql(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'bench'"
        )
        varz = json.loads(await asyncio.to_thread(_get, f"http://127.0.0.1:{self.monitor}/varz"))
        return Costs(
            statements=statements,
            transactions=float(xacts[0][0]),  # type: ignore[arg-type]
            nats_msgs=float(varz["in_msgs"] + varz["out_msgs"]),
            control_cpu=sum(cpu_seconds(r.proc.pid) for r in self.replicas),
            worker_cpu=sum(cpu_seconds(w.pid) for w in self.workers),
            postgres_cpu=sum(_cpu_or_zero(pid) for pid in servers_of(self.tmp, "postgres")),
            nats_cpu=sum(_cpu_or_zero(pid) for pid in servers_of(self.tmp, "nats-server")),
        )

    async def throughput(self, tokens: list[str], project: str) -> tuple[float, dict[str, float]]:
        """THROUGHPUT_JOBS created by CLIENTS callers in another process, split between the
        replicas; jobs/s from the first created to the last completed, and costs per job."""
        before_done = await self.completed()
        before = await self.costs()
        since = (await self.sql("SELECT now()"))[0][0]
        targets = ",".join(f"127.0.0.1:{r.port}" for r in self.replicas)
        load = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.replicas_bench",
            "clients",
            targets,
            ",".join(tokens),
            project,
            env=env(),
        )
        assert await load.wait() == 0
        await self.wait_completed(before_done + THROUGHPUT_JOBS)
        after = await self.costs()
        first, last, count = (
            await self.sql(
                "SELECT min(created_at), max(finished_at), count(*) FROM jobs"
                " WHERE created_at >= :since",
                since=since,
            )
        )[0]
        rate = float(count) / (last - first).total_seconds()  # type: ignore[operator, arg-type]
        per_job = {
            field: (getattr(after, field) - getattr(before, field)) / THROUGHPUT_JOBS
            for field in Costs.__dataclass_fields__
        }
        return rate, per_job

    async def latency(self, token: str, project: str) -> list[float]:
        """CreateJob -> the worker's handler start, one job at a time."""
        out = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.replicas[0].port}") as channel:
            jobs = jobs_pb2_grpc.JobServiceStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            request = jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="noop")
            )
            for _ in range(LATENCY_JOBS):
                done = await self.completed()
                sent = time.time()
                job = (await jobs.CreateJob(request, metadata=md, timeout=10)).job
                await self.wait_completed(done + 1, 60)
                meta = await self.sql(
                    "SELECT meta FROM job_results WHERE job_id = :id", id=uuid.UUID(job.id)
                )
                out.append((float(meta[0][0]["started"]) - sent) * 1000)  # type: ignore[index]
        return out

    def stop(self) -> None:
        for proc in [*self.workers, *(r.proc for r in self.replicas)]:
            proc.terminate()
        for proc in [*self.workers, *(r.proc for r in self.replicas)]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nats.stop()
        self.pg.stop()


async def run(tmp: Path) -> None:
    bench = Bench(tmp)
    try:
        subprocess.run(
            [sys.executable, "-m", "control", "create-user", "bench", "--role", "editor"],
            env={**bench.base, "VOXMESH_DATA_DIR": str(tmp / "control-0")},
            input="bench-password\n",
            text=True,
            check=True,
            timeout=120,
            capture_output=True,
        )
        first = bench.start_replica()
        token = await bench.token(first.port)
        await bench.sql(
            "INSERT INTO settings (id, key, value, user_id) SELECT gen_random_uuid(),"
            " 'max_concurrent_jobs', '100000',"
            " id FROM users WHERE username = 'bench'"
        )
        bench.workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.mesh_bench",
                    "worker",
                    bench.nats.url_for(worker_user("tts")),
                ],
                env=env(),
            )
            for _ in range(2)
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            project = (
                await projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
                    projects_pb2.CreateProjectRequest(name="bench"),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            ).project.id
        await asyncio.wait_for(_until(lambda: bench.partitions_split(1)), 60)
        latency = await bench.latency(token, project)  # also warms every process up
        one, one_costs = await bench.throughput([token], project)
        second = bench.start_replica()
        tokens = [token, await bench.token(second.port)]
        await asyncio.wait_for(_until(lambda: bench.partitions_split(2)), 60)
        # Through replica 1 still: about half the jobs are in replica 2's partitions, which
        # hears of them over NATS (its poll is 0.5 s: a missed wake shows).
        latency_two = await bench.latency(token, project)
        two, two_costs = await bench.throughput(tokens, project)
    finally:
        bench.stop()

    print(
        "Voxmesh replicas bench (embedded PostgreSQL + nats-server, control planes and 2 "
        "no-op workers as separate processes)"
    )
    print(
        f"  {'CreateJob -> handler start, 1 replica':<42} p50 {statistics.median(latency):6.2f}"
        f" ms   p99 {pct(latency, 0.99):6.2f} ms"
    )
    print(
        f"  {'CreateJob -> handler start, 2 replicas':<42} p50 "
        f"{statistics.median(latency_two):6.2f} ms   p99 {pct(latency_two, 0.99):6.2f} ms"
    )
    print(
        f"  {'jobs/s end to end, 1 replica':<42} {one:7.0f} jobs/s ({CLIENTS} clients, "
        f"{THROUGHPUT_JOBS} jobs)"
    )
    print(f"  {'jobs/s end to end, 2 replicas':<42} {two:7.0f} jobs/s ({two / one:.2f}x)")
    print("  per job                    1 replica   2 replicas")
    for field, label in (
        ("statements", "SQL statements (control)"),
        ("transactions", "PostgreSQL transactions"),
        ("nats_msgs", "NATS messages (in + out)"),
        ("control_cpu", "CPU ms, control planes"),
        ("worker_cpu", "CPU ms, workers"),
        ("postgres_cpu", "CPU ms, PostgreSQL"),
        ("nats_cpu", "CPU ms, nats-server"),
    ):
        scale = 1000 if field.endswith("cpu") else 1
        print(f"  {label:<26} {one_costs[field] * scale:9.2f}   {two_costs[field] * scale:9.2f}")
    met = one >= 500 and pct(latency, 0.99) < 25
    print(
        f"  goal: >= 500 jobs/s with 1 replica, p99 dispatch < 25 ms -> {'met' if met else 'NOT met'}"
    )


async def _until(check: object) -> None:
    while not await check():  # type: ignore[operator]
        await asyncio.sleep(0.2)


async def clients(targets: str, tokens: str, project: str) -> None:
    """CLIENTS callers, spread over the replicas, creating THROUGHPUT_JOBS jobs between them."""
    channels = [grpc.aio.insecure_channel(t) for t in targets.split(",")]
    stubs = [jobs_pb2_grpc.JobServiceStub(c) for c in channels]
    mds = [(("authorization", f"Bearer {t}"),) for t in tokens.split(",")]
    request = jobs_pb2.CreateJobRequest(project_id=project, tts=jobs_pb2.TtsParams(text="noop"))

    async def one(i: int) -> None:
        stub, md = stubs[i % len(stubs)], mds[i % len(mds)]
        for _ in range(THROUGHPUT_JOBS // CLIENTS):
            await stub.CreateJob(request, metadata=md, timeout=30)

    await asyncio.gather(*(one(i) for i in range(CLIENTS)))
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "clients":
        eventloop.run(clients(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            eventloop.run(run(Path(tmp)))
