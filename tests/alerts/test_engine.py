"""The engine's loops: live lane (press, "I am OK"), presence faults, restart mid-escalation,
urgent readings recovered after a crash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.clock import ManualClock
from alerts.engine import EngineConfig
from alerts.live import LiveLane
from alerts.setup import alert_engine
from devices.readings import Envelope, SosPress
from tests.alerts.server import serve, server_settings
from tests.alerts.world import World, build_world
from tests.fixtures.services import Publisher, eventually
from tests.ingest.helpers import payload


@dataclass(frozen=True)
class Change:
    device_id: str
    resident_id: int | None
    state: str
    at: float
    reason: str


class FakePresence:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    async def subscribe(self) -> AsyncIterator[Change]:
        while True:
            yield await self.queue.get()


async def _rows(db: psycopg.AsyncConnection[Any], w: World, kind: str) -> list[tuple[Any, ...]]:
    cur = await db.execute(
        "SELECT incident_id, state, outcome FROM incidents WHERE device_id = ANY(%s) AND kind = %s"
        " ORDER BY incident_id",
        (list(w.devices.values()), kind),
    )
    return await cur.fetchall()


async def test_live_press_then_i_am_ok_cancels_and_presence_raises_faults(
    pool: AsyncConnectionPool[Any], migrated_db: str, db, world: World, clock: ManualClock
) -> None:
    lane = LiveLane()
    presence = FakePresence()
    dev = world.devices["r1"]
    now = clock.now()
    async with (
        alert_engine(
            pool=pool,
            conninfo=migrated_db,
            registry=CollectorRegistry(),
            config=EngineConfig(cancel_window_s=60),
            clock=clock,
            live_lane=lane,
            presence=presence,
        ) as engine,
        engine.running(),
    ):
        lane.offer(SosPress(env=Envelope(dev, 1, now, now)))
        await eventually(lambda: _rows(db, world, "sos"))
        clock.advance(20)
        lane.offer(SosPress(env=Envelope(dev, 2, now + 20, now + 20), action="cancel"))
        rows = await eventually(
            lambda: _has(_rows(db, world, "sos"), lambda r: r and r[0][1] == "cancelled")
        )
        assert rows[0][2] == "cancelled_by_resident"

        presence.queue.put_nowait(Change(dev, world.residents["r1"], "offline", now + 21, "lwt"))
        await eventually(
            lambda: _has(_rows(db, world, "device_offline"), lambda r: r and r[0][1] == "raised")
        )
        presence.queue.put_nowait(Change(dev, world.residents["r1"], "online", now + 99, "back"))
        await eventually(
            lambda: _has(_rows(db, world, "device_offline"), lambda r: r and r[0][1] == "resolved")
        )


async def _has(coro: Any, pred: Any) -> Any:
    rows = await coro
    return rows if pred(rows) else None


async def test_a_new_engine_continues_an_escalation_after_a_restart(
    migrated_db: str, db, world: World, clock: ManualClock
) -> None:
    lane = LiveLane()
    dev = world.devices["r1"]
    now = clock.now()
    config = EngineConfig(escalation_interval_s=0.05)
    async with AsyncConnectionPool(migrated_db, kwargs={"autocommit": True}) as pool:
        async with (
            alert_engine(
                pool=pool,
                conninfo=migrated_db,
                registry=CollectorRegistry(),
                config=config,
                clock=clock,
                live_lane=lane,
            ) as first,
            first.running(),
        ):
            lane.offer(SosPress(env=Envelope(dev, 1, now, now)))
            (iid, _, _), *_ = await eventually(lambda: _rows(db, world, "sos"))
            clock.advance(31)  # T1 at community level
            await eventually(lambda: _count(db, iid, "escalated", 1))
        # The first engine is gone (as if the process died); its timers are rows.
        clock.advance(30)
    async with (
        AsyncConnectionPool(migrated_db, kwargs={"autocommit": True}) as pool,
        alert_engine(
            pool=pool,
            conninfo=migrated_db,
            registry=CollectorRegistry(),
            config=config,
            clock=clock,
        ) as second,
        second.running(),
    ):
        await eventually(lambda: _count(db, iid, "escalated", 2))
        clock.advance(60)
        await eventually(lambda: _count(db, iid, "supervisor_paged", 1))


async def _count(db: psycopg.AsyncConnection[Any], iid: int, action: str, n: int) -> bool:
    cur = await db.execute(
        "SELECT count(*) FROM incident_events WHERE incident_id = %s AND action = %s",
        (iid, action),
    )
    row = await cur.fetchone()
    return row is not None and row[0] == n


async def test_urgent_readings_stored_before_a_crash_are_raised_at_start_up(
    pool: AsyncConnectionPool[Any], migrated_db: str, db, uid: str, spool_dir: Path
) -> None:
    """The bridge stored an SOS, a smoke and a gas alarm, then the process died before the
    alert side wrote any incident: a fresh engine raises all three at start-up, once."""
    w = await build_world(db, uid)
    home = f"{uid}-r1home"
    await db.execute(
        "INSERT INTO devices (device_id, resident_id, device_type, position)"
        " VALUES (%s, %s, 'home_gateway', 'home')",
        (home, w.residents["r1"]),
    )
    settings = server_settings(migrated_db, uid, spool_dir)
    root = settings.topic_root
    now = time.time()
    readings = [
        (f"{root}/{w.devices['r1']}/sos", payload(ts=now, seq=1)),
        (f"{root}/{home}/event", payload(ts=now, seq=1, sensor="smoke", state="alarm")),
        (f"{root}/{home}/event", payload(ts=now + 1, seq=2, sensor="gas", state="alarm")),
        # Neither a test press nor a water leak is an urgent reading.
        (f"{root}/{home}/event", payload(ts=now + 2, seq=3, sensor="smoke", state="test")),
        (f"{root}/{home}/event", payload(ts=now + 3, seq=4, sensor="water", state="leak")),
    ]
    pub = Publisher()
    try:
        # Ingest without the alert side: the readings are stored, no incident is written.
        async with serve(settings, features=()) as (rt, _host):
            await rt.source.client.wait_connected(5)
            await asyncio.to_thread(pub.publish_many, readings)
            await eventually(lambda: _stored(db, [w.devices["r1"], home], 5))
    finally:
        pub.close()
    assert await _rows(db, w, "sos") == []

    for attempt in range(2):  # a second start finds nothing left to raise
        async with (
            alert_engine(
                pool=pool,
                conninfo=migrated_db,
                registry=CollectorRegistry(),
                config=EngineConfig(),
            ) as engine,
            engine.running(),
        ):
            if attempt == 0:
                await eventually(lambda: _kinds(db, w.residents["r1"], 3))
            else:
                assert await engine.reconcile() == 0
    cur = await db.execute(
        "SELECT kind, severity, state, detections, evidence -> 0 ->> 'path' FROM incidents"
        " WHERE resident_id = %s ORDER BY kind",
        (w.residents["r1"],),
    )
    assert await cur.fetchall() == [
        ("gas", "critical", "raised", 1, "reconcile"),
        ("smoke", "critical", "raised", 1, "reconcile"),
        ("sos", "critical", "raised", 1, "reconcile"),
    ]


async def _stored(db: psycopg.AsyncConnection[Any], devices: list[str], n: int) -> bool:
    cur = await db.execute(
        "SELECT (SELECT count(*) FROM sos_presses WHERE device_id = ANY(%(d)s))"
        " + (SELECT count(*) FROM home_events WHERE device_id = ANY(%(d)s))",
        {"d": devices},
    )
    row = await cur.fetchone()
    return row is not None and row[0] == n


async def _kinds(db: psycopg.AsyncConnection[Any], resident_id: int, n: int) -> bool:
    cur = await db.execute("SELECT count(*) FROM incidents WHERE resident_id = %s", (resident_id,))
    row = await cur.fetchone()
    return row is not None and row[0] >= n


async def test_the_registry_cache_counts_the_fleet_by_kind(
    engine: Any, db: psycopg.AsyncConnection[Any], uid: str
) -> None:
    """What the engine sizes the rule state by at start (RuleRunner.size_for)."""
    async with engine.pool.connection() as conn:
        await engine.cache.load(conn)
    before = dict(engine.cache.fleet)
    typed = [
        ("watch", 3),
        ("belt", 1),
        ("home_gateway", 2),
        ("smoke_sensor", 1),
        ("door_sensor", 1),
    ]
    for device_type, n in typed:
        for i in range(n):
            await db.execute(
                "INSERT INTO devices (device_id, device_type) VALUES (%s, %s)",
                (f"{uid}-{device_type}-{i}", device_type),
            )
    async with engine.pool.connection() as conn:
        await engine.cache.load(conn)
    after = engine.cache.fleet
    assert after["devices"] - before["devices"] == 8
    assert after["wearables"] - before["wearables"] == 4
    assert after["homes"] - before["homes"] == 4
