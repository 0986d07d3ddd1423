"""A short run against the real server in-process: a few residents, minutes of simulated
time in seconds, devices registered by SQL; readings are stored, bad devices dead-lettered,
SOS presses accepted by the server, and the ground-truth log written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from ingest.service import run_ingest
from simulator.groundtruth import read_ground_truth
from simulator.provision import register_sql
from simulator.publisher import BrokerAddress
from simulator.recordings import Recordings
from simulator.scenarios import Scenario
from simulator.simulation import Simulation
from tests.fixtures.services import Mosquitto, eventually
from tests.ingest.helpers import bridge_settings

pytestmark = pytest.mark.skipif(
    not Recordings().available(), reason="the fall recordings are not available"
)


async def _count(db: psycopg.AsyncConnection, table: str, prefix: str) -> int:  # type: ignore[type-arg]
    cur = await db.execute(
        f"SELECT count(*) FROM {table} WHERE device_id LIKE %s",
        (prefix + "%",),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_short_run_against_the_server(
    migrated_db: str,
    db: psycopg.AsyncConnection,  # type: ignore[type-arg]
    uid: str,
    spool_dir: Path,
    broker: Mosquitto,
    tmp_path: Path,
) -> None:
    prefix = f"e{uid}"
    settings = bridge_settings(migrated_db, uid, spool_dir, port=broker.port)
    gt_path = tmp_path / "ground_truth.jsonl"
    sim = Simulation(
        residents=3,
        days=1200 / 86400,  # 20 simulated minutes ...
        speed=300.0,  # ... in 4 wall seconds
        broker=BrokerAddress("127.0.0.1", broker.port),
        topic_root=settings.topic_root,
        prefix=prefix,
        seed=11,
        ground_truth=gt_path,
        scenarios=[],
        sos_resend_wall_s=0.5,
        max_msgs_per_device_per_s=20.0,
    )
    r1, r2, r3 = sim.town.residents
    sim.fixed_scenarios = [
        Scenario("fall", r1.key, r1.wearables[0].device_id, 60.0),
        Scenario("sos", r2.key, r2.wearables[0].device_id, 90.0),
        Scenario("adl", r3.key, r3.wearables[0].device_id, 120.0),
        Scenario("smoke", r3.key, r3.gateway.device_id, 200.0),
        Scenario("malformed", r1.key, r1.wearables[0].device_id, 400.0),
        Scenario("spoofed", r2.key, r2.wearables[0].device_id, 500.0),
        Scenario("replayed", r3.key, r3.wearables[0].device_id, 600.0),
    ]
    register_sql(migrated_db, sim.device_ids())
    async with run_ingest(settings) as rt:
        await rt.source.client.wait_connected(5)
        summary = await asyncio.to_thread(sim.run)
        assert summary.sos_sent == 1 and summary.sos_accepted == 1, summary.line()
        for table in ("vitals", "accel_windows", "home_events", "sos_presses", "device_status"):
            await eventually(lambda t=table: _positive(db, t, prefix), timeout_s=10)
        await eventually(lambda: rt.bridge._pending == 0, timeout_s=10)

    cur = await db.execute(
        "SELECT DISTINCT reason FROM dead_letters WHERE topic LIKE %s",
        (f"{settings.topic_root}/{prefix}%",),
    )
    reasons = {r[0] for r in await cur.fetchall()}
    assert {"malformed", "device_mismatch", "replayed_seq"} <= reasons
    # Every accelerometer window of the fall and the ADL is stored, one row per window.
    assert await _count(db, "accel_windows", prefix) == summary.published["accel"]
    events = read_ground_truth(gt_path)
    assert [e.kind for e in events] == [s.kind for s in sim.fixed_scenarios]
    fall = events[0]
    assert fall.expected == ("fall",) and fall.detail["trial_id"]
    assert fall.start_ts < fall.end_ts <= fall.wall_start_s
    assert events[2].must_not_raise == ("fall",)


async def _positive(db: psycopg.AsyncConnection, table: str, prefix: str) -> bool:  # type: ignore[type-arg]
    return await _count(db, table, prefix) > 0
