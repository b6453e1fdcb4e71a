"""How a modality service process runs: the same for STT, TTS, stories and the rest.

    python -m services.tts   # → run_service(Worker("tts", ...), load=...)

1. JSON logs (`voxmesh.observability.setup_logging`) and Prometheus metrics on
   `VOXMESH_METRICS_PORT`.
2. A gRPC health service (and reflection) on `VOXMESH_HEALTH_PORT`. The service
   `voxmesh.worker.<type>` (readiness) is NOT_SERVING while the model loads, SERVING once the
   worker pulls jobs, and NOT_SERVING again while it drains on SIGTERM; the overall status ""
   (liveness) is SERVING for as long as the process runs.
3. The model loads in a thread (its load time becomes `voxmesh_worker_model_load_seconds`), then
   the worker pulls jobs until SIGTERM/SIGINT, finishing the job in hand if it can within
   `VOXMESH_DRAIN_SECONDS` (20); a longer one is left unacknowledged and JetStream redelivers
   it to another worker (a story or a dub can take minutes; Ctrl-C must not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from voxmesh import eventloop, heap
from voxmesh.grpc_server import add_operator_services
from voxmesh.observability import WORKER_MODEL_LOAD, serve_metrics, setup_logging
from voxmesh.worker import Worker

log = logging.getLogger(__name__)
DRAIN_SECONDS = float(os.environ.get("VOXMESH_DRAIN_SECONDS", "20"))
"""How long a stopping worker lets the job in hand run on."""

Loader = Callable[[], dict[str, float]]
"""Loads the service's models (in a thread); returns {model name: seconds it took}."""


def timed(steps: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Run each loading step; {name: seconds it took} (a Loader's answer)."""
    loaded = {}
    for name, step in steps.items():
        started = time.perf_counter()
        step()
        loaded[name] = time.perf_counter() - started
    return loaded


def health_service_name(job_type: str) -> str:
    return f"voxmesh.worker.{job_type}"


async def start_health_server(job_type: str, port: int) -> tuple[grpc.aio.Server, Any, int]:
    server = grpc.aio.server()
    health = add_operator_services(server, [])
    host = os.environ.get("VOXMESH_HEALTH_HOST", "").strip() or "127.0.0.1"
    bound = server.add_insecure_port(f"{host}:{port}")  # loopback unless configured
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(health_service_name(job_type), health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return server, health, bound


async def _ready(health: Any, job_type: str, ready: bool) -> None:
    if health is not None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await health.set(health_service_name(job_type), status)


async def run_service(worker: Worker, load: Loader) -> None:
    """Run one worker process until SIGTERM/SIGINT (see the module docstring)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serve_metrics()
    raw_port = os.environ.get("VOXMESH_HEALTH_PORT", "").strip()
    health_server = health = None
    if raw_port:
        health_server, health, port = await start_health_server(worker.job_type, int(raw_port))
        log.info("health service on port %d (NOT_SERVING until the model is loaded)", port)
    try:
        started = time.monotonic()
        loaded = await asyncio.to_thread(load)
        for model, seconds in loaded.items():
            WORKER_MODEL_LOAD.labels(worker.job_type, model).set(seconds)
            log.info("loaded %s in %.2f s", model, seconds, extra={"model": model})
        log.info("models ready after %.2f s", time.monotonic() - started)
        if stop.is_set():
            return
        running = asyncio.create_task(worker.run(stop))
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done():
            await _ready(health, worker.job_type, True)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        await _ready(health, worker.job_type, False)  # draining: no new traffic
        ready.cancel()
        stopping.cancel()
        try:  # the job in hand may finish; one that would take longer is left to JetStream
            await asyncio.wait_for(asyncio.shield(running), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("the job in hand did not finish within %g s of the stop signal; "
                        "leaving it unacknowledged, so another worker takes it up", DRAIN_SECONDS)  # fmt: skip
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        if health_server is not None:
            await health_server.stop(grace=1)


def main(service: str, make: Callable[[], tuple[Worker, Loader]]) -> None:
    """The `__main__` of a modality service."""
    setup_logging(service)

    async def go() -> None:
        worker, load = make()

        def load_and_settle() -> dict[str, float]:
            loaded = load()
            heap.freeze_startup_objects()  # the models and libraries live as long as we do
            return loaded

        await run_service(worker, load_and_settle)

    eventloop.run(go())
