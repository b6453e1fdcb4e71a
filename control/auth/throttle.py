"""Slowing password guessing: after FREE_FAILURES consecutive failed sign-ins for a username,
further attempts are refused (RESOURCE_EXHAUSTED) for a lockout that doubles with each failure,
up to MAX_LOCK_SECONDS. Unknown usernames are throttled the same way, so the answer reveals
nothing about which accounts exist. A successful sign-in clears the count.

Every attempt is counted as a failure *when it is admitted*, before its password is checked
(`admit` has no await inside, so on the event loop it is atomic): parallel guesses cannot all
slip through while the first ones are still being verified. A success then clears the count.
So 40 parallel wrong guesses on a fresh account get FREE_FAILURES checks, and after a lock
expires exactly one attempt is checked before the next, longer lock.

Kept in memory per control-plane process: with several replicas behind a load balancer each
counts on its own, which still bounds guessing to a handful of tries per lockout period each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FREE_FAILURES = 5
BASE_LOCK_SECONDS = 30.0
MAX_LOCK_SECONDS = 15 * 60.0
FORGET_AFTER_SECONDS = 3600.0


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginThrottle:
    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._now = time.monotonic

    def retry_after(self, username: str) -> float:
        """Seconds until `username` may try again; 0 if it may now."""
        record = self._records.get(username.lower())
        if record is None:
            return 0.0
        return max(0.0, record.locked_until - self._now())

    def admit(self, username: str) -> float:
        """Take one attempt for `username`: 0 if it may go on to the password check (and it is
        already counted as a failure until `succeeded`), else the seconds to wait."""
        wait = self.retry_after(username)
        if wait > 0:
            return wait
        self.failed(username)
        return 0.0

    def failed(self, username: str) -> None:
        now = self._now()
        self._forget_old(now)
        record = self._records.setdefault(username.lower(), _Record())
        record.failures += 1
        record.last_failure = now
        if record.failures >= FREE_FAILURES:
            lock = BASE_LOCK_SECONDS * 2 ** (record.failures - FREE_FAILURES)
            record.locked_until = now + min(lock, MAX_LOCK_SECONDS)

    def succeeded(self, username: str) -> None:
        self._records.pop(username.lower(), None)

    def _forget_old(self, now: float) -> None:
        if len(self._records) > 10_000:
            for name in [
                n for n, r in self._records.items() if now - r.last_failure > FORGET_AFTER_SECONDS
            ]:
                del self._records[name]
