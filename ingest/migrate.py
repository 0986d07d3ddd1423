"""Numbered SQL migrations, applied in order, one transaction each, recorded in a table.

Migrations live beside the feature that owns the tables (``devices/migrations``,
``ingest/migrations``, ``alerts/migrations``); their numbers are global, so the order is total.
A file may carry blocks for one storage mode only (``/*native: ...*/``, ``/*timescale: ...*/``):
the runner decides the mode once per database (TimescaleDB when the extension can be created)
and applies the matching blocks. See docs/storage.md.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import psycopg

log = logging.getLogger(__name__)

StorageMode = Literal["native", "timescale"]
MIGRATION_PACKAGES = ("devices", "ingest", "alerts")
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_BLOCK_RE = re.compile(r"/\*(native|timescale):(.*?)\*/", re.DOTALL)
_LOCK_KEY = 0x43617265  # advisory lock so two processes never migrate at once


class MigrationError(Exception):
    """A migration file is malformed or failed to apply."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"migration {name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def discover(packages: tuple[str, ...] = MIGRATION_PACKAGES) -> list[Migration]:
    found: dict[int, Migration] = {}
    for pkg in packages:
        folder = resources.files(pkg) / "migrations"
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            m = _FILE_RE.match(entry.name)
            if not m:
                continue
            version = int(m.group(1))
            if version in found:
                raise MigrationError(entry.name, f"version {version} is used twice")
            found[version] = Migration(version, f"{pkg}/{entry.name}", entry.read_text())
    return [found[v] for v in sorted(found)]


def render(sql: str, mode: StorageMode) -> str:
    """Keep the blocks for ``mode`` (uncommented), drop the other mode's blocks."""
    return _BLOCK_RE.sub(lambda m: m.group(2) if m.group(1) == mode else "", sql)


async def detect_mode(conn: psycopg.AsyncConnection[Any], prefer: str = "auto") -> StorageMode:
    """TimescaleDB if it is (or can be) installed in this database, else native partitions."""
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if await cur.fetchone():
        return "timescale"
    if prefer == "native":
        return "native"
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    if await cur.fetchone() is None:
        if prefer == "timescale":
            raise MigrationError("timescaledb", "CARECALL_STORAGE=timescale but not available")
        return "native"
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        # Typically: not in shared_preload_libraries. Fall back rather than refuse to start.
        log.warning("timescaledb is available but cannot be created (%s); using native", exc)
        if prefer == "timescale":
            raise MigrationError("timescaledb", str(exc)) from exc
        return "native"
    return "timescale"


async def migrate(
    conn: psycopg.AsyncConnection[Any], *, prefer: str = "auto"
) -> tuple[StorageMode, list[str]]:
    """Apply pending migrations; return the storage mode and the names applied."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version     integer PRIMARY KEY,
                   name        text NOT NULL,
                   mode        text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now())"""
        )
        cur = await conn.execute("SELECT mode FROM schema_migrations ORDER BY version LIMIT 1")
        row = await cur.fetchone()
        mode: StorageMode
        if row is not None:
            mode = "timescale" if row[0] == "timescale" else "native"
        else:
            mode = await detect_mode(conn, prefer)
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {r[0] for r in await cur.fetchall()}
        applied: list[str] = []
        for mig in discover():
            if mig.version in done:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(render(mig.sql, mode).encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, mode) VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mode),
                    )
            except psycopg.Error as exc:
                raise MigrationError(mig.name, str(exc)) from exc
            log.info("migrated %s (%s storage)", mig.name, mode)
            applied.append(mig.name)
        return mode, applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
