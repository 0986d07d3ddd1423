"""Presence: heartbeats, silence, wills, battery hysteresis; rebuilt after restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devices.auth import AuthConfig
from devices.presence import PresenceChange, PresenceTracker
from devices.readings import DeviceStatus, Envelope, Vitals
from ingest.features import registry_feature
from ingest.http import create_app
from ingest.service import Runtime, run_ingest
from tests.devices.conftest import World, bearer
from tests.fixtures.services import Mosquitto, Publisher, eventually
from tests.ingest.helpers import bridge_settings, payload, vitals


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def status(device: str, at: float, seq: int, **kw: Any) -> DeviceStatus:
    kw.setdefault("state", "online")
    return DeviceStatus(env=Envelope(device, seq, at, at), **kw)


def drain(sub: Any) -> list[tuple[str, str]]:
    out = []
    while not sub.queue.empty():
        c: PresenceChange = sub.queue.get_nowait()
        out.append((c.device_id, c.state))
    return out


async def test_tracker_transitions() -> None:
    clock = Clock()
    t = PresenceTracker(heartbeat_s=60, missed_heartbeats=3, battery_low_pct=20, clock=clock)
    t.set_residents({"w": 7, "g": None})
    sub = t.subscribe()
    t.observe(status("w", clock.now, 1, battery_pct=80))
    assert drain(sub) == [("w", "online")]
    # Heartbeats every 60 s keep it online through many checks.
    for i in range(2, 10):
        clock.now += 60
        t.observe(status("w", clock.now, i))
        t.check()
    assert drain(sub) == []
    # Three heartbeat periods of silence: offline, once.
    clock.now += 181
    assert t.check() == 1
    assert t.check() == 0
    changes = [sub.queue.get_nowait()]
    assert (changes[0].state, changes[0].resident_id, changes[0].reason) == (
        "offline",
        7,
        "silent for 181 s",
    )
    # Any reading brings it back.
    t.observe(Vitals(env=Envelope("w", 20, clock.now, clock.now), hr_bpm=70, battery_pct=19))
    assert drain(sub) == [("w", "online"), ("w", "battery_low")]
    # Hysteresis: 21 and 24 % do not clear the alarm, 25 % does; 19 % raises it again.
    for pct, expected in ((21, []), (24, []), (25, [("w", "battery_ok")]), (19.5, [("w", "battery_low")])):  # fmt: skip
        t.observe(status("w", clock.now, int(pct * 10), battery_pct=pct))
        assert drain(sub) == expected
    # The last will: offline at once, reason given.
    t.observe(status("w", clock.now, 0, state="offline", will=True))
    assert drain(sub) == [("w", "offline")]
    snap = t.snapshot("w")
    assert snap is not None and snap.offline_reason == "will" and not snap.online
    sub.close()
    t.observe(status("w", clock.now, 99))
    assert drain(sub) == []


async def test_slow_subscriber_loses_oldest_not_the_bridge() -> None:
    t = PresenceTracker()
    sub = t.subscribe(maxsize=2)
    for i in range(5):
        t.observe(status(f"d{i}", time.time(), 1))
    assert sub.dropped == 3
    assert [c.device_id for c in (await sub.get(), await sub.get())] == ["d3", "d4"]


def _registry_settings(db: str, uid: str, spool: Path, **kw: Any) -> Any:
    values: dict[str, Any] = {
        "presence_heartbeat_s": 1.0,
        "presence_missed_heartbeats": 3,
        "presence_check_interval_s": 0.1,
        # The development placeholder is shorter than HS256 wants (pyjwt warns).
        "secret_key": "registry-tests-secret-0123456789abcdef",
    }
    values.update(kw)
    return bridge_settings(db, uid, spool, **values)


def _register(conn: psycopg.Connection[Any], devices: list[str], resident_id: int) -> None:
    for d in devices:
        conn.execute(
            "INSERT INTO devices (device_id, resident_id) VALUES (%s, %s)", (d, resident_id)
        )


async def _presence(http: httpx.AsyncClient, h: dict[str, str], device: str) -> dict[str, Any]:
    r = await http.get(f"/api/v1/devices/{device}/presence", headers=h)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _http(rt: Runtime, feature: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(rt, [feature]))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_presence_through_the_bridge_and_after_a_server_restart(
    migrated_db: str,
    world: World,
    sync_db: psycopg.Connection[Any],
    uid: str,
    spool_dir: Path,
) -> None:
    on, will, batt, silent = (f"{k}-{uid}" for k in ("on", "will", "batt", "silent"))
    _register(sync_db, [on, will, batt, silent], world.a.resident_id)
    settings = _registry_settings(migrated_db, uid, spool_dir)
    root = settings.topic_root
    h = bearer(world.a.staff["dispatcher"], AuthConfig(settings.secret_key.get_secret_value()))
    pub = Publisher()
    seq = iter(range(1, 10_000))

    def beat(device: str, **kw: Any) -> tuple[str, bytes]:
        kw.setdefault("state", "online")
        return (f"{root}/{device}/status", payload(seq=next(seq), **kw))

    try:
        feature = registry_feature()
        assert feature.run is not None
        async with run_ingest(settings, features=[feature.run]) as rt, _http(rt, feature) as http:
            await rt.source.client.wait_connected(5)
            sub = rt.services["presence"].subscribe()
            await asyncio.to_thread(
                pub.publish_many,
                [
                    beat(on, battery_pct=80),
                    beat(will),
                    beat(batt, battery_pct=15),
                    (f"{root}/{silent}/vitals", vitals(next(seq))),
                    beat(will, state="offline", will=True),
                ],
            )
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 8
            # Keep `on` beating twice a period while `silent` runs out of its 3 s.
            while (silent, "offline") not in seen and time.monotonic() < deadline:
                await asyncio.to_thread(pub.publish_many, [beat(on)])
                await asyncio.sleep(0.5)
                seen += drain(sub)
            assert (silent, "offline") in seen
            assert (on, "offline") not in seen
            assert {(on, "online"), (will, "online"), (will, "offline")} <= set(seen)
            assert (batt, "battery_low") in seen
            assert (await _presence(http, h, on))["state"] == "online"
            p = await _presence(http, h, will)
            assert (p["state"], p["offline_reason"]) == ("offline", "will")
            p = await _presence(http, h, batt)
            assert (p["battery_pct"], p["battery_low"]) == (15, True)
            listing = await http.get(
                "/api/v1/devices", headers=h, params={"resident_id": world.a.resident_id}
            )
            states = {d["device_id"]: d["presence"]["state"] for d in listing.json()["items"]}
            assert states[silent] == "offline" and states[on] == "online"
            await asyncio.to_thread(pub.publish_many, [beat(on)])
            await eventually(lambda: _last_status_stored(sync_db, on, 1))

        # A new server process: presence comes back from the database, without new events.
        feature = registry_feature()
        assert feature.run is not None
        async with run_ingest(settings, features=[feature.run]) as rt, _http(rt, feature) as http:
            sub = rt.services["presence"].subscribe()
            assert (await _presence(http, h, on))["state"] == "online"
            p = await _presence(http, h, will)
            assert (p["state"], p["offline_reason"]) == ("offline", "will")
            p = await _presence(http, h, silent)
            assert (p["state"], p["offline_reason"]) == ("offline", "missed heartbeats")
            p = await _presence(http, h, batt)
            assert p["battery_low"] is True
            assert drain(sub) == []
            # And it keeps tracking: `on` falls silent now, and goes offline.
            await eventually(lambda: (on, "offline") in drain(sub), timeout_s=6)
    finally:
        pub.close()


def _last_status_stored(conn: psycopg.Connection[Any], device: str, within_s: float) -> bool:
    row = conn.execute(
        "SELECT max(received_at) > now() - make_interval(secs => %s) FROM device_status"
        " WHERE device_id = %s",
        (within_s, device),
    ).fetchone()
    return bool(row and row[0])


async def test_retired_device_is_refused_by_the_bridge_within_seconds(
    migrated_db: str,
    world: World,
    sync_db: psycopg.Connection[Any],
    uid: str,
    spool_dir: Path,
) -> None:
    dev = f"r-{uid}"
    _register(sync_db, [dev], world.a.resident_id)
    settings = _registry_settings(migrated_db, uid, spool_dir)
    root = settings.topic_root
    h = bearer(world.a.staff["operator"], AuthConfig(settings.secret_key.get_secret_value()))
    pub = Publisher()
    try:
        feature = registry_feature()
        assert feature.run is not None
        async with run_ingest(settings, features=[feature.run]) as rt, _http(rt, feature) as http:
            await rt.source.client.wait_connected(5)
            await eventually(lambda: rt.directory.is_active(dev))
            await asyncio.to_thread(pub.publish_many, [(f"{root}/{dev}/vitals", vitals(1))])
            await eventually(lambda: _count(sync_db, "vitals", dev) == 1)
            r = await http.delete(f"/api/v1/devices/{dev}", headers=h)
            assert r.status_code == 200
            retired_at = time.monotonic()
            await eventually(lambda: rt.directory.is_active(dev) is False, timeout_s=5)
            assert time.monotonic() - retired_at < 5
            await asyncio.to_thread(pub.publish_many, [(f"{root}/{dev}/vitals", vitals(2))])
            await eventually(lambda: _dead(sync_db, dev) == ["unknown_device"], timeout_s=5)
            assert _count(sync_db, "vitals", dev) == 1
    finally:
        pub.close()


def _count(conn: psycopg.Connection[Any], table: str, device: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table} WHERE device_id = %s", (device,)).fetchone()
    return int(row[0]) if row else 0


def _dead(conn: psycopg.Connection[Any], device: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT reason FROM dead_letters WHERE device_id = %s", (device,)
        ).fetchall()
    ]


@pytest.mark.slow
async def test_presence_across_a_broker_restart(
    migrated_db: str,
    world: World,
    sync_db: psycopg.Connection[Any],
    uid: str,
    spool_dir: Path,
    tmp_path: Path,
) -> None:
    """The broker restarts: a device that reconnects stays online, one that does not comes
    back goes offline, and a device whose connection drops is marked offline by its will."""
    back, gone, dropped = (f"{k}-{uid}" for k in ("back", "gone", "drop"))
    _register(sync_db, [back, gone, dropped], world.a.resident_id)
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    settings = _registry_settings(
        migrated_db, uid, spool_dir, mqtt_port=broker.port, presence_heartbeat_s=1.5
    )
    root = settings.topic_root
    seq = iter(range(1, 10_000))

    def beat(device: str) -> tuple[str, bytes]:
        return (f"{root}/{device}/status", payload(seq=next(seq), state="online"))

    pubs: list[Publisher] = []
    try:
        feature = registry_feature()
        assert feature.run is not None
        async with run_ingest(settings, features=[feature.run]) as rt:
            await rt.source.client.wait_connected(5)
            tracker: PresenceTracker = rt.services["presence"]
            sub = tracker.subscribe()
            pub = Publisher(port=broker.port)
            pubs.append(pub)
            await asyncio.to_thread(pub.publish_many, [beat(back), beat(gone)])
            await eventually(lambda: len(tracker) >= 2 and tracker.snapshot(gone) is not None)

            broker.stop()
            broker.start()
            await rt.source.client.wait_connected(10)
            # Paho reconnects by itself; the `back` device resumes its heartbeats.
            pub2 = Publisher(port=broker.port)
            pubs.append(pub2)
            await asyncio.to_thread(pub2.publish_many, [beat(back)])
            deadline = time.monotonic() + 10
            seen: list[tuple[str, str]] = []
            while (gone, "offline") not in seen and time.monotonic() < deadline:
                await asyncio.to_thread(pub2.publish_many, [beat(back)])
                await asyncio.sleep(0.5)
                seen += drain(sub)
            assert (gone, "offline") in seen
            back_state = tracker.snapshot(back)
            assert back_state is not None and back_state.online

            # A device that vanishes without a DISCONNECT: the broker publishes its will.
            import paho.mqtt.client as paho  # noqa: PLC0415
            from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

            dev = paho.Client(CallbackAPIVersion.VERSION2, client_id=dropped, protocol=paho.MQTTv5)
            dev.will_set(
                f"{root}/{dropped}/status", payload(seq=0, state="offline", will=True), qos=1
            )
            dev.connect("127.0.0.1", broker.port)
            dev.loop_start()
            dev.publish(*beat(dropped), qos=1).wait_for_publish(5)
            await eventually(lambda: (tracker.snapshot(dropped) or back_state).online)
            dev.loop_stop()
            sock = dev.socket()
            assert sock is not None
            sock.close()  # the link dies without DISCONNECT
            await eventually(
                lambda: (tracker.snapshot(dropped) or back_state).offline_reason == "will",
                timeout_s=10,
            )
    finally:
        for p in pubs:
            p.close()
        broker.stop()


async def test_late_rebuild_keeps_what_the_bridge_saw_since(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any], uid: str
) -> None:
    """The database was away at start: the tracker ran on live readings, then rebuilds."""
    fresh, stale = f"fresh-{uid}", f"stale-{uid}"
    _register(sync_db, [fresh, stale], world.a.resident_id)
    for d in (fresh, stale):
        sync_db.execute(
            "INSERT INTO device_status (device_id, seq, device_time, received_at, state,"
            " battery_pct) VALUES (%s, 1, now() - interval '1 min', now() - interval '1 min',"
            " 'online', 50)",
            (d,),
        )
    t = PresenceTracker(heartbeat_s=60, missed_heartbeats=3)
    now = time.time()
    t.observe(status(fresh, now, 2, battery_pct=10))
    async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
        await t.load(conn)
    assert t.loaded
    f, s = t.snapshot(fresh), t.snapshot(stale)
    assert f is not None and f.battery_pct == 10 and f.resident_id == world.a.resident_id
    assert s is not None and s.online and s.battery_pct == 50
