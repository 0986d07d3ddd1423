"""The alert engine: readings and urgent events in, incidents and notices out.

Paths into the incident layer:

- **Live lane** (SOS presses, smoke/gas alarms): shown on the in-scope consoles at once (a
  ``live_alarm`` notice, placed with the in-memory registry cache, no database on the way),
  then queued for the incident writer.
- **Rule runner**: :meth:`AlertEngine.consume` is the ingest consumer; it only puts the
  reading on a bounded queue. ``rules_loop`` runs ``RuleRunner.process_batch`` over what has
  queued up, ``tick_loop`` runs the timer rules. An SOS seen by both paths carries the same
  source key, so the second arrival is a no-op.
- **Presence** (optional): online/offline/battery changes become device-fault detections.

The incident writer (``write_loop``) writes inputs in order. When the database cannot be
reached the input goes to a bounded pending list, replayed in order as soon as a write works
again; replay is idempotent through the source key. After a restart ``reconcile`` looks for
stored SOS presses and smoke/gas alarms with no incident (a crash between storage and the
incident write).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from alerts.channels import INCIDENT_EVENT, LIVE_ALARM, Notice, Notifier, WebSocketHub
from alerts.clock import Clock
from alerts.escalation import Escalator
from alerts.incidents import IncidentInput, IncidentStore, Recorded, source_key
from alerts.live import LiveLane, Urgent
from alerts.metrics import AlertMetrics
from alerts.rules.config import RulesConfig
from alerts.rules.detection import Detection, DetectionKind, make_detection
from alerts.rules.runner import RuleRunner
from devices.readings import HomeEvent, Reading, SensorType, SosPress

log = logging.getLogger(__name__)

_DB_DOWN = (psycopg.OperationalError, OSError, PoolTimeout, TimeoutError)
NOTIFY_CHANNEL = "carecall_incidents"


class PresenceChangeLike(Protocol):
    """What ``devices.presence.PresenceChange`` provides (kept structural: no import)."""

    @property
    def device_id(self) -> str: ...
    @property
    def resident_id(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def reason(self) -> str: ...


class PresenceSource(Protocol):
    def subscribe(self) -> AsyncIterable[PresenceChangeLike]: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    cancel_window_s: float = 60.0
    queue_size: int = 50_000
    batch_max: int = 1_000
    tick_interval_s: float = 5.0
    escalation_interval_s: float = 1.0
    cache_refresh_s: float = 60.0
    db_timeout_s: float = 3.0
    pending_max: int = 10_000
    reconcile_window_s: float = 3600.0
    gateway_callback_secret: str | None = None
    callback_tolerance_s: float = 300.0
    # KPI days are local days of the hotline (an IANA zone name).
    timezone: str = "Asia/Shanghai"
    # Identical list reads by one user within this span are audited once, with a count (0: every
    # read is a row). See devices/audit.py, audit_list_read.
    audit_coalesce_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Placement:
    resident_id: int | None
    area_path: str | None


class RegistryCache:
    """Device -> resident and area, resident -> rule overrides: read on the hot path, so in
    memory; reloaded periodically and when the devices table changes."""

    def __init__(self) -> None:
        self.devices: dict[str, Placement] = {}
        self.overrides: dict[str, Mapping[str, Any]] = {}
        self.top_areas: frozenset[str] = frozenset()
        # Active devices: all, wearables (accelerometer), home devices (gateway, sensors).
        self.fleet: dict[str, int] = {"devices": 0, "wearables": 0, "homes": 0}
        self.loaded = False

    async def load(self, conn: psycopg.AsyncConnection[Any]) -> set[str]:
        """Reload; returns the devices whose placement changed."""
        cur = await conn.execute(
            "SELECT device_id, resident_id, area_path::text FROM devices WHERE active"
        )
        devices = {
            str(d): Placement(None if r is None else int(r), None if a is None else str(a))
            for d, r, a in await cur.fetchall()
        }
        cur = await conn.execute(
            "SELECT resident_id, rule_overrides, spo2_scale FROM residents WHERE retired_at IS NULL"
        )
        overrides: dict[str, Mapping[str, Any]] = {}
        for rid, over, scale in await cur.fetchall():
            merged = dict(over or {})
            if scale == 2:
                merged.setdefault("news2", {})
                merged["news2"] = {**merged["news2"], "spo2_scale": 2}
            if merged:
                overrides[str(rid)] = merged
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE device_type IN"
            " ('watch', 'pendant', 'belt', 'chest_band')), count(*) FILTER (WHERE device_type"
            " = 'home_gateway' OR right(device_type, 7) = '_sensor') FROM devices WHERE active"
        )
        row = await cur.fetchone()
        if row is not None:
            self.fleet = {"devices": row[0], "wearables": row[1], "homes": row[2]}
        cur = await conn.execute(
            "SELECT path::text FROM areas WHERE nlevel(path) = 1 AND retired_at IS NULL"
        )
        self.top_areas = frozenset(str(r[0]) for r in await cur.fetchall())
        changed = {d for d, p in devices.items() if self.devices.get(d, p) != p}
        self.devices, self.overrides, self.loaded = devices, overrides, True
        return changed

    def is_root(self, scope_path: str) -> bool:
        """Whether the scope is the root of the area tree (the only top-level area); the
        database's ``carecall_scope_is_root`` answers the same for SQL."""
        return self.top_areas == {scope_path}

    def place(self, device_id: str) -> Placement:
        return self.devices.get(device_id, Placement(None, None))

    def resident_for(self, device_id: str) -> str | None:
        rid = self.place(device_id).resident_id
        return None if rid is None else str(rid)

    def overrides_for(self, resident_id: str) -> Mapping[str, Any] | None:
        return self.overrides.get(resident_id)


