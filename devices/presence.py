"""Which devices are online, and which run low on battery.

The bridge hands every new valid reading to :meth:`PresenceTracker.observe` (a cheap dict
update on the hot path). Any reading counts as "seen"; a heartbeat (``DeviceStatus``) also
carries the battery level, and the broker-published last will (``state="offline"``) marks the
device offline at once. :meth:`PresenceTracker.check` (run every few seconds by
:meth:`~PresenceTracker.check_loop`) marks a device offline after ``missed_heartbeats``
heartbeat periods of silence.

Transitions are emitted as :class:`PresenceChange` values to every subscriber
(:meth:`PresenceTracker.subscribe`), e.g. the alerts engine turning them into device-fault
incidents. Subscribers get bounded queues: a slow subscriber loses its oldest changes (counted
in ``dropped``), it never slows the bridge.

Presence lives in memory and is rebuilt from the database at start (:meth:`load`): the latest
``device_status`` row and the latest reading of each active device. The rebuild itself emits
no changes: what happened while the server was down is not replayed (docs/registry.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from devices.readings import DeviceStatus, Reading, Vitals

log = logging.getLogger(__name__)

PresenceState = Literal["online", "offline", "battery_low", "battery_ok"]
_READING_TABLES = ("vitals", "accel_windows", "sos_presses", "home_events")


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A device came online, went offline, or crossed the battery threshold."""

    device_id: str
    resident_id: int | None
    state: PresenceState
    at: float  # UNIX seconds, the bridge's clock
    reason: str


@dataclass(slots=True)
class DevicePresence:
    """What the tracker knows of one device (mutable; copied out by :meth:`snapshot`)."""

    device_id: str
    resident_id: int | None = None
    online: bool = False
    last_seen_ts: float | None = None
    battery_pct: float | None = None
    battery_low: bool = False
    offline_reason: str | None = None

    def copy(self) -> DevicePresence:
        return DevicePresence(
            self.device_id,
            self.resident_id,
            self.online,
            self.last_seen_ts,
            self.battery_pct,
            self.battery_low,
            self.offline_reason,
        )


