"""``Simulation``: the town, its routines and injected events, played over MQTT in compressed
time. One discrete-event queue in simulated time orders every message, so each device's
timestamps only move forward (the rules drop readings far older than a device's newest).
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.clock import Anchor, SimClock
from simulator.groundtruth import GroundTruthEvent, GroundTruthLog
from simulator.motion import BackgroundMotion
from simulator.publisher import BrokerAddress, DeviceLink, PublisherError
from simulator.recordings import DEFAULT_DATA_DIR, Recordings, walking_samples
from simulator.routine import HOUR_S, HomeEvent, Routine, build_routine
from simulator.scenarios import (
    EXPECTED,
    MUST_NOT_RAISE,
    Scenario,
    ScenarioRates,
    plan_scenarios,
    prepare_replay,
)
from simulator.town import Device, Resident, Town, build_town
from simulator.wearable import (
    NEWS2_TARGETS,
    Deterioration,
    DeviceState,
    accel_payloads,
    compact,
    status_payload,
    vitals_payload,
    vitals_values,
)

log = logging.getLogger(__name__)

Action = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class Progress:
    sim_fraction: float
    wall_elapsed_s: float
    published: int
    ground_truth: int
    sos_waiting: int


@dataclass
class Summary:
    """What a run did."""

    residents: int
    devices: int
    sim_days: float
    wall_s: float = 0.0
    published: Counter[str] = field(default_factory=Counter)
    ground_truth: Counter[str] = field(default_factory=Counter)
    sos_sent: int = 0
    sos_accepted: int = 0
    sos_resends: int = 0
    sos_unanswered: int = 0
    accel_background: int = 0  # of published["accel"]: the wearables' own stream

    def line(self) -> str:
        kinds = " ".join(f"{k}={v}" for k, v in sorted(self.published.items()))
        events = " ".join(f"{k}={v}" for k, v in sorted(self.ground_truth.items()))
        return (
            f"{self.residents} residents, {self.devices} devices, {self.sim_days:g} sim days in"
            f" {self.wall_s:.1f} s; published {sum(self.published.values())} ({kinds};"
            f" background accel {self.accel_background});"
            f" events {sum(self.ground_truth.values())} ({events}); SOS {self.sos_accepted}/"
            f"{self.sos_sent} accepted, {self.sos_resends} re-sends, {self.sos_unanswered}"
            " unanswered"
        )


@dataclass
class _PendingSos:
    device_id: str
    seq: int
    payload: bytes
    next_wall_s: float
    attempts: int = 1


class Simulation:
    """A town of ``residents`` played for ``days`` simulated days at ``speed`` times real
    time, over MQTT to ``broker``. ``run()`` blocks; ``stop()`` ends it early (any thread).

    ``scenarios`` replaces the random plan (their ``sim_s`` are then offsets in seconds from
    the start), for tests and scripted demos. ``credentials`` maps device id to its MQTT
    password when the broker requires them.
    """

    def __init__(
        self,
        *,
        residents: int,
        days: float,
        speed: float,
        broker: BrokerAddress = BrokerAddress(),  # noqa: B008 - frozen
        seed: int = 0,
        topic_root: str = "carecall/v1",
        prefix: str = "sim",
        ground_truth: Path | None = None,
        data_dir: Path = DEFAULT_DATA_DIR,
        rates: ScenarioRates = ScenarioRates(),  # noqa: B008 - frozen
        scenarios: Sequence[Scenario] | None = None,
        credentials: dict[str, str] | None = None,
        anchor: Anchor = "past",
        utc_offset_h: float = 8.0,
        vitals_period_s: float = 5.0,
        heartbeat_period_s: float = 60.0,
        max_msgs_per_device_per_s: float = 1.0,
        accel_stream: bool = True,
        accel_window_s: float = 2.0,
        sos_resend_wall_s: float = 3.0,
        sos_max_attempts: int = 40,
        sos_wait_at_end_s: float = 30.0,
        progress: Callable[[Progress], None] | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.town: Town = build_town(residents, seed=seed, prefix=prefix)
        self.days = days
        self.speed = speed
        self.broker = broker
        self.seed = seed
        self.topic_root = topic_root
        self.ground_truth_path = ground_truth
        self.recordings = Recordings(data_dir)
        self.rates = rates
        self.fixed_scenarios = list(scenarios) if scenarios is not None else None
        self.credentials = credentials
        self.clock = clock or SimClock(days=days, speed=speed, anchor=anchor)
        self.utc_offset_h = utc_offset_h
        # At high speed a device would flood the broker at its real rate; thin the periodic
        # messages instead so that each device sends at most max_msgs_per_device_per_s.
        self.vitals_period_s = max(vitals_period_s, speed / max_msgs_per_device_per_s)
        self.heartbeat_period_s = max(heartbeat_period_s, 2.0 * speed / max_msgs_per_device_per_s)
        # Background accelerometer windows (simulator/motion.py) are thinned the same way:
        # windows of accel_window_s, one every accel_period_s (back to back when slow enough).
        self.accel_stream = accel_stream
        self.accel_window_s = accel_window_s
        self.accel_period_s = max(accel_window_s, speed / max_msgs_per_device_per_s)
        self.sos_resend_wall_s = sos_resend_wall_s
        self.sos_max_attempts = sos_max_attempts
        self.sos_wait_at_end_s = sos_wait_at_end_s
        self.progress = progress
        self.summary = Summary(len(self.town.residents), len(self.town.devices), days)
        self.plan: list[Scenario] = []
        self.routines: dict[str, Routine] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queue: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._links: dict[str, DeviceLink] = {}
        self._states: dict[str, DeviceState] = {}
        self._deteriorations: dict[str, tuple[Deterioration, ...]] = {}
        self._motion: dict[str, BackgroundMotion] = {}
        self._accel_busy_until: dict[str, float] = {}  # an injected trial is streaming
        self._replay_starts: dict[str, list[float]] = {}  # planned trials, per device
        self._pending_sos: dict[tuple[str, int], _PendingSos] = {}
        self._accepted: set[tuple[str, int]] = set()
        self._gt: GroundTruthLog | None = None

    # -- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.town.devices]

    def run(self) -> Summary:
        started = time.monotonic()
        self.clock.start()
        start_s, end_s = self.clock.sim_start_s, self.clock.sim_end_s
        self.routines = {
            r.key: build_routine(r, start_s, end_s, seed=self.seed, utc_offset_h=self.utc_offset_h)
            for r in self.town.residents
        }
        if self.fixed_scenarios is not None:
            self.plan = [
                Scenario(s.kind, s.resident, s.device_id, start_s + s.sim_s, s.params)
                for s in self.fixed_scenarios
            ]
        else:
            self.plan = plan_scenarios(
                self.town, self.routines, start_s, end_s, seed=self.seed, rates=self.rates
            )
        self._replay_starts = {}
        for s in self.plan:
            if s.kind in ("fall", "adl"):
                self._replay_starts.setdefault(s.device_id, []).append(s.sim_s)
        for starts in self._replay_starts.values():
            starts.sort()
        with GroundTruthLog(self.ground_truth_path) as gt:
            self._gt = gt
            try:
                self._connect_all()
                self._schedule(start_s)
                self._loop(end_s, started)
                self._drain_sos()
            finally:
                for link in self._links.values():
                    link.flush(5.0)
                    link.close()
        self.summary.wall_s = time.monotonic() - started
        with self._lock:
            self.summary.sos_unanswered = len(self._pending_sos)
        return self.summary

    # -- set-up ---------------------------------------------------------------------------
    def _connect_all(self) -> None:
        for r in self.town.residents:
            for d in r.devices:
                state = DeviceState(d, rng=random.Random(f"{self.seed}:dev:{d.device_id}"))
                # Boot counter: a new run never reuses an old run's sequence numbers.
                state.boot = int(time.time())
                state.battery_pct = state.rng.uniform(60, 100)
                self._states[d.device_id] = state
                self._links[d.device_id] = DeviceLink(
                    d.device_id,
                    self.broker,
                    topic_root=self.topic_root,
                    password=(self.credentials or {}).get(d.device_id),
                    on_reply=self._on_reply,
                )
        for device_id, link in self._links.items():
            link.connect()
            self._publish_online(device_id)

    def _publish_online(self, device_id: str) -> None:
        state = self._states[device_id]
        ts = self.clock.device_ts(self.clock.sim_now_s())
        payload = compact({"ts": round(ts, 3), "seq": state.seq(), "state": "online"})
        self._publish(device_id, "status", payload, retain=True)

    def _schedule(self, start_s: float) -> None:
        for r in self.town.residents:
            for e in self.routines[r.key].events:
                self._at(e.sim_s, functools.partial(self._home_event, r, e))
            for d in r.devices:
                jitter = self._states[d.device_id].rng.uniform(0, self.heartbeat_period_s)
                self._at(start_s + jitter, functools.partial(self._heartbeat, d))
                if d.model.vitals:
                    jitter = self._states[d.device_id].rng.uniform(0, self.vitals_period_s)
                    self._at(start_s + jitter, functools.partial(self._vitals, r, d))
                if self.accel_stream and d.model.wearable and d.model.accel_rate_hz > 0:
                    motion = self._background_motion(d)
                    jitter = float(motion.rng.uniform(0, self.accel_period_s))
                    self._at(start_s + jitter, functools.partial(self._accel, r, d))
        for s in self.plan:
            self._at(s.sim_s, functools.partial(self._start_scenario, s))

    def _at(self, sim_s: float, action: Action) -> None:
        heapq.heappush(self._queue, (sim_s, next(self._order), action))

    # -- the loop -------------------------------------------------------------------------
    def _loop(self, end_s: float, started: float) -> None:
        last_progress = 0.0
        while self._queue and not self._stop.is_set():
            sim_s = self._queue[0][0]
            if sim_s >= end_s:
                break
            if not self.clock.due(sim_s):
                self._resend_sos()
                self.clock.wait_until(sim_s, max_sleep_s=0.05)
                continue
            _, _, action = heapq.heappop(self._queue)
            action(sim_s)
            now = time.monotonic()
            if self.progress is not None and now - last_progress >= 0.5:
                last_progress = now
                self.progress(self._progress(sim_s, now - started))
        self._resend_sos()

    def _progress(self, sim_s: float, elapsed_s: float) -> Progress:
        span = self.clock.sim_end_s - self.clock.sim_start_s
        with self._lock:
            waiting = len(self._pending_sos)
        return Progress(
            (sim_s - self.clock.sim_start_s) / span,
            elapsed_s,
            sum(self.summary.published.values()),
            sum(self.summary.ground_truth.values()),
            waiting,
        )

    def _publish_at(self, device: Device, kind: str, payload: bytes, _sim_s: float) -> None:
        self._publish(device.device_id, kind, payload)

    def _publish(self, device_id: str, kind: str, payload: bytes, *, retain: bool = False) -> bool:
        """Send one message; False when the device is off the air or the publish failed."""
        state = self._states[device_id]
        if not state.online:
            return False
        try:
            self._links[device_id].publish(kind, payload, retain=retain)
        except PublisherError as exc:
            log.warning("publish failed: %s", exc)
            return False
        self.summary.published[kind] += 1
        return True

    # -- periodic -------------------------------------------------------------------------
    def _heartbeat(self, device: Device, sim_s: float) -> None:
        state = self._states[device.device_id]
        if state.last_status_sim_s > -1e300:
            state.drain((sim_s - state.last_status_sim_s) / HOUR_S)
        state.last_status_sim_s = sim_s
        local_h = ((sim_s / HOUR_S) + self.utc_offset_h) % 24.0
        # Wearables go on the charger overnight when low.
        if device.model.wearable and state.battery_pct < 30 and (local_h >= 22 or local_h < 6):
            state.charge()
        payload = status_payload(
            self.clock.device_ts(sim_s), state.seq(), state, rssi_dbm=state.rng.randint(-90, -50)
        )
        self._publish(device.device_id, "status", payload)
        self._at(sim_s + self.heartbeat_period_s, lambda t: self._heartbeat(device, t))

    def _vitals(self, resident: Resident, device: Device, sim_s: float) -> None:
        state = self._states[device.device_id]
        values = vitals_values(
            resident,
            sim_s,
            asleep=self.routines[resident.key].asleep(sim_s),
            rng=state.rng,
            utc_offset_h=self.utc_offset_h,
            deteriorations=self._deteriorations.get(resident.key, ()),
        )
        payload = vitals_payload(
            self.clock.device_ts(sim_s),
            state.seq(),
            values,
            battery_pct=state.battery_pct,
            quality=state.rng.uniform(0.75, 1.0),
        )
        self._publish(device.device_id, "vitals", payload)
        self._at(sim_s + self.vitals_period_s, lambda t: self._vitals(resident, device, t))

    def _background_motion(self, device: Device) -> BackgroundMotion:
        motion = self._motion.get(device.device_id)
        if motion is None:
            model = device.model
            # Its own generator: switching the stream on or off changes no other signal.
            seed = random.Random(f"{self.seed}:motion:{device.device_id}").getrandbits(64)
            walking = walking_samples(
                self.recordings, position=model.position, rate_hz=model.accel_rate_hz
            )
            motion = BackgroundMotion(
                model.accel_rate_hz, rng=np.random.default_rng(seed), walking=walking
            )
            self._motion[device.device_id] = motion
        return motion

    def _accel(self, resident: Resident, device: Device, sim_s: float) -> None:
        """One background window, unless an injected trial holds the device's stream; a
        window never runs into the start of a planned trial (time only moves forward)."""
        dev = device.device_id
        busy_until = self._accel_busy_until.get(dev, -np.inf)
        if sim_s < busy_until:
            self._at(busy_until, lambda t: self._accel(resident, device, t))
            return
        end_s = sim_s + self.accel_window_s
        starts = self._replay_starts.get(dev, [])
        i = bisect.bisect_left(starts, sim_s)  # a trial starting now: no window
        if i < len(starts):
            end_s = min(end_s, starts[i])
        rate_hz = device.model.accel_rate_hz
        n = int((end_s - sim_s) * rate_hz + 1e-9)
        state = self._states[dev]
        if n >= 2 and state.online:
            routine = self.routines[resident.key]
            samples = self._background_motion(device).window(
                sim_s, n, asleep=routine.asleep(sim_s), out=routine.out(sim_s)
            )
            windows = accel_payloads(
                self.clock.device_ts(sim_s),
                samples,
                device.model,
                state,
                window_s=self.accel_window_s,
            )
            for _ts, payload in windows:
                if self._publish(dev, "accel", payload):
                    self.summary.accel_background += 1
        self._at(sim_s + self.accel_period_s, lambda t: self._accel(resident, device, t))

    def _home_event(self, resident: Resident, e: HomeEvent, _sim_s: float = 0.0) -> None:
        dev = resident.gateway.device_id
        state = self._states[dev]
        body = {
            "ts": round(self.clock.device_ts(e.sim_s), 3),
            "seq": state.seq(),
            "sensor": e.sensor,
            "state": e.state,
            "sensor_id": e.sensor_id,
        }
        self._publish(dev, "event", compact(body))

    # -- SOS re-sends (wall clock: the device's patience is real time) --------------------
    def _on_reply(self, device_id: str, body: dict[str, object]) -> None:
        seq = body.get("seq")
        if body.get("kind") == "sos" and body.get("status") == "accepted" and isinstance(seq, int):
            with self._lock:
                key = (device_id, seq)
                if self._pending_sos.pop(key, None) is not None:
                    self.summary.sos_accepted += 1
                self._accepted.add(key)

    def _send_sos(self, device_id: str, seq: int, payload: bytes) -> None:
        with self._lock:
            self._pending_sos[(device_id, seq)] = _PendingSos(
                device_id, seq, payload, time.monotonic() + self.sos_resend_wall_s
            )
            self.summary.sos_sent += 1
        self._publish(device_id, "sos", payload)

    def _resend_sos(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending_sos.values() if p.next_wall_s <= now]
            for p in due:
                if p.attempts >= self.sos_max_attempts:
                    log.warning("SOS %s/%d never accepted; giving up", p.device_id, p.seq)
                    del self._pending_sos[(p.device_id, p.seq)]
                    continue
                p.attempts += 1
                p.next_wall_s = now + self.sos_resend_wall_s
                self.summary.sos_resends += 1
        for p in due:
            if p.attempts <= self.sos_max_attempts:
                self._publish(p.device_id, "sos", p.payload)

    def _drain_sos(self) -> None:
        deadline = time.monotonic() + self.sos_wait_at_end_s
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                if not self._pending_sos:
                    return
            self._resend_sos()
            time.sleep(0.05)

    def sos_accepted(self, device_id: str, seq: int) -> bool:
        with self._lock:
            return (device_id, seq) in self._accepted

    # -- scenarios ------------------------------------------------------------------------
    def _record(
        self,
        s: Scenario,
        start_ts: float,
        end_ts: float,
        devices: tuple[str, ...],
        **detail: str | float | int | bool,
    ) -> None:
        assert self._gt is not None
        self._gt.record(
            GroundTruthEvent(
                event_id=f"{s.resident}-{s.kind}-{int(s.sim_s)}",
                kind=s.kind,
                resident=s.resident,
                devices=devices,
                start_ts=round(start_ts, 3),
                end_ts=round(end_ts, 3),
                wall_start_s=round(time.time(), 3),
                expected=EXPECTED[s.kind],
                must_not_raise=MUST_NOT_RAISE.get(s.kind, ()),
                anchor=self.clock.anchor,
                detail=dict(detail),
            )
        )
        self.summary.ground_truth[s.kind] += 1

    def _start_scenario(self, s: Scenario, sim_s: float) -> None:
        resident = self.town.resident(s.resident)
        device = next(d for d in resident.devices if d.device_id == s.device_id)
        if not self._states[device.device_id].online:
            return  # the device is off the air: the event cannot be reported
        handler = getattr(self, f"_scenario_{s.kind}")
        handler(s, resident, device, sim_s)

    def _scenario_fall(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        self._replay(s, d, sim_s, is_fall=True)

    def _scenario_adl(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        self._replay(s, d, sim_s, is_fall=False)

    def _replay(self, s: Scenario, d: Device, sim_s: float, *, is_fall: bool) -> None:
        state = self._states[d.device_id]
        rng = np.random.default_rng(state.rng.getrandbits(32))
        replay = prepare_replay(self.recordings, d, is_fall=is_fall, rng=rng)
        ts0 = self.clock.device_ts(sim_s)
        windows = accel_payloads(ts0, replay.samples_g, d.model, state)
        duration_s = len(replay.samples_g) / replay.rate_hz
        # The wearable's background stream waits until the trial has been sent.
        self._accel_busy_until[d.device_id] = max(
            self._accel_busy_until.get(d.device_id, -np.inf), sim_s + duration_s
        )
        self._record(
            s, ts0, ts0 + duration_s, (d.device_id,),
            trial_id=replay.trial_id, activity=replay.activity, rate_hz=replay.rate_hz,
        )  # fmt: skip
        for ts, payload in windows:
            # Each window goes out when its samples have been taken, in order with the rest.
            self._at(sim_s + (ts - ts0), functools.partial(self._publish_at, d, "accel", payload))

    def _scenario_sos(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        state = self._states[d.device_id]
        ts = self.clock.device_ts(sim_s)
        seq = state.seq()
        body: dict[str, object] = {"ts": round(ts, 3), "seq": seq}
        if state.rng.random() < 0.5:
            body.update(lat=round(r.home_lat, 5), lon=round(r.home_lon, 5), accuracy_m=15)
        end_ts = ts
        if s.kind == "sos_cancelled":
            end_ts = ts + state.rng.uniform(15, 40)
        self._record(s, ts, end_ts, (d.device_id,), cancelled=s.kind == "sos_cancelled")
        self._send_sos(d.device_id, seq, compact(body))
        if s.kind == "sos_cancelled":
            self._at(sim_s + (end_ts - ts), lambda t: self._cancel_sos(d, t))

    _scenario_sos_cancelled = _scenario_sos

    def _cancel_sos(self, d: Device, sim_s: float) -> None:
        state = self._states[d.device_id]
        seq = state.seq()
        body = {"ts": round(self.clock.device_ts(sim_s), 3), "seq": seq, "action": "cancel"}
        self._send_sos(d.device_id, seq, compact(body))

    def _scenario_deterioration(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        state = self._states[d.device_id]
        band = str(s.params.get("band", "medium"))
        peak = sim_s + state.rng.uniform(1.0, 2.0) * HOUR_S
        end = peak + 2.0 * HOUR_S
        det = Deterioration(sim_s, peak, end, NEWS2_TARGETS[band])
        self._deteriorations[r.key] = (*self._deteriorations.get(r.key, ()), det)
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts + (end - sim_s), (d.device_id,), band=band)

    def _scenario_night_wandering(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        rng = self._states[d.device_id].rng
        away_s = rng.uniform(25, 50) * 60
        steps = [
            (0.0, "bed", "empty", "bed"),
            (20.0, "motion", "active", "motion-bedroom"),
            (90.0, "door", "open", "front-door"),  # and left open
            (away_s, "door", "closed", "front-door"),
            (away_s + 30, "motion", "active", "motion-living"),
            (away_s + 300, "bed", "occupied", "bed"),
        ]
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts + away_s + 300, (d.device_id,), away_min=round(away_s / 60, 1))
        for offset, sensor, st, sid in steps:
            e = HomeEvent(sim_s + offset, r.key, sensor, st, sid)
            self._at(e.sim_s, functools.partial(self._home_event, r, e))

    def _scenario_smoke(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        clear_s = self._states[d.device_id].rng.uniform(180, 600)
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts + clear_s, (d.device_id,))
        for offset, st in ((0.0, "alarm"), (clear_s, "clear")):
            e = HomeEvent(sim_s + offset, r.key, "smoke", st, "smoke-kitchen")
            self._at(e.sim_s, functools.partial(self._home_event, r, e))

    def _scenario_device_offline(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        hours = float(s.params.get("hours", 1.0))
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts + hours * HOUR_S, (d.device_id,), hours=round(hours, 2))
        self._links[d.device_id].drop()
        self._states[d.device_id].online = False
        self._at(sim_s + hours * HOUR_S, lambda _t: self._reconnect(d))

    def _reconnect(self, d: Device) -> None:
        try:
            self._links[d.device_id].connect()
        except PublisherError as exc:
            log.warning("reconnect failed: %s", exc)
            return
        self._states[d.device_id].online = True
        self._publish_online(d.device_id)

    def _scenario_malformed(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts, (d.device_id,))
        # A firmware bug: the message is cut short.
        self._publish(d.device_id, "sos", b'{"ts": %.3f, "seq": ' % ts)

    def _scenario_replayed(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        state = self._states[d.device_id]
        ts = self.clock.device_ts(sim_s)
        self._record(s, ts, ts, (d.device_id,))
        # An old sequence number (the device's first message) with a new time: a replay.
        old_seq = state.boot * 1_000_000_000 + 1
        self._publish(d.device_id, "sos", compact({"ts": round(ts, 3), "seq": old_seq}))

    def _scenario_spoofed(self, s: Scenario, r: Resident, d: Device, sim_s: float) -> None:
        state = self._states[d.device_id]
        ts = self.clock.device_ts(sim_s)
        victim = next((o for o in self.town.residents if o.key != r.key), r).wearables[0].device_id
        self._record(s, ts, ts, (d.device_id, victim), victim=victim)
        # The payload claims to be another device: refused as device_mismatch.
        body = {"ts": round(ts, 3), "seq": state.seq(), "device_id": victim}
        self._publish(d.device_id, "sos", compact(body))
        if self.credentials:
            # With per-device credentials the broker's ACL must refuse a foreign topic.
            self._links[d.device_id].publish_raw(
                f"{self.topic_root}/{victim}/sos",
                compact({"ts": round(ts, 3), "seq": state.seq()}),
            )
