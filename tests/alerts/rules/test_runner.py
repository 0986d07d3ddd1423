"""The streaming runner: lateness, offline inhibition, battery, falls, batching, state size."""

from __future__ import annotations

import itertools
import sys
import tracemalloc
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from alerts.rules import runner as runner_module
from alerts.rules.config import load_rules, load_rules_text
from alerts.rules.detection import Detection, DetectionKind, Severity
from alerts.rules.fall import FallEvent, FallParams
from alerts.rules.runner import RuleRunner
from devices.readings import (
    AccelWindow,
    DeviceStatus,
    Envelope,
    HomeEvent,
    Reading,
    SensorType,
    SosPress,
    Vitals,
)

T0 = 1_780_000_000.0
RULES = load_rules_text(
    """
version: 1
defaults:
  device: {lateness_allowance_s: 120, offline_after_s: 900}
  vitals: {min_duration_s: 120, clear_after_s: 120}
residents:
  copd:
    vitals:
      parameters:
        spo2_pct: {critical_below: 85, warn_below: 88}
"""
)
_seq = itertools.count()


def env(ts: float, device_id: str = "w-1") -> Envelope:
    return Envelope(device_id=device_id, seq=next(_seq), device_ts=ts, received_ts=ts + 0.5)


def vitals(ts: float, device_id: str = "w-1", **values: Any) -> Vitals:
    return Vitals(env=env(ts, device_id), **values)


def make_runner(**kwargs: Any) -> RuleRunner:
    residents = {"w-1": "alice", "w-2": "bob", "w-copd": "copd"}
    return RuleRunner(RULES, resident_for=residents.get, **kwargs)


def kinds(detections: list[Detection]) -> list[tuple[DetectionKind, bool]]:
    return [(d.kind, d.clears) for d in detections]


def raise_high_hr(runner: RuleRunner, start: float, device_id: str = "w-1") -> list[Detection]:
    out: list[Detection] = []
    for t in (0, 60, 120):
        out += runner.process(vitals(start + t, device_id, hr_bpm=125))
    return out


# -- vitals through the runner --------------------------------------------------------------


def test_vitals_detection_carries_parameter_level_and_resident() -> None:
    runner = make_runner()
    (raised,) = raise_high_hr(runner, T0)
    assert raised.kind is DetectionKind.VITALS_ABNORMAL
    assert raised.severity is Severity.MEDIUM
    assert raised.resident_id == "alice"
    assert raised.event_ts == T0  # the run began at the first abnormal sample
    assert raised.detected_ts == T0 + 120.5
    assert raised.evidence == {
        "parameter": "hr_bpm", "value": 125.0, "previous_level": 0, "level": 1,
        "since_ts": T0, "direction": "high", "severity_level": "warn", "limit": 110.0,
    }  # fmt: skip
    out: list[Detection] = []
    for t in (200, 260, 320):
        out += runner.process(vitals(T0 + t, hr_bpm=80))
    assert kinds(out) == [(DetectionKind.VITALS_RECOVERED, True)]
    assert out[0].evidence["parameter"] == "hr_bpm"
    assert (out[0].event_ts, out[0].severity) == (T0 + 200, Severity.INFO)


def test_critical_level_takes_the_critical_severity() -> None:
    runner = make_runner()
    out: list[Detection] = []
    for t in (0, 60, 120):
        out += runner.process(vitals(T0 + t, spo2_pct=84))
    assert [(d.kind, d.severity, d.evidence["severity_level"]) for d in out] == [
        (DetectionKind.VITALS_ABNORMAL, Severity.HIGH, "critical")
    ]


def test_resident_override_from_the_rules_file() -> None:
    runner = make_runner()
    out: list[Detection] = []
    for t in (0, 60, 120):
        out += runner.process(vitals(T0 + t, "w-copd", spo2_pct=89))
        out += runner.process(vitals(T0 + t, "w-2", spo2_pct=89))
    assert [(d.device_id, d.evidence["parameter"]) for d in out] == [("w-2", "spo2_pct")]


