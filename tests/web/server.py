"""The whole server in-process (ingest, registry, alerts and web features, HTTP on a real port),
and a small, realistic service network for the pages to show."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg

from devices.auth import hash_password
from ingest.features import ALERTS, Feature, registry_feature
from ingest.service import Runtime
from ingest.settings import Settings
from ingest.web import web_feature
from tests.alerts.server import server_settings
from tests.alerts.world import World, build_world
from tests.fixtures.server import serving

PASSWORD = "correct horse battery staple"


def settings_for(db_url: str, uid: str, spool_dir: Path, **overrides: object) -> Settings:
    return server_settings(db_url, uid, spool_dir, **overrides)


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, *, port: int | None = None
) -> AsyncIterator[tuple[Runtime, str]]:
    """Run every feature the browser pages need; yields the runtime and the base URL."""
    features: list[Feature] = [registry_feature(), ALERTS, web_feature()]
    async with serving(settings, features, port=port) as (rt, bound):
        yield rt, f"http://127.0.0.1:{bound}"


async def build_town(db: psycopg.AsyncConnection[Any], uid: str) -> World:
    """The alerts tests' two-district world, with passwords, a resident's record filled in,
    an hour of her vitals so the incident view has something to show, and a neighbour."""
    w = await build_world(db, uid)
    await db.execute(
        "UPDATE staff_users SET password_hash = %s WHERE username = ANY(%s)",
        (hash_password(PASSWORD), [p.username for p in w.staff.values()]),
    )
    # A password change revokes the user's tokens (token_version + 1); this is the first
    # password, set before any token: keep version 0, the one World.token() mints.
    await db.execute(
        "UPDATE staff_users SET token_version = 0 WHERE username = ANY(%s)",
        ([p.username for p in w.staff.values()],),
    )
    await db.execute(
        "UPDATE residents SET full_name = %s, birth_year = 1941, sex = 'female',"
        " phone = '+86 311 8888 0101', address = 'Building 3, Unit 2, Room 401, Heping Rd 12',"
        " medical_notes = 'Type 2 diabetes; atrial fibrillation (warfarin). Lives alone.'"
        " WHERE resident_id = %s",
        (f"Wang Guilan {uid}", w.residents["r1"]),
    )
    # A neighbour in the same community, so the queue can hold more than one incident.
    cur = await db.execute(
        "INSERT INTO residents (full_name, community_id, birth_year, home_lat, home_lon, address)"
        " VALUES (%s, %s, 1938, 38.0405, 114.5012, 'Building 5, Room 202, Heping Rd 12')"
        " RETURNING resident_id",
        (f"Li Shufen {uid}", w.path_a.rsplit(".", 1)[1]),
    )
    row = await cur.fetchone()
    assert row is not None
    w.residents["r3"] = int(row[0])
    w.devices["r3"] = f"{uid}-r3w"
    await db.execute(
        "INSERT INTO devices (device_id, resident_id, position) VALUES (%s, %s, 'wrist')",
        (w.devices["r3"], row[0]),
    )
    dev = w.devices["r1"]
    now = time.time()
    for minute in range(60, 0, -1):
        at = now - minute * 60
        # Calm for most of the hour, then the heart races and SpO2 drops before the press.
        hr = 72 + 5 * math.sin(minute / 5) + (22 if minute < 4 else 0)
        spo2 = 96.5 + 0.8 * math.cos(minute / 7) - (4 if minute < 4 else 0)
        await db.execute(
            "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm, spo2_pct,"
            " temp_c, resp_rate_per_min, sbp_mmhg, dbp_mmhg, battery_pct)"
            " VALUES (%s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s, 36.7, 18, 138, 84, 64)",
            (dev, 100_000 + minute, at, at, hr, spo2),
        )
        # The per-minute rollup is a plain table on the native path (a continuous aggregate
        # on TimescaleDB, which fills itself).
        with contextlib.suppress(psycopg.errors.Error):
            await db.execute(
                "INSERT INTO vitals_1m (bucket, device_id, n, hr_avg, spo2_avg)"
                " VALUES (date_trunc('minute', to_timestamp(%s)), %s, 1, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (at, dev, hr, spo2),
            )
    return w
