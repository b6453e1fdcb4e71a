"""The event loop every Voxmesh process runs on: uvloop (libuv) where it is installed, as the
peer servers we are measured against run (uvicorn[standard]); asyncio's own loop otherwise, or
when `VOXMESH_EVENT_LOOP=asyncio` asks for it (to debug with asyncio's own tooling).

A short job crosses about ten Python event loops on its way (Envoy -> HTTP API -> control
plane -> worker and back, each hop a gRPC, NATS or PostgreSQL message), so the cost of a loop
turn is paid many times per job: on uvloop the control plane, workers and the HTTP API each
spend less CPU per message."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's own (not installed, or not wanted)."""
    if os.environ.get("VOXMESH_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def name() -> str:
    """The loop a process started by `run` uses: "uvloop" or "asyncio" (for logs and /info)."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop above."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