def test_override_lookup_callable_and_bad_override_fallback() -> None:
    overrides = {
        "alice": {"vitals": {"parameters": {"hr_bpm": {"warn_above": 130, "critical_above": 150}}}},
        "bob": {"vitals": {"parameters": {"hr_bpm": {"warn_above": "fast"}}}},
    }
    runner = make_runner(overrides_for=overrides.get)
    assert raise_high_hr(runner, T0, "w-1") == []  # alice's limit is 130
    assert len(raise_high_hr(runner, T0, "w-2")) == 1  # bob's override is invalid: file rules
    assert runner.counters["bad_override"] == 1


# -- lateness --------------------------------------------------------------------------------


def test_reading_older_than_the_allowance_is_dropped_and_counted() -> None:
    runner = make_runner()
    raise_high_hr(runner, T0)
    for t in (200, 260, 320):
        runner.process(vitals(T0 + t, hr_bpm=80))  # recovered at 320
    # A stale burst of high readings from before the recovery must not re-raise it.
    late = [runner.process(vitals(T0 + t, hr_bpm=125)) for t in (150, 170, 190)]
    assert late == [[], [], []]
    assert runner.counters["late_dropped"] == 3


def test_late_home_event_cannot_reopen_a_cleared_hazard() -> None:
    runner = make_runner()
    smoke = HomeEvent(env=env(T0, "gw"), sensor=SensorType.SMOKE, state="alarm")
    clear = HomeEvent(env=env(T0 + 300, "gw"), sensor=SensorType.SMOKE, state="clear")
    assert len(runner.process(smoke)) == 1
    assert kinds(runner.process(clear)) == [(DetectionKind.SMOKE, True)]
    assert runner.process(smoke) == []  # redelivered after 300 s: too late


def test_within_the_allowance_readings_are_used() -> None:
    runner = make_runner()
    runner.process(vitals(T0 + 100, battery_pct=80))
    assert kinds(runner.process(vitals(T0 + 30, battery_pct=10))) == [
        (DetectionKind.BATTERY_LOW, False)
    ]
    assert runner.counters["late_dropped"] == 0


def test_a_late_sos_press_is_never_dropped() -> None:
    runner = make_runner()
    runner.process(vitals(T0 + 1000, hr_bpm=70))
    (sos,) = runner.process(SosPress(env=env(T0, "w-1")))
    assert (sos.kind, sos.severity, sos.evidence["late"]) == (
        DetectionKind.SOS,
        Severity.CRITICAL,
        True,
    )
    assert runner.process(SosPress(env=env(T0, "w-1"), action="cancel")) == []


# -- offline -------------------------------------------------------------------------------


def test_offline_device_inhibits_vitals_and_emits_one_device_offline() -> None:
    runner = make_runner()
    went = runner.process(DeviceStatus(env=env(T0), state="offline", will=True))
    assert [(d.kind, d.severity, d.clears) for d in went] == [
        (DetectionKind.DEVICE_OFFLINE, Severity.LOW, False)
    ]
    assert runner.process(DeviceStatus(env=env(T0 + 1), state="offline", will=True)) == []
    assert raise_high_hr(runner, T0 + 10) == []
    assert runner.counters["vitals_inhibited_offline"] == 3
    assert not runner.is_online("w-1")
    back = runner.process(DeviceStatus(env=env(T0 + 200), state="online"))
    assert kinds(back) == [(DetectionKind.DEVICE_OFFLINE, True)]
    assert len(raise_high_hr(runner, T0 + 300)) == 1


def test_offline_does_not_inhibit_sos() -> None:
    runner = make_runner()
    runner.set_device_online("w-1", False, now_ts=T0)
    assert kinds(runner.process(SosPress(env=env(T0 + 5)))) == [(DetectionKind.SOS, False)]


