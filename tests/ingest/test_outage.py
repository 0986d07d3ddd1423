"""The database goes away mid-stream: the bridge spools, keeps acking, replays when it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import psycopg
import pytest

from devices.readings import Envelope, SosPress, Vitals
from ingest.service import run_ingest
from ingest.spool import Spool
from ingest.store import SpoolRecord
from tests.fixtures.services import Publisher, TcpProxy, eventually, register_devices
from tests.ingest.helpers import bridge_settings, payload, vitals


async def _count(db, uid: str) -> int:  # type: ignore[no-untyped-def]
    cur = await db.execute(
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM vitals WHERE device_id LIKE %s",
        (uid + "%",),
    )
    total, distinct = await cur.fetchone()
    assert total == distinct, "a reading was written twice"
    return int(total)


@pytest.mark.slow
async def test_database_outage_spools_acks_and_replays(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(migrated_db)
    proxy = TcpProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432)))
    info.update(host="127.0.0.1", port=str(proxy.port))
    via_proxy = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    devs = [f"{uid}-{i}" for i in range(10)]
    register_devices(migrated_db, devs)
    settings = bridge_settings(via_proxy, uid, spool_dir, batch_max_rows=200)
    root = settings.topic_root
    pub = Publisher()
    try:
        async with run_ingest(settings) as rt:
            await rt.source.client.wait_connected(5)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(
                pub.publish_many, [(f"{root}/{d}/vitals", vitals(1)) for d in devs]
            )
            await eventually(lambda: _eq(_count(db, uid), 10))

            proxy.cut()
            during = [(f"{root}/{d}/vitals", vitals(s)) for s in range(2, 202) for d in devs]
            await asyncio.to_thread(pub.publish_many, during[:1000])
            await asyncio.to_thread(pub.publish_many, [(f"{root}/{devs[0]}/sos", payload(seq=500))])
            await asyncio.to_thread(pub.publish_many, during[1000:])
            # The SOS reaches the alert side although nothing can be stored.
            while True:
                item = await asyncio.wait_for(rt.live_lane.get(), timeout=10)
                if isinstance(item, SosPress):
                    break
            # Every message was made durable in the spool and acknowledged to the broker.
            await eventually(lambda: rt.bridge._pending == 0, timeout_s=20)
            assert rt.bridge.spool_mode
            assert rt.bridge.spool.size > 0
            assert rt.metrics.registry.get_sample_value("carecall_ingest_db_up") == 0
            assert await _count(db, uid) == 10

            proxy.restore()
            await eventually(lambda: not rt.bridge.spool_mode, timeout_s=30)
            assert await _count(db, uid) == 10 + len(during)
            cur = await db.execute(
                "SELECT count(*) FROM sos_presses WHERE device_id = %s", (devs[0],)
            )
            assert (await cur.fetchone())[0] == 1
            assert rt.bridge.spool.size == 0
            # Direct writes again after the replay.
            await asyncio.to_thread(
                pub.publish_many, [(f"{root}/{d}/vitals", vitals(300)) for d in devs]
            )
            await eventually(lambda: _eq(_count(db, uid), 20 + len(during)))
    finally:
        pub.close()
        proxy.close()


async def _eq(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await coro == n


@pytest.mark.slow
async def test_spool_left_by_a_dead_bridge_is_replayed_at_start(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A bridge that died while spooling leaves a spool; the next start replays it first."""

    now = time.time()
    readings = [Vitals(env=Envelope(f"{uid}-x", s, now - s, now), hr_bpm=60.0) for s in range(50)]
    sp = Spool(spool_dir / "ingest.spool")
    encoded = msgspec.msgpack.encode(SpoolRecord(readings, []))
    sp.append_sync(encoded)
    sp.append_sync(encoded)  # the same batch twice: replay is idempotent
    sp.close()
    register_devices(migrated_db, [f"{uid}-x"])
    async with run_ingest(bridge_settings(migrated_db, uid, spool_dir)) as rt:
        await eventually(lambda: not rt.bridge.spool_mode, timeout_s=15)
        assert await _count(db, uid) == 50
