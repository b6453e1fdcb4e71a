"""Engine and session factory for the control plane (async SQLAlchemy over psycopg 3)."""

from __future__ import annotations

import select
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from voxmesh.observability import SQL_STATEMENTS


def normalize_url(url: str) -> str:
    """Any PostgreSQL URL (`postgres://`, `postgresql://`, `postgresql+psycopg://`) as the
    psycopg 3 dialect SQLAlchemy should use. Other databases are refused."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"Voxmesh needs PostgreSQL; DATABASE_URL names {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


CONNECT_ARGS = {
    "connect_timeout": 5,  # an unreachable server: UNAVAILABLE, not a hang
    # A connection the network dropped without a word (a host that lost power, a NAT or
    # firewall that forgot it) fails within about half a minute instead of the hours TCP's
    # defaults take: the kernel probes a silent connection after 10 s, gives up after 3 missed
    # probes 5 s apart, and closes one whose sent data goes unacknowledged for 30 s.
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _hung_up(dbapi_connection: Any) -> bool:
    """Whether the server ended this idle connection (it restarted or was stopped, or ended
    the session): a pooled connection is asked nothing, so a readable socket means the server's
    goodbye (its FATAL message, or end of file) is waiting there. A look, not a round trip."""
    conn = dbapi_connection.driver_connection
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()  # not select.select: that fails on descriptors above 1023
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except Exception:  # no socket any more
        return True


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    engine = create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=CONNECT_ARGS,
    )

    @event.listens_for(engine.sync_engine, "checkout")
    def _alive(dbapi_connection: Any, *_: Any) -> None:
        # A connection that died with the server is replaced, not used: what pool_pre_ping
        # does, without its round trip (a SELECT 1 on every checkout, several per job).
        if _hung_up(dbapi_connection):
            raise exc.DisconnectionError("PostgreSQL closed this connection")

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        SQL_STATEMENTS.inc()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
