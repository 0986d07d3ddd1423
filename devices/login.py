"""Throttling of failed logins, per username and per source address, in memory.

After ``free_failures`` failures (within ``window_s`` of each other) a key is locked for
``base_s``, doubling with every further failure up to ``max_s``. While locked, a login attempt
is refused without checking the password, so guessing costs the attacker time, not us CPU.
A success clears the username's record; the address's record only decays (one valid account
must not reset an address that is guessing others). The state is per process and lost on
restart: acceptable for a throttle whose point is to slow guessing, documented in
docs/registry.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure_ts: float
    locked_until_ts: float


class LoginThrottle:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        window_s: float = 15 * 60,
        base_s: float = 2.0,
        max_s: float = 15 * 60,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.window_s = window_s
        self.base_s = base_s
        self.max_s = max_s
        self.max_keys = max_keys
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def retry_after_s(self, *keys: str) -> float:
        """Seconds until every key may try again (0: allowed now)."""
        now = self.clock()
        wait_s = 0.0
        for key in keys:
            rec = self._records.get(key)
            if rec is not None:
                wait_s = max(wait_s, rec.locked_until_ts - now)
        return wait_s

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            rec = self._records.get(key)
            if rec is None or now - rec.last_failure_ts > self.window_s:
                rec = _Record(0, now, 0.0)
            rec.failures += 1
            rec.last_failure_ts = now
            excess = rec.failures - self.free_failures
            if excess >= 0:
                rec.locked_until_ts = now + min(self.max_s, self.base_s * 2.0**excess)
            self._records.pop(key, None)
            self._records[key] = rec  # most recent last: eviction below drops the oldest
        # Bounded memory: a flood of random usernames forgets the oldest records first.
        while len(self._records) > self.max_keys:
            del self._records[next(iter(self._records))]

    def succeeded(self, key: str) -> None:
        self._records.pop(key, None)
