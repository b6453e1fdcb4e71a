"""Observability: Prometheus metrics from the control plane and the workers, JSON logs carrying
the job id and the caller's W3C trace, and the workers' health service (NOT_SERVING while the
model loads)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from control.db.models import UserRole
from control.dispatch.runtime import refresh_gauges
from tests.conftest import free_port, provision
from tests.harness import Harness, run_workers
from tests.test_dispatch import watch
from tests.workers import behave, make_worker
from voxmesh.nats_embedded import EmbeddedNats
from voxmesh.observability import JsonFormatter, parse_traceparent, serve_metrics
from voxmesh.service import health_service_name, run_service, start_health_server
from voxmesh.v1 import jobs_pb2

ROOT = Path(__file__).resolve().parents[1]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Lines(logging.Handler):
    """Log records formatted as the processes write them (JSON), kept for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def captured(*loggers: str) -> Iterator[Lines]:
    handler = Lines()
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)


async def test_job_metrics_and_a_trace_from_the_caller_to_the_worker(harness: Harness) -> None:
    editor = await harness.user(UserRole.EDITOR)
    project = str(await harness.project(editor.user_id))
    before = {
        "created": sample("voxmesh_rpc_requests_total", method="/voxmesh.v1.JobService/CreateJob", code="OK"),
        "invalid": sample("voxmesh_rpc_requests_total", method="/voxmesh.v1.JobService/CreateJob", code="INVALID_ARGUMENT"),
        "done": sample("voxmesh_job_processing_seconds_count", type="tts", status="completed"),
        "failed": sample("voxmesh_job_processing_seconds_count", type="tts", status="failed"),
        "input": sample("voxmesh_job_failures_total", type="tts", reason="input"),
        "latency": sample("voxmesh_dispatch_latency_seconds_count", type="tts"),
        "admission": sample("voxmesh_admission_wait_seconds_count", type="tts"),
        "w_done": sample("voxmesh_worker_jobs_total", type="tts", outcome="completed"),
        "w_failed": sample("voxmesh_worker_jobs_total", type="tts", outcome="failed"),
        "w_error": sample("voxmesh_worker_errors_total", type="tts", reason="job_failed"),
    }  # fmt: skip
    traced = (*editor.client.jobs._metadata, ("traceparent", TRACEPARENT))
    with captured("voxmesh.worker") as logs:
        async with run_workers(harness, "tts", behave, name="metrics-worker"):
            good = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="steps:2")), metadata=traced)).job  # fmt: skip
            bad = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
                project_id=project, tts=jobs_pb2.TtsParams(text="fail")))).job  # fmt: skip
            await watch(editor, good.id)
            await watch(editor, bad.id)
        with pytest.raises(grpc.aio.AioRpcError):
            await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(project_id="nope"))
        # An STT job with no STT worker running waits in JetStream: the queue depth shows it.
        stt = (await editor.client.jobs.CreateJob(jobs_pb2.CreateJobRequest(
            project_id=project, input_file_id=str(await harness.file(editor.user_id)),
            stt=jobs_pb2.SttParams()))).job  # fmt: skip
        deadline = time.monotonic() + 10
        while True:  # (the leader refreshes them too, every few seconds: wait for a current view)
            await refresh_gauges(harness.app.sessions, harness.app.mesh.js)
            if (sample("voxmesh_queue_depth", type="stt", stage="jetstream") == 1
                    and sample("voxmesh_queue_depth", type="stt", stage="admission") == 0
                    and sample("voxmesh_jobs", type="tts", status="completed") == 1):  # fmt: skip
                gauges = {(t, st): sample("voxmesh_jobs", type=t, status=st)
                          for t in ("tts", "stt", "dubbing") for st in ("completed", "failed", "pending", "running")}  # fmt: skip
                break
            assert time.monotonic() < deadline, "the STT run never showed in the queue depth"
            await asyncio.sleep(0.1)

    def grew(key: str, name: str, by: float = 1, **labels: str) -> None:
        assert sample(name, **labels) - before[key] == by, (name, labels)

    method = "/voxmesh.v1.JobService/CreateJob"
    grew("created", "voxmesh_rpc_requests_total", 3, method=method, code="OK")
    grew("invalid", "voxmesh_rpc_requests_total", 1, method=method, code="INVALID_ARGUMENT")
    grew("done", "voxmesh_job_processing_seconds_count", type="tts", status="completed")
    grew("failed", "voxmesh_job_processing_seconds_count", type="tts", status="failed")
    grew("input", "voxmesh_job_failures_total", type="tts", reason="input")
    grew("latency", "voxmesh_dispatch_latency_seconds_count", 2, type="tts")
    grew("admission", "voxmesh_admission_wait_seconds_count", 2, type="tts")
    grew("w_done", "voxmesh_worker_jobs_total", type="tts", outcome="completed")
    grew("w_failed", "voxmesh_worker_jobs_total", type="tts", outcome="failed")
    grew("w_error", "voxmesh_worker_errors_total", type="tts", reason="job_failed")
    # The gauges describe this database exactly.
    assert gauges["tts", "completed"] == 1 and gauges["tts", "failed"] == 1
    assert gauges["stt", "pending"] == 1 and gauges["dubbing", "running"] == 0
    # The worker's log lines for the traced job carry its id and the caller's trace id (a new
    # span of it); the other job got a trace of its own.
    mine = [line for line in logs.lines if line.get("job_id") == good.id]
    other = [line for line in logs.lines if line.get("job_id") == bad.id]
    assert mine and all(line["trace_id"] == TRACE_ID for line in mine), logs.lines
    assert all(line["span_id"] != "00f067aa0ba902b7" for line in mine)
    assert other and all(line["trace_id"] != TRACE_ID for line in other)
    assert stt.id not in {line.get("job_id") for line in logs.lines}


