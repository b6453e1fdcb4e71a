"""`make bench` (watchers): what idle watchers cost the database, and fan-out latency.

100 WatchJob streams on one job held PENDING (its creator has auto_start_jobs off, so nothing
happens to it), then SQL statements counted on the control plane's engine over a quiet window,
against the same window with no watcher. Then 100 watchers, in another process, follow a held
job; once all follow it, StartJob, and its worker emits 50 timestamped progress events 20 ms
apart: worker emit -> watcher receipt latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import event

from control.db.models import UserRole
from tests.bench.control_bench import pct
from tests.bench.platform import running_platform
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
WATCHERS = int(os.environ.get("VOXMESH_BENCH_WATCHERS", "100"))
WINDOW = 10.0


async def main() -> None:
    async with running_platform() as h:
        statements = 0

        def count(*_: object) -> None:
            nonlocal statements
            statements += 1

        event.listen(h.app.engine.sync_engine, "before_cursor_execute", count)
        editor = await h.user(UserRole.EDITOR)
        project = str(await h.project(editor.user_id))
        await h.setting("auto_start_jobs", False, editor.user_id)
        held = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, tts=jobs_pb2.TtsParams(text="held")))).job  # fmt: skip
        await asyncio.sleep(2)  # start-up work (first dispatcher passes) out of the window
        before = statements
        await asyncio.sleep(WINDOW)
        baseline = (statements - before) / WINDOW

        calls = [editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=held.id))
                 for _ in range(WATCHERS)]  # fmt: skip
        for call in calls:
            await call.read()  # the snapshot: every watcher is following
        await asyncio.sleep(1)  # each watcher's replay query follows its snapshot: not idle cost
        before = statements
        await asyncio.sleep(WINDOW)
        watching = (statements - before) / WINDOW
        for call in calls:
            call.cancel()

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.mesh_bench",
                "worker",
                h.nats.url_for("worker-tts"),
            ],
            env=env,
        )
        try:
            # Held until every watcher follows it, so each event is measured live (a watcher
            # that joins late gets the early events replayed: that is not fan-out latency).
            fan_job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="fanout")))).job  # fmt: skip
            # The watchers live in another process, as clients do: not on the server's loop.
            watchers = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.watch_load", "watchers", h.target,
                editor.access, fan_job.id, env=env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert watchers.stdout is not None
            ready = await asyncio.wait_for(watchers.stdout.readline(), 60)
            assert ready.strip() == b"ready", ready
            await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=fan_job.id))
            out, _ = await asyncio.wait_for(watchers.communicate(), 120)
            fan_ms = [float(x) for x in json.loads(out)]
        finally:
            worker.terminate()
            worker.wait(10)

    print("Voxmesh watcher bench (embedded PostgreSQL + nats-server, control plane in-process)")
    print(f"  {'SQL statements/s, no watcher':<50} {baseline:7.2f}")
    print(f"  {f'SQL statements/s, {WATCHERS} idle WatchJob streams':<50} {watching:7.2f}")
    print(f"  {'caused by watching':<50} {max(0.0, watching - baseline):7.2f} /s")
    print(f"  {f'progress fan-out to {WATCHERS} WatchJob streams':<50} "
          f"p50 {statistics.median(fan_ms):7.2f} ms   p99 {pct(fan_ms, 0.99):7.2f} ms "
          f"({len(fan_ms)} deliveries)")  # fmt: skip
    print(f"  goal: ~0 statements/s from idle watchers, fan-out p99 < 50 ms -> "
          f"{'met' if watching - baseline < 0.5 and pct(fan_ms, 0.99) < 50 else 'NOT met'}")  # fmt: skip


async def watchers(target: str, token: str, job_id: str) -> None:
    """WATCHERS WatchJob streams on one job; prints every progress event's latency (ms)."""
    import grpc

    from tests.harness import Client

    fan_ms: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        client = Client(channel, token)

        following = 0

        async def watcher() -> None:
            nonlocal following
            async for e in client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job_id)):
                if e.WhichOneof("event") == "snapshot":
                    following += 1
                    if following == WATCHERS:
                        print("ready", flush=True)
                elif e.WhichOneof("event") == "progress":
                    with contextlib.suppress(ValueError):
                        fan_ms.append((time.time() - float(e.progress.message)) * 1000)

        await asyncio.gather(*(watcher() for _ in range(WATCHERS)))
    print(json.dumps(fan_ms))


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "watchers":
        asyncio.run(watchers(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        asyncio.run(main())
