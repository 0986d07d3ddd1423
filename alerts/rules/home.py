"""Home-sensor rules: hazards, inactivity, night wandering, bed exit, a door left open.

``HomeBank`` holds every gateway's state in shared numpy columns indexed by a slot (taken on
a gateway's first home event). Events update it and raise the immediate rules (smoke, gas,
water); ``on_tick`` checks the timers, on the gateway's own clock (``HomeBank.device_now``).
Both return ``Finding`` values; the runner adds device, resident and severity.

Inactivity counts only *waking* time without a sign of life (motion, a door, the bed):
"no motion for 4 h" at 03:00 is sleep, not an emergency. A gateway that is offline says
nothing about the resident, so the runner does not tick an offline home; when it comes back
the inactivity clock restarts at that moment instead of counting the blind spell.

The time-of-day helpers are pure functions over epoch seconds and a ``DailyHours`` window in
the home's time zone (DST-aware through ``zoneinfo``).
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import zoneinfo
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from alerts.rules.config import DailyHours, HomeRules
from alerts.rules.detection import DetectionKind, Evidence
from devices.readings import HomeEvent, SensorType

_DAY_MIN: Final = 24 * 60
_MAX_SCAN_DAYS: Final = 62  # longer spans count as "certainly past any threshold"


class Finding(NamedTuple):
    """A rule outcome before the runner turns it into a ``Detection``."""

    kind: DetectionKind
    event_ts: float
    evidence: Evidence
    clears: bool = False


@dataclass(frozen=True, slots=True)
class HomeSchedule:
    """``HomeRules`` with the time zone resolved once."""

    rules: HomeRules
    tz: zoneinfo.ZoneInfo

    @classmethod
    def from_rules(cls, rules: HomeRules) -> HomeSchedule:
        """Resolve the rules' time zone."""
        return cls(rules=rules, tz=zoneinfo.ZoneInfo(rules.timezone))


def local_minute_of_day(ts: float, tz: dt.tzinfo) -> float:
    """Minutes since local midnight at ``ts`` (fractional)."""
    local = dt.datetime.fromtimestamp(ts, tz)
    return local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60


def in_daily_window(minute_of_day: float, window: DailyHours) -> bool:
    """True when the local minute falls in ``[start, end)``, wrapping past midnight."""
    start, end = window.start_min, window.end_min % _DAY_MIN
    if start < end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def seconds_in_daily_window(
    start_ts: float, end_ts: float, window: DailyHours, tz: dt.tzinfo
) -> float:
    """How many seconds of ``[start_ts, end_ts]`` fall inside the daily local window."""
    if end_ts <= start_ts:
        return 0.0
    first_day = dt.datetime.fromtimestamp(start_ts, tz).date() - dt.timedelta(days=1)
    last_day = dt.datetime.fromtimestamp(end_ts, tz).date()
    if (last_day - first_day).days > _MAX_SCAN_DAYS:
        return end_ts - start_ts  # a span this long exceeds any configured threshold anyway
    start_h, start_m = divmod(window.start_min, 60)
    length_min = (window.end_min - window.start_min) % _DAY_MIN or _DAY_MIN
    total_s = 0.0
    day = first_day
    while day <= last_day:
        # Wall-clock start of the window on this local day; zoneinfo handles DST shifts.
        open_local = dt.datetime(day.year, day.month, day.day, start_h, start_m, tzinfo=tz)
        open_ts = open_local.timestamp()
        close_ts = (open_local + dt.timedelta(minutes=length_min)).timestamp()
        total_s += max(0.0, min(end_ts, close_ts) - max(start_ts, open_ts))
        day += dt.timedelta(days=1)
    return total_s


