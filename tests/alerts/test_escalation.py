"""Escalation through every tier with a controlled clock, across a restart, on two servers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.channels import GatewayChannel, Notifier
from alerts.clock import ManualClock
from alerts.escalation import Escalator, call_result
from alerts.incidents import IncidentStore, source_key
from alerts.metrics import AlertMetrics
from alerts.rules.detection import DetectionKind
from tests.alerts.world import FakeGateway, build_world, det
from tests.fixtures.services import eventually


async def _events(db: psycopg.AsyncConnection[Any], iid: int) -> list[tuple[str, Any]]:
    cur = await db.execute(
        "SELECT action, detail FROM incident_events WHERE incident_id = %s ORDER BY event_id",
        (iid,),
    )
    return await cur.fetchall()


async def test_escalation_every_tier_survives_a_restart_and_two_servers(
    migrated_db: str, db, uid: str
) -> None:
    w = await build_world(db, uid, on_duty=("disp_ca", "disp_sa", "disp_da", "disp_city"))
    clock = ManualClock()
    t0 = clock.now()
    metrics = AlertMetrics(CollectorRegistry())
    store = IncidentStore(metrics=metrics, cancel_window_s=60)
    gateway = FakeGateway()
    async with gateway.running():
        channel = GatewayChannel(base_url=gateway.url, api_key="k", timeout_s=5)
        notifier = Notifier([channel], metrics=metrics)
        pool_a: AsyncConnectionPool[Any] = AsyncConnectionPool(
            migrated_db, min_size=1, max_size=3, kwargs={"autocommit": True}, open=False
        )
        await pool_a.open()
        async with notifier.running():
            async with pool_a.connection() as conn:
                rec = await store.record(conn, det(w, DetectionKind.SOS, t0), now_ts=t0)
            for n in rec.notices:
                notifier.publish(n)
            iid = rec.incident_id
            assert iid is not None
            server_a = Escalator(
                pool=pool_a, clock=clock, metrics=metrics, publish=notifier.publish
            )

            async def step(seconds: float, *escalators: Escalator) -> list[str]:
                """Advance, let every server take what is due; this incident's new steps."""
                before = len(await _events(db, iid))
                clock.advance(seconds)
                await asyncio.gather(*(e.run_due() for e in escalators))
                return [a for a, _ in (await _events(db, iid))[before:]]

            assert await step(10, server_a) == []  # nothing due before T1
            assert await step(20, server_a) == ["escalated"]  # t=30: community -> street
            # "Restart": server A goes away; server B (its own pool) continues from the rows.
            await pool_a.close()
            async with (
                AsyncConnectionPool(
                    migrated_db, min_size=1, max_size=3, kwargs={"autocommit": True}
                ) as pool_b,
                AsyncConnectionPool(
                    migrated_db, min_size=1, max_size=3, kwargs={"autocommit": True}
                ) as pool_c,
            ):
                server_b = Escalator(
                    pool=pool_b, clock=clock, metrics=metrics, publish=notifier.publish
                )
                server_c = Escalator(
                    pool=pool_c, clock=clock, metrics=metrics, publish=notifier.publish
                )
                # From here two servers take timers at once: each step happens exactly once.
                assert await step(15, server_b, server_c) == ["contact_no_answer", "contact_called"]
                assert await step(15, server_b, server_c) == ["escalated"]  # t=60: -> district
                assert sorted(await step(30, server_b, server_c)) == [
                    "contact_called",
                    "contact_no_answer",
                    "escalated",
                ]  # t=90: -> city
                assert await step(30, server_b, server_c) == ["supervisor_paged"]  # t=120: T2
                events = await _events(db, iid)
                actions = [a for a, _ in events]
                calls = [d["role"] for a, d in events if a == "contact_called"]
                assert calls == ["family", "community_helper", "grid_worker"]
                escalated = [d["route_level"] for a, d in events if a == "escalated"]
                assert escalated == ["street", "district", "city"]
                assert actions.count("supervisor_paged") == 1
                last = next(d for a, d in reversed(events) if a == "escalated")
                assert sorted(last["routed_to"]) == sorted(
                    w.staff[s].username for s in ("disp_ca", "disp_sa", "disp_da", "disp_city")
                )
                # The grid worker accepts through the gateway's callback: the chain stops.
                async with pool_b.connection() as conn:
                    cur = await conn.execute(
                        "SELECT call_id FROM incident_calls WHERE incident_id = %s"
                        " AND state = 'calling'",
                        (iid,),
                    )
                    (call_id,) = await cur.fetchone()
                    got, more = await call_result(conn, call_id, "accepted", now_ts=clock.now())
                    again, _ = await call_result(conn, call_id, "accepted", now_ts=clock.now())
                assert got == again == iid and more == []
                # Acknowledgement stops the T1 re-notifications; no contact timer is left.
                async with pool_b.connection() as conn:
                    await store.acknowledge(conn, iid, actor="d", scope=w.city, now_ts=clock.now())
                assert await step(600, server_b, server_c) == []
            await eventually(lambda: sum(uid in b["to"] for b in gateway.bodies()) >= 4)
    await channel.aclose()
    # Other tests' incidents share the database (and may fire here): keep this test's calls.
    bodies = [b for b in gateway.bodies() if uid in b["to"]]
    voice = [b["to"] for b in bodies if b["channel"] == "voice"]
    assert voice == [f"+86-{r}-{uid}" for r in ("family", "community_helper", "grid_worker")]
    sms = [b["to"] for b in bodies if b["channel"] == "sms"]
    assert sms == [f"+86-sup-{uid}"]
    events = await _events(db, iid)
    assert [a for a, _ in events].count("contact_accepted") == 1


