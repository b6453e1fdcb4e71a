"""`make bench` (watchers): what idle watchers cost the database, and fan-out latency.

100 WatchJob streams on one job held PENDING (its creator has auto_start_jobs off, so nothing
happens to it), then SQL statements counted on the control plane's engine over a quiet window,
against the same window with no watcher. Then 100, and then 1,000, watchers in other processes
(250 to a process, 100 streams to a connection) follow a held job; once all follow it, StartJob,
and its worker emits 50 timestamped progress events 20 ms apart: worker emit -> watcher receipt
latency. Beside each, two floors: the same 50 messages over core NATS to as many subscribers on
the same nats-server, and over a bare grpc-python (aio) server that only streams them (no
database, no NATS, no auth) to as many WatchJob streams, with the watchers spread over
processes the same way: what any Python gRPC server can do here. Then as many watchers that ask to
coalesce progress (a display of where the job stands): for each event, how late each watcher
learnt of it (its receipt of it, or of the later progress that superseded it), and how many of
the events it was sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from asyncio.subprocess import Process
from pathlib import Path
from typing import Any

from sqlalchemy import event, select

from control.db.models import JobEvent, UserRole
from tests.bench.control_bench import pct
from tests.bench.mesh_bench import FANOUT_EVENTS
from tests.bench.platform import running_platform
from tests.harness import Harness
from voxmesh import eventloop, mesh
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[2]
WATCHERS = 100
"""Idle WatchJob streams for the idle-cost part."""
FANOUT = (100, 1000)
"""Watchers of one job in the fan-out part, one run each."""
STREAMS_PER_CHANNEL = 100
PER_PROCESS = 250
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
        fan_ms: dict[int, list[float]] = {}
        late_ms: dict[int, list[float]] = {}
        sent: dict[int, float] = {}
        try:
            for count in FANOUT:
                for coalesce in (False, True):
                    # Held until every watcher follows it, so each event is measured live (a
                    # watcher that joins late gets the early events replayed: not fan-out).
                    fan_job = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                        project_id=project, tts=jobs_pb2.TtsParams(text="fanout")))).job  # fmt: skip
                    # The watchers live in other processes, as clients do: not on the server's
                    # loop, and PER_PROCESS to a process (one Python process cannot take in
                    # 50,000 messages a second: that would measure the client, not the server).
                    procs = await spawn(count, "watchers", h.target, editor.access, fan_job.id,
                                        str(int(coalesce)), env=env)  # fmt: skip
                    await editor.client.jobs.StartJob(jobs_pb2.StartJobRequest(job_id=fan_job.id))
                    got = await collect(procs)
                    emitted = await emit_times(h, fan_job.id)
                    assert len(emitted) == FANOUT_EVENTS, len(emitted)
                    if coalesce:
                        late_ms[count] = [ms for each in got for ms in lateness(each, emitted)]
                        sent[count] = sum(map(len, got)) / (count * FANOUT_EVENTS)
                    else:
                        fan_ms[count] = [(recv - emitted[seq]) * 1000
                                         for each in got for seq, recv in each]  # fmt: skip
                        assert len(fan_ms[count]) == count * FANOUT_EVENTS, len(fan_ms[count])
        finally:
            worker.terminate()
            worker.wait(10)
        bare = {count: await bare_fanout(h.nats.url, count) for count in FANOUT}
        floor = {count: await grpc_floor(count, env) for count in FANOUT}

    print("Voxmesh watcher bench (embedded PostgreSQL + nats-server, control plane in-process)")
    print(f"  {'SQL statements/s, no watcher':<50} {baseline:7.2f}")
    print(f"  {f'SQL statements/s, {WATCHERS} idle WatchJob streams':<50} {watching:7.2f}")
    print(f"  {'caused by watching':<50} {max(0.0, watching - baseline):7.2f} /s")
    for count in FANOUT:
        print(f"  {f'progress fan-out to {count} WatchJob streams':<50} {ms(fan_ms[count])}")
        print(f"  {f'  bare core NATS to {count} subscribers':<50} {ms(bare[count])}")
        print(f"  {f'  bare grpc-python to {count} streams':<50} {ms(floor[count])}")
        late = late_ms[count]
        print(f"  {f'  {count} streams coalescing progress: lateness':<50} "
              f"p50 {statistics.median(late):7.2f} ms   p99 {pct(late, 0.99):7.2f} ms "
              f"({sent[count]:.0%} of the events sent)")  # fmt: skip
    goals = {100: 50, 1000: 200}
    met = watching - baseline < 0.5 and all(
        pct(fan_ms[c], 0.99) < goals.get(c, 200) for c in FANOUT
    )
    print(f"  goal: ~0 statements/s from idle watchers, fan-out p99 < 50 ms at 100 watchers and "
          f"< 200 ms at 1,000 -> {'met' if met else 'NOT met'}")  # fmt: skip


def ms(samples: list[float]) -> str:
    return (f"p50 {statistics.median(samples):7.2f} ms   p99 {pct(samples, 0.99):7.2f} ms "
            f"({len(samples)} deliveries)")  # fmt: skip


async def emit_times(h: Harness, job_id: str) -> dict[int, float]:
    """Each stored progress event's seq -> when the worker emitted it (its message)."""
    async with h.app.sessions() as session:
        payloads = await session.scalars(
            select(JobEvent.payload).where(
                JobEvent.job_id == uuid.UUID(job_id), JobEvent.kind == "progress"
            )
        )
        events = [jobs_pb2.WatchJobResponse.FromString(p) for p in payloads]
    return {e.seq: float(e.progress.message) for e in events}


