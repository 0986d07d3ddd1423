"""Time-series housekeeping behind one small interface: TimescaleDB or native partitions.

- TimescaleDB: chunks appear by themselves; compression and retention are background jobs we
  (re)configure at start-up; ``vitals_1m`` is a continuous aggregate refreshed by its policy.
- Native: daily range partitions are created ahead of time, expired ones dropped; a DEFAULT
  partition catches rows outside them (late data older than the window) so an insert never
  fails; ``vitals_1m`` is a plain table refreshed by :meth:`NativeLayout.refresh_rollup`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Protocol

import psycopg
from psycopg import sql

from ingest.migrate import StorageMode

log = logging.getLogger(__name__)

TIME_TABLES = ("vitals", "accel_windows", "sos_presses", "home_events", "device_status")
# Partitions before today that are created eagerly (yesterday's late data is common).
_DAYS_BEHIND = 2


class Layout(Protocol):
    mode: StorageMode

    async def maintain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Create what is due, drop what expired, refresh rollups. Idempotent."""


def _day(ts: dt.datetime) -> dt.date:
    return ts.astimezone(dt.UTC).date()


class NativeLayout:
    mode: StorageMode = "native"

    def __init__(self, *, retention_days: int, ahead_days: int) -> None:
        self.retention_days = retention_days
        self.ahead_days = ahead_days

    async def maintain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        today = _day(dt.datetime.now(dt.UTC))
        for table in TIME_TABLES:
            for offset in range(-_DAYS_BEHIND, self.ahead_days + 1):
                await self.ensure_partition(conn, table, today + dt.timedelta(days=offset))
            await self.drop_expired(conn, table, today)
        await conn.execute(
            "DELETE FROM dead_letters WHERE received_at < now() - make_interval(days => %s)",
            (self.retention_days,),
        )
        await self.refresh_rollup(conn)

    async def ensure_partition(
        self, conn: psycopg.AsyncConnection[Any], table: str, day: dt.date
    ) -> bool:
        """Create the day's partition; rows already caught by DEFAULT move into it."""
        name = f"{table}_p{day:%Y%m%d}"
        cur = await conn.execute("SELECT to_regclass(%s)", (name,))
        row = await cur.fetchone()
        if row is not None and row[0] is not None:
            return False
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = start + dt.timedelta(days=1)
        ident = sql.Identifier(name)
        parent = sql.Identifier(table)
        default = sql.Identifier(f"{table}_default")
        async with conn.transaction():
            # Lock the parent so concurrent inserts wait rather than race the move.
            await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(parent))
            cur = await conn.execute("SELECT to_regclass(%s)", (name,))
            again = await cur.fetchone()
            if again is not None and again[0] is not None:
                return False
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                ).format(ident, parent)
            )
            await conn.execute(
                sql.SQL(
                    "WITH moved AS (DELETE FROM {} WHERE device_time >= %s AND device_time < %s"
                    " RETURNING *) INSERT INTO {} SELECT * FROM moved"
                ).format(default, ident),
                (start, end),
            )
            # DDL takes no bind parameters: the bounds are our own dates, quoted as literals.
            await conn.execute(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                    parent, ident, sql.Literal(start.isoformat()), sql.Literal(end.isoformat())
                )
            )
        log.info("created partition %s", name)
        return True

    async def drop_expired(
        self, conn: psycopg.AsyncConnection[Any], table: str, today: dt.date
    ) -> list[str]:
        cutoff = today - dt.timedelta(days=self.retention_days)
        cur = await conn.execute(
            """SELECT c.relname FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = %s::regclass AND c.relname ~ '_p[0-9]{8}$'""",
            (table,),
        )
        dropped = []
        for (relname,) in await cur.fetchall():
            day = dt.datetime.strptime(relname[-8:], "%Y%m%d").date()
            if day < cutoff:
                await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(relname)))
                dropped.append(relname)
                log.info("dropped expired partition %s", relname)
        cutoff_ts = dt.datetime.combine(cutoff, dt.time(), dt.UTC)
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE device_time < %s").format(
                sql.Identifier(f"{table}_default")
            ),
            (cutoff_ts,),
        )
        return dropped

    async def refresh_rollup(
        self, conn: psycopg.AsyncConnection[Any], *, lookback_s: float = 7200
    ) -> None:
        """Recompute the last ``lookback_s`` of per-minute buckets (late rows included)."""
        await conn.execute(
            """INSERT INTO vitals_1m (bucket, device_id, n, hr_avg, hr_min, hr_max, spo2_avg,
                                      spo2_min, temp_avg, temp_max, rr_avg, sbp_avg, dbp_avg)
               SELECT date_trunc('minute', device_time), device_id, count(*),
                      avg(hr_bpm), min(hr_bpm), max(hr_bpm), avg(spo2_pct), min(spo2_pct),
                      avg(temp_c), max(temp_c), avg(resp_rate_per_min), avg(sbp_mmhg),
                      avg(dbp_mmhg)
               FROM vitals
               WHERE device_time >= now() - make_interval(secs => %s)
                 AND device_time < date_trunc('minute', now())
               GROUP BY 1, 2
               ON CONFLICT (device_id, bucket) DO UPDATE SET
                   n = EXCLUDED.n, hr_avg = EXCLUDED.hr_avg, hr_min = EXCLUDED.hr_min,
                   hr_max = EXCLUDED.hr_max, spo2_avg = EXCLUDED.spo2_avg,
                   spo2_min = EXCLUDED.spo2_min, temp_avg = EXCLUDED.temp_avg,
                   temp_max = EXCLUDED.temp_max, rr_avg = EXCLUDED.rr_avg,
                   sbp_avg = EXCLUDED.sbp_avg, dbp_avg = EXCLUDED.dbp_avg""",
            (lookback_s,),
        )
        await conn.execute(
            "DELETE FROM vitals_1m WHERE bucket < now() - make_interval(days => %s)",
            (self.retention_days,),
        )


class TimescaleLayout:
    mode: StorageMode = "timescale"

    def __init__(self, *, retention_days: int, compress_after_days: int) -> None:
        self.retention_days = retention_days
        self.compress_after_days = compress_after_days
        self._configured = False

    async def maintain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Configure the background jobs once per process (from the current settings); chunks,
        compression, retention and the rollup are TimescaleDB's own jobs after that."""
        retention = dt.timedelta(days=self.retention_days)
        await conn.execute("DELETE FROM dead_letters WHERE received_at < now() - %s", (retention,))
        if self._configured:
            return
        await self._configure(conn)
        self._configured = True

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        retention = dt.timedelta(days=self.retention_days)
        compress_after = dt.timedelta(days=self.compress_after_days)
        for table in TIME_TABLES:
            await conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", (table,))
            await conn.execute("SELECT add_retention_policy(%s, %s)", (table, retention))
            if table != "sos_presses":
                await conn.execute(
                    "SELECT remove_compression_policy(%s, if_exists => true)", (table,)
                )
                await conn.execute("SELECT add_compression_policy(%s, %s)", (table, compress_after))
        await conn.execute("SELECT remove_retention_policy('vitals_1m', if_exists => true)")
        await conn.execute("SELECT add_retention_policy('vitals_1m', %s)", (retention,))
        log.info("timescaledb: retention %s, compression after %s", retention, compress_after)


def layout_for(
    mode: StorageMode, *, retention_days: int, ahead_days: int, compress_after_days: int
) -> Layout:
    if mode == "timescale":
        return TimescaleLayout(
            retention_days=retention_days, compress_after_days=compress_after_days
        )
    return NativeLayout(retention_days=retention_days, ahead_days=ahead_days)
