"""Home rules through the runner: SOS, hazards, inactivity vs offline, night rules, doors."""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo

import pytest

from alerts.rules.config import DailyHours, load_rules_text
from alerts.rules.detection import Detection, DetectionKind, Severity
from alerts.rules.home import in_daily_window, local_minute_of_day, seconds_in_daily_window
from alerts.rules.runner import RuleRunner
from devices.readings import DeviceStatus, Envelope, HomeEvent, SensorType, SosPress

UTC = dt.UTC
DAY0 = dt.datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
H = 3600.0
RULES = load_rules_text(
    """
version: 1
defaults:
  device: {offline_after_s: 86400}
  home:
    timezone: UTC
    waking_hours: {start: "07:00", end: "22:00"}
    night_hours: {start: "22:00", end: "07:00"}
    inactivity_after_s: 14400
    night_door_open_s: 600
    bed_exit_s: 1200
    day_door_open_s: 1800
"""
)
_seq = itertools.count()


def env(ts: float, device_id: str = "gw-1") -> Envelope:
    return Envelope(device_id=device_id, seq=next(_seq), device_ts=ts, received_ts=ts + 0.2)


def home(ts: float, sensor: SensorType, state: str, sensor_id: str | None = None) -> HomeEvent:
    return HomeEvent(env=env(ts), sensor=sensor, state=state, sensor_id=sensor_id)


@pytest.fixture
def runner() -> RuleRunner:
    return RuleRunner(RULES, resident_for=lambda device_id: "res-" + device_id)


def kinds(detections: list[Detection]) -> list[tuple[DetectionKind, bool]]:
    return [(d.kind, d.clears) for d in detections]


# -- SOS ---------------------------------------------------------------------------------------


def test_every_sos_press_is_passed_on_critical(runner: RuleRunner) -> None:
    presses = [SosPress(env=env(DAY0 + 10 + i, "pendant-1"), lat=31.2, lon=121.5) for i in range(3)]
    out = [runner.process(p) for p in presses]
    assert [len(o) for o in out] == [1, 1, 1]  # no debounce: repeats go to the incident layer
    first = out[0][0]
    assert (first.kind, first.severity, first.resident_id) == (
        DetectionKind.SOS,
        Severity.CRITICAL,
        "res-pendant-1",
    )
    assert first.evidence["lat"] == 31.2
    assert first.event_ts == DAY0 + 10
    assert first.detected_ts == pytest.approx(DAY0 + 10.2)


def test_sos_cancel(runner: RuleRunner) -> None:
    runner.process(SosPress(env=env(DAY0, "p")))
    cancel = runner.process(SosPress(env=env(DAY0 + 20, "p"), action="cancel"))
    assert [(d.kind, d.severity) for d in cancel] == [(DetectionKind.SOS_CANCEL, Severity.INFO)]


# -- hazards -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sensor", "alarm", "clear", "kind", "severity"),
    [
        (SensorType.SMOKE, "alarm", "clear", DetectionKind.SMOKE, Severity.CRITICAL),
        (SensorType.GAS, "alarm", "clear", DetectionKind.GAS, Severity.CRITICAL),
        (SensorType.WATER, "leak", "dry", DetectionKind.WATER_LEAK, Severity.HIGH),
    ],
)
def test_hazards_are_immediate_and_clear(
    runner: RuleRunner,
    sensor: SensorType,
    alarm: str,
    clear: str,
    kind: DetectionKind,
    severity: Severity,
) -> None:
    raised = runner.process(home(DAY0 + 3 * H, sensor, alarm, "kitchen"))
    assert [(d.kind, d.severity, d.clears) for d in raised] == [(kind, severity, False)]
    assert raised[0].evidence["sensor_id"] == "kitchen"
    cleared = runner.process(home(DAY0 + 3 * H + 60, sensor, clear, "kitchen"))
    assert kinds(cleared) == [(kind, True)]
    assert runner.process(home(DAY0 + 3 * H + 90, sensor, clear, "kitchen")) == []


def test_smoke_test_button_raises_nothing(runner: RuleRunner) -> None:
    assert runner.process(home(DAY0, SensorType.SMOKE, "test")) == []


# -- inactivity ----------------------------------------------------------------------------


def test_inactivity_counts_waking_time_only(runner: RuleRunner) -> None:
    # Last motion 21:00; 22:00-07:00 is night. One waking hour before the night, three after.
    runner.process(home(DAY0 + 21 * H, SensorType.MOTION, "active"))
    assert runner.tick(DAY0 + 30 * H) == []  # 06:00 next day: nine hours, but only one waking
    assert runner.tick(DAY0 + 33 * H) == []  # 09:00: three waking hours
    raised = runner.tick(DAY0 + 34 * H + 1)  # 10:00: four waking hours
    assert kinds(raised) == [(DetectionKind.INACTIVITY, False)]
    assert raised[0].severity is Severity.HIGH
    assert raised[0].event_ts == DAY0 + 21 * H
    assert raised[0].evidence["inactive_waking_s"] == pytest.approx(4 * H + 1)
    assert runner.tick(DAY0 + 35 * H) == []  # raised once
    back = runner.process(home(DAY0 + 35 * H, SensorType.MOTION, "active"))
    assert kinds(back) == [(DetectionKind.INACTIVITY, True)]


def test_door_and_bed_events_are_signs_of_life(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 8 * H, SensorType.MOTION, "active"))
    runner.process(home(DAY0 + 11 * H, SensorType.BED, "occupied"))
    assert runner.tick(DAY0 + 13 * H) == []
    assert kinds(runner.tick(DAY0 + 15 * H + 1)) == [(DetectionKind.INACTIVITY, False)]