def test_traceparent_parsing() -> None:
    assert parse_traceparent(TRACEPARENT).trace_id == TRACE_ID  # type: ignore[union-attr]
    for bad in ("", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01",
                f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01"):  # fmt: skip
        assert parse_traceparent(bad) is None


async def _statuses(port: int, service: str, stop: asyncio.Event, seen: list[int]) -> None:
    """Follow a health service's Watch stream, recording every status change."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            try:
                async for reply in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
                    if not seen or seen[-1] != reply.status:
                        seen.append(reply.status)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)


async def test_worker_health_is_not_serving_until_its_model_is_loaded(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("VOXMESH_HEALTH_PORT", str(port))
    monkeypatch.delenv("VOXMESH_METRICS_PORT", raising=False)
    release = threading.Event()

    def slow_load() -> dict[str, float]:  # stands for a model that takes a while to load
        release.wait(30)
        return {"test-model": 1.25}

    await provision(nats_server.url)
    worker = make_worker(nats_server.url_for("worker-tts"))
    service = asyncio.create_task(run_service(worker, slow_load))
    seen: list[int] = []
    done = asyncio.Event()
    follower = asyncio.create_task(_statuses(port, health_service_name("tts"), done, seen))
    NOT, OK = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + 10
    while not seen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert seen == [NOT]  # loading: not ready
    release.set()
    while seen[-1] != OK:
        assert time.monotonic() < deadline + 10
        await asyncio.sleep(0.05)
    assert worker.ready.is_set()
    assert sample("voxmesh_worker_model_load_seconds", type="tts", model="test-model") == 1.25
    os.kill(os.getpid(), signal.SIGTERM)  # run_service's handler: drain and stop
    await asyncio.wait_for(service, 30)
    done.set()
    follower.cancel()
    assert seen[:2] == [NOT, OK]


@pytest.mark.slow
def test_a_real_worker_process_serves_health_metrics_and_json_logs(
    nats_server: EmbeddedNats,
) -> None:
    asyncio.run(provision(nats_server.url))
    health_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMESH_")}
    env.update(NATS_URL=nats_server.url_for("worker-tts"), VOXMESH_HEALTH_PORT=str(health_port),
               VOXMESH_METRICS_PORT=str(metrics_port), PYTHONPATH=str(ROOT))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "services.tts"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        status = None
        while status != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the TTS worker never became SERVING"
            try:
                with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
                    status = (
                        health_pb2_grpc.HealthStub(channel)
                        .Check(
                            health_pb2.HealthCheckRequest(service="voxmesh.worker.tts"), timeout=2
                        )
                        .status
                    )
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            page = r.read().decode()
        load = next(line for line in page.splitlines()
                    if line.startswith("voxmesh_worker_model_load_seconds{"))  # fmt: skip
        assert 'model="piper:en_US-joe-medium"' in load and float(load.split()[-1]) > 0
        assert "voxmesh_worker_jobs_total" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines and all(line["service"] == "tts" and line["level"] for line in lines)
    assert any("loaded piper:en_US-joe-medium" in line["message"] for line in lines)


def _listening(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses TCP sockets listen on at `port` (from /proc/net/tcp and tcp6)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[k : k + 4][::-1] for k in range(0, len(raw), 4))
            found.add(ipaddress.ip_address(raw))
    return found


def _loopback_only(port: int) -> bool:
    found = _listening(port)
    mapped = {a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a
              for a in found}  # fmt: skip
    return bool(found) and all(a.is_loopback for a in mapped)


async def test_metrics_and_worker_health_listen_on_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VOXMESH_METRICS_HOST", raising=False)
    monkeypatch.delenv("VOXMESH_HEALTH_HOST", raising=False)
    metrics = serve_metrics(port=free_port())
    assert metrics is not None and _loopback_only(metrics), _listening(metrics)
    server, _, health = await start_health_server("tts", free_port())
    try:
        assert _loopback_only(health), _listening(health)
    finally:
        await server.stop(None)
    monkeypatch.setenv("VOXMESH_HEALTH_HOST", "0.0.0.0")  # what deploy/ sets
    server, _, health = await start_health_server("tts", free_port())
    try:
        assert _listening(health) and not _loopback_only(health), _listening(health)
    finally:
        await server.stop(None)