_HAZARDS: Final = {
    SensorType.SMOKE: ("alarm", "clear", DetectionKind.SMOKE, 1),
    SensorType.GAS: ("alarm", "clear", DetectionKind.GAS, 2),
    SensorType.WATER: ("leak", "dry", DetectionKind.WATER_LEAK, 4),
}
# Flags column: hazard bits (above) in the low three bits, then these.
_HAS_MOTION: Final = 8
_INACTIVITY_RAISED: Final = 16
# Timer columns (the bed, the first open door): 0 = no timer, else these bits.
_TIMER_OPEN: Final = 1
_TIMER_AT_NIGHT: Final = 2
_TIMER_RAISED: Final = 4

CLOCK_SYNC_S: Final = 5.0
"""A device whose readings arrive within this of the server's clock is taken to share it:
so small a difference is transport delay or NTP jitter, not a clock of its own."""
_CLOCK_SAMPLES: Final = 3


def _door_kind(state: int) -> DetectionKind:
    return DetectionKind.NIGHT_WANDERING if state & _TIMER_AT_NIGHT else DetectionKind.DOOR_OPEN


class _OpenTimer:
    """A second (third, ...) door open at once, since ``since_ts``: rare, so an object."""

    __slots__ = ("sensor_id", "since_ts", "state")

    def __init__(self, sensor_id: str, since_ts: float, state: int) -> None:
        self.sensor_id = sensor_id
        self.since_ts = since_ts
        self.state = state  # _TIMER_* bits


