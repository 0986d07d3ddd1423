"""Migrations and native time partitioning against the real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from ingest.migrate import discover, migrate, render
from ingest.storage import TIME_TABLES, NativeLayout
from tests.fixtures.services import scratch_database


def test_render_keeps_one_mode() -> None:
    sql = "A /*native: N1 */ B /*timescale:\nT1\n*/ C"
    assert render(sql, "native") == "A  N1  B  C"
    assert render(sql, "timescale") == "A  B \nT1\n C"


def test_every_timescale_block_is_balanced() -> None:
    for mig in discover():
        assert mig.sql.count("/*") == mig.sql.count("*/"), mig.name
        rendered = render(mig.sql, "timescale")
        assert "/*native" not in rendered and "/*timescale" not in rendered


async def test_migrate_is_idempotent_and_recorded() -> None:
    with scratch_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            mode, applied = await migrate(conn)
            assert mode == "native"
            assert [n.split("/")[-1] for n in applied][:2] == [
                "0001_devices.sql",
                "0002_readings.sql",
            ]
            mode2, applied2 = await migrate(conn)
            assert (mode2, applied2) == ("native", [])
            cur = await conn.execute("SELECT count(*), min(mode) FROM schema_migrations")
            assert await cur.fetchone() == (len(applied), "native")


async def test_partitions_ahead_default_catch_move_and_retention() -> None:
    with scratch_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)
            layout = NativeLayout(retention_days=30, ahead_days=3)
            await layout.maintain(conn)
            today = dt.datetime.now(dt.UTC).date()
            for table in TIME_TABLES:
                for offset in (-2, 0, 3):
                    name = f"{table}_p{today + dt.timedelta(days=offset):%Y%m%d}"
                    cur = await conn.execute("SELECT to_regclass(%s)", (name,))
                    assert (await cur.fetchone())[0] is not None, name
            # A late row (10 days old) lands in DEFAULT; creating its day moves it out.
            late = dt.datetime.combine(today - dt.timedelta(days=10), dt.time(12), dt.UTC)
            await conn.execute(
                "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm) "
                "VALUES ('d', 1, %s, now(), 60)",
                (late,),
            )
            cur = await conn.execute("SELECT count(*) FROM vitals_default")
            assert (await cur.fetchone())[0] == 1
            assert await layout.ensure_partition(conn, "vitals", late.date())
            cur = await conn.execute("SELECT count(*) FROM vitals_default")
            assert (await cur.fetchone())[0] == 0
            cur = await conn.execute(f"SELECT count(*) FROM vitals_p{late.date():%Y%m%d}")
            assert (await cur.fetchone())[0] == 1
            # Retention: a shorter window drops that partition and old DEFAULT rows.
            old = dt.datetime.combine(today - dt.timedelta(days=40), dt.time(1), dt.UTC)
            await conn.execute(
                "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm) "
                "VALUES ('d', 2, %s, now(), 61)",
                (old,),
            )
            short = NativeLayout(retention_days=5, ahead_days=3)
            dropped = await short.drop_expired(conn, "vitals", today)
            assert dropped == [f"vitals_p{late.date():%Y%m%d}"]
            cur = await conn.execute("SELECT count(*) FROM vitals")
            assert (await cur.fetchone())[0] == 0


async def test_native_rollup_matches_a_direct_query() -> None:
    with scratch_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)
            layout = NativeLayout(retention_days=30, ahead_days=1)
            await layout.maintain(conn)
            base = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(
                minutes=5
            )
            rows = [
                ("d1", i, base + dt.timedelta(seconds=10 * i), 60 + i, 95 - (i % 3))
                for i in range(18)
            ]
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm,"
                    " spo2_pct) VALUES (%s, %s, %s, now(), %s, %s)",
                    rows,
                )
            await layout.refresh_rollup(conn)
            cur = await conn.execute(
                "SELECT bucket, n, hr_avg, hr_min, hr_max, spo2_min FROM vitals_1m "
                "WHERE device_id = 'd1' ORDER BY bucket"
            )
            got = await cur.fetchall()
            assert [r[1] for r in got] == [6, 6, 6]
            assert got[0][2] == pytest.approx(62.5) and got[0][3] == 60 and got[0][4] == 65
            assert got[0][5] == 93
            # Late rows are folded in on the next refresh.
            await conn.execute(
                "INSERT INTO vitals (device_id, seq, device_time, received_at, hr_bpm) "
                "VALUES ('d1', 99, %s, now(), 200)",
                (base + dt.timedelta(seconds=5),),
            )
            await layout.refresh_rollup(conn)
            cur = await conn.execute(
                "SELECT n, hr_max FROM vitals_1m WHERE device_id = 'd1' AND bucket = %s", (base,)
            )
            assert await cur.fetchone() == (7, 200)
