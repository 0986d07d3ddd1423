"""The HTTP surface on its own (ASGI, no socket): audit of repeated reads, KPI local days."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from alerts.api import routers
from alerts.clock import ManualClock
from alerts.engine import AlertEngine
from alerts.rules.detection import DetectionKind
from tests.alerts.world import AUTH, World, det


@pytest.fixture
async def http(engine: AlertEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    for router in routers():
        app.include_router(router)
    app.state.alerts = engine
    app.state.auth = AUTH
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://carecall") as client:
        yield client


async def _audited(db: psycopg.AsyncConnection[Any], w: World, who: str) -> dict[str, int]:
    cur = await db.execute(
        "SELECT action, count(*) FROM audit_log WHERE actor = %s GROUP BY action",
        (w.staff[who].username,),
    )
    return {a: int(n) for a, n in await cur.fetchall()}


async def test_repeated_list_reads_are_audited_once_per_window_with_a_count(
    engine: AlertEngine,
    pool: AsyncConnectionPool[Any],
    db: psycopg.AsyncConnection[Any],
    world: World,
    clock: ManualClock,
    http: httpx.AsyncClient,
) -> None:
    now = clock.now()
    async with pool.connection() as conn:
        first = await engine.store.record(conn, det(world, DetectionKind.FALL, now), now_ts=now)
    ha = world.headers("disp_ca")
    for _ in range(5):  # a console refreshing its queue
        assert (await http.get("/api/v1/incidents", headers=ha)).status_code == 200
    assert (await _audited(db, world, "disp_ca")) == {"list_incidents": 1}
    cur = await db.execute(
        "SELECT reads FROM audit_read_windows WHERE actor = %s AND action = 'list_incidents'",
        (world.staff["disp_ca"].username,),
    )
    assert await cur.fetchall() == [(5,)]
    cur = await db.execute(
        "SELECT detail FROM audit_log WHERE actor = %s AND action = 'list_incidents'",
        (world.staff["disp_ca"].username,),
    )
    (detail,) = await cur.fetchone() or (None,)
    assert detail["incident_ids"] == [first.incident_id] and detail["coalesce_window_s"] == 600

    # Reading one incident's personal data is audited every time.
    for _ in range(2):
        r = await http.get(f"/api/v1/incidents/{first.incident_id}", headers=ha)
        assert r.status_code == 200
    assert (await _audited(db, world, "disp_ca"))["read_incident"] == 2

    # A queue that shows another incident is a different read: audited at once.
    async with pool.connection() as conn:
        await engine.store.record(conn, det(world, DetectionKind.SOS, now + 1), now_ts=now + 1)
    await http.get("/api/v1/incidents", headers=ha)
    await http.get("/api/v1/incidents", headers=ha)
    # Other parameters, and another user, are other reads too.
    await http.get("/api/v1/incidents?severity=critical", headers=ha)
    await http.get("/api/v1/incidents", headers=world.headers("disp_sa"))
    assert (await _audited(db, world, "disp_ca"))["list_incidents"] == 3
    assert (await _audited(db, world, "disp_sa")) == {"list_incidents": 1}
    # After the window a new row starts the next one.
    clock.advance(601)
    await http.get("/api/v1/incidents", headers=ha)
    assert (await _audited(db, world, "disp_ca"))["list_incidents"] == 4

    for _ in range(3):
        assert (await http.get("/api/v1/kpis", headers=ha)).status_code == 200
    assert (await _audited(db, world, "disp_ca"))["read_kpis"] == 1


async def test_kpis_default_to_the_local_day(
    engine: AlertEngine,
    pool: AsyncConnectionPool[Any],
    world: World,
    clock: ManualClock,
    http: httpx.AsyncClient,
) -> None:
    """At 00:30 in Shanghai (16:30 UTC the day before) "today" is the local day."""
    late = dt.datetime(2026, 3, 9, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    early = late + 3600
    async with pool.connection() as conn:
        for raised in (late, early):
            rec = await engine.store.record(
                conn, det(world, DetectionKind.FALL, raised - 5), now_ts=raised
            )
            await engine.store.resolve(
                conn,
                rec.incident_id or 0,
                actor="d",
                scope=world.city,
                now_ts=raised + 60,
                outcome="test",
                reason="test",
            )
    clock.advance(early + 60 - clock.now())
    r = await http.get("/api/v1/kpis?level=community", headers=world.headers("disp_ca"))
    body = r.json()
    assert body["until"] == "2026-03-10" and body["since"] == "2026-03-04"
    assert [(row["day"], row["alarms"]) for row in body["rows"]] == [
        ("2026-03-09", 1),
        ("2026-03-10", 1),
    ]