class HomeBank:
    """The home-rule state of many gateways, in shared numpy columns indexed by a slot.

    Per home (about 80 bytes, no Python object): the device times of the last sign of life
    and of the start of the inactivity count, a flags byte (hazards in alarm, a motion sensor
    seen, inactivity raised), the bed's timer and the first open door's timer (start time,
    state byte, sensor id), and the device clock's recent offsets. More doors open at once
    than one go to a small side table while they stay open.

    Timers run on the *device's* clock: each admitted reading gives a sample of
    ``device_ts - received_ts``; the home's "now" is the server's time plus the median of
    the last three samples (``device_now``). A real, NTP-synced device differs from the
    server by less than ``CLOCK_SYNC_S``, which is taken as no difference, so the timers
    behave as on the server's clock; a simulation running in the past or faster than real
    time gets timers on its own clock; a device that stops sending keeps its last offset
    while the server's time goes on, so its timers still expire. One wild timestamp (or one
    very late reading) is outvoted by the median; a real clock step is followed after two
    readings.
    """

    __slots__ = (
        "_bed_sensor",
        "_bed_since",
        "_bed_state",
        "_clk",
        "_clk_n",
        "_door_sensor",
        "_door_since",
        "_door_state",
        "_extra_doors",
        "_flags",
        "_free",
        "_life_ts",
        "_n_slots",
        "_start_ts",
    )

    def __init__(self, capacity: int = 64) -> None:
        self._free: list[int] = []
        self._n_slots = 0
        self._extra_doors: dict[int, list[_OpenTimer]] = {}
        self._allocate(max(1, capacity))

    def _columns(self) -> tuple[npt.NDArray[Any], ...]:
        return (
            self._life_ts,
            self._start_ts,
            self._clk,
            self._clk_n,
            self._flags,
            self._door_since,
            self._door_state,
            self._door_sensor,
            self._bed_since,
            self._bed_state,
            self._bed_sensor,
        )

    def _allocate(self, capacity: int) -> None:
        self._life_ts = np.full(capacity, -np.inf)  # device time of the last sign of life
        self._start_ts = np.full(capacity, -np.inf)  # inactivity counts from here
        self._clk = np.zeros((capacity, _CLOCK_SAMPLES))  # device_ts - received_ts, recent
        self._clk_n = np.zeros(capacity, np.uint8)  # see observe_clock
        self._flags = np.zeros(capacity, np.uint8)
        self._door_since = np.zeros(capacity)
        self._door_state = np.zeros(capacity, np.uint8)
        self._door_sensor = np.full(capacity, None, dtype=object)
        self._bed_since = np.zeros(capacity)
        self._bed_state = np.zeros(capacity, np.uint8)
        self._bed_sensor = np.full(capacity, None, dtype=object)

    @property
    def capacity(self) -> int:
        """Slots allocated (grows by a quarter when full)."""
        return int(self._flags.shape[0])

    def __len__(self) -> int:
        return self._n_slots - len(self._free)

    def add(self, ts: float) -> int:
        """A slot for a gateway first heard at device time ``ts``; returns the slot."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._n_slots == self.capacity:
                old = self._columns()
                self._allocate(self.capacity + max(64, self.capacity // 4))
                for column, kept in zip(self._columns(), old, strict=True):
                    column[: kept.shape[0]] = kept
            slot = self._n_slots
            self._n_slots += 1
        self._reset(slot)
        self._start_ts[slot] = ts
        return slot

    def release(self, slot: int) -> None:
        """Forget a gateway's state; the slot will be reused."""
        self._reset(slot)
        self._free.append(slot)

    def _reset(self, slot: int) -> None:
        self._life_ts[slot] = -np.inf
        self._start_ts[slot] = -np.inf
        self._clk[slot] = 0.0
        self._clk_n[slot] = 0
        self._flags[slot] = 0
        self._door_state[slot] = self._bed_state[slot] = 0
        self._door_sensor[slot] = self._bed_sensor[slot] = None
        self._extra_doors.pop(slot, None)

    def state_nbytes(self) -> int:
        """Bytes per home in the shared columns (an open door's sensor-id string, shared
        with the readings, and doors beyond the first open at once come on top)."""
        return int(sum(c.itemsize * (c.size // c.shape[0]) for c in self._columns()))

    # -- the device's clock -------------------------------------------------------------
    def observe_clock(self, slot: int, device_ts: float, received_ts: float) -> None:
        """Take one admitted reading's ``device_ts - received_ts`` as a clock sample."""
        sample = device_ts - received_ts
        if not math.isfinite(sample):
            return
        # 0..2: the first samples, written in turn; 3..5: full, next write at n - 3.
        n = int(self._clk_n[slot])
        if n < _CLOCK_SAMPLES:
            self._clk[slot, n] = sample
            self._clk_n[slot] = n + 1
        else:
            self._clk[slot, n - _CLOCK_SAMPLES] = sample
            self._clk_n[slot] = _CLOCK_SAMPLES + (n - _CLOCK_SAMPLES + 1) % _CLOCK_SAMPLES

    def clock_offset_s(self, slot: int) -> float:
        """Device clock minus server clock, as the timers use it (0 for a synced device)."""
        n = min(int(self._clk_n[slot]), _CLOCK_SAMPLES)
        if n == 0:
            return 0.0
        samples = sorted(self._clk[slot, :n].tolist())
        # Two samples: the lower, so that a lone wild one cannot move the clock forward.
        offset = samples[0] if n == 2 else samples[n // 2]
        return 0.0 if abs(offset) <= CLOCK_SYNC_S else offset

    def device_now(self, slot: int, server_now_ts: float) -> float:
        """The home's "now" on its devices' clock, for a server time."""
        return server_now_ts + self.clock_offset_s(slot)

    # -- events -------------------------------------------------------------------------
    def resume(self, slot: int, ts: float) -> None:
        """The gateway is back online at ``ts``: do not count the blind spell as inactivity."""
        self._start_ts[slot] = max(float(self._start_ts[slot]), ts)

    def has_motion_sensor(self, slot: int) -> bool:
        """True once the home has reported a motion sensor (inactivity is judged then)."""
        return bool(self._flags[slot] & _HAS_MOTION)

    def on_event(self, slot: int, event: HomeEvent, schedule: HomeSchedule) -> list[Finding]:
        """Apply one sensor event; returns the immediate findings."""
        ts = event.env.device_ts
        sensor, state = event.sensor, event.state
        sensor_id = event.sensor_id or sensor.value
        evidence: Evidence = {"sensor": sensor.value, "sensor_id": sensor_id, "state": state}
        findings: list[Finding] = []
        flags = int(self._flags[slot])

        hazard = _HAZARDS.get(sensor)
        if hazard is not None:
            alarm_state, clear_state, kind, bit = hazard
            if state == alarm_state:
                # Every alarm report is passed on: the incident layer merges repeats, and a
                # debounce here could swallow the one that matters.
                self._flags[slot] = flags | bit
                findings.append(Finding(kind, ts, evidence))
            elif state == clear_state and flags & bit:
                self._flags[slot] = flags & ~bit
                findings.append(Finding(kind, ts, evidence, clears=True))
            return findings  # "test" presses of a smoke or gas alarm raise nothing

        if sensor is SensorType.MOTION:
            self._flags[slot] = flags | _HAS_MOTION
            if state != "active":
                return findings
        findings.extend(self._sign_of_life(slot, ts, evidence))
        if sensor is SensorType.DOOR:
            findings.extend(
                self._door(slot, sensor_id, state, ts=ts, schedule=schedule, evidence=evidence)
            )
        elif sensor is SensorType.BED:
            findings.extend(
                self._bed_event(slot, sensor_id, state, ts=ts, schedule=schedule, evidence=evidence)
            )
        return findings

    def _sign_of_life(self, slot: int, ts: float, evidence: Evidence) -> list[Finding]:
        self._life_ts[slot] = max(float(self._life_ts[slot]), ts)
        self._start_ts[slot] = max(float(self._start_ts[slot]), ts)
        flags = int(self._flags[slot])
        if flags & _INACTIVITY_RAISED:
            self._flags[slot] = flags & ~_INACTIVITY_RAISED
            return [Finding(DetectionKind.INACTIVITY, ts, evidence, clears=True)]
        return []

    def _door(
        self,
        slot: int,
        sensor_id: str,
        state: str,
        *,
        ts: float,
        schedule: HomeSchedule,
        evidence: Evidence,
    ) -> list[Finding]:
        extra = self._extra_doors.get(slot, [])
        in_column = bool(self._door_state[slot]) and self._door_sensor[slot] == sensor_id
        current = next((d for d in extra if d.sensor_id == sensor_id), None)
        if state == "open":
            if in_column or current is not None:
                return []
            at_night = in_daily_window(
                local_minute_of_day(ts, schedule.tz), schedule.rules.night_hours
            )
            timer_state = _TIMER_OPEN | (_TIMER_AT_NIGHT if at_night else 0)
            if not self._door_state[slot]:
                self._door_since[slot] = ts
                self._door_state[slot] = timer_state
                # Interned: the same names ("front", "back") recur in many homes; each
                # message brings its own copy, and only one is kept.
                self._door_sensor[slot] = sys.intern(sensor_id)
            else:
                extra.append(_OpenTimer(sys.intern(sensor_id), ts, timer_state))
                self._extra_doors[slot] = extra
            return []
        if in_column:
            since_ts, timer_state = float(self._door_since[slot]), int(self._door_state[slot])
            self._door_state[slot] = 0
            self._door_sensor[slot] = None
        elif current is not None:
            since_ts, timer_state = current.since_ts, current.state
            extra.remove(current)
            if not extra:
                del self._extra_doors[slot]
        else:
            return []
        if not timer_state & _TIMER_RAISED:
            return []
        return [Finding(_door_kind(timer_state), ts, {**evidence, "open_since_ts": since_ts}, True)]

    def _bed_event(
        self,
        slot: int,
        sensor_id: str,
        state: str,
        *,
        ts: float,
        schedule: HomeSchedule,
        evidence: Evidence,
    ) -> list[Finding]:
        if state == "empty":
            at_night = in_daily_window(
                local_minute_of_day(ts, schedule.tz), schedule.rules.night_hours
            )
            # Only a night-time exit is timed; a daytime one is ordinary life.
            if at_night and not self._bed_state[slot]:
                self._bed_since[slot] = ts
                self._bed_state[slot] = _TIMER_OPEN | _TIMER_AT_NIGHT
                self._bed_sensor[slot] = sys.intern(sensor_id)
            return []
        bed_state = int(self._bed_state[slot])
        self._bed_state[slot] = 0
        self._bed_sensor[slot] = None
        if not bed_state & _TIMER_RAISED:
            return []
        since_ts = float(self._bed_since[slot])
        return [Finding(DetectionKind.BED_EXIT, ts, {**evidence, "empty_since_ts": since_ts}, True)]

    # -- timers -------------------------------------------------------------------------
    def on_tick(self, slot: int, server_now_ts: float, schedule: HomeSchedule) -> list[Finding]:
        """Check the timers at server time ``server_now_ts``, judged on the home's own clock
        (``device_now``); call only while the gateway is online."""
        now_ts = self.device_now(slot, server_now_ts)
        rules = schedule.rules
        findings: list[Finding] = []
        door_state = int(self._door_state[slot])
        if door_state and not door_state & _TIMER_RAISED:
            raised = self._door_due(door_state, now_ts - float(self._door_since[slot]), rules)
            if raised is not None:
                self._door_state[slot] = raised
                findings.append(
                    self._door_finding(
                        raised, float(self._door_since[slot]), self._door_sensor[slot], now_ts
                    )
                )
        for door in self._extra_doors.get(slot, ()):
            if door.state & _TIMER_RAISED:
                continue
            raised = self._door_due(door.state, now_ts - door.since_ts, rules)
            if raised is not None:
                door.state = raised
                findings.append(self._door_finding(raised, door.since_ts, door.sensor_id, now_ts))
        bed_state = int(self._bed_state[slot])
        bed_since = float(self._bed_since[slot])
        if bed_state and not bed_state & _TIMER_RAISED and now_ts - bed_since >= rules.bed_exit_s:
            self._bed_state[slot] = bed_state | _TIMER_RAISED
            findings.append(
                Finding(
                    DetectionKind.BED_EXIT,
                    bed_since,
                    {"sensor_id": self._bed_sensor[slot], "out_of_bed_s": now_ts - bed_since},
                )
            )
        flags = int(self._flags[slot])
        if flags & _HAS_MOTION and not flags & _INACTIVITY_RAISED:
            findings.extend(self._check_inactivity(slot, now_ts, schedule))
        return findings

    @staticmethod
    def _door_due(state: int, open_s: float, rules: HomeRules) -> int | None:
        """The timer's new state if it fires now, else None."""
        limit_s = rules.night_door_open_s if state & _TIMER_AT_NIGHT else rules.day_door_open_s
        return state | _TIMER_RAISED if open_s >= limit_s else None

    @staticmethod
    def _door_finding(state: int, since_ts: float, sensor_id: object, now_ts: float) -> Finding:
        evidence: Evidence = {"sensor_id": str(sensor_id), "open_s": now_ts - since_ts}
        return Finding(_door_kind(state), since_ts, evidence)

    def _check_inactivity(self, slot: int, now_ts: float, schedule: HomeSchedule) -> list[Finding]:
        rules = schedule.rules
        start_ts = float(self._start_ts[slot])
        # Cheap test first: waking time cannot exceed wall time.
        if start_ts == float("-inf") or now_ts - start_ts < rules.inactivity_after_s:
            return []
        if not in_daily_window(local_minute_of_day(now_ts, schedule.tz), rules.waking_hours):
            return []
        waking_s = seconds_in_daily_window(start_ts, now_ts, rules.waking_hours, schedule.tz)
        if waking_s < rules.inactivity_after_s:
            return []
        self._flags[slot] |= _INACTIVITY_RAISED
        life_ts = float(self._life_ts[slot])
        evidence: Evidence = {
            "inactive_waking_s": round(waking_s, 1),
            "last_sign_of_life_ts": life_ts if life_ts > 0 else None,
        }
        return [Finding(DetectionKind.INACTIVITY, start_ts, evidence)]
