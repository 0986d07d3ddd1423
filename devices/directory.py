"""Which devices are active: an in-memory set the bridge checks every message against.

Loaded from the ``devices`` table, reloaded when the table changes (LISTEN carecall_devices)
and at least every ``refresh_s``. The last good set is saved to a snapshot file so that a bridge
restarted while the database is down still knows its devices. With neither (first start, no
database), the directory is *unknown* and the bridge accepts every well-formed device id
rather than refuse an SOS; the broker's ACL still pins devices to their own topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import psycopg

log = logging.getLogger(__name__)


class DeviceDirectory:
    def __init__(self, *, snapshot_path: Path | None = None) -> None:
        self.snapshot_path = snapshot_path
        self._active: frozenset[str] | None = None
        self.loaded_from: str = "nothing"
        if snapshot_path is not None and snapshot_path.exists():
            try:
                ids = json.loads(snapshot_path.read_text())
                self._active = frozenset(str(i) for i in ids)
                self.loaded_from = "snapshot"
            except (OSError, ValueError) as exc:
                log.warning("device snapshot %s unreadable: %s", snapshot_path, exc)

    @property
    def known(self) -> bool:
        return self._active is not None

    def is_active(self, device_id: str) -> bool | None:
        """True/False, or None when the directory has never been loaded."""
        if self._active is None:
            return None
        return device_id in self._active

    def __len__(self) -> int:
        return len(self._active or ())

    def replace(self, ids: frozenset[str]) -> None:
        self._active = ids
        self.loaded_from = "database"
        if self.snapshot_path is not None:
            # Per process: the server's front and its ingest worker both keep the snapshot.
            tmp = self.snapshot_path.with_name(f".{self.snapshot_path.name}.{os.getpid()}.tmp")
            try:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(sorted(ids)))
                os.replace(tmp, self.snapshot_path)
            except OSError as exc:
                log.warning("cannot save device snapshot: %s", exc)

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute("SELECT device_id FROM devices WHERE active")
        ids = frozenset(r[0] for r in await cur.fetchall())
        self.replace(ids)
        return len(ids)

    async def watch_loop(self, conninfo: str, *, refresh_s: float = 30.0) -> None:
        """Keep the set current; survives database outages (retries with backoff)."""
        delay_s = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute("LISTEN carecall_devices")
                    await self.load(conn)
                    delay_s = 0.5
                    while True:
                        # Wake on a change or after refresh_s; then let a burst of changes
                        # (a bulk import) settle so it costs one reload, not thousands.
                        changed = False
                        async for _ in conn.notifies(timeout=refresh_s, stop_after=1):
                            changed = True
                        if changed:
                            async for _ in conn.notifies(timeout=0.2):
                                pass
                        await self.load(conn)
            except (psycopg.Error, OSError) as exc:
                log.warning("device directory: database unavailable (%s); retrying", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
