"""Open streams end when their sign-in does: a WatchJob/WatchJobs stream is checked once by the
guard when it opens, and then held to the same rules for as long as it runs. It ends with
UNAUTHENTICATED (and a sentence saying why) when

- its access token expires (clients refresh and reconnect with `after_seq`: nothing is lost),
- its sign-in is logged out or revoked, or
- its user is deactivated or deleted.

This replica ends its own streams at once after Logout/UpdateUser/DeleteUser (`end`); a
sweep (one query for all open streams, every SWEEP_SECONDS, only while some are open) catches
revocations made through another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncEngine

from control.auth.keys import KEY_REVOKED
from control.db.models import ApiKey, RefreshToken, User
from voxmesh.errors import ApiError, Unauthenticated

log = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0

SIGNED_OUT = "this session has been signed out; sign in again"
DEACTIVATED = "this account no longer exists or has been deactivated"
PASSWORD_CHANGED = "the password of this account was changed; sign in again"
EXPIRED = "the access token of this stream expired; refresh it and watch again from after_seq"


class StreamSession:
    """One open stream's sign-in. `ended()` waits until it must stop, and says why."""

    def __init__(
        self,
        registry: StreamSessions,
        user_id: uuid.UUID,
        family_id: uuid.UUID | None,
        expires_at: datetime,
    ) -> None:
        self.user_id = user_id
        self.family_id = family_id
        self.expires_at = expires_at
        self._registry = registry
        self._ended: asyncio.Future[ApiError] = asyncio.get_running_loop().create_future()

    def end(self, reason: str) -> None:
        if not self._ended.done():
            self._ended.set_result(Unauthenticated(reason))

    async def ended(self) -> ApiError:
        """Wait for the end of this sign-in (cancel it when the stream ends first)."""
        self._registry._add(self)
        try:
            left = (self.expires_at - datetime.now(UTC)).total_seconds()
            try:
                return await asyncio.wait_for(asyncio.shield(self._ended), max(left, 0.0))
            except TimeoutError:
                return Unauthenticated(EXPIRED)
        finally:
            self._registry._remove(self)


class StreamSessions:
    def __init__(self, engine: AsyncEngine, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sweep_seconds = sweep_seconds
        self._open: set[StreamSession] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def open(
        self, user_id: uuid.UUID, family_id: uuid.UUID | None, expires_at: datetime
    ) -> StreamSession:
        return StreamSession(self, user_id, family_id, expires_at)

    def end(
        self,
        *,
        user_id: uuid.UUID | None = None,
        family_id: uuid.UUID | None = None,
        reason: str = SIGNED_OUT,
    ) -> int:
        """End this replica's streams of a user or of one sign-in; returns how many."""
        ended = [
            s
            for s in self._open
            if (user_id is not None and s.user_id == user_id)
            or (family_id is not None and s.family_id == family_id)
        ]
        for s in ended:
            s.end(reason)
        return len(ended)

    @property
    def count(self) -> int:
        return len(self._open)

    def _add(self, session: StreamSession) -> None:
        self._open.add(session)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    def _remove(self, session: StreamSession) -> None:
        self._open.discard(session)

    async def _sweep_forever(self) -> None:
        while self._open:
            await asyncio.sleep(self._sweep_seconds)
            try:
                await self.sweep()
            except Exception as e:  # the database may be down: the next sweep tries again
                log.warning("stream sign-in sweep failed: %s", e)

    async def sweep(self) -> None:
        """One query for all open streams: which sign-ins were revoked, which users are gone."""
        sessions = list(self._open)
        if not sessions:
            return
        users = {s.user_id for s in sessions}
        families = {s.family_id for s in sessions if s.family_id is not None}
        # One statement: the active users among them, and the revoked sign-ins among theirs.
        stmt = union_all(
            select(User.id, literal("active")).where(User.id.in_(users), User.is_active.is_(True)),
            select(RefreshToken.family_id, literal("revoked"))
            .where(RefreshToken.family_id.in_(families), RefreshToken.revoked_at.is_not(None))
            .distinct(),
            # A stream opened with an API key holds the key's id as its family.
            select(ApiKey.id, literal("key_revoked")).where(
                ApiKey.id.in_(families), ApiKey.revoked_at.is_not(None)
            ),
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        active = {found for found, what in rows if what == "active"}
        revoked = {found for found, what in rows if what == "revoked"}
        revoked_keys = {found for found, what in rows if what == "key_revoked"}
        for s in sessions:
            if s.user_id not in active:
                s.end(DEACTIVATED)
            elif s.family_id in revoked:
                s.end(SIGNED_OUT)
            elif s.family_id in revoked_keys:
                s.end(KEY_REVOKED)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
