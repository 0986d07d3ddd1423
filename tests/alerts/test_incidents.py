"""One incident per episode, enforced by the database; transitions; suppression; cancel."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts import routing
from alerts.clock import ManualClock
from alerts.engine import AlertEngine, RegistryCache
from alerts.errors import IncidentNotFoundError, InvalidTransitionError
from alerts.incidents import IncidentInput, IncidentStore
from alerts.kpi import kpis
from alerts.metrics import AlertMetrics
from alerts.rules.detection import DetectionKind, Severity, make_detection
from ingest.migrate import migrate
from tests.alerts.world import World, build_world, det
from tests.fixtures.services import scratch_database


async def incidents(db: psycopg.AsyncConnection[Any], w: World) -> list[tuple[Any, ...]]:
    cur = await db.execute(
        "SELECT incident_id, kind, state, detections, severity FROM incidents"
        " WHERE resident_id = ANY(%s) ORDER BY incident_id",
        (list(w.residents.values()),),
    )
    return await cur.fetchall()


async def test_duplicate_sos_and_repeated_falls_make_one_incident_each(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        sos = det(world, DetectionKind.SOS, now - 1, seq=1)
        first = await store.record(conn, sos, now_ts=now)
        # The same press again (live lane and rule runner both saw it; or replayed).
        again = await store.record(conn, sos, now_ts=now)
        # Re-sent by a device that did not hear "accepted": same device time, new seq.
        resent = await store.record(conn, det(world, DetectionKind.SOS, now - 1, seq=2), now_ts=now)
        # A second, real press while the first is open joins the open incident.
        second = await store.record(conn, det(world, DetectionKind.SOS, now + 5), now_ts=now + 5)
        # Three falls a quarter of a minute apart (the detector's refractory span is 10 s).
        falls = [
            await store.record(conn, det(world, DetectionKind.FALL, now + t), now_ts=now + t)
            for t in (0, 15, 30)
        ]
    assert first.action == "opened"
    assert again.action == resent.action == "duplicate"
    assert again.incident_id == resent.incident_id == first.incident_id
    assert second.action == "joined" and second.incident_id == first.incident_id
    assert [f.action for f in falls] == ["opened", "joined", "joined"]
    rows = await incidents(db, world)
    assert [(r[1], r[3]) for r in rows] == [("sos", 2), ("fall", 3)]
    cur = await db.execute(
        "SELECT jsonb_array_length(evidence) FROM incidents WHERE incident_id = %s",
        (falls[0].incident_id,),
    )
    assert (await cur.fetchone())[0] == 3  # every detection's evidence is kept


async def test_concurrent_detections_race_without_a_duplicate(
    engine: AlertEngine, migrated_db: str, db, world: World, clock: ManualClock
) -> None:
    """Two connections open-or-join the same episode at the same moment, 20 times over."""
    store = IncidentStore(metrics=engine.metrics, cancel_window_s=60)
    now = clock.now()
    conns = [await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) for _ in range(2)]
    try:
        for round_ in range(20):
            kind = DetectionKind.FALL if round_ % 2 else DetectionKind.SOS
            # Two different events of one episode (a fall 5 s after another is a second
            # fall, not the first one re-detected).
            a = det(world, kind, now + 20 * round_, n=0)
            b = det(world, kind, now + 20 * round_ + 5, n=1)
            results = await asyncio.gather(
                store.record(conns[0], a, now_ts=now), store.record(conns[1], b, now_ts=now)
            )
            assert sorted(r.action for r in results) == ["joined", "opened"]
            assert results[0].incident_id == results[1].incident_id
            # Close it so the next round opens a fresh one.
            async with engine.pool.connection() as conn:
                await store.resolve(
                    conn,
                    results[0].incident_id,
                    actor="t",
                    scope=world.city,
                    now_ts=now,
                    outcome="test",
                    reason="race test",
                )
    finally:
        for c in conns:
            await c.close()
    rows = await incidents(db, world)
    assert len(rows) == 20 and all(r[3] == 2 for r in rows)


async def test_transitions_are_validated_and_recorded(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        rec = await store.record(conn, det(world, DetectionKind.FALL, now), now_ts=now)
        iid = rec.incident_id
        assert iid is not None
        scope = world.staff["disp_ca"].scope_path
        with pytest.raises(InvalidTransitionError):
            await store.dispatch(
                conn, iid, actor="d", scope=scope, now_ts=now, help_sent=["family"]
            )
        with pytest.raises(InvalidTransitionError):  # never acknowledged, no reason
            await store.resolve(conn, iid, actor="d", scope=scope, now_ts=now, outcome="test")
        with pytest.raises(IncidentNotFoundError):  # another district's dispatcher
            await store.acknowledge(
                conn, iid, actor="x", scope=world.staff["disp_db"].scope_path, now_ts=now
            )
        await store.acknowledge(conn, iid, actor="d", scope=scope, now_ts=now + 20)
        with pytest.raises(InvalidTransitionError):
            await store.acknowledge(conn, iid, actor="d", scope=scope, now_ts=now + 21)
        await store.dispatch(
            conn,
            iid,
            actor="d",
            scope=scope,
            now_ts=now + 40,
            help_sent=["family", "ambulance_120"],
        )
        await store.resolve(
            conn, iid, actor="d", scope=scope, now_ts=now + 600, outcome="real_emergency"
        )
        with pytest.raises(InvalidTransitionError):
            await store.cancel(conn, iid, actor="d", scope=scope, now_ts=now + 601, reason="x")
        detail = await store.detail(conn, iid, scope=scope)
    actions = [e["action"] for e in detail["events"]]
    assert actions[0] == "opened" and actions[-3:] == ["acknowledged", "dispatched", "resolved"]
    trace = {t["hop"]: t["since_event_s"] for t in detail["trace"]}
    assert trace["acknowledged"] == pytest.approx(20, abs=0.1)
    assert trace["resolved"] == pytest.approx(600, abs=0.1)
    assert detail["incident"]["dispatched_to"] == ["family", "ambulance_120"]
    assert [c["role"] for c in detail["contacts"]] == ["community_helper", "grid_worker", "family"]
    assert detail["location"]["source"] == "home"


async def test_cancel_within_the_window_and_too_late(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        a = await store.record(conn, det(world, DetectionKind.SOS, now), now_ts=now)
        ok = await store.record(
            conn, det(world, DetectionKind.SOS_CANCEL, now + 30), now_ts=now + 30
        )
        b = await store.record(conn, det(world, DetectionKind.SOS, now + 100), now_ts=now + 100)
        late = await store.record(
            conn, det(world, DetectionKind.SOS_CANCEL, now + 200), now_ts=now + 200
        )
    assert ok.action == "cancelled" and ok.incident_id == a.incident_id
    assert b.action == "opened" and b.incident_id != a.incident_id
    assert late.action == "cancel_too_late"
    rows = {r[0]: r[2] for r in await incidents(db, world)}
    assert rows[a.incident_id] == "cancelled" and rows[b.incident_id] == "raised"


async def test_offline_device_and_maintenance_suppress_visibly(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        off = await store.record(conn, det(world, DetectionKind.DEVICE_OFFLINE, now), now_ts=now)
        vit = det(world, DetectionKind.VITALS_ABNORMAL, now + 1, parameter="hr_bpm")
        inhibited = await store.record(conn, vit, now_ts=now + 1)
        await conn.execute(
            "INSERT INTO maintenance_windows (area_path, starts_at, ends_at, created_by)"
            " VALUES (%s::ltree, to_timestamp(%s), to_timestamp(%s), 'tech')",
            (world.path_b, now - 10, now + 3600),
        )
        maint = await store.record(
            conn, det(world, DetectionKind.INACTIVITY, now, who="r2"), now_ts=now + 2
        )
        # A critical alarm is never suppressed by a community window.
        sos = await store.record(conn, det(world, DetectionKind.SOS, now, who="r2"), now_ts=now)
    assert off.action == "opened"
    assert inhibited.action == maint.action == "suppressed"
    assert sos.action == "opened"
    cur = await db.execute(
        "SELECT reason, count(*) FROM suppressed_detections WHERE device_id = ANY(%s)"
        " GROUP BY reason ORDER BY reason",
        (list(world.devices.values()),),
    )
    assert await cur.fetchall() == [("device_offline", 1), ("maintenance", 1)]
    # The device coming back closes its fault by itself.
    async with pool.connection() as conn:
        back = det(world, DetectionKind.DEVICE_OFFLINE, now + 60)
        cleared = await store.record(
            conn, IncidentInput(**{**_fields(back), "clears": True}), now_ts=now + 60
        )
    assert cleared.action == "cleared"
    rows = {r[1]: r[2] for r in await incidents(db, world) if r[1] == "device_offline"}
    assert rows == {"device_offline": "resolved"}
    assert Severity.CRITICAL.rank == 0


def _fields(inp: IncidentInput) -> dict[str, Any]:
    return {f: getattr(inp, f) for f in inp.__slots__}  # type: ignore[attr-defined]


async def _resolve(store: IncidentStore, conn: Any, w: World, iid: int | None, now: float) -> None:
    assert iid is not None
    await store.resolve(
        conn, iid, actor="t", scope=w.city, now_ts=now, outcome="test", reason="closed by test"
    )


async def test_the_same_event_after_close_opens_nothing_a_new_one_does(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        press = await store.record(conn, det(world, DetectionKind.SOS, now, seq=7), now_ts=now)
        await _resolve(store, conn, world, press.incident_id, now + 60)
        # The device re-sends the press it already sent: exactly, then re-stamped (same seq).
        exact = await store.record(conn, det(world, DetectionKind.SOS, now, seq=7), now_ts=now + 90)
        restamped = await store.record(
            conn, det(world, DetectionKind.SOS, now + 80, seq=7), now_ts=now + 91
        )
        # A new press (new seq, new time) is a new emergency.
        new_press = await store.record(
            conn, det(world, DetectionKind.SOS, now + 100, seq=8), now_ts=now + 100
        )

        fall = await store.record(conn, det(world, DetectionKind.FALL, now), now_ts=now + 3)
        await _resolve(store, conn, world, fall.incident_id, now + 120)
        # The rule engine re-detects the same impact (e.g. after a restart, from a replay that
        # starts later in the window: the peak moves by a few hundred ms).
        redetected = await store.record(
            conn, det(world, DetectionKind.FALL, now + 0.4), now_ts=now + 130
        )
        second_fall = await store.record(
            conn, det(world, DetectionKind.FALL, now + 140), now_ts=now + 143
        )
    assert press.action == new_press.action == fall.action == second_fall.action == "opened"
    assert (exact.action, exact.incident_id) == ("duplicate", press.incident_id)
    assert (restamped.action, restamped.incident_id) == ("duplicate", press.incident_id)
    assert (redetected.action, redetected.incident_id) == ("duplicate", fall.incident_id)
    assert new_press.incident_id != press.incident_id
    assert second_fall.incident_id != fall.incident_id
    rows = await incidents(db, world)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("sos", "resolved", 1),
        ("sos", "raised", 1),
        ("fall", "resolved", 1),
        ("fall", "raised", 1),
    ]
    # The repeats are visible in the closed incidents' histories, not dropped silently.
    cur = await db.execute(
        "SELECT incident_id, count(*) FROM incident_events WHERE action = 'repeat_after_close'"
        " AND incident_id = ANY(%s) GROUP BY 1 ORDER BY 1",
        ([press.incident_id, fall.incident_id],),
    )
    assert await cur.fetchall() == [(press.incident_id, 2), (fall.incident_id, 1)]


async def test_the_same_impact_racing_on_two_connections_is_one_detection(
    engine: AlertEngine, migrated_db: str, db, world: World, clock: ManualClock
) -> None:
    store = IncidentStore(metrics=engine.metrics, cancel_window_s=60)
    now = clock.now()
    conns = [await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) for _ in range(2)]
    try:
        for round_ in range(10):
            t = now + 30 * round_
            a = det(world, DetectionKind.FALL, t, n=0)
            b = det(world, DetectionKind.FALL, t + 0.3, n=1)  # the same impact, seen twice
            results = await asyncio.gather(
                store.record(conns[0], a, now_ts=t + 4), store.record(conns[1], b, now_ts=t + 4)
            )
            assert sorted(r.action for r in results) == ["duplicate", "opened"]
            assert results[0].incident_id == results[1].incident_id
            async with engine.pool.connection() as conn:
                await _resolve(store, conn, world, results[0].incident_id, t + 10)
    finally:
        for c in conns:
            await c.close()
    rows = await incidents(db, world)
    assert len(rows) == 10 and all(r[3] == 1 for r in rows)


def _unplaced(device_id: str, now: float) -> IncidentInput:
    d = make_detection(
        device_id=device_id,
        resident_id=None,
        kind=DetectionKind.SOS,
        event_ts=now,
        detected_ts=now,
        evidence={},
    )
    return IncidentInput.from_detection(d, resident_id=None, area_path=None)


async def test_unplaced_incidents_are_not_shown_to_a_city_among_cities(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], db, world: World, clock: ManualClock
) -> None:
    """Two cities (or more: every test adds one): neither is the root of the tree."""
    other = f"y{world.uid}"
    await db.execute(
        "INSERT INTO areas (area_id, path, level, name) VALUES (%s, %s::ltree, 'city', %s)",
        (other, other, other),
    )
    store, now = engine.store, clock.now()
    async with pool.connection() as conn:
        rec = await store.record(conn, _unplaced(f"{world.uid}-stock", now), now_ts=now)
        iid = rec.incident_id
        assert iid is not None
        city = world.staff["disp_city"].scope_path
        assert iid not in [r["incident_id"] for r in await store.queue(conn, scope=city)]
        with pytest.raises(IncidentNotFoundError):
            await store.detail(conn, iid, scope=city)
        with pytest.raises(IncidentNotFoundError):
            await store.acknowledge(conn, iid, actor="c", scope=city, now_ts=now)
        # An admin sees it, whatever their scope.
        assert iid in [r["incident_id"] for r in await store.queue(conn, scope=city, admin=True)]
        await store.acknowledge(conn, iid, actor="admin", scope=city, admin=True, now_ts=now + 1)
        # Nobody's supervisor is paged for it either: no supervisor's scope is the root.
        assert await routing.supervisors(conn, None) == []
    await engine.cache.load(db)
    assert not engine.cache.is_root(world.city)


async def test_unplaced_incidents_go_to_the_root_of_a_single_city_tree(
    clock: ManualClock,
) -> None:
    """A deployment with one city: its city-level staff are the root and see them."""
    with scratch_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn)
            w = await build_world(conn, "solo")
            store = IncidentStore(metrics=AlertMetrics(CollectorRegistry()), cancel_window_s=60)
            now = clock.now()
            rec = await store.record(conn, _unplaced("stock-1", now), now_ts=now)
            city = w.staff["disp_city"].scope_path
            district = w.staff["disp_da"].scope_path
            assert [r["incident_id"] for r in await store.queue(conn, scope=city)] == [
                rec.incident_id
            ]
            assert await store.queue(conn, scope=district) == []
            assert [u for u, _ in await routing.supervisors(conn, None)] == [
                w.staff["sup"].username
            ]
            cache = RegistryCache()
            await cache.load(conn)
            assert cache.is_root(city) and not cache.is_root(district)


async def test_kpis_roll_up_per_local_day(
    engine: AlertEngine, pool: AsyncConnectionPool[Any], world: World
) -> None:
    """23:30 and 00:30 in Shanghai are two days there, one day in UTC."""
    late = dt.datetime(2026, 3, 9, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    early = late + 3600  # 00:30 on the 10th, 16:30 UTC on the 9th
    store = engine.store
    async with pool.connection() as conn:
        for raised in (late, early):
            rec = await store.record(
                conn, det(world, DetectionKind.FALL, raised - 5), now_ts=raised
            )
            assert rec.action == "opened"
            await store.acknowledge(
                conn, rec.incident_id or 0, actor="d", scope=world.city, now_ts=raised + 30
            )
            await store.resolve(
                conn,
                rec.incident_id or 0,
                actor="d",
                scope=world.city,
                now_ts=raised + 99,
                outcome="resident_ok",
            )
        args = {
            "scope": world.city,
            "level": "community",
            "since": dt.date(2026, 3, 8),
            "until": dt.date(2026, 3, 11),
        }
        local = await kpis(conn, **args)  # the default zone: Asia/Shanghai
        utc = await kpis(conn, **args, timezone="UTC")
    assert [(r["day"], r["alarms"]) for r in local] == [
        (dt.date(2026, 3, 9), 1),
        (dt.date(2026, 3, 10), 1),
    ]
    assert [(r["day"], r["alarms"]) for r in utc] == [(dt.date(2026, 3, 9), 2)]
    assert all(r["ack_within_60s"] == 1.0 for r in local)