def test_manual_offline_holds_until_manual_online() -> None:
    runner = make_runner()
    runner.process(vitals(T0, hr_bpm=70))
    assert kinds(runner.set_device_online("w-1", False)) == [(DetectionKind.DEVICE_OFFLINE, False)]
    assert runner.process(DeviceStatus(env=env(T0 + 10), state="online")) == []
    assert raise_high_hr(runner, T0 + 20) == []
    assert kinds(runner.set_device_online("w-1", True, now_ts=T0 + 200)) == [
        (DetectionKind.DEVICE_OFFLINE, True)
    ]


def test_silence_marks_a_device_offline_until_it_talks_again() -> None:
    runner = make_runner()
    runner.process(vitals(T0, hr_bpm=70))
    assert runner.tick(T0 + 900) == []
    (went,) = runner.tick(T0 + 1000)
    assert (went.kind, went.evidence["reason"]) == (DetectionKind.DEVICE_OFFLINE, "no_messages")
    assert runner.tick(T0 + 2000) == []
    back = runner.process(vitals(T0 + 2100, hr_bpm=70))
    assert kinds(back) == [(DetectionKind.DEVICE_OFFLINE, True)]


# -- battery -------------------------------------------------------------------------------


def test_battery_low_has_hysteresis() -> None:
    runner = make_runner()
    levels = [50, 14, 13, 16, 20, 14, 25, 24, 10]
    out = [
        kinds(runner.process(DeviceStatus(env=env(T0 + i), state="online", battery_pct=pct)))
        for i, pct in enumerate(levels)
    ]
    low, clear = [(DetectionKind.BATTERY_LOW, False)], [(DetectionKind.BATTERY_LOW, True)]
    assert out == [[], low, [], [], [], [], clear, [], low]


# -- falls ---------------------------------------------------------------------------------


class FakeFallDetector:
    """Stands in for the detector: reports a fall when a window's peak passes 3 g."""

    instances: list[FakeFallDetector] = []  # noqa: RUF012

    def __init__(self, params: FallParams = FallParams()) -> None:  # noqa: B008
        self.params = params
        self.fed: list[tuple[float, float, tuple[int, ...]]] = []
        FakeFallDetector.instances.append(self)

    def feed(self, t0_s: float, rate_hz: float, samples_g: npt.ArrayLike) -> list[FallEvent]:
        acc = np.asarray(samples_g)
        self.fed.append((t0_s, rate_hz, acc.shape))
        peak = float(np.linalg.norm(acc, axis=1).max())
        if peak < 3:
            return []
        return [FallEvent(t0_s + 0.5, t0_s + 3.0, peak, {"tilt_deg": 80.0, "post_std_g": 0.05})]

    def state_nbytes(self) -> int:
        return 0


def accel(ts: float, samples_g: npt.NDArray[np.float32], device_id: str = "w-1") -> AccelWindow:
    data = samples_g.astype("<f4")
    return AccelWindow(
        env=env(ts, device_id),
        rate_hz=50.0,
        n_samples=data.shape[0],
        samples_g=data.tobytes(),
        peak_g=float(np.linalg.norm(data, axis=1).max()),
        position="waist",
    )


def test_fall_event_becomes_a_critical_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "FallDetector", FakeFallDetector)
    FakeFallDetector.instances = []
    rules = load_rules_text("version: 1\ndefaults:\n  fall: {impact_g: 2.5}\n")
    runner = RuleRunner(rules, resident_for=lambda _: "carol")
    quiet = np.tile(np.array([0, 0, 1], np.float32), (50, 1))
    assert runner.process(accel(T0, quiet)) == []
    hit = quiet.copy()
    hit[20] = [0, 0, 4.0]
    (fall,) = runner.process(accel(T0 + 1, hit))
    assert (fall.kind, fall.severity, fall.resident_id) == (
        DetectionKind.FALL,
        Severity.CRITICAL,
        "carol",
    )
    assert fall.event_ts == T0 + 1.5
    assert fall.evidence["peak_g"] == pytest.approx(4.0)
    assert fall.evidence["tilt_deg"] == 80.0
    assert fall.evidence["position"] == "waist"
    (detector,) = FakeFallDetector.instances
    assert detector.params.impact_g == 2.5  # the rules file's fall section reached it
    assert detector.fed == [(T0, 50.0, (50, 3)), (T0 + 1, 50.0, (50, 3))]
    assert runner.counters["accel_samples"] == 100