async def test_acknowledging_while_the_timer_fires_neither_deadlocks_nor_escalates_late(
    migrated_db: str, db, uid: str
) -> None:
    w = await build_world(db, uid, on_duty=("disp_ca", "disp_sa"))
    clock = ManualClock()
    t0 = clock.now()
    metrics = AlertMetrics(CollectorRegistry())
    store = IncidentStore(metrics=metrics, cancel_window_s=60)
    async with AsyncConnectionPool(
        migrated_db, min_size=4, max_size=12, kwargs={"autocommit": True}
    ) as pool:
        open_ids = []
        async with pool.connection() as conn:
            for i in range(10):
                # Ten unassigned fall sensors in community ca: ten separate episodes.
                inp = dataclasses.replace(
                    det(w, DetectionKind.FALL, t0),
                    device_id=f"{uid}-x{i}",
                    resident_id=None,
                    source_key=source_key("fall", f"{uid}-x{i}", t0),
                )
                rec = await store.record(conn, inp, now_ts=t0)
                assert rec.action == "opened"
                open_ids.append(rec.incident_id)
        escalators = [
            Escalator(pool=pool, clock=clock, metrics=metrics, publish=lambda _n: None)
            for _ in range(2)
        ]
        clock.advance(31)

        async def ack(iid: int) -> None:
            async with pool.connection() as conn:
                await store.acknowledge(conn, iid, actor="d", scope=w.city, now_ts=clock.now())

        await asyncio.gather(*(e.run_due() for e in escalators), *(ack(i) for i in open_ids))
        cur = await db.execute(
            "SELECT count(*) FILTER (WHERE state = 'acknowledged') FROM incidents"
            " WHERE incident_id = ANY(%s)",
            (open_ids,),
        )
        assert (await cur.fetchone())[0] == len(open_ids)
        # No timer is left to escalate an acknowledged incident later.
        clock.advance(3600)
        await asyncio.gather(*(e.run_due() for e in escalators))
        cur = await db.execute(
            "SELECT count(*) FROM incident_events WHERE incident_id = ANY(%s)"
            " AND action = 'escalated' AND at > to_timestamp(%s)",
            (open_ids, t0 + 40),
        )
        assert (await cur.fetchone())[0] == 0