class AlertEngine:
    """See the module docstring. Also the object the API and the WebSocket endpoint use."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        conninfo: str,
        rules: RulesConfig,
        clock: Clock,
        metrics: AlertMetrics,
        notifier: Notifier,
        hub: WebSocketHub,
        config: EngineConfig,
        live_lane: LiveLane | None = None,
        presence: PresenceSource | None = None,
    ) -> None:
        self.pool = pool
        self.conninfo = conninfo
        self.clock = clock
        self.metrics = metrics
        self.notifier = notifier
        self.hub = hub
        self.config = config
        self.live_lane = live_lane
        self.presence = presence
        self.cache = RegistryCache()
        self.store = IncidentStore(metrics=metrics, cancel_window_s=config.cancel_window_s)
        self.escalator = Escalator(
            pool=pool, clock=clock, metrics=metrics, publish=notifier.publish
        )
        self.runner = RuleRunner(
            rules, resident_for=self.cache.resident_for, overrides_for=self.cache.overrides_for
        )
        self._readings: asyncio.Queue[Reading] = asyncio.Queue(config.queue_size)
        self._writes: asyncio.Queue[IncidentInput] = asyncio.Queue(config.queue_size)
        self.pending: collections.deque[IncidentInput] = collections.deque()
        self._live_pushed: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._live_seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._delivered: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)
        self._delivered_seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._delivered_wake = asyncio.Event()
        self._written = asyncio.Event()  # set after each successful write (tests wait on it)
        self.results: collections.deque[Recorded] = collections.deque(maxlen=1000)
        hub.on_pushed = self._on_pushed

    # -- intake --------------------------------------------------------------------------------
    def consume(self, reading: Reading) -> None:
        """The ingest consumer: runs on the hot path, so it only enqueues."""
        try:
            self._readings.put_nowait(reading)
        except asyncio.QueueFull:
            # Stored anyway; an SOS still arrives through the live lane.
            self.metrics.rule_input_dropped.inc()

    def submit(self, inp: IncidentInput) -> None:
        """Queue an input for the incident writer (in order)."""
        try:
            self._writes.put_nowait(inp)
        except asyncio.QueueFull:
            self._pend(inp)

    def _pend(self, inp: IncidentInput) -> None:
        if len(self.pending) >= self.config.pending_max:
            # Keep the most urgent: drop the least severe, oldest entry (logged, counted).
            worst = max(self.pending, key=lambda i: i.severity.rank)
            self.pending.remove(worst)
            self.metrics.channel_failed.labels("incident_writer", "pending_full").inc()
            log.error("pending list full: dropped %s (still stored as a reading)", worst.source_key)
        self.pending.append(inp)
        self.metrics.pending.set(len(self.pending))

    def _input(self, d: Detection, *, handed_ts: float | None = None) -> IncidentInput:
        place = self.cache.place(d.device_id)
        rid = place.resident_id
        if rid is None and d.resident_id is not None and d.resident_id.isdigit():
            rid = int(d.resident_id)
        # A reading-driven detection's detected_ts is the deciding reading's receive time.
        broker_ts = d.detected_ts if handed_ts is not None else None
        return IncidentInput.from_detection(
            d, resident_id=rid, area_path=place.area_path, broker_ts=broker_ts, handed_ts=handed_ts
        )

    def _live_input(self, item: Urgent, handed_ts: float) -> IncidentInput | None:
        env = item.env
        place = self.cache.place(env.device_id)
        rid = None if place.resident_id is None else str(place.resident_id)
        if isinstance(item, SosPress):
            kind = DetectionKind.SOS if item.action == "press" else DetectionKind.SOS_CANCEL
            evidence: dict[str, Any] = {
                "seq": env.seq,
                "lat": item.lat,
                "lon": item.lon,
                "accuracy_m": item.accuracy_m,
                "path": "live",
            }
        elif isinstance(item, HomeEvent) and item.state == "alarm":
            kind = DetectionKind.SMOKE if item.sensor == SensorType.SMOKE else DetectionKind.GAS
            evidence = {
                "seq": env.seq,
                "sensor": item.sensor.value,
                "sensor_id": item.sensor_id or item.sensor.value,
                "state": item.state,
                "path": "live",
            }
        else:
            return None
        d = make_detection(
            device_id=env.device_id,
            resident_id=rid,
            kind=kind,
            event_ts=env.device_ts,
            detected_ts=handed_ts,
            evidence=evidence,
        )
        inp = IncidentInput.from_detection(
            d,
            resident_id=place.resident_id,
            area_path=place.area_path,
            broker_ts=env.received_ts,
            handed_ts=handed_ts,
        )
        if kind == DetectionKind.SOS_CANCEL:
            return inp
        # The rule runner keys its SOS the same way: one incident, whichever path is first.
        assert inp.source_key == source_key(kind.value, env.device_id, env.device_ts)
        return inp

    # -- loops -----------------------------------------------------------------------------------
    async def live_loop(self) -> None:
        assert self.live_lane is not None
        while True:
            item = await self.live_lane.get()
            handed_ts = self.clock.now()
            inp = self._live_input(item, handed_ts)
            if inp is None or inp.source_key in self._live_seen:
                continue  # the urgent lane and the bridge both hand over every alarm
            self._live_seen[inp.source_key] = None
            if len(self._live_seen) > 10_000:
                self._live_seen.popitem(last=False)
            if inp.kind != DetectionKind.SOS_CANCEL:
                # Fast path: on the screens before any storage.
                self.notifier.publish(
                    Notice(
                        kind=LIVE_ALARM,
                        key=inp.source_key,
                        area_path=inp.area_path,
                        severity=inp.severity.value,
                        body={
                            "incident_kind": inp.kind.value,
                            "device_id": inp.device_id,
                            "resident_id": inp.resident_id,
                            "event_ts": inp.event_ts,
                            "broker_ts": inp.broker_ts,
                            "lat": inp.lat,
                            "lon": inp.lon,
                            "source_key": inp.source_key,
                        },
                    )
                )
            self.submit(inp)

    async def rules_loop(self) -> None:
        q = self._readings
        while True:
            batch = [await q.get()]
            while len(batch) < self.config.batch_max and not q.empty():
                batch.append(q.get_nowait())
            handed_ts = self.clock.now()
            for d in self.runner.process_batch(batch):
                self.submit(self._input(d, handed_ts=handed_ts))
            await asyncio.sleep(0)  # let the event loop breathe between big batches

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            for d in self.runner.tick(self.clock.now()):
                self.submit(self._input(d))

    async def presence_loop(self) -> None:
        assert self.presence is not None
        subscription = self.presence.subscribe()
        try:
            async for change in subscription:
                for d in self._from_presence(change):
                    self.submit(self._input(d))
        finally:
            close = getattr(subscription, "close", None)
            if callable(close):
                close()  # unregister, or the tracker keeps filling a queue nobody reads

    def _from_presence(self, change: PresenceChangeLike) -> list[Detection]:
        rid = None if change.resident_id is None else str(change.resident_id)
        if change.state in ("offline", "online"):
            return self.runner.set_device_online(
                change.device_id, change.state == "online", now_ts=change.at
            )
        if change.state in ("battery_low", "battery_ok"):
            return [
                make_detection(
                    device_id=change.device_id,
                    resident_id=rid,
                    kind=DetectionKind.BATTERY_LOW,
                    event_ts=change.at,
                    detected_ts=self.clock.now(),
                    evidence={"reason": change.reason},
                    clears=change.state == "battery_ok",
                )
            ]
        return []

    async def write_loop(self) -> None:
        """The incident writer: inputs in order; the pending list first when it is non-empty."""
        while True:
            if self.pending and not await self._drain_pending():
                # Still down: wait a little (new inputs join the pending list meanwhile).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        self._pend(await self._writes.get())
                continue
            inp = await self._writes.get()
            if not await self._write(inp):
                self._pend(inp)

    async def _drain_pending(self) -> bool:
        while self.pending:
            if not await self._write(self.pending[0]):
                return False
            self.pending.popleft()
            self.metrics.pending.set(len(self.pending))
        log.info("pending incidents written after the outage")
        return True

    async def _write(self, inp: IncidentInput) -> bool:
        pushed = self._live_pushed.pop(inp.source_key, None)
        if pushed is not None and inp.pushed_ts is None:
            inp = _with(inp, pushed_ts=pushed)
        try:
            async with asyncio.timeout(self.config.db_timeout_s):
                async with self.pool.connection() as conn:
                    if inp.area_path is None:
                        inp = await self._place(conn, inp)
                    result = await self.store.record(conn, inp, now_ts=self.clock.now())
        except _DB_DOWN as exc:
            if pushed is not None:
                self._live_pushed[inp.source_key] = pushed
            log.warning("incident write for %s deferred: %r", inp.source_key, exc)
            return False
        except psycopg.Error as exc:
            # The database refused this input (a bug or bad data): retrying cannot help, and
            # it must not block the inputs behind it. Loud, counted, and the reading is stored.
            self.metrics.channel_failed.labels("incident_writer", "refused").inc()
            log.critical("incident write for %s refused: %r", inp.source_key, exc)
            return True
        for notice in result.notices:
            self.notifier.publish(notice)
        self.results.append(result)
        self._written.set()
        return True

    async def _place(self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput) -> IncidentInput:
        cur = await conn.execute(
            "SELECT resident_id, area_path::text FROM devices WHERE device_id = %s",
            (inp.device_id,),
        )
        row = await cur.fetchone()
        if row is None or row[1] is None:
            return inp
        return _with(inp, resident_id=row[0], area_path=row[1])

    def _on_pushed(self, notice: Notice, pushed_ts: float) -> None:
        """A console received a notice: the incident is on a screen (raised -> delivered)."""
        if notice.kind == LIVE_ALARM:
            self._live_pushed.setdefault(notice.key, pushed_ts)
            if len(self._live_pushed) > 10_000:
                self._live_pushed.popitem(last=False)  # O(1), unlike a dict's first key
            return
        if notice.kind != INCIDENT_EVENT or notice.incident_id is None:
            return
        if notice.body.get("state") != "raised" or notice.incident_id in self._delivered_seen:
            return
        self._delivered_seen[notice.incident_id] = None
        if len(self._delivered_seen) > 10_000:
            self._delivered_seen.popitem(last=False)
        self._delivered.append((notice.incident_id, pushed_ts))
        self._delivered_wake.set()

    async def delivered_loop(self) -> None:
        while True:
            await self._delivered_wake.wait()
            self._delivered_wake.clear()
            while self._delivered:
                incident_id, pushed_ts = self._delivered[0]
                try:
                    async with self.pool.connection() as conn:
                        await self.store.mark_delivered(conn, incident_id, pushed_ts=pushed_ts)
                except _DB_DOWN:
                    await asyncio.sleep(1.0)
                    self._delivered_wake.set()
                    break
                self._delivered.popleft()

    async def listen_loop(self) -> None:
        """LISTEN for incident events (from any server) and push them to the consoles."""
        delay_s = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=3
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute("LISTEN carecall_devices")
                    await self._refresh_cache(conn)
                    delay_s = 0.5
                    async for note in conn.notifies():
                        if note.channel == "carecall_devices":
                            await self._refresh_cache(conn)
                            continue
                        self._push_event(note.payload)
            except _DB_DOWN as exc:
                log.warning("alerts listen: database unavailable (%s); retrying", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)

    def _push_event(self, payload: str) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            log.error("unreadable incident notification: %.200s", payload)
            return
        body["incident_kind"] = body.pop("kind", None)  # "kind" names the notice itself
        self.notifier.publish(
            Notice(
                kind=INCIDENT_EVENT,
                key=f"event:{body.get('event_id')}",
                area_path=body.get("area_path"),
                severity=str(body.get("severity")),
                incident_id=body.get("incident_id"),
                body=body,
            )
        )

    async def _refresh_cache(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for device_id in await self.cache.load(conn):
            self.runner.refresh_device(device_id)
        for rid in list(self.cache.overrides):
            self.runner.invalidate_resident(rid)

    async def cache_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cache_refresh_s)
            try:
                async with self.pool.connection() as conn:
                    await self._refresh_cache(conn)
            except _DB_DOWN as exc:
                log.warning("registry cache refresh failed: %r", exc)

    async def reconcile(self) -> int:
        """Urgent readings stored without an incident (a crash between the live lane and the
        incident write): SOS presses and smoke/gas alarms of the last ``reconcile_window_s``
        are raised now, keyed exactly as the live lane keys them (so a known one is a no-op)."""
        window_s = self.config.reconcile_window_s
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT 'sos', device_id, extract(epoch FROM device_time)::float8,
                          extract(epoch FROM received_at)::float8, seq, lat, lon, NULL, NULL
                   FROM sos_presses
                   WHERE action = 'press' AND received_at > now() - make_interval(secs => %(w)s)
                   UNION ALL
                   SELECT sensor, device_id, extract(epoch FROM device_time)::float8,
                          extract(epoch FROM received_at)::float8, seq, NULL, NULL, sensor,
                          sensor_id
                   FROM home_events
                   WHERE sensor IN ('smoke', 'gas') AND state = 'alarm'
                     AND received_at > now() - make_interval(secs => %(w)s)""",
                {"w": window_s},
            )
            rows = await cur.fetchall()
            keys = [source_key(r[0], r[1], r[2]) for r in rows]
            cur = await conn.execute(
                "SELECT source_key FROM incident_sources WHERE source_key = ANY(%s)", (keys,)
            )
            known = {r[0] for r in await cur.fetchall()}
        raised: collections.Counter[str] = collections.Counter()
        for row, key in zip(rows, keys, strict=True):
            kind, device_id, event_ts, received_ts, seq, lat, lon, sensor, sensor_id = row
            if key in known:
                continue
            evidence: dict[str, Any] = {"seq": seq, "path": "reconcile"}
            if kind == "sos":
                evidence.update(lat=lat, lon=lon)
            else:
                evidence.update(sensor=sensor, sensor_id=sensor_id or sensor, state="alarm")
            d = make_detection(
                device_id=device_id,
                resident_id=None,
                kind=DetectionKind(kind),
                event_ts=event_ts,
                detected_ts=received_ts,
                evidence=evidence,
            )
            self.submit(_with(self._input(d), broker_ts=received_ts))
            raised[kind] += 1
        if raised:
            log.warning(
                "reconcile: stored urgent readings had no incident; raising them now: %s",
                dict(raised),
            )
        return sum(raised.values())

    def loops(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
            ("alerts.engine.rules_loop", self.rules_loop),
            ("alerts.engine.tick_loop", self.tick_loop),
            ("alerts.engine.write_loop", self.write_loop),
            ("alerts.engine.delivered_loop", self.delivered_loop),
            ("alerts.engine.listen_loop", self.listen_loop),
            ("alerts.engine.cache_loop", self.cache_loop),
            ("alerts.escalation.escalation_loop", self._escalation_loop),
        ]
        if self.live_lane is not None:
            loops.append(("alerts.engine.live_loop", self.live_loop))
        if self.presence is not None:
            loops.append(("alerts.engine.presence_loop", self.presence_loop))
        return loops

    async def _escalation_loop(self) -> None:
        await self.escalator.escalation_loop(interval_s=self.config.escalation_interval_s)

    @contextlib.asynccontextmanager
    async def running(
        self,
        *,
        on_failure: Callable[[BaseException], None] | None = None,
        without: Collection[str] = (),
        reconcile: bool = True,
    ) -> AsyncIterator[AlertEngine]:
        """Load the registry cache, start every loop and the channels; stop them on exit.

        ``without``: loops not to run, by short name (``rules_loop``, ``escalation_loop``, ...),
        for a process that does one part of the work (docs/ingest.md, "Two processes").
        """
        with contextlib.suppress(*_DB_DOWN):
            async with asyncio.timeout(self.config.db_timeout_s), self.pool.connection() as conn:
                await self._refresh_cache(conn)
        if self.cache.loaded:
            self.runner.size_for(**self.cache.fleet)
        async with self.notifier.running():
            tasks = [
                asyncio.create_task(fn(), name=name)
                for name, fn in self.loops()
                if name.rsplit(".", 1)[-1] not in without
            ]

            def _done(t: asyncio.Task[None]) -> None:
                if not t.cancelled() and (exc := t.exception()) is not None:
                    log.critical("alert loop %s died: %r", t.get_name(), exc, exc_info=exc)
                    if on_failure is not None:
                        on_failure(exc)

            for t in tasks:
                t.add_done_callback(_done)
            if reconcile:
                with contextlib.suppress(*_DB_DOWN):
                    await self.reconcile()
            try:
                yield self
            finally:
                for t in tasks:
                    t.cancel()
                # Bounded: shutdown must finish even if a loop ignores its cancellation.
                _, stuck = await asyncio.wait(tasks, timeout=10.0)
                for t in stuck:
                    log.error("alert loop %s did not stop when cancelled", t.get_name())


def _with(inp: IncidentInput, **changes: Any) -> IncidentInput:
    return dataclasses.replace(inp, **changes)
