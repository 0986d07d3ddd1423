"""A broker that drops messages is never silent: $SYS counters become a metric and an alarm."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.mqtt import encode_connect, encode_subscribe
from ingest.service import run_ingest
from tests.fixtures.services import Mosquitto, Publisher, eventually
from tests.ingest.helpers import bridge_settings


@pytest.fixture
def tight_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # Stock-like small limits (later lines override the shipped ones) and fast $SYS updates.
    m = Mosquitto(
        tmp_path / "mosquitto",
        extra="max_inflight_messages 5\nmax_queued_messages 10\nsys_interval 1\n",
    )
    m.start()
    yield m
    m.kill()


@pytest.mark.slow
async def test_broker_drops_raise_the_alarm(
    migrated_db: str, uid: str, spool_dir: Path, tight_broker: Mosquitto
) -> None:
    settings = bridge_settings(migrated_db, uid, spool_dir, port=tight_broker.port)
    async with run_ingest(settings) as rt:
        await rt.source.client.wait_connected(5)
        # A subscriber that never reads nor acks: the broker fills its queue, then drops.
        stuck = socket.create_connection(("127.0.0.1", tight_broker.port))
        stuck.sendall(
            encode_connect(
                client_id=f"stuck-{uid}",
                keepalive_s=60,
                clean_start=True,
                session_expiry_s=300,
                receive_maximum=5,
            )
        )
        stuck.sendall(encode_subscribe(1, [(f"slow-{uid}/#", 1)]))
        await asyncio.sleep(0.3)
        pub = Publisher(port=tight_broker.port)
        try:
            await asyncio.to_thread(pub.publish_many, [(f"slow-{uid}/x", b"payload")] * 200)
            registry = rt.metrics.registry
            await eventually(
                lambda: (registry.get_sample_value("carecall_broker_dropped_messages") or 0) > 0,
                timeout_s=15,
            )
            await eventually(
                lambda: registry.get_sample_value("carecall_broker_drop_alarm") == 1, timeout_s=15
            )
        finally:
            pub.close()
            stuck.close()
