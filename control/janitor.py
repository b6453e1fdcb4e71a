"""Unfinished uploads do not live forever: one untouched for `upload_expiry_hours` (a global
setting) is deleted with the chunks it received. The janitor sweeps every SWEEP_SECONDS; a
user starting an upload first clears their own expired ones, so the per-user caps
(`max_open_uploads`, `max_open_upload_mb`) count only live uploads. Each sweep also seals a few
blobs stored before sealing existed (control.files.seal_stored_before)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from control import files, settings_catalog
from control.app import ControlApp
from control.db.models import Upload

log = logging.getLogger(__name__)

SWEEP_SECONDS = 300.0


async def expire_uploads(
    session: AsyncSession, owner: uuid.UUID | None = None, values: dict[str, Any] | None = None
) -> int:
    """Delete the expired unfinished uploads (of one owner, or everyone's); not committed.
    `values`: settings already resolved (the expiry is global, so any user's hold it)."""
    values = values or await settings_catalog.resolve(session, None)
    hours = int(values["upload_expiry_hours"][0])
    stmt = delete(Upload).where(
        Upload.file_id.is_(None), Upload.updated_at < datetime.now(UTC) - timedelta(hours=hours)
    )
    if owner is not None:
        stmt = stmt.where(Upload.owner_id == owner)
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class UploadJanitor:
    def __init__(self, app: ControlApp, interval: float = SWEEP_SECONDS) -> None:
        self._app = app
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        async with self._app.sessions() as session:
            deleted = await expire_uploads(session)
            await session.commit()
        if deleted:
            log.info("deleted %d expired unfinished uploads", deleted)
        if self._app.mesh is not None:
            async with self._app.sessions() as session:
                sealed = await files.seal_stored_before(session, self._app.mesh.blobs)
                await session.commit()
            if sealed:
                log.info("sealed %d blobs stored before sealing", sealed)
        return deleted

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as e:  # the database may be down: the next sweep tries again
                log.warning("upload expiry sweep failed: %s", e)
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