def test_no_motion_sensor_no_inactivity(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 8 * H, SensorType.WATER, "dry"))
    assert runner.tick(DAY0 + 20 * H) == []


def test_offline_gateway_is_a_device_fault_not_inactivity(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 8 * H, SensorType.MOTION, "active"))
    went = runner.process(DeviceStatus(env=env(DAY0 + 9 * H), state="offline", will=True))
    assert [(d.kind, d.severity) for d in went] == [(DetectionKind.DEVICE_OFFLINE, Severity.LOW)]
    # Eleven hours later, still offline: no inactivity, no second device_offline.
    assert runner.tick(DAY0 + 13 * H) == []
    assert runner.tick(DAY0 + 19 * H) == []
    back = runner.process(DeviceStatus(env=env(DAY0 + 19 * H), state="online"))
    assert kinds(back) == [(DetectionKind.DEVICE_OFFLINE, True)]
    # The blind spell does not count: the clock restarts when the gateway returns.
    assert runner.tick(DAY0 + 21 * H) == []
    assert runner.tick(DAY0 + 23 * H + 1) == []  # night now: not waking time
    assert kinds(runner.tick(DAY0 + 32 * H)) == [(DetectionKind.INACTIVITY, False)]


# -- night rules and doors -----------------------------------------------------------------


def test_night_wandering(runner: RuleRunner) -> None:
    opened = DAY0 + 2 * H  # 02:00
    assert runner.process(home(opened, SensorType.DOOR, "open", "front")) == []
    assert runner.tick(opened + 599) == []
    raised = runner.tick(opened + 600)
    assert [(d.kind, d.severity, d.event_ts) for d in raised] == [
        (DetectionKind.NIGHT_WANDERING, Severity.HIGH, opened)
    ]
    assert runner.tick(opened + 900) == []
    closed = runner.process(home(opened + 1200, SensorType.DOOR, "closed", "front"))
    assert kinds(closed) == [(DetectionKind.NIGHT_WANDERING, True)]


def test_door_closed_in_time_at_night_raises_nothing(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 23 * H, SensorType.DOOR, "open"))
    assert runner.process(home(DAY0 + 23 * H + 300, SensorType.DOOR, "closed")) == []
    assert runner.tick(DAY0 + 23 * H + 3600) == []


def test_daytime_door_left_open(runner: RuleRunner) -> None:
    opened = DAY0 + 14 * H
    runner.process(home(opened, SensorType.DOOR, "open", "balcony"))
    assert runner.tick(opened + 1000) == []  # not night wandering in the day
    raised = runner.tick(opened + 1800)
    assert [(d.kind, d.severity) for d in raised] == [(DetectionKind.DOOR_OPEN, Severity.MEDIUM)]
    assert raised[0].evidence["sensor_id"] == "balcony"


def test_two_doors_are_timed_separately(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 1 * H, SensorType.DOOR, "open", "front"))
    runner.process(home(DAY0 + 1 * H + 500, SensorType.DOOR, "open", "back"))
    assert [d.evidence["sensor_id"] for d in runner.tick(DAY0 + 1 * H + 700)] == ["front"]
    assert [d.evidence["sensor_id"] for d in runner.tick(DAY0 + 1 * H + 1100)] == ["back"]


def test_bed_exit_at_night(runner: RuleRunner) -> None:
    left = DAY0 + 3 * H
    runner.process(home(left, SensorType.BED, "empty"))
    assert runner.tick(left + 1199) == []
    assert kinds(runner.tick(left + 1200)) == [(DetectionKind.BED_EXIT, False)]
    assert kinds(runner.process(home(left + 1500, SensorType.BED, "occupied"))) == [
        (DetectionKind.BED_EXIT, True)
    ]


def test_bed_exit_back_in_time_and_daytime_exits(runner: RuleRunner) -> None:
    runner.process(home(DAY0 + 3 * H, SensorType.BED, "empty"))
    runner.process(home(DAY0 + 3 * H + 600, SensorType.BED, "occupied"))
    runner.process(home(DAY0 + 10 * H, SensorType.BED, "empty"))  # getting up at 10:00
    assert runner.tick(DAY0 + 12 * H) == []


# -- time-of-day helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minute", "start", "end", "inside"),
    [(420, "07:00", "22:00", True), (1319, "07:00", "22:00", True),
     (1320, "07:00", "22:00", False), (419, "07:00", "22:00", False),
     (1380, "22:00", "07:00", True), (60, "22:00", "07:00", True),
     (420, "22:00", "07:00", False), (720, "00:00", "24:00", True)],
)  # fmt: skip
def test_in_daily_window(minute: float, start: str, end: str, inside: bool) -> None:
    assert in_daily_window(minute, DailyHours(start=start, end=end)) is inside


@pytest.mark.parametrize(
    ("start_h", "end_h", "waking_h"),
    [(8, 10, 2), (21, 23, 1), (21, 31, 1), (21, 34, 4), (6, 6 + 48, 30), (23, 30, 0)],
)
def test_seconds_in_daily_window(start_h: float, end_h: float, waking_h: float) -> None:
    waking = DailyHours(start="07:00", end="22:00")
    got = seconds_in_daily_window(DAY0 + start_h * H, DAY0 + end_h * H, waking, UTC)
    assert got == pytest.approx(waking_h * H)


def test_daily_window_follows_daylight_saving() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # 2026-03-29 is the spring-forward day in Europe: 07:00-22:00 local is still 15 h.
    start = dt.datetime(2026, 3, 29, 0, 0, tzinfo=berlin).timestamp()
    waking = DailyHours(start="07:00", end="22:00")
    assert seconds_in_daily_window(start, start + 23 * H, waking, berlin) == pytest.approx(15 * H)
    assert local_minute_of_day(start + 8 * H, berlin) == pytest.approx(9 * 60)
