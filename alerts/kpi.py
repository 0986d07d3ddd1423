"""KPIs in the style of the telecare code of practice, rolled up over the network per day.

For each area at the requested level (community, street, district, city) and each local day:
alarms raised, the share acknowledged within 60 s and within 180 s, median and 95th percentile
time to acknowledge, median time to dispatch, and the false-alarm rate (false alarms over
closed incidents). Device faults are not alarms and are left out unless asked for. The
caller's scope filters in SQL, like every other read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

DEPTH: Final = {"city": 1, "district": 2, "street": 3, "community": 4}
DEFAULT_DAYS: Final = 7


def local_days(
    now_ts: float,
    timezone: str,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
    days: int = DEFAULT_DAYS,
) -> tuple[dt.date, dt.date]:
    """The (since, until) local days of a KPI query: until defaults to today in ``timezone``,
    since to ``days`` days up to until (both ends included)."""
    until = until or dt.datetime.fromtimestamp(now_ts, tz=ZoneInfo(timezone)).date()
    return since or until - dt.timedelta(days=days - 1), until


async def kpis(
    conn: psycopg.AsyncConnection[Any],
    *,
    scope: str,
    level: str,
    since: dt.date,
    until: dt.date,
    timezone: str = "Asia/Shanghai",
    include_device_faults: bool = False,
) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """WITH a AS (
               SELECT subpath(area_path, 0, %(depth)s)::text AS area,
                      (raised_at AT TIME ZONE %(tz)s)::date AS day,
                      extract(epoch FROM acknowledged_at - raised_at) AS ack_s,
                      extract(epoch FROM dispatched_at - raised_at) AS dispatch_s,
                      state, outcome
               FROM incidents
               WHERE area_path <@ %(scope)s::ltree AND nlevel(area_path) >= %(depth)s
                 AND (raised_at AT TIME ZONE %(tz)s)::date BETWEEN %(since)s AND %(until)s
                 AND severity <> 'info'
                 AND (%(faults)s OR kind NOT IN ('device_offline', 'battery_low')))
           SELECT area, day, count(*) AS alarms,
                  count(*) FILTER (WHERE ack_s <= 60)::float8 / count(*) AS ack_within_60s,
                  count(*) FILTER (WHERE ack_s <= 180)::float8 / count(*) AS ack_within_180s,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY ack_s) AS ack_p50_s,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY ack_s) AS ack_p95_s,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY dispatch_s) AS dispatch_p50_s,
                  count(*) FILTER (WHERE outcome = 'false_alarm')::float8
                      / nullif(count(*) FILTER (WHERE state IN ('resolved', 'cancelled')), 0)
                      AS false_alarm_rate
           FROM a GROUP BY area, day ORDER BY day, area""",
        {
            "depth": DEPTH[level],
            "tz": timezone,
            "scope": scope,
            "since": since,
            "until": until,
            "faults": include_device_faults,
        },
    )
    return await cur.fetchall()
