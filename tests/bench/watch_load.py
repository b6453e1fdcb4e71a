"""`make bench` (watchers): what idle watchers cost the database, and fan-out latency.

100 WatchJob streams on one job held PENDING (its creator has auto_start_jobs off, so nothing
happens to it), then SQL statements counted on the control plane's engine over a quiet window,
against the same window with no watcher. Then 100 watchers on a job whose worker emits 50
timestamped progress events: worker emit -> watcher receipt latency.
"""

from __future__ import annotations

import asyncio
import contextlib
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
WATCHERS = 100
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
        await asyncio.sleep(2)
        before = statements
        await asyncio.sleep(WINDOW)
        baseline = (statements - before) / WINDOW

        calls = [editor.client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=held.id))
                 for _ in range(WATCHERS)]  # fmt: skip
        for call in calls:
            await call.read()  # the snapshot: every watcher is following
        await asyncio.sleep(1)
        before = statements
        await asyncio.sleep(WINDOW)
        watching = (statements - before) / WINDOW
        for call in calls:
            call.cancel()

        await h.setting("auto_start_jobs", True, editor.user_id)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.mesh_bench", "worker", h.nats.url], env=env
        )
        try:
            await asyncio.sleep(2)
            fan_job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="fanout")))).job  # fmt: skip
            fan_ms: list[float] = []

            async def watcher() -> None:
                async for e in editor.client.jobs.WatchJob(
                    jobs_pb2.WatchJobRequest(job_id=fan_job.id)
                ):
                    if e.WhichOneof("event") == "progress":
                        with contextlib.suppress(ValueError):
                            fan_ms.append((time.time() - float(e.progress.message)) * 1000)

            await asyncio.wait_for(asyncio.gather(*(watcher() for _ in range(WATCHERS))), 120)
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


if __name__ == "__main__":
    asyncio.run(main())
