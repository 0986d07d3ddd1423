"""The broker restarts: the bridge reconnects with backoff; its persistent session delivers
what was queued (held unacked in flight, or queued while the bridge was away)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingest.service import run_ingest
from tests.fixtures.services import Mosquitto, Publisher, eventually, register_devices
from tests.ingest.helpers import bridge_settings, vitals


async def _count(db, uid: str) -> int:  # type: ignore[no-untyped-def]
    cur = await db.execute(
        "SELECT count(*), count(DISTINCT (device_id, seq)) FROM vitals WHERE device_id LIKE %s",
        (uid + "%",),
    )
    total, distinct = await cur.fetchone()
    assert total == distinct
    return int(total)


async def _is(coro, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await coro == n


@pytest.mark.slow
async def test_broker_restart_delivers_the_queued_session(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,
    broker: Mosquitto,  # type: ignore[no-untyped-def]
) -> None:
    devs = [f"{uid}-{i}" for i in range(5)]
    register_devices(migrated_db, devs)
    settings = bridge_settings(migrated_db, uid, spool_dir, port=broker.port)
    root = settings.topic_root
    async with run_ingest(settings) as rt:
        await rt.source.client.wait_connected(5)
        await asyncio.sleep(0.3)
        pub = Publisher(port=broker.port)
        await asyncio.to_thread(pub.publish_many, [(f"{root}/{d}/vitals", vitals(0)) for d in devs])
        await eventually(lambda: _is(_count(db, uid), 5))
        # The bridge stops reading (as under backpressure): messages pile up at the broker,
        # some sent to the bridge and unacked, the rest queued for its session.
        rt.source.pause()
        await asyncio.to_thread(
            pub.publish_many,
            [(f"{root}/{d}/vitals", vitals(s)) for s in range(1, 601) for d in devs],
        )
        pub.close()
        assert await _count(db, uid) == 5
        # Clean restart: Mosquitto saves the queued session to disk and loads it again.
        await asyncio.to_thread(broker.stop)
        # Reading resumes: what is in the socket buffer is stored but cannot be acked on the
        # dead link; the broker re-sends it on the resumed session and it is stored once.
        rt.source.resume()
        await eventually(lambda: not rt.source.connected, timeout_s=10)
        await asyncio.sleep(0.5)  # the bridge retries against a closed port meanwhile
        await asyncio.to_thread(broker.start)
        await eventually(lambda: rt.source.connected, timeout_s=20)
        assert rt.source.client.connects >= 2
        try:
            await eventually(lambda: _is(_count(db, uid), 5 + 600 * 5), timeout_s=30)
        except AssertionError:
            print("COUNT", await _count(db, uid), rt.bridge._pending, rt.source.client.connects)
            raise
        await eventually(lambda: rt.bridge._pending == 0)
