"""Throttling of failed logins, per username and per source address, in PostgreSQL.

After ``free_failures`` failures (within ``window_s`` of each other) a key is locked for
``base_s``, doubling with every further failure up to ``max_s``. While locked, a login attempt
is refused without checking the password, so guessing costs the attacker time, not us CPU.
A success clears the username's record; the address's record only decays (one valid account
must not reset an address that is guessing others).

The counters live in ``login_throttle`` (migration 0012), one row per key, written by a single
upsert on the database's clock: every server process, and a restarted one, sees the same
lockout. :meth:`LoginThrottle.prune_loop` deletes rows that no longer lock or count anything
and caps the table at ``max_keys`` rows (the oldest go first), so a flood of random usernames
cannot grow it without bound. docs/registry.md, "Failed logins".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]

# The new failure count of a key, given its row ``t`` and the attempt's time ``at``: a failure
# more than window_s after the previous one starts the count again.
_FAILURES = (
    "CASE WHEN t.last_failure_at < EXCLUDED.last_failure_at - make_interval(secs => %(window)s)"
    " THEN 1 ELSE t.failures + 1 END"
)
_FAILED_SQL = f"""
INSERT INTO login_throttle AS t (key, failures, last_failure_at, locked_until)
SELECT k, 1, clock_timestamp(),
       CASE WHEN 1 >= %(free)s THEN clock_timestamp() + make_interval(secs => %(base)s) END
FROM unnest(%(keys)s::text[]) AS k
ON CONFLICT (key) DO UPDATE SET
    failures = {_FAILURES},
    last_failure_at = EXCLUDED.last_failure_at,
    locked_until = CASE
        WHEN {_FAILURES} >= %(free)s THEN EXCLUDED.last_failure_at + make_interval(
            secs => least(%(max)s, %(base)s * power(2, least({_FAILURES} - %(free)s, 62))))
        WHEN {_FAILURES} = 1 THEN NULL
        ELSE t.locked_until
    END
"""


class LoginThrottle:
    def __init__(
        self,
        *,
        free_failures: int = 5,
        window_s: float = 15 * 60,
        base_s: float = 2.0,
        max_s: float = 15 * 60,
        max_keys: int = 100_000,
    ) -> None:
        self.free_failures = free_failures
        self.window_s = window_s
        self.base_s = base_s
        self.max_s = max_s
        self.max_keys = max_keys

    async def retry_after_s(self, conn: Conn, *keys: str) -> float:
        """Seconds until every key may try again (0: allowed now)."""
        cur = await conn.execute(
            "SELECT extract(epoch FROM max(locked_until) - clock_timestamp())::float8"
            " FROM login_throttle WHERE key = ANY(%s)",
            (list(keys),),
        )
        row = await cur.fetchone()
        wait_s = row[0] if row is not None else None
        return max(0.0, float(wait_s)) if wait_s is not None else 0.0

    async def failed(self, conn: Conn, *keys: str) -> None:
        """Count one failure against each key (one statement, whatever the number of keys)."""
        await conn.execute(
            _FAILED_SQL,
            {
                "keys": sorted(set(keys)),  # sorted: concurrent upserts lock rows in one order
                "free": self.free_failures,
                "window": self.window_s,
                "base": self.base_s,
                "max": self.max_s,
            },
        )

    async def succeeded(self, conn: Conn, key: str) -> None:
        await conn.execute("DELETE FROM login_throttle WHERE key = %s", (key,))

    async def prune(self, conn: Conn) -> int:
        """Delete rows that neither lock nor count any more, then, beyond ``max_keys``, those
        whose lock (or last failure) ends first; returns how many went."""
        cur = await conn.execute(
            "DELETE FROM login_throttle"
            " WHERE last_failure_at < clock_timestamp() - make_interval(secs => %s)"
            " AND (locked_until IS NULL OR locked_until < clock_timestamp())",
            (self.window_s,),
        )
        stale = cur.rowcount
        cur = await conn.execute(
            "DELETE FROM login_throttle WHERE key IN (SELECT key FROM login_throttle"
            " ORDER BY coalesce(locked_until, last_failure_at) DESC OFFSET %s)",
            (self.max_keys,),
        )
        return stale + cur.rowcount

    async def prune_loop(
        self,
        connection: Callable[[], AbstractAsyncContextManager[Conn]],
        *,
        interval_s: float = 60.0,
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                async with connection() as conn:
                    n = await self.prune(conn)
                if n:
                    log.info("login throttle: pruned %d rows", n)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("login throttle: cannot prune (%s)", exc)