def lateness(got: list[list[float]], emitted: dict[int, float]) -> list[float]:
    """For each emitted event, ms until this watcher received it or a later one (which
    superseded it); `got` is the watcher's [seq, receipt time] in order."""
    out = []
    for seq, at in sorted(emitted.items()):
        receipt = next((recv for s, recv in got if s >= seq), None)
        assert receipt is not None, f"a coalescing watcher never heard of progress {seq} or later"
        out.append((receipt - at) * 1000)
    return out


async def bare_fanout(url: str, count: int) -> list[float]:
    """The floor: FANOUT_EVENTS timestamped core NATS messages, 20 ms apart, to `count`
    subscribers spread over processes as the watchers are."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = await spawn(count, "subscribers", url, env=env)
    nc = await mesh.connect(url, "bare-publisher")
    for _ in range(FANOUT_EVENTS):
        await nc.publish("bare.fanout", repr(time.time()).encode())
        await nc.flush()
        await asyncio.sleep(0.02)
    await nc.close()
    return await collect(procs)


async def grpc_floor(count: int, env: dict[str, str]) -> list[float]:
    """The gRPC floor: FANOUT_EVENTS timestamped events, 20 ms apart, from a server process
    that does nothing but stream them to `count` WatchJob streams (watchers as for Voxmesh)."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.watch_load", "grpc-floor", str(count), env=env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    port = int(await asyncio.wait_for(server.stdout.readline(), 60))
    procs = await spawn(count, "watchers", f"127.0.0.1:{port}", "floor", "floor", "0", env=env)
    got = await collect(procs)
    emitted = {
        int(k): v for k, v in json.loads(await asyncio.wait_for(server.stdout.read(), 60)).items()
    }
    await asyncio.wait_for(server.wait(), 30)
    out = [(recv - emitted[seq]) * 1000 for each in got for seq, recv in each]
    assert len(out) == count * FANOUT_EVENTS, len(out)
    return out


