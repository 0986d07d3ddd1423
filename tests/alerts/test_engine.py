"""The engine's loops: live lane (press, "I am OK"), presence faults, restart mid-escalation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.clock import ManualClock
from alerts.engine import EngineConfig
from alerts.live import LiveLane
from alerts.setup import alert_engine
from devices.readings import Envelope, SosPress
from tests.alerts.world import World
from tests.fixtures.services import eventually


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
