"""Home-sensor rules: hazards, inactivity, night wandering, bed exit, a door left open.

``HomeState`` is one gateway's state (a few floats and flags in ``__slots__``). Events update
it and raise the immediate rules (smoke, gas, water); ``on_tick`` checks the timers.
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
import zoneinfo
from dataclasses import dataclass
from typing import Final, NamedTuple

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


class _OpenTimer:
    """A door open or a bed empty since ``since_ts``; ``raised`` names what it raised."""

    __slots__ = ("at_night", "raised", "sensor_id", "since_ts")

    def __init__(self, sensor_id: str, since_ts: float, at_night: bool) -> None:
        self.sensor_id = sensor_id
        self.since_ts = since_ts
        self.at_night = at_night
        self.raised: DetectionKind | None = None


class HomeState:
    """One home gateway's rule state."""

    __slots__ = (
        "_bed",
        "_clock_start_ts",
        "_doors",
        "_hazards",
        "_inactivity_raised",
        "_last_life_ts",
        "has_motion_sensor",
    )

    def __init__(self) -> None:
        self.has_motion_sensor = False
        self._last_life_ts = float("-inf")  # device time of the last sign of life
        self._clock_start_ts = float("-inf")  # inactivity counts from here
        self._inactivity_raised = False
        self._hazards = 0  # bitmask of hazards in alarm (see _HAZARDS)
        self._doors: list[_OpenTimer] | None = None  # open doors; None while none ever opened
        self._bed: _OpenTimer | None = None  # the bed, while empty at night

    def resume(self, ts: float) -> None:
        """The gateway is back online at ``ts``: do not count the blind spell as inactivity."""
        self._clock_start_ts = max(self._clock_start_ts, ts)

    def on_event(self, event: HomeEvent, schedule: HomeSchedule) -> list[Finding]:
        """Apply one sensor event; returns the immediate findings."""
        ts = event.env.device_ts
        sensor, state = event.sensor, event.state
        sensor_id = event.sensor_id or sensor.value
        evidence: Evidence = {"sensor": sensor.value, "sensor_id": sensor_id, "state": state}
        findings: list[Finding] = []

        hazard = _HAZARDS.get(sensor)
        if hazard is not None:
            alarm_state, clear_state, kind, bit = hazard
            if state == alarm_state:
                # Every alarm report is passed on: the incident layer merges repeats, and a
                # debounce here could swallow the one that matters.
                self._hazards |= bit
                findings.append(Finding(kind, ts, evidence))
            elif state == clear_state and self._hazards & bit:
                self._hazards &= ~bit
                findings.append(Finding(kind, ts, evidence, clears=True))
            return findings  # "test" presses of a smoke or gas alarm raise nothing

        if sensor is SensorType.MOTION:
            self.has_motion_sensor = True
            if state != "active":
                return findings
        findings.extend(self._sign_of_life(ts, evidence))
        if sensor is SensorType.DOOR:
            findings.extend(self._door(sensor_id, state, ts, schedule, evidence))
        elif sensor is SensorType.BED:
            findings.extend(self._bed_event(sensor_id, state, ts, schedule, evidence))
        return findings

    def _sign_of_life(self, ts: float, evidence: Evidence) -> list[Finding]:
        self._last_life_ts = max(self._last_life_ts, ts)
        self._clock_start_ts = max(self._clock_start_ts, ts)
        if self._inactivity_raised:
            self._inactivity_raised = False
            return [Finding(DetectionKind.INACTIVITY, ts, evidence, clears=True)]
        return []

    def _door(
        self, sensor_id: str, state: str, ts: float, schedule: HomeSchedule, evidence: Evidence
    ) -> list[Finding]:
        doors = self._doors if self._doors is not None else []
        current = next((d for d in doors if d.sensor_id == sensor_id), None)
        if state == "open":
            if current is None:
                at_night = in_daily_window(
                    local_minute_of_day(ts, schedule.tz), schedule.rules.night_hours
                )
                doors.append(_OpenTimer(sensor_id, ts, at_night))
                self._doors = doors
            return []
        if current is None:
            return []
        doors.remove(current)
        if current.raised is None:
            return []
        return [Finding(current.raised, ts, {**evidence, "open_since_ts": current.since_ts}, True)]

    def _bed_event(
        self, sensor_id: str, state: str, ts: float, schedule: HomeSchedule, evidence: Evidence
    ) -> list[Finding]:
        if state == "empty":
            at_night = in_daily_window(
                local_minute_of_day(ts, schedule.tz), schedule.rules.night_hours
            )
            # Only a night-time exit is timed; a daytime one is ordinary life.
            if at_night and self._bed is None:
                self._bed = _OpenTimer(sensor_id, ts, at_night=True)
            return []
        bed, self._bed = self._bed, None
        if bed is None or bed.raised is None:
            return []
        return [Finding(bed.raised, ts, {**evidence, "empty_since_ts": bed.since_ts}, True)]

    def on_tick(self, now_ts: float, schedule: HomeSchedule) -> list[Finding]:
        """Check the timers at ``now_ts``; call only while the gateway is online."""
        rules = schedule.rules
        findings: list[Finding] = []
        for door in self._doors or ():
            if door.raised is not None:
                continue
            open_s = now_ts - door.since_ts
            if door.at_night and open_s >= rules.night_door_open_s:
                door.raised = DetectionKind.NIGHT_WANDERING
            elif not door.at_night and open_s >= rules.day_door_open_s:
                door.raised = DetectionKind.DOOR_OPEN
            else:
                continue
            findings.append(
                Finding(door.raised, door.since_ts, {"sensor_id": door.sensor_id, "open_s": open_s})
            )
        bed = self._bed
        if bed is not None and bed.raised is None and now_ts - bed.since_ts >= rules.bed_exit_s:
            bed.raised = DetectionKind.BED_EXIT
            findings.append(
                Finding(
                    bed.raised,
                    bed.since_ts,
                    {"sensor_id": bed.sensor_id, "out_of_bed_s": now_ts - bed.since_ts},
                )
            )
        if self.has_motion_sensor and not self._inactivity_raised:
            findings.extend(self._check_inactivity(now_ts, schedule))
        return findings

    def _check_inactivity(self, now_ts: float, schedule: HomeSchedule) -> list[Finding]:
        rules = schedule.rules
        start_ts = self._clock_start_ts
        # Cheap test first: waking time cannot exceed wall time.
        if start_ts == float("-inf") or now_ts - start_ts < rules.inactivity_after_s:
            return []
        if not in_daily_window(local_minute_of_day(now_ts, schedule.tz), rules.waking_hours):
            return []
        waking_s = seconds_in_daily_window(start_ts, now_ts, rules.waking_hours, schedule.tz)
        if waking_s < rules.inactivity_after_s:
            return []
        self._inactivity_raised = True
        evidence: Evidence = {
            "inactive_waking_s": round(waking_s, 1),
            "last_sign_of_life_ts": self._last_life_ts if self._last_life_ts > 0 else None,
        }
        return [Finding(DetectionKind.INACTIVITY, start_ts, evidence)]