async def grpc_floor_server(count: int) -> None:
    import grpc

    streams: list[asyncio.Queue[jobs_pb2.WatchJobResponse | None]] = []
    following = asyncio.Event()

    async def watch(request: jobs_pb2.WatchJobRequest, context: object) -> Any:
        queue: asyncio.Queue[jobs_pb2.WatchJobResponse | None] = asyncio.Queue()
        streams.append(queue)
        if len(streams) == count:
            following.set()
        yield jobs_pb2.WatchJobResponse(job_id=request.job_id,
                                        snapshot=jobs_pb2.Job(id=request.job_id))  # fmt: skip
        while (event := await queue.get()) is not None:
            yield event

    server = grpc.aio.server()
    rpc = grpc.unary_stream_rpc_method_handler(
        watch, request_deserializer=jobs_pb2.WatchJobRequest.FromString,
        response_serializer=jobs_pb2.WatchJobResponse.SerializeToString,
    )  # fmt: skip
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("voxmesh.v1.JobService", {"WatchJob": rpc})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.wait_for(following.wait(), 120)
    emitted: dict[int, float] = {}
    for seq in range(1, FANOUT_EVENTS + 1):
        emitted[seq] = time.time()
        event = jobs_pb2.WatchJobResponse(
            job_id="floor", seq=seq,
            progress=jobs_pb2.JobProgress(percent=seq, message=repr(emitted[seq])),
        )  # fmt: skip
        for queue in streams:
            queue.put_nowait(event)
        await asyncio.sleep(0.02)
    for queue in streams:
        queue.put_nowait(None)
    print(json.dumps(emitted), flush=True)
    await server.stop(10)


async def spawn(count: int, role: str, *args: str, env: dict[str, str]) -> list[Process]:
    """`count` watchers or subscribers over as many processes as PER_PROCESS needs, each
    ready (following) when this returns."""
    procs = []
    for first in range(0, count, PER_PROCESS):
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.watch_load", role, *args,
            str(min(PER_PROCESS, count - first)), env=env, stdout=asyncio.subprocess.PIPE,
        ))  # fmt: skip
    for proc in procs:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert ready.strip() == b"ready", ready
    return procs


async def collect(procs: list[Process]) -> list[Any]:
    """What every process printed (a list each), once each has had all its deliveries."""
    out = []
    for proc in procs:
        stdout, _ = await asyncio.wait_for(proc.communicate(), 300)
        out += json.loads(stdout)
    return out


async def subscribers(url: str, count: int) -> None:
    """`count` core NATS subscriptions in one connection; prints each delivery's latency (ms)
    once all FANOUT_EVENTS reached every one."""
    nc = await mesh.connect(url, "bare-subscribers")
    got: list[float] = []
    done = asyncio.Event()

    async def on_msg(msg: object) -> None:
        got.append((time.time() - float(msg.data)) * 1000)  # type: ignore[attr-defined]
        if len(got) == count * FANOUT_EVENTS:
            done.set()

    for _ in range(count):
        await nc.subscribe("bare.fanout", cb=on_msg)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.wait_for(done.wait(), 120)
    await nc.close()
    print(json.dumps(got))


async def watchers(target: str, token: str, job_id: str, coalesce: bool, count: int) -> None:
    """`count` WatchJob streams on one job, STREAMS_PER_CHANNEL to a connection (as that many
    clients would be); prints each watcher's progress receipts, [seq, time] in order."""
    import grpc

    from tests.harness import Client

    got: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    channels = [grpc.aio.insecure_channel(target)
                for _ in range(-(-count // STREAMS_PER_CHANNEL))]  # fmt: skip
    following = 0

    async def watcher(i: int) -> None:
        nonlocal following
        client = Client(channels[i // STREAMS_PER_CHANNEL], token)
        request = jobs_pb2.WatchJobRequest(job_id=job_id, coalesce_progress=coalesce)
        async for e in client.jobs.WatchJob(request):
            if e.WhichOneof("event") == "snapshot":
                following += 1
                if following == count:
                    print("ready", flush=True)
            elif e.WhichOneof("event") == "progress":
                got[i].append((e.seq, time.time()))

    await asyncio.gather(*(watcher(i) for i in range(count)))
    for channel in channels:
        await channel.close()
    print(json.dumps(got))


if __name__ == "__main__":
    if len(sys.argv) > 6 and sys.argv[1] == "watchers":
        eventloop.run(watchers(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1",
                             int(sys.argv[6])))  # fmt: skip
    elif len(sys.argv) > 2 and sys.argv[1] == "grpc-floor":
        eventloop.run(grpc_floor_server(int(sys.argv[2])))
    elif len(sys.argv) > 3 and sys.argv[1] == "subscribers":
        eventloop.run(subscribers(sys.argv[2], int(sys.argv[3])))
    else:
        eventloop.run(main())
