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


def test_doors_open_at_once_in_any_order(runner: RuleRunner) -> None:
    # The first open door is kept in the bank's columns, more in a side table: closing them
    # in any order, and opening another meanwhile, must keep each one's own timer.
    t = DAY0 + 14 * H  # daytime: 1800 s each
    runner.process(home(t, SensorType.DOOR, "open", "front"))
    runner.process(home(t + 100, SensorType.DOOR, "open", "back"))
    runner.process(home(t + 200, SensorType.DOOR, "open", "balcony"))
    assert runner.process(home(t + 300, SensorType.DOOR, "closed", "front")) == []
    runner.process(home(t + 400, SensorType.DOOR, "open", "garage"))
    runner.process(home(t + 400, SensorType.DOOR, "open", "back"))  # a repeat: no new timer
    fired = runner.tick(t + 2250)
    assert sorted(str(d.evidence["sensor_id"]) for d in fired) == ["back", "balcony", "garage"]
    assert {d.evidence["sensor_id"]: d.event_ts for d in fired}["back"] == t + 100
    cleared = runner.process(home(t + 2300, SensorType.DOOR, "closed", "balcony"))
    assert [(d.kind, d.clears, d.evidence["open_since_ts"]) for d in cleared] == [
        (DetectionKind.DOOR_OPEN, True, t + 200)
    ]
    assert runner.tick(t + 4000) == []  # each raised once


def test_a_reassigned_gateway_starts_its_home_state_afresh(runner: RuleRunner) -> None:
    opened = DAY0 + 2 * H
    runner.process(home(opened, SensorType.DOOR, "open", "front"))
    runner.refresh_device("gw-1")
    assert runner.tick(opened + 3600) == []  # the old timer is gone with the old state
    runner.process(home(opened + 3700, SensorType.DOOR, "open", "front"))
    assert kinds(runner.tick(opened + 4300)) == [(DetectionKind.NIGHT_WANDERING, False)]


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


# -- timers on the device's clock ----------------------------------------------------------

SERVER_NOW = DAY0 + 30 * 86400.0  # the server's clock: a month after the simulated days


def sim_env(device_ts: float, received_ts: float, device_id: str = "gw-sim") -> Envelope:
    return Envelope(
        device_id=device_id, seq=next(_seq), device_ts=device_ts, received_ts=received_ts
    )


def sim_home(device_ts: float, received_ts: float, sensor: SensorType, state: str) -> HomeEvent:
    return HomeEvent(env=sim_env(device_ts, received_ts), sensor=sensor, state=state)


def heartbeat(device_ts: float, received_ts: float) -> DeviceStatus:
    return DeviceStatus(env=sim_env(device_ts, received_ts), state="online")


def test_past_anchored_compressed_home_is_timed_on_its_own_clock(runner: RuleRunner) -> None:
    # A simulation 60x faster than real time, anchored a month in the past: its door opens at
    # 02:00 device time and stays open; heartbeats every 60 device seconds (1 server second).
    speed = 60.0
    opened = DAY0 + 2 * H

    def received(device_ts: float) -> float:
        return SERVER_NOW + (device_ts - opened) / speed

    assert runner.process(sim_home(opened, received(opened), SensorType.DOOR, "open")) == []
    # On the server's clock the door has been open for a month: no alarm for that artefact.
    assert runner.tick(received(opened) + 1) == []
    fired: list[Detection] = []
    for k in range(1, 16):  # 15 device minutes
        t = opened + 60 * k
        runner.process(heartbeat(t, received(t)))
        fired += runner.tick(received(t) + 0.5)
    assert [(d.kind, d.event_ts) for d in fired] == [(DetectionKind.NIGHT_WANDERING, opened)]
    # Raised once the device clock passed 600 s open (the estimate lags one heartbeat).
    open_s = fired[0].evidence["open_s"]
    assert isinstance(open_s, float)
    assert 600 <= open_s <= 600 + 2 * 60
    assert fired[0].detected_ts == pytest.approx(received(opened + 60 * 11) + 0.5, abs=61)


def test_home_that_stops_sending_still_times_out(runner: RuleRunner) -> None:
    # Device clock a day behind the server's; after the door opens nothing more is heard,
    # and the server's time going on (with the same offset) must still expire the timer.
    offset = -86400.0
    opened = DAY0 + 2 * H
    runner.process(sim_home(opened, opened - offset, SensorType.DOOR, "open"))
    assert runner.tick(opened - offset + 599) == []
    assert kinds(runner.tick(opened - offset + 601)) == [(DetectionKind.NIGHT_WANDERING, False)]


def test_one_wild_timestamp_fires_no_timer(runner: RuleRunner) -> None:
    offset = -86400.0
    t = DAY0 + 2 * H
    runner.process(sim_home(t, t - offset, SensorType.DOOR, "open"))
    runner.process(sim_home(t, t - offset, SensorType.MOTION, "active"))
    runner.process(sim_home(t + 5, t + 5 - offset, SensorType.BED, "empty"))
    # One reading stamped ten days ahead, in waking hours (a clock glitch).
    wild = t + 10 * 86400 + 6 * H
    runner.process(heartbeat(wild, t + 10 - offset))
    assert runner.tick(t + 20 - offset) == []
    # Two in a row would be a real clock step, and be followed.
    runner.process(heartbeat(wild + 30, t + 30 - offset))
    assert {d.kind for d in runner.tick(t + 40 - offset)} == {
        DetectionKind.NIGHT_WANDERING,
        DetectionKind.BED_EXIT,
        DetectionKind.INACTIVITY,
    }


def test_one_very_late_reading_does_not_rewind_the_clock(runner: RuleRunner) -> None:
    offset = -86400.0
    opened = DAY0 + 2 * H
    runner.process(sim_home(opened, opened - offset, SensorType.DOOR, "open"))
    runner.process(heartbeat(opened + 500, opened + 500 - offset))
    # Within the lateness allowance, but held up in transit for 110 s.
    runner.process(heartbeat(opened + 400, opened + 510 - offset))
    assert kinds(runner.tick(opened + 605 - offset)) == [(DetectionKind.NIGHT_WANDERING, False)]


def test_a_synced_device_keeps_the_server_clock(runner: RuleRunner) -> None:
    # Readings that arrive 3 s after their device time: transport, not another clock.
    opened = DAY0 + 2 * H
    runner.process(sim_home(opened, opened + 3, SensorType.DOOR, "open"))
    assert runner.tick(opened + 599.9) == []
    assert kinds(runner.tick(opened + 600)) == [(DetectionKind.NIGHT_WANDERING, False)]
