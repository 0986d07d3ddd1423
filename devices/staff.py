"""Who may act, and as what: this process's copy of the staff table's access columns.

Every authenticated request and WebSocket checks its token against :class:`StaffCache`
(``devices.auth``): a retired user, or a token of an older ``token_version`` (the password was
changed), is refused, and the role and scope used are the current ones, not those written in
the token. A lookup is a dictionary read, with no database round trip.

The copy follows the table: :meth:`StaffCache.watch_loop` LISTENs on ``carecall_staff`` (a
trigger notifies every change, whoever made it) and re-reads the rows named, within
milliseconds; it also re-reads the whole table every ``refresh_s`` in case a notification was
lost (a reconnect), and at once after reconnecting. A user id the copy has never seen is read
from the database once, on first use. One copy per process: the front and the ingest worker
each keep theirs. While the database cannot be reached the last copy is kept as it is (no
change can be made to the table then either); a process that has never read the table falls
back to what the signed token says (docs/registry.md, "Tokens and sessions").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

CHANNEL = "carecall_staff"
_COLS = (
    "user_id, username, role, scope_path::text, token_version, retired_at IS NOT NULL AS retired"
)
# A burst of changes larger than this (a bulk import) is one full re-read, not a long ANY().
_FULL_RELOAD_IDS = 500


@dataclass(frozen=True, slots=True)
class StaffAccess:
    """What access control needs to know about one staff user, as the table says now."""

    user_id: int
    username: str
    role: str
    scope_path: str
    token_version: int
    retired: bool


class StaffUnavailableError(Exception):
    """The staff table cannot be read (no database, or the service is not running)."""


def _access(row: tuple[Any, ...]) -> StaffAccess:
    return StaffAccess(int(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]), row[5])


class StaffCache:
    def __init__(self, *, refresh_s: float = 30.0) -> None:
        self.refresh_s = refresh_s
        # user id -> access; None: read from the database and found missing.
        self._rows: dict[int, StaffAccess | None] = {}
        self._loaded = False
        self._pool: AsyncConnectionPool[Any] | None = None
        # Made here, so construct the cache inside the event loop that uses it.
        self._changed = asyncio.Event()
        self.listening = False
        self.full_reloads = 0

    @property
    def loaded(self) -> bool:
        """Whether the whole table has been read at least once (then a user the copy does not
        hold does not exist)."""
        return self._loaded

    def knows(self, user_id: int) -> bool:
        return user_id in self._rows

    def get(self, user_id: int) -> StaffAccess | None:
        """From memory only: the user's access, or None (unknown or missing)."""
        return self._rows.get(user_id)

    def bind(self, pool: AsyncConnectionPool[Any] | None) -> None:
        """The pool used to read a user the copy has never seen (None: none)."""
        self._pool = pool

    def remember(self, access: StaffAccess) -> None:
        """Store a row just read from the database (login and refresh read it anyway)."""
        if self._rows.get(access.user_id) != access:
            self._rows[access.user_id] = access
            self._signal()

    async def fetch(self, user_id: int) -> StaffAccess | None:
        """The user's access; read from the database only if this copy has never seen them."""
        if user_id in self._rows:
            return self._rows[user_id]
        if self._pool is None:
            raise StaffUnavailableError("registry service is not running")
        try:
            async with self._pool.connection(timeout=5.0) as conn:
                cur = await conn.execute(
                    f"SELECT {_COLS} FROM staff_users WHERE user_id = %s", (user_id,)
                )
                row = await cur.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise StaffUnavailableError(str(exc)) from exc
        access = _access(row) if row is not None else None
        self._rows[user_id] = access
        return access

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Re-read the whole table."""
        cur = await conn.execute(f"SELECT {_COLS} FROM staff_users")
        rows = {a.user_id: a for a in map(_access, await cur.fetchall())}
        changed = rows != self._rows
        self._rows = dict(rows)
        self._loaded = True
        self.full_reloads += 1
        if changed:
            self._signal()
        return len(rows)

    async def load_ids(self, conn: psycopg.AsyncConnection[Any], ids: Iterable[int]) -> None:
        """Re-read the rows of ``ids`` (a notification named them)."""
        wanted = sorted(set(ids))
        cur = await conn.execute(
            f"SELECT {_COLS} FROM staff_users WHERE user_id = ANY(%s)", (wanted,)
        )
        found = {a.user_id: a for a in map(_access, await cur.fetchall())}
        for user_id in wanted:
            self._rows[user_id] = found.get(user_id)
        self._signal()

    async def wait_changed(self, timeout_s: float) -> bool:
        """Wait until the copy changes or ``timeout_s`` passes; True if it changed."""
        event = self._changed
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def _signal(self) -> None:
        # Wake every waiter once, then start a new generation.
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def watch_loop(
        self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
    ) -> None:
        """Keep the copy current; survives database outages (retries with capped backoff)."""
        delay_s = 0.5
        while True:
            try:
                async with await connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Read after LISTEN: a change committed in between is both read and heard.
                    await self.load(conn)
                    self.listening = True
                    delay_s = 0.5
                    while True:
                        ids = await _notified_ids(conn, self.refresh_s)
                        if ids is None:
                            await self.load(conn)  # quiet for refresh_s: re-read everything
                        elif len(ids) > _FULL_RELOAD_IDS:
                            await self.load(conn)
                        elif ids:
                            await self.load_ids(conn, ids)
            except (psycopg.Error, OSError) as exc:
                log.warning("staff cache: database unavailable (%s); retrying", exc)
            finally:
                self.listening = False
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 10.0)


async def _notified_ids(conn: psycopg.AsyncConnection[Any], timeout_s: float) -> set[int] | None:
    """User ids named by the next notifications (None: none came within ``timeout_s``); a
    burst is gathered for a few milliseconds so it costs one read."""
    ids: set[int] = set()
    heard = False
    async for n in conn.notifies(timeout=timeout_s, stop_after=1):
        heard = True
        _add_id(ids, n.payload)
    if not heard:
        return None
    async for n in conn.notifies(timeout=0.02, stop_after=10 * _FULL_RELOAD_IDS):
        _add_id(ids, n.payload)
    return ids


def _add_id(ids: set[int], payload: str) -> None:
    try:
        ids.add(int(payload))
    except ValueError:
        log.warning("staff cache: ignoring notification %r", payload)
