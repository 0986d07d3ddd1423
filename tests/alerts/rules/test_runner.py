"""The streaming runner: lateness, offline inhibition, battery, falls, batching, state size."""

from __future__ import annotations

import gc
import itertools
import sys
import tracemalloc
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from alerts.rules.config import load_rules, load_rules_text
from alerts.rules.detection import Detection, DetectionKind, Severity
from alerts.rules.fall import FallDetectorBank, FallParams
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
  long-history:
    fall: {pre_start_s: 3.0}  # a longer ring than the defaults: a second fall bank
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


def accel(
    ts: float,
    samples_g: npt.NDArray[Any],
    device_id: str = "w-1",
    *,
    rate_hz: float = 50.0,
    position: str | None = "waist",
) -> AccelWindow:
    data = np.ascontiguousarray(samples_g, dtype="<f4")
    with np.errstate(invalid="ignore"):
        peak_g = float(np.nan_to_num(np.linalg.norm(data, axis=1)).max()) if data.size else 0.0
    return AccelWindow(
        env=env(ts, device_id),
        rate_hz=rate_hz,
        n_samples=data.shape[0],
        samples_g=data.tobytes(),
        peak_g=peak_g,
        position=position,
    )


def synthetic_fall(rate_hz: float, *, before_s: float = 3.0, after_s: float = 5.0) -> np.ndarray:
    """Upright, a 0.2 s free fall, an impact, then lying still (x up after the fall)."""
    rate = int(rate_hz)
    upright = np.tile(np.array([0, 0, 1.0]), (int(before_s * rate), 1))
    freefall = np.tile(np.array([0, 0, 0.2]), (rate // 5, 1))
    impact = np.array([[2.5, 0.5, 3.0], [1.0, 0.2, 1.5]])
    lying = np.tile(np.array([1.0, 0, 0]), (int(after_s * rate), 1))
    return np.vstack([upright, freefall, impact, lying])


def test_fall_event_becomes_a_critical_detection() -> None:
    rules = load_rules_text("version: 1\ndefaults:\n  fall: {impact_g: 2.5}\n")
    runner = RuleRunner(rules, resident_for=lambda _: "carol")
    signal = synthetic_fall(50.0).astype(np.float32)
    detections: list[Detection] = []
    for i in range(0, signal.shape[0], 50):
        detections += runner.process(accel(T0 + i / 50, signal[i : i + 50]))
    (fall,) = detections
    assert (fall.kind, fall.severity, fall.resident_id) == (
        DetectionKind.FALL,
        Severity.CRITICAL,
        "carol",
    )
    assert fall.event_ts == pytest.approx(T0 + 3.2, abs=0.05)  # the impact, device clock
    assert fall.evidence["peak_g"] == pytest.approx(3.94, abs=0.01)
    assert fall.evidence["tilt_deg"] == pytest.approx(90.0, abs=1.0)
    assert fall.evidence["position"] == "waist"
    decided = fall.evidence["decided_device_ts"]
    assert isinstance(decided, float) and 0 < decided - fall.event_ts <= 5.0
    # Reported with the window that held the deciding data (received 0.5 s after its start).
    window_start = fall.detected_ts - 0.5
    assert window_start <= decided < window_start + 1.0
    params = runner.fall_params("w-1")
    assert params is not None and params.impact_g == 2.5  # the rules file reached it
    assert runner.counters["accel_samples"] == signal.shape[0]


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


ACCEL_T0 = T0 + 285.0  # the accelerometer streams overlap w-4 going offline (T0 + 300)


def _accel_stream(rng: np.random.Generator) -> list[AccelWindow]:
    """30 s of accelerometer windows from 26 devices, in arrival order.

    Rates 20, 50 and 200 Hz, windows of 1 s, 0.5 s and 2 s at random phases to the 0.2 s
    blocks, falls (two per falling device, 12 s apart), jolts that open impact episodes
    and are not falls, NaN rows, an all-NaN window, a gap, a truncated payload, a refused
    rate, a jittered (overlapping) start, a replay, one far too late, and a device that
    sends its windows two at a time.
    """
    windows: list[tuple[float, int, AccelWindow]] = []
    devices = [f"a-{d}" for d in range(24)] + ["w-0", "w-4"]
    for d, device_id in enumerate(devices):
        rate_hz = (20.0, 50.0, 200.0)[d % 3]
        window_s = 2.0 if d in (22, 23) else (1.0, 0.5)[(d // 3) % 2]
        n = int(window_s * rate_hz)
        duration_s = 30.0
        signal = np.tile([0.0, 0.0, 1.0], (int(duration_s * rate_hz), 1))
        signal += rng.normal(0.0, 0.03, signal.shape)
        if d % 2 == 0:  # falls, then getting up again
            for start_s in (4.0 + 0.37 * (d % 5), 17.0):
                fall = synthetic_fall(rate_hz, before_s=0.0, after_s=4.0)
                a = int(start_s * rate_hz)
                signal[a : a + fall.shape[0]] = fall + rng.normal(0.0, 0.01, fall.shape)
        elif d % 4 == 1:  # jolts: impacts without a turn of gravity
            for t_s in np.arange(3.0, duration_s, 3.1):
                signal[int(t_s * rate_hz)] = [0.3, 0.2, 2.4]
        if d == 1:
            signal[::13] = np.nan
        phase_s = float(rng.uniform(0.0, 1.0)) if d else 0.0
        for w, a in enumerate(range(0, signal.shape[0], n)):
            t0 = ACCEL_T0 + phase_s + a / rate_hz
            chunk = signal[a : a + n].copy()
            position = ("waist", "wrist", None)[d % 3] if d != 5 else "ankle"
            if d == 4 and w == 5:
                chunk[:] = np.nan
            if d == 6 and 3 <= w <= 5:
                continue  # a gap: nothing sent
            if d == 9 and w == 7:
                t0 -= 0.5 / rate_hz  # a jittered clock: overlaps the last window
            window = accel(t0, chunk, device_id, rate_hz=rate_hz, position=position)
            if d == 7 and w == 2:
                window = msgspec.structs.replace(window, samples_g=window.samples_g[:-4])
            if d == 8 and w == 3:
                window = msgspec.structs.replace(window, rate_hz=0.0)
            arrival = t0 + window_s
            if d == 10 and w % 2 == 0:
                arrival += window_s  # sent two at a time: both windows arrive together
            windows.append((arrival, len(windows), window))
            if d == 11 and w == 9:
                windows.append((arrival + 0.1, len(windows), window))  # a replay
    # w-0's first window, re-delivered after its last vitals: beyond the lateness allowance.
    late = next(w for _, _, w in windows if w.env.device_id == "w-0")
    windows.append((T0 + 2000.0, len(windows), late))
    return [w for _, _, w in sorted(windows, key=lambda item: (item[0], item[1]))]


def _merge_by_time(*streams: list[Reading]) -> list[Reading]:
    merged = [(r.env.device_ts, i, r) for i, r in enumerate(itertools.chain(*streams))]
    return [r for _, _, r in sorted(merged, key=lambda item: (item[0], item[1]))]


def _fall_state(runner: RuleRunner, device_id: str) -> object:
    """Everything the runner keeps of a device's fall detector, for exact comparison."""
    device = runner._devices[device_id]
    bank, slot = runner._fall_bank_of(device), runner._cols.fall_slot[device.row]
    if bank is None:
        return None
    episodes = bank._episodes.get(slot)
    return (
        bank.ring_len,
        bank.params_of(slot),
        bank._ring[slot].tobytes(),
        bank._part[slot].tobytes(),
        int(bank._part_block[slot]),
        int(bank._newest_block[slot]),
        bool(bank._have_blocks[slot]),
        bool(bank._part_open[slot]),
        float(bank._last_t_s[slot]),
        float(bank._last_event_ts[slot]),
        bool(bank._busy[slot]),
        None
        if episodes is None
        else (
            episodes.n_pend,
            episodes.open_end_s,
            episodes.pend.tobytes(),
            episodes.pend_ts.tobytes(),
        ),
    )


def _as_text(detections: list[Detection]) -> list[str]:
    # repr: NaN evidence (no history before an impact) compares equal as text.
    return sorted(repr(msgspec.structs.asdict(d)) for d in detections)


@pytest.mark.parametrize("batch", [97, 1000, 5000])
def test_process_batch_matches_process(batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Vitals and accelerometer windows: the detections (with their evidence), the counters
    # and every device's state must be those of one-at-a-time process().
    rng = np.random.default_rng(11)
    accel_windows: list[Reading] = list(_accel_stream(rng))
    stream = _merge_by_time(_mixed_stream(), accel_windows[:-1]) + accel_windows[-1:]

    def owner(device_id: str) -> str | None:
        if device_id == "a-23":
            return "long-history"
        # Two rule sets in every batch: odd devices are on the COPD overrides.
        return "copd" if int(device_id.split("-")[1]) % 2 else None

    one_by_one = RuleRunner(RULES, resident_for=owner)
    expected = [d for r in stream for d in one_by_one.process(r)]

    batched_quiet = 0
    feed_quiet = FallDetectorBank._feed_quiet

    def counting(self: FallDetectorBank, *args: Any) -> npt.NDArray[np.bool_]:
        nonlocal batched_quiet
        quiet = feed_quiet(self, *args)
        batched_quiet += int(quiet.sum())
        return quiet

    monkeypatch.setattr(FallDetectorBank, "_feed_quiet", counting)
    batched = RuleRunner(RULES, resident_for=owner)
    got = [
        d
        for i in range(0, len(stream), batch)
        for d in batched.process_batch(stream[i : i + batch])
    ]
    assert _as_text(got) == _as_text(expected)
    assert one_by_one.counters == batched.counters
    for device_id in one_by_one._devices:
        assert _fall_state(batched, device_id) == _fall_state(one_by_one, device_id), device_id
        assert batched.vitals_status(device_id, T0 + 1200) == one_by_one.vitals_status(
            device_id, T0 + 1200
        )
    # The accelerometer part did what it is meant to test.
    falls = [d for d in expected if d.kind is DetectionKind.FALL]
    assert len({d.device_id for d in falls}) >= 10
    assert len(falls) >= 20
    assert batched.counters["accel_rejected"] == 2  # truncated payload, refused rate
    assert batched.counters["late_dropped"] == 1
    assert len(batched._fall_banks) == 2
    # Many windows here are mid-episode on purpose; still, a good share went vectorised.
    assert batched_quiet > len(accel_windows) / 3
    # And the vitals part.
    assert len(expected) > 20
    spo2_raised = {d.device_id for d in expected if d.evidence.get("parameter") == "spo2_pct"}
    assert spo2_raised == {f"w-{d}" for d in range(0, 30, 6)}  # the COPD (odd) ones: no


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


def test_new_fall_overrides_apply_from_the_next_window_with_a_fresh_slot() -> None:
    overrides: dict[str, dict[str, Any]] = {}
    runner = make_runner(overrides_for=overrides.get)
    quiet = np.tile(np.array([0, 0, 1], np.float32), (50, 1))
    runner.process_batch([accel(T0 + s, quiet, f"w-{d}") for s in range(2) for d in (1, 2)])
    before = runner.fall_params("w-1")
    overrides["alice"] = {"fall": {"tilt_deg": 55}}
    runner.invalidate_resident("alice")
    assert runner.fall_params("w-1") is None  # the slot was given back
    runner.process_batch([accel(T0 + 2, quiet, "w-1")])
    after = runner.fall_params("w-1")
    assert before is not None and after is not None
    assert (before.tilt_deg, after.tilt_deg) == (40.0, 55.0)
    device = runner._devices["w-1"]
    bank = runner._fall_bank_of(device)
    assert bank is not None and len(bank) == 2  # w-1 and w-2
    assert bank._last_t_s[runner._cols.fall_slot[device.row]] == T0 + 2 + 49 / 50  # anew


def test_refresh_device_after_reassignment() -> None:
    owners = {"w-1": "alice"}
    runner = RuleRunner(RULES, resident_for=owners.get)
    raise_high_hr(runner, T0)
    owners["w-1"] = "copd"
    runner.refresh_device("w-1")
    (d,) = raise_high_hr(runner, T0 + 1000)
    assert d.resident_id == "copd"


def _device_readings(device_id: str, ts: float, kind: str) -> list[Reading]:
    envelope = Envelope(device_id=device_id, seq=1, device_ts=ts, received_ts=ts + 0.2)
    readings: list[Reading] = [
        Vitals(
            env=envelope, hr_bpm=70, spo2_pct=97, temp_c=36.8, resp_rate_per_min=14, sbp_mmhg=120
        )
    ]
    if kind == "wearable":
        quiet = np.tile(np.array([0, 0, 1], np.float32), (50, 1))
        readings += [accel(ts + s, quiet, device_id) for s in range(3)]
    else:  # a home gateway, with a door held open (the largest home state: a timer)
        readings.append(HomeEvent(env=envelope, sensor=SensorType.DOOR, state="open"))
        readings.append(HomeEvent(env=envelope, sensor=SensorType.MOTION, state="active"))
    return readings


@pytest.mark.parametrize("kind", ["wearable", "gateway"])
def test_per_device_state_is_under_one_kilobyte(kind: str) -> None:
    # Counted from before the runner exists, so its preallocated columns count too.
    config = load_rules()
    n = 400
    ids = [f"dev-{i:05d}" for i in range(n)]
    streams = [_device_readings(device_id, T0 + i, kind) for i, device_id in enumerate(ids)]
    # Imports and caches, built once per process, are not per-device state: warm them up,
    # through the batched paths too.
    warm = RuleRunner(config, resident_for=lambda _: None)
    for d in range(8):
        warm.process_batch(_device_readings(f"warm-{d}", T0, "wearable"))
    warm.process_batch([r for d in range(8) for r in _device_readings(f"w{d}", T0, kind)])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    runner = RuleRunner(config, resident_for=lambda _: None, initial_capacity=n)
    for readings in streams:
        runner.process_batch(readings)
    del streams
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # Leave the device-id strings out: the caller owns them.
    ids_bytes = sum(sys.getsizeof(i) for i in ids)
    per_device = (grown - ids_bytes) / n
    assert per_device <= 1024, per_device
    assert len(runner) == n


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
    assert runner.fall_params("w-1") == expected


def test_size_for_presizes_each_kind_of_state_for_the_fleet() -> None:
    """The engine sizes the columns from the registry at start: no 25 % growth slack, and fall
    and home slots only for devices of that kind."""
    runner = make_runner()
    runner.size_for(devices=5_000, wearables=3_000, homes=2_000)
    runner.process(accel(T0, np.tile([0.0, 0.0, 1.0], (50, 1))))
    runner.process(HomeEvent(env=env(T0, "gw"), sensor=SensorType.MOTION, state="active"))
    fall_bank = runner._fall_bank_list[0]
    assert runner._homes is not None
    assert 5_000 < runner._vitals.capacity <= 5_300
    assert 3_000 < fall_bank.capacity <= 3_200
    assert 2_000 < runner._homes.capacity <= 2_150
    # State in use is never resized: a second call changes nothing.
    runner.size_for(devices=50_000, wearables=30_000, homes=20_000)
    assert runner._vitals.capacity <= 5_300 and fall_bank.capacity <= 3_200
