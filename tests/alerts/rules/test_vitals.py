"""Vitals thresholds: levels, hysteresis, minimum duration, quality, staleness, overrides."""

from __future__ import annotations

import numpy as np
import pytest

from alerts.rules.config import RuleSet, load_rules, load_rules_text
from alerts.rules.vitals import (
    N_VITALS,
    VITAL_INDEX,
    VitalsBank,
    VitalsChange,
    VitalsLimits,
    VitalStatus,
    advance_levels,
    vital_levels,
)

DEFAULTS = load_rules_text("version: 1\n").defaults
INDEX = VITAL_INDEX


class OneDevice:
    """A single device fed one sample at a time through both paths of the bank.

    ``step`` (numpy, batches) and ``step_one`` (scalars, one sample) must agree exactly:
    every feed runs both on twin banks and compares the changes and the whole state.
    """

    def __init__(self, rules: RuleSet = DEFAULTS) -> None:
        limits = VitalsLimits.from_rules(rules)
        self.bank = VitalsBank(capacity=1)
        self.slot = self.bank.add_device(self.bank.add_limits(limits))
        self.twin = VitalsBank(capacity=1)
        self.twin.add_device(self.twin.add_limits(limits))

    def feed(
        self,
        ts: float,
        quality: float | None = None,
        on_oxygen: bool | None = None,
        **values: float,
    ) -> list[VitalsChange]:
        return self.feed_values(ts, values, quality=quality, on_oxygen=on_oxygen)

    def feed_values(
        self,
        ts: float,
        values: dict[str, float],
        *,
        quality: float | None = None,
        on_oxygen: bool | None = None,
    ) -> list[VitalsChange]:
        row = np.full((1, N_VITALS), np.nan)
        for name, value in values.items():
            row[0, INDEX[name]] = value
        changes = self.bank.step(
            np.array([self.slot]),
            np.array([ts], float),
            row,
            np.array([np.nan if quality is None else quality]),
            np.array([-1 if on_oxygen is None else int(on_oxygen)], np.int8),
        )
        scalar_values = [values.get(name) for name in VITAL_INDEX]
        assert self.twin.step_one(self.slot, ts, scalar_values, quality, on_oxygen) == changes
        for ours, theirs in zip(self.bank._columns(), self.twin._columns(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
        return changes

    def levels(self, changes: list[VitalsChange], parameter: str = "hr_bpm") -> list[int]:
        return [c.new_level for c in changes if c.parameter == parameter]


HR_LEVELS = [
    # Default heart-rate limits: critical < 40, warn < 50, warn > 110, critical > 130.
    (39.9, 0, -2), (40, 0, -1), (49.9, 0, -1), (50, 0, 0), (110, 0, 0), (110.1, 0, 1),
    (130, 0, 1), (130.1, 0, 2),
    # Reported high (+1): hysteresis 5 keeps it high down to 105 (exclusive).
    (106, 1, 1), (105, 1, 0), (131, 1, 2),
    # Reported critically high: both high limits relaxed.
    (126, 2, 2), (125, 2, 1), (105.5, 2, 1), (105, 2, 0),
    # Reported low: limits relaxed upwards; the other side keeps plain limits.
    (54.9, -1, -1), (55, -1, 0), (39.9, -1, -2), (44.9, -2, -2), (45, -2, -1), (111, -1, 1),
]  # fmt: skip


@pytest.mark.parametrize(("hr_bpm", "reported", "expected"), HR_LEVELS)
def test_levels_with_hysteresis(hr_bpm: float, reported: int, expected: int) -> None:
    limits = VitalsLimits.from_rules(DEFAULTS)
    values = np.full(N_VITALS, np.nan)
    values[VITAL_INDEX["hr_bpm"]] = hr_bpm
    state = np.zeros(N_VITALS, np.int8)
    state[VITAL_INDEX["hr_bpm"]] = reported
    levels = vital_levels(values, state, limits.below, limits.above, limits.hysteresis)
    assert int(levels[VITAL_INDEX["hr_bpm"]]) == expected


def test_levels_work_on_batches() -> None:
    limits = VitalsLimits.from_rules(DEFAULTS)
    values = np.full((3, N_VITALS), 100.0)
    values[:, VITAL_INDEX["hr_bpm"]] = [35, 80, 140]
    levels = vital_levels(
        values, np.zeros((3, N_VITALS), np.int8), limits.below, limits.above, limits.hysteresis
    )
    assert levels[:, VITAL_INDEX["hr_bpm"]].tolist() == [-2, 0, 2]


def test_advance_levels_is_elementwise() -> None:
    step = advance_levels(
        level=np.array([1, 1, 0], np.int8),
        ts=np.array([100.0, 100.0, 100.0]),
        reported=np.array([0, 0, 1], np.int8),
        candidate=np.array([1, 0, 0], np.int8),
        candidate_since_ts=np.array([0.0, np.nan, 50.0]),
        raise_after_s=np.array([60.0, 60.0, 60.0]),
        lower_after_s=np.array([30.0, 30.0, 30.0]),
    )
    assert step.fired.tolist() == [True, False, True]
    assert step.reported.tolist() == [1, 0, 0]
    assert step.candidate_since_ts.tolist() == [0.0, 100.0, 50.0]


def test_single_noisy_sample_raises_nothing() -> None:
    dev = OneDevice()
    assert dev.feed(0, hr_bpm=80) == []
    assert dev.feed(30, hr_bpm=180) == []
    assert dev.feed(60, hr_bpm=80) == []
    assert dev.feed(400, hr_bpm=80) == []
    assert dev.bank.status(dev.slot, 400)["hr_bpm"] is VitalStatus.NORMAL


def test_sustained_abnormal_raises_after_min_duration_then_clears() -> None:
    dev = OneDevice()
    assert dev.feed(0, hr_bpm=120) == []
    assert dev.feed(60, hr_bpm=121) == []
    raised = dev.feed(120, hr_bpm=122)  # 120 s at "high": the default min duration
    assert [(c.parameter, c.old_level, c.new_level, c.since_ts, c.limit) for c in raised] == [
        ("hr_bpm", 0, 1, 0.0, 110.0)
    ]
    assert dev.feed(180, hr_bpm=108) == []  # inside the hysteresis band: still high
    assert dev.feed(240, hr_bpm=90) == []  # recovering, not yet for clear_after_s
    cleared = dev.feed(360, hr_bpm=92)
    assert [(c.old_level, c.new_level, c.since_ts) for c in cleared] == [(1, 0, 240.0)]


def test_mixed_high_and_critical_samples_count_as_a_run_of_high() -> None:
    dev = OneDevice()
    dev.feed(0, hr_bpm=140)
    dev.feed(60, hr_bpm=120)
    assert dev.levels(dev.feed(120, hr_bpm=140)) == [1]
    # Escalating to critical needs its own run.
    assert dev.feed(180, hr_bpm=140) == []
    assert dev.levels(dev.feed(240, hr_bpm=141)) == []
    assert dev.levels(dev.feed(300, hr_bpm=142)) == [2]


def test_a_sample_on_the_other_side_restarts_the_run() -> None:
    dev = OneDevice()
    dev.feed(0, hr_bpm=120)
    dev.feed(100, hr_bpm=45)  # low now: the high run is broken
    assert dev.feed(130, hr_bpm=120) == []
    assert dev.levels(dev.feed(250, hr_bpm=120)) == [1]


def test_low_quality_samples_are_ignored_not_normal() -> None:
    dev = OneDevice()
    dev.feed(0, hr_bpm=120)
    # A clean-looking value with poor signal must not break the run ...
    assert dev.feed(60, quality=0.2, hr_bpm=80) == []
    assert dev.levels(dev.feed(120, quality=0.9, hr_bpm=125)) == [1]
    # ... and must not count as a recovery either.
    for t in (180, 300, 420, 540):
        assert dev.feed(t, quality=0.1, hr_bpm=75) == []
    assert dev.bank.status(dev.slot, 540)["hr_bpm"] is VitalStatus.HIGH
    # Ignored samples do not keep the parameter fresh.
    assert dev.bank.status(dev.slot, 120 + 901)["hr_bpm"] is VitalStatus.NO_DATA


def test_no_data_is_not_normal() -> None:
    dev = OneDevice()
    assert set(dev.bank.status(dev.slot, 0).values()) == {VitalStatus.NO_DATA}
    dev.feed(1000, hr_bpm=70, spo2_pct=97)
    status = dev.bank.status(dev.slot, 1000)
    assert status["hr_bpm"] is VitalStatus.NORMAL
    assert status["temp_c"] is VitalStatus.NO_DATA
    assert dev.bank.status(dev.slot, 1000 + 900)["hr_bpm"] is VitalStatus.NORMAL
    assert dev.bank.status(dev.slot, 1000 + 901)["hr_bpm"] is VitalStatus.NO_DATA


def test_a_gap_longer_than_staleness_restarts_the_run() -> None:
    dev = OneDevice()
    dev.feed(0, hr_bpm=120)
    # 1000 s later with no samples between: the earlier sample proves nothing about the gap.
    assert dev.feed(1000, hr_bpm=120) == []
    assert dev.levels(dev.feed(1120, hr_bpm=120)) == [1]


def test_out_of_order_sample_is_skipped() -> None:
    dev = OneDevice()
    dev.feed(100, hr_bpm=120)
    assert dev.feed(50, hr_bpm=200) == []
    assert dev.levels(dev.feed(220, hr_bpm=120)) == [1]
    assert dev.feed(260, hr_bpm=120) == []


def test_copd_override_moves_the_spo2_limits() -> None:
    config = load_rules()
    default, copd = OneDevice(config.defaults), OneDevice(config.for_resident("demo-copd-001"))
    for t in (0, 60, 120):
        default_changes = default.feed(t, spo2_pct=89)
        copd_changes = copd.feed(t, spo2_pct=89)
    assert default.levels(default_changes, "spo2_pct") == [-1]  # below 92 for the defaults
    assert copd_changes == []  # 89 is inside the 88-92 target
    for t in (200, 260, 320):
        copd_changes = copd.feed(t, spo2_pct=84)
    assert copd.levels(copd_changes, "spo2_pct") == [-2]


def test_per_parameter_min_duration_override() -> None:
    rules = load_rules_text(
        "version: 1\ndefaults:\n  vitals:\n    parameters:\n"
        "      spo2_pct: {critical_below: 85, warn_below: 90, min_duration_s: 0}\n"
    ).defaults
    dev = OneDevice(rules)
    assert dev.levels(dev.feed(0, spo2_pct=84), "spo2_pct") == [-2]
    assert dev.levels(dev.feed(10, hr_bpm=200), "hr_bpm") == []  # others keep 120 s


def _vitals_for_news2(dev: OneDevice, ts: float, **overrides: float) -> list[VitalsChange]:
    values = {"hr_bpm": 70.0, "spo2_pct": 97.0, "temp_c": 37.0, "resp_rate_per_min": 16.0,
              "sbp_mmhg": 120.0} | overrides  # fmt: skip
    return [c for c in dev.feed_values(ts, values) if c.parameter == "news2"]


def test_news2_needs_all_five_fresh_parameters() -> None:
    dev = OneDevice()
    # Deranged but incomplete (no temperature): no NEWS2 at all.
    for t in (0, 200, 400):
        changes = dev.feed(t, hr_bpm=135, spo2_pct=91, resp_rate_per_min=26, sbp_mmhg=85)
        assert [c for c in changes if c.parameter == "news2"] == []


def test_news2_band_raises_and_clears_with_min_duration() -> None:
    dev = OneDevice()
    sick = {"hr_bpm": 135, "spo2_pct": 91, "resp_rate_per_min": 22}  # 3 + 3 + 2 = 8: high
    assert _vitals_for_news2(dev, 0, **sick) == []
    assert _vitals_for_news2(dev, 200, **sick) == []
    raised = _vitals_for_news2(dev, 300, **sick)
    assert [(c.new_level, c.value, c.since_ts) for c in raised] == [(3, 8.0, 0.0)]
    assert raised[0].news2_scores == (2, 3, 0, 0, 3, 0, 0)
    assert _vitals_for_news2(dev, 400) == []
    cleared = _vitals_for_news2(dev, 700)
    assert [(c.old_level, c.new_level) for c in cleared] == [(3, 0)]


def test_news2_scale_2_and_oxygen_flag() -> None:
    rules = load_rules().for_resident("demo-copd-001")
    dev = OneDevice(rules)
    # SpO2 97 % on oxygen on scale 2: 3, plus 2 for oxygen = 5 (medium).
    for t in (0, 300):
        changes = [
            c
            for c in dev.feed(
                t,
                on_oxygen=True,
                hr_bpm=70,
                spo2_pct=97,
                temp_c=37,
                resp_rate_per_min=16,
                sbp_mmhg=120,
            )
            if c.parameter == "news2"
        ]
    assert [(c.new_level, c.value) for c in changes] == [(2, 5.0)]


def test_bank_grows_and_keeps_state() -> None:
    bank = VitalsBank(capacity=2)
    index = bank.add_limits(VitalsLimits.from_rules(DEFAULTS))
    slots = [bank.add_device(index) for _ in range(5)]
    assert bank.capacity >= 5
    assert slots == [0, 1, 2, 3, 4]
    assert bank.status(4, 0)["hr_bpm"] is VitalStatus.NO_DATA
    assert bank.state_nbytes() <= 200


def test_array_and_scalar_paths_agree_on_random_streams() -> None:
    rng = np.random.default_rng(11)
    dev = OneDevice(load_rules().for_resident("demo-copd-001"))
    centre = {"hr_bpm": 90, "spo2_pct": 90, "temp_c": 37.5, "resp_rate_per_min": 20,
              "sbp_mmhg": 110, "dbp_mmhg": 70}  # fmt: skip
    spread = {"hr_bpm": 40, "spo2_pct": 6, "temp_c": 2, "resp_rate_per_min": 10,
              "sbp_mmhg": 40, "dbp_mmhg": 30}  # fmt: skip
    ts = 0.0
    raised = 0
    for _ in range(600):
        ts += float(rng.choice([10, 30, 60, 1000], p=[0.4, 0.4, 0.19, 0.01]))
        present = {
            k: float(centre[k] + spread[k] * rng.uniform(-1, 1))
            for k in centre
            if rng.random() < 0.9
        }
        quality = None if rng.random() < 0.5 else float(rng.uniform(0, 1))
        oxygen = bool(rng.random() < 0.5)
        raised += len(dev.feed_values(ts, present, quality=quality, on_oxygen=oxygen))
    assert raised > 30  # the stream did exercise transitions


def test_a_step_refuses_two_samples_of_one_device() -> None:
    dev = OneDevice()
    with pytest.raises(ValueError, match="one sample per device"):
        dev.bank.step(
            np.array([0, 0]),
            np.array([1.0, 2.0]),
            np.full((2, N_VITALS), 70.0),
            np.full(2, np.nan),
            np.full(2, -1, np.int8),
        )
