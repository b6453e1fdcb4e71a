"""The control plane's health follows what it depends on: every READINESS_SECONDS it checks
PostgreSQL (`SELECT 1`, with a deadline) and its NATS connection, and sets grpc.health.v1 to
NOT_SERVING while either is down, SERVING again once both answer (load balancers and
`make run` read it). Nothing needs restarting after an outage: the connection pool reconnects
(pre-ping) and the NATS client reconnects forever. In embedded mode nobody else looks after the
embedded servers, so the probe starts the embedded PostgreSQL or nats-server again if one died
(`revive`: what to run when a check names that part)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import text

from control.app import ControlApp
from voxmesh.grpc_server import set_serving

log = logging.getLogger(__name__)

READINESS_SECONDS = 2.0
CHECK_TIMEOUT_SECONDS = 3.0


class Readiness:
    def __init__(
        self,
        app: ControlApp,
        health: Any,
        service_names: Iterable[str],
        interval: float = READINESS_SECONDS,
        revive: dict[str, Callable[[], None]] | None = None,
    ) -> None:
        self._app = app
        self._revive = revive or {}
        self._health = health
        self._names = list(service_names)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.problem: str | None = None

    async def check(self) -> str | None:
        """What is down, in a sentence; None if everything answers."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                async with self._app.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as e:
            return f"PostgreSQL does not answer ({e.__class__.__name__})"
        mesh = self._app.mesh
        if mesh is not None and not mesh.nc.is_connected:
            return "NATS is disconnected"
        return None

    async def update(self) -> None:
        problem = await self.check()
        for part, revive in self._revive.items():
            if problem and problem.startswith(part):
                log.warning("not serving: %s; starting the embedded %s again", problem, part)
                try:
                    await asyncio.to_thread(revive)
                except Exception as e:
                    log.warning("could not start the embedded %s again: %s", part, e)
                problem = await self.check()
        if problem != self.problem:
            if problem:
                log.warning("not serving: %s", problem)
            else:
                log.info("serving again: PostgreSQL and NATS answer")
            await set_serving(self._health, self._names, problem is None)
            self.problem = problem

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.update()
            except Exception:  # never let the probe die: health would freeze
                log.exception("readiness check failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