@dataclass(eq=False)
class PresenceSubscription:
    """An async iterator of changes; leave it with ``close()`` or ``async with``."""

    tracker: PresenceTracker
    queue: asyncio.Queue[PresenceChange]
    dropped: int = 0
    _closed: bool = field(default=False, repr=False)

    def __aiter__(self) -> PresenceSubscription:
        return self

    async def __anext__(self) -> PresenceChange:
        if self._closed and self.queue.empty():
            raise StopAsyncIteration
        return await self.queue.get()

    async def get(self) -> PresenceChange:
        return await self.queue.get()

    def close(self) -> None:
        self._closed = True
        self.tracker._subscribers.discard(self)

    async def __aenter__(self) -> PresenceSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class PresenceTracker:
    def __init__(
        self,
        *,
        heartbeat_s: float = 60.0,
        missed_heartbeats: int = 3,
        battery_low_pct: float = 20.0,
        battery_hysteresis_pct: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.offline_after_s = heartbeat_s * missed_heartbeats
        self.battery_low_pct = battery_low_pct
        self.battery_ok_pct = battery_low_pct + battery_hysteresis_pct
        self.clock = clock
        self._devices: dict[str, DevicePresence] = {}
        self._residents: dict[str, int | None] = {}
        self._subscribers: set[PresenceSubscription] = set()
        self.loaded = False  # rebuilt from the database at least once

    # -- subscriptions -------------------------------------------------------------------------

    def subscribe(self, *, maxsize: int = 10_000) -> PresenceSubscription:
        sub = PresenceSubscription(self, asyncio.Queue(maxsize=maxsize))
        self._subscribers.add(sub)
        return sub

    def _emit(self, dev: DevicePresence, state: PresenceState, at: float, reason: str) -> None:
        change = PresenceChange(dev.device_id, dev.resident_id, state, at, reason)
        log.info("presence: %s %s (%s)", dev.device_id, state, reason)
        for sub in self._subscribers:
            if sub.queue.full():
                sub.queue.get_nowait()
                sub.dropped += 1
            sub.queue.put_nowait(change)

    # -- input -----------------------------------------------------------------------------------

    def observe(self, r: Reading) -> None:
        """The bridge's consumer: every new valid reading, in arrival order."""
        env = r.env
        dev = self._devices.get(env.device_id)
        if dev is None:
            dev = DevicePresence(env.device_id, self._residents.get(env.device_id))
            self._devices[env.device_id] = dev
        at = env.received_ts
        if isinstance(r, DeviceStatus) and r.state == "offline":
            dev.last_seen_ts = at
            if dev.online or dev.offline_reason is None:
                dev.online = False
                dev.offline_reason = "will" if r.will else "reported offline"
                self._emit(dev, "offline", at, dev.offline_reason)
            return
        dev.last_seen_ts = at
        if not dev.online:
            dev.online = True
            dev.offline_reason = None
            self._emit(dev, "online", at, "heard from")
        battery = r.battery_pct if isinstance(r, DeviceStatus | Vitals) else None
        if battery is not None:
            self._battery(dev, battery, at)

    def _battery(self, dev: DevicePresence, battery_pct: float, at: float) -> None:
        dev.battery_pct = battery_pct
        if not dev.battery_low and battery_pct < self.battery_low_pct:
            dev.battery_low = True
            self._emit(dev, "battery_low", at, f"battery {battery_pct:.0f} %")
        elif dev.battery_low and battery_pct >= self.battery_ok_pct:
            dev.battery_low = False
            self._emit(dev, "battery_ok", at, f"battery {battery_pct:.0f} %")

    def check(self, now: float | None = None) -> int:
        """Mark silent devices offline; returns how many went offline."""
        now = self.clock() if now is None else now
        went = 0
        for dev in self._devices.values():
            if dev.online and dev.last_seen_ts is not None:
                silent_s = now - dev.last_seen_ts
                if silent_s > self.offline_after_s:
                    dev.online = False
                    dev.offline_reason = "missed heartbeats"
                    self._emit(dev, "offline", now, f"silent for {silent_s:.0f} s")
                    went += 1
        return went

    def set_residents(self, residents: dict[str, int | None]) -> None:
        """Device -> resident, so changes name whom they concern; retired devices vanish."""
        self._residents = residents
        for device_id, dev in list(self._devices.items()):
            if device_id not in residents:
                del self._devices[device_id]
            else:
                dev.resident_id = residents[device_id]

    # -- output ----------------------------------------------------------------------------------

    def snapshot(self, device_id: str) -> DevicePresence | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.copy()

    def __len__(self) -> int:
        return len(self._devices)

    # -- persistence -----------------------------------------------------------------------------

    async def load(self, conn: psycopg.AsyncConnection[Any], *, keep_observed: bool = True) -> int:
        """Rebuild from the database: last status and last reading of every active device.

        One indexed probe per device and table ((device_id, device_time, seq) is the readings'
        unique key), so the cost grows with devices, not with stored history.
        """
        latest_reading = " ".join(
            f"LEFT JOIN LATERAL (SELECT received_at FROM {t} x WHERE x.device_id = d.device_id"
            f" ORDER BY device_time DESC LIMIT 1) r_{t} ON true"
            for t in _READING_TABLES
        )
        greatest = ", ".join(f"r_{t}.received_at" for t in _READING_TABLES)
        cur = await conn.execute(
            "SELECT d.device_id, d.resident_id, s.state, s.will, s.battery_pct,"
            " extract(epoch FROM s.received_at)::float8,"
            f" extract(epoch FROM greatest({greatest}))::float8"
            " FROM devices d"
            " LEFT JOIN LATERAL (SELECT state, will, battery_pct, received_at FROM device_status x"
            "  WHERE x.device_id = d.device_id ORDER BY device_time DESC LIMIT 1) s ON true "
            f"{latest_reading} WHERE d.active"
        )
        now = self.clock()
        devices: dict[str, DevicePresence] = {}
        residents: dict[str, int | None] = {}
        for (
            device_id,
            resident_id,
            state,
            will,
            battery,
            status_ts,
            reading_ts,
        ) in await cur.fetchall():
            residents[device_id] = resident_id
            dev = DevicePresence(device_id, resident_id)
            seen = [t for t in (status_ts, reading_ts) if t is not None]
            dev.last_seen_ts = max(seen) if seen else None
            if battery is not None:
                dev.battery_pct = float(battery)
                dev.battery_low = battery < self.battery_low_pct
            said_offline = state == "offline" and (reading_ts is None or reading_ts <= status_ts)
            if dev.last_seen_ts is None:
                pass  # never heard from: neither online nor a fault
            elif said_offline:
                dev.offline_reason = "will" if will else "reported offline"
            elif now - dev.last_seen_ts > self.offline_after_s:
                dev.offline_reason = "missed heartbeats"
            else:
                dev.online = True
            if dev.last_seen_ts is not None:
                devices[device_id] = dev
        # What the bridge reported since start is newer than the database's view (this is a
        # late rebuild after a database outage at start): keep it.
        for device_id, dev in self._devices.items() if keep_observed else ():
            stored = devices.get(device_id)
            if stored is not None and (dev.last_seen_ts or 0) >= (stored.last_seen_ts or 0):
                dev.resident_id = stored.resident_id
                devices[device_id] = dev
        self._devices = devices
        self._residents = residents
        self.loaded = True
        return len(devices)

    async def refresh_residents(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute("SELECT device_id, resident_id FROM devices WHERE active")
        self.set_residents(dict(await cur.fetchall()))

    async def check_loop(
        self,
        connect: Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]],
        *,
        interval_s: float = 5.0,
        refresh_every_s: float = 30.0,
    ) -> None:
        """Evaluate missed heartbeats every ``interval_s``; refresh who owns which device every
        ``refresh_every_s`` (a database outage only delays that refresh). If the rebuild at
        start failed, it is retried at that pace instead."""
        last_refresh = self.clock()
        while True:
            await asyncio.sleep(interval_s)
            self.check()
            if self.clock() - last_refresh >= refresh_every_s:
                last_refresh = self.clock()
                try:
                    async with connect() as conn:
                        if self.loaded:
                            await self.refresh_residents(conn)
                        else:  # the database was away at start
                            await self.load(conn)
                except (psycopg.Error, OSError) as exc:
                    log.warning("presence: cannot refresh device owners: %s", exc)

    async def mirror_loop(
        self,
        connect: Callable[[], contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]],
        *,
        interval_s: float = 15.0,
    ) -> None:
        """Follow the database's view (kept by another process's tracker) every ``interval_s``;
        this copy emits no changes: it is for display."""
        while True:
            try:
                async with connect() as conn:
                    # Nothing is observed here: the database is always the newer view.
                    await self.load(conn, keep_observed=False)
            except (psycopg.Error, OSError) as exc:
                log.warning("presence mirror: cannot read the database: %s", exc)
            await asyncio.sleep(interval_s)
