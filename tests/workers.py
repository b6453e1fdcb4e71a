"""A real worker for tests: the shared runtime with a handler whose behaviour the job's TTS text
chooses. No model: these tests are about the mesh, not speech.

    "steps:N"        N progress steps, then a result file
    "sleep:S"        progress for S seconds (for cancellation and crashes), then a result
    "fail"           a permanent failure (JobFailed: no retry)
    "fail-run:1"     fails permanently on run 1, succeeds on later runs (RetryJob)
    "fail-then-sleep:S"  fails on run 1; later runs as "sleep:S"
    "flaky"          a transient error on the first delivery, success on the next
    "always-broken"  a transient error on every delivery
    "big:N"          a result file of N bytes (after the usual line)

Run as a process (for kill -9 and stop tests), the way services run (voxmesh.service):
python -m tests.workers NATS_URL [WORKER_ID] (ack_wait comes from the consumer)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from voxmesh.v1 import jobs_pb2
from voxmesh.worker import JobContext, JobFailed, Outcome, Output, Worker


async def behave(ctx: JobContext) -> Outcome:
    text = ctx.params_as(jobs_pb2.TtsParams).text
    kind, _, arg = text.partition(":")
    if kind == "fail":
        raise JobFailed("this input can never be processed (test)")
    if kind == "fail-run" and ctx.run <= int(arg):
        raise JobFailed(f"failing run {ctx.run} on purpose (test)")
    if kind == "fail-then-sleep":
        if ctx.run == 1:
            raise JobFailed("failing run 1 on purpose (test)")
        kind = "sleep"
    if kind == "flaky" and ctx.delivery == 1:
        raise RuntimeError("transient trouble (test)")
    if kind == "always-broken":
        raise RuntimeError("still broken (test)")
    if kind == "sleep":
        seconds = float(arg)
        steps = max(1, int(seconds / 0.1))
        for i in range(steps):
            await asyncio.sleep(seconds / steps)
            await ctx.progress(100 * (i + 1) / steps, "sleeping", f"step {i + 1} of {steps}")
    elif kind != "big":
        steps = int(arg or 3)
        for i in range(steps):
            await ctx.progress(100 * (i + 1) / steps, f"step {i + 1}/{steps}")
            await ctx.log(f"did step {i + 1}")
    body = f"job {ctx.job_id} run {ctx.run} delivery {ctx.delivery}\n".encode()
    if kind == "big":
        body += bytes(i % 251 for i in range(int(arg) - len(body)))
    return Outcome(
        files=[Output("result.txt", body, "text/plain")],
        meta={"steps": text, "delivery": ctx.delivery},
    )


def spawn(nats_url: str, worker_id: str, **env: str) -> subprocess.Popen[bytes]:
    """A test worker (tts, `behave`) in a process of its own, to be killed mid-job; `env` is
    added to this process's environment."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers", nats_url, worker_id],
        env={**os.environ, "PYTHONPATH": str(root), **env}, cwd=root,
    )  # fmt: skip


def make_worker(nats_url: str, worker_id: str | None = None) -> Worker:
    return Worker("tts", behave, nats_url=nats_url, worker_id=worker_id)


if __name__ == "__main__":  # as a modality service runs: signals, draining, health if asked
    from voxmesh.service import run_service

    url = sys.argv[1]
    worker = make_worker(url, sys.argv[2] if len(sys.argv) > 2 else None)
    asyncio.run(run_service(worker, lambda: {}))
