"""One incident per episode, enforced by the database; transitions; suppression; cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from alerts.clock import ManualClock
from alerts.engine import AlertEngine
from alerts.errors import IncidentNotFoundError, InvalidTransitionError
from alerts.incidents import IncidentInput, IncidentStore
from alerts.rules.detection import DetectionKind, Severity
from tests.alerts.world import World, det


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
        falls = [
            await store.record(conn, det(world, DetectionKind.FALL, now + i), now_ts=now + i)
            for i in range(3)
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
            a = det(world, kind, now + round_, n=0)
            b = det(world, kind, now + round_ + 0.5, n=1)
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
