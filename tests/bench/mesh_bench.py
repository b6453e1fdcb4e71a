"""`make bench` (mesh): jobs through the whole platform against a bare nats-py loop.

One run, this machine: embedded PostgreSQL and nats-server, the control plane in this process,
two worker processes with a no-op handler. Measured:
- CreateJob -> handler start latency (p50/p99), sequential jobs;
- jobs/s end to end (CreateJob by 16 concurrent clients -> COMPLETED in the database);
and, on the same nats-server, a bare nats-py loop doing the least the mesh must do: JetStream
publish -> pull consumer -> ack (latency and msgs/s), and core NATS fan-out to 100 subscribers
(the floor for tests.bench.watch_load's WatchJob fan-out).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from control.db.models import Job, JobResult, JobStatus, UserRole
from tests.bench.control_bench import pct
from tests.bench.platform import running_platform
from tests.harness import Harness
from voxmesh import eventloop, mesh
from voxmesh.v1 import jobs_pb2
from voxmesh.worker import JobContext, Outcome, Worker

ROOT = Path(__file__).resolve().parents[2]
LATENCY_JOBS = 200
THROUGHPUT_JOBS = 1000
CLIENTS = 16
WATCHERS = 100
FANOUT_EVENTS = 50


async def noop(ctx: JobContext) -> Outcome:
    """Start time on the worker, then done; or, for "fanout", timestamped progress."""
    started = time.time()
    if ctx.params_as(jobs_pb2.TtsParams).text == "fanout":
        for i in range(FANOUT_EVENTS):
            await ctx.progress(100 * (i + 1) / FANOUT_EVENTS, "fanout", repr(time.time()))
            await asyncio.sleep(0.02)
    return Outcome(meta={"started": started})


def ms(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples):7.2f} ms   p99 {pct(samples, 0.99):7.2f} ms"


async def bare_nats(url: str) -> tuple[list[float], float, list[float]]:
    """The floor: JetStream publish -> pull -> ack, and core fan-out, with nats-py alone."""
    nc = await mesh.connect(url, "bare")
    js = nc.jetstream()
    await js.add_stream(name="BARE", subjects=["bare.>"], retention="workqueue")
    sub = await js.pull_subscribe("bare.jobs", durable="bare", stream="BARE")
    latencies = []
    for _ in range(LATENCY_JOBS):
        start = time.perf_counter()
        await js.publish("bare.jobs", b"x" * 200, headers={"Nats-Msg-Id": uuid.uuid4().hex})
        msg = (await sub.fetch(1, timeout=5))[0]
        await msg.ack()
        latencies.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()

    async def produce() -> None:
        for _ in range(THROUGHPUT_JOBS // CLIENTS):
            await js.publish("bare.jobs", b"x" * 200, headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def consume() -> None:
        done = 0
        while done < (THROUGHPUT_JOBS // CLIENTS) * CLIENTS:
            for msg in await sub.fetch(64, timeout=5):
                await msg.ack()
                done += 1

    await asyncio.gather(consume(), *(produce() for _ in range(CLIENTS)))
    rate = (THROUGHPUT_JOBS // CLIENTS) * CLIENTS / (time.perf_counter() - start)
    fan: list[float] = []

    async def on_msg(msg: object) -> None:
        fan.append((time.time() - float(msg.data)) * 1000)  # type: ignore[attr-defined]

    for _ in range(WATCHERS):
        await nc.subscribe("bare.fanout", cb=on_msg)
    for _ in range(FANOUT_EVENTS):
        await nc.publish("bare.fanout", repr(time.time()).encode())
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    await nc.close()
    return latencies, rate, fan


async def wait_done(h: Harness, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with h.app.sessions() as session:
            done = await session.scalar(
                select(func.count()).select_from(Job).where(Job.status == JobStatus.COMPLETED)
            )
        if done == count:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"only {done} of {count} jobs completed")


async def main() -> None:
    async with running_platform() as h:
        nats_server = h.nats
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen([sys.executable, "-m", "tests.bench.mesh_bench", "worker", nats_server.url_for("worker-tts")], env=env)
            for _ in range(2)
        ]  # fmt: skip
        try:
            editor = await h.user(UserRole.EDITOR)
            await h.setting("max_concurrent_jobs", 1000, editor.user_id)
            project = str(await h.project(editor.user_id))
            request = jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="noop")
            )
            await asyncio.sleep(2)  # workers connected
            for _ in range(20):
                await editor.client.jobs.CreateJob(request)
            await wait_done(h, 20)

            dispatch_ms = []
            for i in range(LATENCY_JOBS):
                sent = time.time()
                job = (await editor.client.jobs.CreateJob(request)).job
                await wait_done(h, 21 + i)
                async with h.app.sessions() as session:
                    result = await session.get(JobResult, uuid.UUID(job.id))
                    assert result is not None
                    dispatch_ms.append((result.meta["started"] - sent) * 1000)

            already = 20 + LATENCY_JOBS
            phase_start = datetime.now(UTC)
            # The load comes from another process, as clients do: not from the server's loop.
            load = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.mesh_bench", "clients", h.target,
                editor.access, project, env=env,
            )  # fmt: skip
            assert await load.wait() == 0
            await wait_done(h, already + (THROUGHPUT_JOBS // CLIENTS) * CLIENTS)
            async with h.app.sessions() as session:  # first created -> last finished
                first, last, count = (
                    await session.execute(
                        select(func.min(Job.created_at), func.max(Job.finished_at), func.count())
                        .where(Job.created_at >= phase_start)
                    )
                ).one()  # fmt: skip
            rate = count / (last - first).total_seconds()

            bare_latency, bare_rate, bare_fan = await bare_nats(nats_server.url)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)

    print(
        "Voxmesh mesh bench (embedded PostgreSQL + nats-server, 2 worker processes, no-op handler)"
    )
    print(f"  {'CreateJob -> worker handler start':<46} {ms(dispatch_ms)}")
    print(f"  {'bare JetStream publish -> fetch -> ack':<46} {ms(bare_latency)}")
    print(
        f"  {'dispatch latency ratio (p50, mesh / bare)':<46} {statistics.median(dispatch_ms) / statistics.median(bare_latency):7.1f}x"
    )
    print(
        f"  {'jobs/s end to end (create -> COMPLETED)':<46} {rate:7.0f} jobs/s ({CLIENTS} clients in another process, {THROUGHPUT_JOBS} jobs)"
    )
    print(f"  {'bare JetStream msgs/s (publish + fetch + ack)':<46} {bare_rate:7.0f} msgs/s")
    print(f"  {'throughput ratio (mesh / bare)':<46} {rate / bare_rate:7.3f}")
    print(
        f"  {'bare core NATS fan-out to 100 subscribers':<46} {ms(bare_fan)}  ({len(bare_fan)} deliveries)"
    )
    print(f"  {'(WatchJob fan-out: tests.bench.watch_load)':<46}")
    print(f"  goal: >= 200 jobs/s end to end, p99 dispatch < 50 ms -> "
          f"{'met' if rate >= 200 and pct(dispatch_ms, 0.99) < 50 else 'NOT met'}")  # fmt: skip


async def clients(target: str, token: str, project: str) -> None:
    """CLIENTS concurrent callers creating THROUGHPUT_JOBS jobs between them."""
    import grpc

    from tests.harness import Client

    async with grpc.aio.insecure_channel(target) as channel:
        client = Client(channel, token)
        request = jobs_pb2.CreateJobRequest(project_id=project, tts=jobs_pb2.TtsParams(text="noop"))

        async def one() -> None:
            for _ in range(THROUGHPUT_JOBS // CLIENTS):
                await client.jobs.CreateJob(request)

        await asyncio.gather(*(one() for _ in range(CLIENTS)))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        eventloop.run(Worker("tts", noop, nats_url=sys.argv[2]).run())
    elif len(sys.argv) > 4 and sys.argv[1] == "clients":
        eventloop.run(clients(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        eventloop.run(main())
