"""The batch store against the real PostgreSQL: both write paths, one idempotency key."""

from __future__ import annotations

import time

import pytest

from devices.readings import (
    AccelWindow,
    DeviceStatus,
    Envelope,
    HomeEvent,
    SensorType,
    SosPress,
    Vitals,
)
from ingest.store import DeadLetter, Store


def batch(uid: str, now: float) -> list:  # type: ignore[type-arg]
    env = lambda s, dt=0.0: Envelope(f"{uid}-d", s, now - dt + s * 0.0001234567, now)  # noqa: E731
    return [
        Vitals(env=env(1), hr_bpm=70.5, spo2_pct=96.0),
        Vitals(env=env(2, 3600.123456789), temp_c=37.2),
        AccelWindow(env=env(3), rate_hz=50.0, n_samples=1, samples_g=b"\x00" * 12, peak_g=0.0),
        SosPress(env=env(4), lat=1.5, lon=2.5),
        HomeEvent(env=env(5), sensor=SensorType.WATER, state="leak"),
        DeviceStatus(env=env(6), state="online", battery_pct=50.0),
    ]


@pytest.mark.parametrize("first_fast", [True, False])
async def test_paths_agree_on_the_key(migrated_db: str, db, uid: str, first_fast: bool) -> None:  # type: ignore[no-untyped-def]
    store = Store(conninfo=migrated_db)
    now = time.time()
    rows = batch(uid, now)
    dead = [
        DeadLetter.make(
            topic="x",
            payload=b"bad",
            received_ts=now,
            reason="malformed",
            detail="d",
            device_id=f"{uid}-d",
            seq=None,
        )
    ]
    try:
        first = await store.write(rows, dead, may_repeat=not first_fast)
        assert sum(v for k, v in first.inserted.items() if k != "dead_letters") == 6
        # The same batch again by the other path, then by the fast path (which must notice).
        again = await store.write(rows, dead, may_repeat=first_fast)
        assert sum(again.inserted.values()) == 0
        fallbacks = store.fallbacks
        third = await store.write(rows, dead, may_repeat=False)
        assert sum(third.inserted.values()) == 0
        assert store.fallbacks == fallbacks + 1
        cur = await db.execute(
            "SELECT (SELECT count(*) FROM vitals WHERE device_id = %(d)s)"
            " + (SELECT count(*) FROM accel_windows WHERE device_id = %(d)s)"
            " + (SELECT count(*) FROM sos_presses WHERE device_id = %(d)s)"
            " + (SELECT count(*) FROM home_events WHERE device_id = %(d)s)"
            " + (SELECT count(*) FROM device_status WHERE device_id = %(d)s),"
            " (SELECT count(*) FROM dead_letters WHERE device_id = %(d)s)",
            {"d": f"{uid}-d"},
        )
        assert await cur.fetchone() == (6, 1)
        cur = await db.execute(
            "SELECT extract(epoch FROM device_time) FROM vitals WHERE device_id = %s AND seq = 2",
            (f"{uid}-d",),
        )
        (stored,) = await cur.fetchone()
        assert float(stored) == pytest.approx(rows[1].env.device_ts, abs=1e-6)
    finally:
        await store.close()
