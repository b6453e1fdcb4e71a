"""Which partitions of the jobs this replica works (see voxmesh/mesh.py, "Partitions").

Each partition is leased by one control-plane replica at a time: a PostgreSQL session advisory
lock, (PARTITION_LOCKS, p), held on one connection this module keeps open. Every replica also
holds a membership lock, (MEMBER_LOCKS, <its own id>), so any replica can count the live ones
in pg_locks. Each round a replica works out its fair share, ceil(PARTITIONS / replicas): it
gives back partitions above its share (a replica joined) and takes free ones up to it (a replica
left). A replica that dies loses its connection, and PostgreSQL frees its locks: the others take
its partitions over on their next round. Giving one back stops its work first (`on_lose`), so
two replicas never work a partition at once in the normal course; if they briefly do (the
connection broke under a working replica), JetStream's single consumer per partition, the
outbox's row locks and the lifecycle's checks keep every job exactly once.

Partition 0's holder also runs what must run once in the whole cluster (the reaper, gauges,
max-deliveries advisories, and events stored before partitions existed).

A replica that stops without closing its connection (its host lost power or left the network,
the process froze) must not keep its partitions for the hours TCP takes to notice: the lease
session sets `idle_session_timeout`, so PostgreSQL ends it, and frees its locks, once it has sent
nothing for LEASE_IDLE_SECONDS (a live replica asks every ROUND_SECONDS). And a replica whose
rounds stall stops trusting its leases after TRUST_SECONDS, well before PostgreSQL can give them
to another: it stops working them, and starts over with a new session when its rounds resume.
A lease query that gets no answer in QUERY_LIMIT_SECONDS (its connection died without a word:
the reply will never come) is given up with its session, so the replica starts over at once
rather than when TCP notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from voxmesh.mesh import PARTITIONS

log = logging.getLogger(__name__)
MEMBER_LOCKS = 0x766F7801
PARTITION_LOCKS = 0x766F7802
ROUND_SECONDS = 1.0
"""How often a replica looks at the others: how long a dead replica's partitions stay unworked
(plus the moment PostgreSQL takes to see its connection close)."""

LEASE_IDLE_SECONDS = 15.0
"""PostgreSQL ends a lease session that sent nothing for this long (a dead or frozen replica),
which frees its partitions for the others."""
TRUST_SECONDS = 5.0
"""A replica works its partitions only while its last round is at most this old: less than
LEASE_IDLE_SECONDS, so it has stopped before another replica can take them."""

QUERY_LIMIT_SECONDS = 10.0
"""A lease query unanswered for this long is given up, and its session with it."""

Hook = Callable[[int], Awaitable[None]]
T = TypeVar("T")

_COUNT = text(
    "SELECT count(*) FILTER (WHERE classid = :members),"
    " coalesce(array_agg(objid::int) FILTER (WHERE classid = :partitions"
    "   AND pid <> pg_backend_pid()), '{}')"
    " FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid IN (:members, :partitions)"
)


class Leases:
    """Keeps this replica's fair share of partitions; calls `on_gain(p)` after taking one and
    `on_lose(p)` before giving one back (or at once when the connection holding them broke)."""

    def __init__(self, engine: AsyncEngine, on_gain: Hook, on_lose: Hook) -> None:
        self._engine = engine
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._id = secrets.randbelow(2**31 - 1)
        self._conn: AsyncConnection | None = None
        self.held: set[int] = set()
        self.replicas = 1
        """Live replicas at the last round (this one included)."""
        self._confirmed = time.monotonic()
        """When PostgreSQL last confirmed this replica's lease session (monotonic)."""
        self._distrusted = False
        self._round_done = asyncio.Event()
        """Set at the end of each round (then replaced by a fresh one)."""

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watch(), name="partition-lease-watchdog")
        try:
            while True:
                try:
                    if self._distrusted:  # rounds stalled: the session may be gone; start over
                        self._distrusted = False
                        await self._drop_all()
                    await self._round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # PostgreSQL unreachable: the locks went with it
                    log.warning("partition leases lost (%s); retrying", exc)
                    await self._drop_all()
                done, self._round_done = self._round_done, asyncio.Event()
                done.set()
                await asyncio.sleep(ROUND_SECONDS)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def until(self, predicate: Callable[[Leases], bool]) -> None:
        """Until `predicate(self)` holds after a round (tests and benches; give it a deadline).
        An Event per round, not an asyncio.Condition: on Python 3.11 a Condition's wait can
        swallow the caller's timeout when a notify meets the cancellation (CPython gh-112202)."""
        while not predicate(self):
            await self._round_done.wait()

    def trusted(self) -> bool:
        """Whether the last round is recent enough for this replica to work its partitions."""
        return time.monotonic() - self._confirmed < TRUST_SECONDS

    async def _watch(self) -> None:
        """Stop working the partitions when the rounds stall (a query that hangs on a broken
        network, an event loop that froze): another replica may soon hold them."""
        while True:
            await asyncio.sleep(min(ROUND_SECONDS, TRUST_SECONDS) / 2)
            if self.held and not self.trusted():
                held = sorted(self.held)
                log.warning("no lease round for %.0f s: stopping work on partitions %s until "
                            "PostgreSQL answers again", TRUST_SECONDS, held)  # fmt: skip
                self._distrusted = True
                self.held.clear()  # in place: the dispatcher reads this very set
                await asyncio.gather(*(self._on_lose(p) for p in held), return_exceptions=True)

    async def _round(self) -> None:
        if self._conn is None:
            conn = self._conn = await self._ask(self._engine.connect())
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                await self._ask(conn.execute(
                    text("SELECT set_config('idle_session_timeout', :ms, false)"),
                    {"ms": str(int(LEASE_IDLE_SECONDS * 1000))},
                ))  # fmt: skip
            except ConnectionError:
                raise
            except Exception as exc:  # PostgreSQL before 14
                log.warning("idle_session_timeout is not supported (%s): the partitions of a "
                            "replica whose host dies wait for TCP to notice", exc)  # fmt: skip
                await self._ask(conn.rollback())
            await self._ask(conn.execute(
                text("SELECT pg_advisory_lock(:k1, :k2)"), {"k1": MEMBER_LOCKS, "k2": self._id}
            ))  # fmt: skip
        conn = self._conn
        row = (
            await self._ask(
                conn.execute(_COUNT, {"members": MEMBER_LOCKS, "partitions": PARTITION_LOCKS})
            )
        ).one()
        self._confirmed = time.monotonic()
        self.replicas, taken = max(int(row[0]), 1), set(row[1])
        share = math.ceil(PARTITIONS / self.replicas)
        for p in sorted(self.held, reverse=True)[: max(len(self.held) - share, 0)]:
            log.info(
                "giving partition %d back (%d replicas share %d)", p, self.replicas, PARTITIONS
            )
            self.held.discard(p)
            await self._on_lose(p)
            await self._ask(conn.execute(
                text("SELECT pg_advisory_unlock(:k1, :k2)"), {"k1": PARTITION_LOCKS, "k2": p}
            ))  # fmt: skip
        # Start looking at a place of our own, so replicas that start together rarely collide.
        start = self._id % PARTITIONS
        for p in sorted(range(PARTITIONS), key=lambda q: (q != 0, (q - start) % PARTITIONS)):
            if len(self.held) >= share or self._distrusted:  # the watchdog stopped us meanwhile
                break
            if p in self.held or p in taken:
                continue
            got = await self._ask(conn.scalar(
                text("SELECT pg_try_advisory_lock(:k1, :k2)"), {"k1": PARTITION_LOCKS, "k2": p}
            ))  # fmt: skip
            if got:
                log.info("working partition %d (%d replicas)", p, self.replicas)
                self.held.add(p)
                await self._on_gain(p)
                if p not in self.held:  # the watchdog let it go while its work was starting
                    await self._on_lose(p)

    @staticmethod
    async def _ask(query: Awaitable[T]) -> T:
        """One lease query, given up (cancelled in the server as far as it can be) when it has
        not answered within QUERY_LIMIT_SECONDS: the round then fails, and the session goes."""
        try:
            async with asyncio.timeout(QUERY_LIMIT_SECONDS):
                return await query
        except TimeoutError:
            raise ConnectionError(
                f"PostgreSQL did not answer a lease query within {QUERY_LIMIT_SECONDS:.0f} s"
            ) from None

    async def _drop_all(self) -> None:
        held = sorted(self.held)
        self.held.clear()  # in place: the dispatcher reads this very set
        await asyncio.gather(*(self._on_lose(p) for p in held), return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                # Closed for real, not returned to the pool: the locks go with the session.
                await self._conn.invalidate()
                await self._conn.close()
            self._conn = None

    async def stop(self) -> None:
        await self._drop_all()
