"""The rules file: defaults, per-resident overrides, and refusals that name the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from alerts.rules.config import (
    DEFAULT_RULES_PATH,
    DailyHours,
    RulesConfigError,
    deep_merge,
    load_rules,
    load_rules_text,
)
from alerts.rules.detection import Severity
from alerts.rules.news2 import RiskBand


def _text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def test_shipped_rules_file_loads() -> None:
    config = load_rules(DEFAULT_RULES_PATH)
    assert config.defaults.vitals.parameters["hr_bpm"].warn_above == 110
    assert config.defaults.vitals.warn_severity is Severity.MEDIUM
    assert config.defaults.news2.alert_from is RiskBand.LOW_MEDIUM
    assert config.defaults.home.inactivity_after_s == 4 * 3600
    assert config.defaults.fall == {}


def test_resident_override_merges_over_defaults() -> None:
    config = load_rules(DEFAULT_RULES_PATH)
    copd = config.for_resident("demo-copd-001")
    assert copd.news2.spo2_scale == 2
    assert copd.vitals.parameters["spo2_pct"].warn_below == 88
    assert copd.vitals.parameters["spo2_pct"].critical_below == 85
    # Everything not overridden is the defaults'.
    assert copd.vitals.parameters["hr_bpm"] == config.defaults.vitals.parameters["hr_bpm"]
    assert copd.home == config.defaults.home
    assert config.for_resident("someone-else") is config.defaults
    assert config.for_resident(None) is config.defaults


def test_null_in_an_override_removes_a_threshold() -> None:
    config = load_rules_text(
        _text("""
        version: 1
        residents:
          r1:
            vitals:
              parameters:
                hr_bpm: {warn_above: null, critical_above: null}
        """)
    )
    hr = config.for_resident("r1").vitals.parameters["hr_bpm"]
    assert (hr.warn_above, hr.critical_above) == (None, None)
    assert hr.warn_below == 50  # the rest of the parameter is kept


def test_missing_sections_take_built_in_defaults() -> None:
    config = load_rules_text("version: 1\n")
    assert config.defaults.device.lateness_allowance_s == 120
    assert set(config.defaults.vitals.parameters) == {
        "hr_bpm", "spo2_pct", "temp_c", "resp_rate_per_min", "sbp_mmhg", "dbp_mmhg",
    }  # fmt: skip


def test_with_override_validates_runtime_overrides() -> None:
    config = load_rules_text("version: 1\n")
    rules = config.with_override("r9", {"battery": {"low_pct": 20, "clear_pct": 30}})
    assert rules.battery.low_pct == 20
    with pytest.raises(RulesConfigError, match=r"battery: Value error, clear_pct"):
        config.with_override("r9", {"battery": {"low_pct": 40}})


BAD_FILES = [
    # (file text, line the error must name, words the message must contain)
    (
        """
        version: 1
        defaults:
          vitals:
            min_signal_qualty: 0.3
        """,
        4,
        "defaults.vitals.min_signal_qualty: Extra inputs are not permitted",
    ),
    (
        """
        version: 1
        defaults:
          vitals:
            parameters:
              hr_bpm:
                warn_below: 60
                critical_below: seventy
        """,
        7,
        "critical_below: Input should be a valid number",
    ),
    (
        """
        version: 1
        defaults:
          vitals:
            parameters:
              hr_bpm: {warn_below: 60, critical_below: 70}
        """,
        5,
        "critical_below (70) must be below warn_below (60)",
    ),
    (
        """
        version: 1
        defaults:
          home:
            night_hours: {start: "22:00", end: "7am"}
        """,
        4,
        "expected HH:MM",
    ),
    (
        """
        version: 1
        defaults:
          home:
            timezone: Mars/Olympus_Mons
        """,
        4,
        "unknown time zone",
    ),
    (
        """
        version: 1
        defaults:
          news2:
            alert_from: low
        """,
        4,
        "alert_from must be low-medium",
    ),
    (
        """
        version: 1
        defaults:
          vitals:
            parameters:
              pulse: {warn_above: 100}
        """,
        5,
        "defaults.vitals.parameters.pulse",
    ),
    (
        """
        version: 2
        """,
        1,
        "version",
    ),
    (
        """
        version: 1
        residents:
          r1:
            battery:
              low_pct: 30
        """,
        4,
        "residents.r1.battery: Value error, clear_pct must be above low_pct",
    ),
    (
        """
        version: 1
        residents:
          r1:
            vitals:
              paramters: {}
        """,
        5,
        "residents.r1.vitals.paramters: Extra inputs",
    ),
    (
        """
        version: 1
        defaults:
          fall:
            impact_gee: 3.0
        """,
        3,
        "unknown fall parameter 'impact_gee'",
    ),
    (
        """
        version: 1
        defaults:
          battery:
            low_pct: 10
          battery:
            low_pct: 20
        """,
        5,
        "duplicate key 'battery'",
    ),
    (
        """
        version: 1
        defaults:
          battery: {low_pct: 10
        """,
        4,
        "not valid YAML",
    ),
    (
        """
        - just
        - a list
        """,
        1,
        "expected a mapping",
    ),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES)
def test_bad_rules_are_refused_with_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RulesConfigError) as caught:
        load_rules_text(_text(text), source="rules.yaml")
    assert caught.value.line == line, str(caught.value)
    assert str(caught.value).startswith(f"rules.yaml:{line}: ")
    assert words in str(caught.value)


def test_several_errors_each_name_their_line() -> None:
    text = _text("""
        version: 1
        defaults:
          device:
            lateness_allowance_s: -1
          battery:
            low_pct: lots
        """)
    with pytest.raises(RulesConfigError) as caught:
        load_rules_text(text)
    message = str(caught.value)
    assert "defaults.device.lateness_allowance_s (line 4)" in message
    assert "defaults.battery.low_pct (line 6)" in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RulesConfigError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_file_on_disk_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\ndefaults:\n  device:\n    lateness_s: 5\n")
    with pytest.raises(RulesConfigError, match=rf"^{path}:4: "):
        load_rules(path)


@pytest.mark.parametrize(
    ("start", "end", "start_min", "end_min"),
    [("07:00", "22:00", 420, 1320), ("22:30", "06:15", 1350, 375), ("00:00", "24:00", 0, 1440)],
)
def test_daily_hours(start: str, end: str, start_min: int, end_min: int) -> None:
    hours = DailyHours(start=start, end=end)
    assert (hours.start_min, hours.end_min) == (start_min, end_min)


def test_deep_merge_does_not_touch_its_inputs() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    override = {"a": {"b": 5}, "d": [2]}
    assert deep_merge(base, override) == {"a": {"b": 5, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
