"""What every servicer needs, built once per server: settings, database and token service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from control.auth.streams import StreamSessions
from control.auth.tokens import TokenService
from control.config import ControlSettings

if TYPE_CHECKING:
    from control.dispatch.runtime import MeshRuntime
    from control.janitor import UploadJanitor
    from control.readiness import Readiness
    from control.webhooks import Sender


@dataclass
class ControlApp:
    settings: ControlSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tokens: TokenService
    mesh: MeshRuntime | None = None
    """The NATS side; None for tools that only touch the database (sample data, migrations)."""
    streams: StreamSessions = field(init=False)
    """Open streams' sign-ins, ended when the sign-in is revoked or expires."""

    readiness: Readiness | None = None
    """Health that follows PostgreSQL and NATS (set by `create_server`)."""
    janitor: UploadJanitor | None = None
    """Deletes expired unfinished uploads (set by `create_server`)."""
    webhooks: Sender | None = None
    """Sends due webhook deliveries (set by `create_server`)."""

    def __post_init__(self) -> None:
        self.streams = StreamSessions(self.engine)

    async def close(self) -> None:
        """Stop what runs in the background, then the NATS side and the database pool."""
        if self.readiness is not None:
            await self.readiness.stop()
        if self.janitor is not None:
            await self.janitor.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.streams.close()
        if self.mesh is not None:
            await self.mesh.stop()
        await self.engine.dispose()
