"""Every process runs on uvloop unless VOXMESH_EVENT_LOOP=asyncio asks for asyncio's own loop,
and the services' entry points start on that loop (checked in a real `python -m` process)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxmesh import eventloop

ROOT = Path(__file__).resolve().parents[1]


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_by_default_and_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXMESH_EVENT_LOOP", raising=False)
    assert eventloop.name() == "uvloop"
    assert eventloop.run(_loop_module()) == "uvloop"
    monkeypatch.setenv("VOXMESH_EVENT_LOOP", "asyncio")
    assert eventloop.name() == "asyncio"
    assert eventloop.run(_loop_module()) == "asyncio"


def test_a_service_process_runs_on_uvloop() -> None:
    """`voxmesh.service.main` (every worker's entry point) starts its coroutine on the loop."""
    code = (
        "import asyncio, voxmesh.service as s\n"
        "async def probe(worker, load):\n"
        "    print(type(asyncio.get_running_loop()).__module__)\n"
        "s.run_service = probe\n"
        "s.main('probe', lambda: (None, None))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VOXMESH_EVENT_LOOP"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("uvloop"), out.stdout
