"""The bridge end to end: real Mosquitto (the machine's), real PostgreSQL, in-process server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import psycopg

from devices.readings import SosPress
from ingest.http import RedactTokens, create_app
from ingest.pipeline import TokenBuckets
from ingest.service import run_ingest
from tests.fixtures.services import Publisher, eventually, register_devices
from tests.ingest.helpers import bridge_settings, payload, vitals


async def count(db: psycopg.AsyncConnection, table: str, prefix: str) -> int:  # type: ignore[type-arg]
    cur = await db.execute(
        f"SELECT count(*) FROM {table} WHERE device_id LIKE %s",
        (prefix + "%",),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_round_trip_every_kind(migrated_db: str, db, uid: str, spool_dir: Path) -> None:  # type: ignore[no-untyped-def]
    devs = [f"{uid}-w", f"{uid}-b", f"{uid}-p", f"{uid}-g", f"{uid}-s"]
    register_devices(migrated_db, devs)
    settings = bridge_settings(migrated_db, uid, spool_dir)
    root = settings.topic_root
    now = time.time()
    senml = json.dumps(
        [
            {"bn": f"urn:dev:carecall:{uid}-s:", "bt": now, "n": "hr", "u": "beat/min", "v": 61},
            {"n": "spo2", "u": "%", "v": 95},
            {"n": "seq", "v": 2},
        ]
    ).encode()
    msgs = [
        (f"{root}/{uid}-w/vitals", vitals(1, spo2_pct=96, temp_c=36.5)),
        (f"{root}/{uid}-b/accel", payload(seq=1, rate_hz=50, samples=[[0, -1, 0]] * 50)),
        (f"{root}/{uid}-p/sos", payload(seq=1, lat=38.0, lon=114.5)),
        (f"{root}/{uid}-g/event", payload(seq=1, sensor="door", state="open")),
        (f"{root}/{uid}-w/status", payload(seq=2, state="online", battery_pct=80)),
        (f"{root}/{uid}-s/vitals", senml),
    ]
    pub = Publisher()
    pub.subscribe(f"{root}/{uid}-p/reply")
    try:
        async with run_ingest(settings) as rt:
            await rt.source.client.wait_connected(5)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pub.publish_many, msgs)
            sos = await asyncio.wait_for(rt.live_lane.get(), timeout=5)
            assert isinstance(sos, SosPress) and sos.env.device_id == f"{uid}-p"
            for table, n in (
                ("vitals", 2),
                ("accel_windows", 1),
                ("sos_presses", 1),
                ("home_events", 1),
                ("device_status", 1),
            ):
                await eventually(lambda t=table, n=n: _eq(db, t, uid, n), timeout_s=10)
            # One row per accelerometer window, with its 50 samples inside.
            cur = await db.execute(
                "SELECT n_samples, octet_length(samples), rate_hz, peak_g "
                "FROM accel_windows WHERE device_id = %s",
                (f"{uid}-b",),
            )
            assert await cur.fetchone() == (50, 600, 50.0, 1.0)
            # Both clocks are kept.
            cur = await db.execute(
                "SELECT device_time, received_at FROM vitals WHERE device_id = %s", (f"{uid}-s",)
            )
            row = await cur.fetchone()
            assert row is not None and abs(row[0].timestamp() - now) < 0.001
            assert row[1].timestamp() >= row[0].timestamp() - 1
            # The SOS was answered "accepted" on the device's reply topic.
            reply = await eventually(
                lambda: [m for m in pub.received if m.topic.endswith(f"{uid}-p/reply")]
            )
            assert json.loads(reply[0].payload) == {
                "kind": "sos",
                "seq": 1,
                "status": "accepted",
                "action": "press",
            }
            assert rt.bridge._pending == 0
            transport = httpx.ASGITransport(app=create_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["database"]["storage"] == "native"
                metrics = (await http.get("/metrics")).text
                assert 'carecall_ingest_messages_stored_total{kind="vitals"} 2.0' in metrics
                assert (await http.get("/healthz")).json() == {"status": "ok"}
    finally:
        pub.close()


async def _eq(db, table: str, uid: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await count(db, table, uid) == n


async def test_bad_input_is_dead_lettered_answered_and_acked(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    dev = f"{uid}-w"
    register_devices(migrated_db, [dev])
    settings = bridge_settings(migrated_db, uid, spool_dir)
    root = settings.topic_root
    cases = {
        "malformed": b'{"ts": 1, "seq"',
        "out_of_range": vitals(1, hr_bpm=999),
        "future_timestamp": vitals(2, ts=time.time() + 86400),
        "oversized": vitals(3, pad="x" * 70_000),
        "non_finite": payload(seq=4, rate_hz=50, enc="f32le", data="AADAfwAAAAAAAAAA"),
        "invalid_field": payload(seq="five", hr_bpm=70),
        "unknown_device": b"",
    }
    good = vitals(10)
    msgs = [
        (f"{root}/{dev}/vitals", p)
        for k, p in cases.items()
        if k not in ("non_finite", "unknown_device")
    ]
    msgs.append((f"{root}/{dev}/accel", cases["non_finite"]))
    msgs.append((f"{root}/{uid}-nobody/vitals", vitals(1)))
    msgs.append((f"{root}/{dev}/selfie", b"{}"))
    msgs.append((f"{root}/{dev}/vitals", payload(seq=2**64, hr_bpm=70)))  # beyond bigint
    msgs.append((f"{root}/{dev}/vitals", good))
    pub = Publisher()
    pub.subscribe(f"{root}/{dev}/reply")
    try:
        async with run_ingest(settings) as rt:
            await rt.source.client.wait_connected(5)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pub.publish_many, msgs)

            async def reasons() -> set[str]:
                cur = await db.execute(
                    "SELECT reason FROM dead_letters WHERE topic LIKE %s", (f"t{uid}/%",)
                )
                return {r[0] for r in await cur.fetchall()}

            expected = {
                "malformed",
                "out_of_range",
                "future_timestamp",
                "oversized",
                "non_finite",
                "invalid_field",
                "unknown_device",
                "unknown_kind",
            }
            await eventually(lambda: _superset(reasons(), expected), timeout_s=10)
            # Good input is not blocked by bad input.
            await eventually(lambda: _eq(db, "vitals", uid, 1))
            cur = await db.execute(
                "SELECT payload_bytes, octet_length(payload), detail FROM dead_letters "
                "WHERE reason = 'oversized' AND topic LIKE %s",
                (f"t{uid}/%",),
            )
            row = await cur.fetchone()
            assert row is not None and row[0] > 70_000 and row[1] == 4096 and "exceeds" in row[2]
            # Rejections are answered (rate-limited to one a second per device).
            reply = await eventually(
                lambda: [m for m in pub.received if m.topic.endswith("/reply")]
            )
            body = json.loads(reply[0].payload)
            assert body["status"] == "rejected" and body["reason"] and body["detail"]
            # Everything was acknowledged: nothing held, nothing redelivered.
            await eventually(lambda: rt.bridge._pending == 0)
            metrics = rt.metrics.registry.get_sample_value(
                "carecall_ingest_messages_rejected_total", {"reason": "unknown_device"}
            )
            assert metrics == 1
    finally:
        pub.close()


async def _superset(coro, expected: set[str]) -> bool:  # type: ignore[no-untyped-def]
    return expected <= await coro


async def test_duplicates_stored_once_and_replayed_seq_refused(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    dev = f"{uid}-w"
    register_devices(migrated_db, [dev])
    settings = bridge_settings(migrated_db, uid, spool_dir)
    topic = f"{settings.topic_root}/{dev}/vitals"
    ts = time.time() - 5
    pub = Publisher()
    try:
        async with run_ingest(settings) as rt:
            await rt.source.client.wait_connected(5)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(
                pub.publish_many,
                [
                    (topic, vitals(1, ts=ts)),
                    (topic, vitals(1, ts=ts)),  # the same reading twice
                    (topic, vitals(1, ts=ts + 60)),  # seq 1 reused: a replay
                    (topic, vitals(3, ts=ts - 30)),  # late, out of order: fine
                ],
            )
            await eventually(lambda: _eq(db, "vitals", uid, 2))
            await eventually(lambda: rt.bridge._pending == 0)
            cur = await db.execute("SELECT reason FROM dead_letters WHERE device_id = %s", (dev,))
            assert [r[0] for r in await cur.fetchall()] == ["replayed_seq"]
            assert rt.metrics.registry.get_sample_value("carecall_ingest_duplicates_total") == 1
    finally:
        pub.close()


def test_token_buckets_refill_and_bound() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=3.0, max_keys=2)
    assert [buckets.take("a", 100.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("a", 101.0) is True  # one token back after a second
    assert buckets.take("a", 101.0) is False
    assert buckets.take("b", 101.0) and buckets.take("c", 101.0)  # still bounded in keys


async def test_a_flooding_device_cannot_fill_the_dead_letters(
    migrated_db: str,
    db,
    uid: str,
    spool_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    dev = f"{uid}-flood"
    register_devices(migrated_db, [dev])
    settings = bridge_settings(migrated_db, uid, spool_dir, dead_letters_per_device_per_min=60)
    topic = f"{settings.topic_root}/{dev}/vitals"
    pub = Publisher()
    try:
        async with run_ingest(settings) as rt:
            await rt.source.client.wait_connected(5)
            await asyncio.sleep(0.2)
            await asyncio.to_thread(pub.publish_many, [(topic, b"garbage")] * 300)
            await eventually(lambda: rt.bridge._pending == 0)
            registry = rt.metrics.registry
            rejected = registry.get_sample_value(
                "carecall_ingest_messages_rejected_total", {"reason": "malformed"}
            )
            suppressed = registry.get_sample_value("carecall_ingest_dead_letters_suppressed_total")
            cur = await db.execute("SELECT count(*) FROM dead_letters WHERE device_id = %s", (dev,))
            (kept,) = await cur.fetchone()
            assert rejected == 300  # every one counted and refused
            assert 15 <= kept <= 25  # a burst of 15, then one a second
            assert kept + suppressed == 300
    finally:
        pub.close()


def test_access_log_masks_tokens() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "x",
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/v1/ws?token=eyJabc.def&x=1", "1.1", 101),
        None,
    )
    assert RedactTokens().filter(record)
    assert "eyJabc" not in record.getMessage()
    assert "token=***&x=1" in record.getMessage()