def test_real_fall_detector_on_a_synthetic_fall() -> None:
    runner = make_runner()
    rate_hz = 50
    upright = np.tile(np.array([0, 0, 1.0]), (3 * rate_hz, 1))
    freefall = np.tile(np.array([0, 0, 0.2]), (rate_hz // 5, 1))
    impact = np.array([[2.5, 0.5, 3.0], [1.0, 0.2, 1.5]])
    lying = np.tile(np.array([1.0, 0, 0]), (5 * rate_hz, 1))
    signal = np.vstack([upright, freefall, impact, lying]).astype(np.float32)
    detections: list[Detection] = []
    for i in range(0, signal.shape[0], rate_hz):
        detections += runner.process(accel(T0 + i / rate_hz, signal[i : i + rate_hz]))
    assert [d.kind for d in detections] == [DetectionKind.FALL]
    assert detections[0].severity is Severity.CRITICAL
    assert 0 <= detections[0].event_ts - (T0 + 3.2) < 0.2


def test_a_broken_accel_window_is_counted_not_raised() -> None:
    runner = make_runner()
    bad = AccelWindow(env=env(T0), rate_hz=0.0, n_samples=1, samples_g=b"\0" * 12, peak_g=0.0)
    assert runner.process(bad) == []
    assert runner.counters["accel_rejected"] == 1


# -- batching and state ----------------------------------------------------------------------


def _mixed_stream() -> list[Reading]:
    rng = np.random.default_rng(7)
    readings: list[Reading] = []
    for step in range(40):
        for d in range(30):
            device_id = f"w-{d}"
            ts = T0 + step * 30 + d * 0.01
            hr = 125.0 if (d % 3 == 0 and step > 5) else 70.0 + rng.normal(0, 3)
            readings.append(
                Vitals(
                    env=Envelope(device_id=device_id, seq=step, device_ts=ts, received_ts=ts),
                    hr_bpm=hr,
                    spo2_pct=89.0 if d % 3 == 0 else 96.0,  # abnormal for the defaults only
                    battery_pct=50.0 - step,
                )
            )
            if d == 4 and step == 10:
                readings.append(
                    DeviceStatus(
                        env=Envelope(device_id=device_id, seq=999, device_ts=ts, received_ts=ts),
                        state="offline",
                    )
                )
    return readings


def test_process_batch_matches_process() -> None:
    stream = _mixed_stream()

    def owner(device_id: str) -> str | None:
        # Two rule sets in every batch: odd devices are on the COPD overrides.
        return "copd" if int(device_id.split("-")[1]) % 2 else None

    one_by_one = RuleRunner(RULES, resident_for=owner)
    expected = [d for r in stream for d in one_by_one.process(r)]
    batched = RuleRunner(RULES, resident_for=owner)
    got = [d for i in range(0, len(stream), 97) for d in batched.process_batch(stream[i : i + 97])]
    key = lambda d: (d.device_id, d.kind, d.event_ts, d.clears)  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert len(expected) > 20
    spo2_raised = {d.device_id for d in expected if d.evidence.get("parameter") == "spo2_pct"}
    assert spo2_raised == {f"w-{d}" for d in range(0, 30, 6)}  # the COPD (odd) ones: no
    assert one_by_one.counters == batched.counters


def test_vitals_status_reports_no_data() -> None:
    runner = make_runner()
    assert set(runner.vitals_status("unknown", T0).values()) == {"no_data"}
    runner.process(vitals(T0, hr_bpm=70))
    status = runner.vitals_status("w-1", T0 + 10)
    assert (status["hr_bpm"], status["temp_c"]) == ("normal", "no_data")


def test_invalidate_resident_applies_new_overrides_and_keeps_open_alerts() -> None:
    overrides: dict[str, dict[str, Any]] = {}
    runner = make_runner(overrides_for=overrides.get)
    assert len(raise_high_hr(runner, T0)) == 1  # 125 > 110: raised
    limits = {"warn_above": 140, "critical_above": 160}
    overrides["alice"] = {"vitals": {"parameters": {"hr_bpm": limits}}}
    runner.invalidate_resident("alice")
    # The alert stays open (no duplicate raise) and clears under the new, higher limit.
    out: list[Detection] = []
    for t in (200, 260, 320):
        out += runner.process(vitals(T0 + t, hr_bpm=125))
    assert kinds(out) == [(DetectionKind.VITALS_RECOVERED, True)]


def test_refresh_device_after_reassignment() -> None:
    owners = {"w-1": "alice"}
    runner = RuleRunner(RULES, resident_for=owners.get)
    raise_high_hr(runner, T0)
    owners["w-1"] = "copd"
    runner.refresh_device("w-1")
    (d,) = raise_high_hr(runner, T0 + 1000)
    assert d.resident_id == "copd"


def test_per_device_state_is_under_one_kilobyte() -> None:
    config = load_rules()
    runner = RuleRunner(config, resident_for=lambda _: None, initial_capacity=4096)
    n = 400
    ids = [f"dev-{i:05d}" for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, device_id in enumerate(ids):
        ts = T0 + i
        runner.process(
            Vitals(
                env=Envelope(device_id=device_id, seq=1, device_ts=ts, received_ts=ts),
                hr_bpm=70, spo2_pct=97, temp_c=36.8, resp_rate_per_min=14, sbp_mmhg=120,
            )
        )  # fmt: skip
        runner.process(
            HomeEvent(
                env=Envelope(device_id=device_id, seq=2, device_ts=ts, received_ts=ts),
                sensor=SensorType.DOOR,
                state="open",
            )
        )
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # Leave the device-id strings out: the caller owns them.
    ids_bytes = sum(sys.getsizeof(i) for i in ids)
    per_device = (grown - ids_bytes) / n
    assert per_device <= 1024, per_device


def test_news2_detection_end_to_end() -> None:
    runner = make_runner()
    out: list[Detection] = []
    for t in range(0, 301, 60):
        sample = Vitals(
            env=env(T0 + t), hr_bpm=135, spo2_pct=91, temp_c=37, resp_rate_per_min=22, sbp_mmhg=120
        )
        out += runner.process(sample)
    (news2,) = [d for d in out if d.kind is DetectionKind.NEWS2]
    assert news2.severity is Severity.HIGH
    assert news2.event_ts == T0
    assert news2.evidence["total"] == 8
    assert news2.evidence["risk"] == "high"
    assert news2.evidence["acvpu_assumed"] == "A"
    assert news2.evidence["score_pulse"] == 3
    assert "Continuous monitoring" in str(news2.evidence["response"])
    # Detections are plain values: they serialise without custom encoders.
    decoded = msgspec.json.decode(msgspec.json.encode(news2), type=Detection)
    assert decoded == news2


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("wrist", FallParams.for_position("wrist")),
        ("waist", FallParams()),
        (None, FallParams()),
        ("ankle", FallParams()),  # no preset: trunk defaults, never a crash
    ],
)
def test_fall_detector_uses_the_preset_for_the_worn_position(
    position: str | None, expected: FallParams
) -> None:
    runner = make_runner()
    window = accel(T0, np.zeros((50, 3), dtype=np.float32) + np.float32([0, -1, 0]))
    runner.process(msgspec.structs.replace(window, position=position))
    device = runner._devices["w-1"]
    assert device.fall is not None and device.fall.params == expected
