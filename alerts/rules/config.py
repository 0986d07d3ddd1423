"""The rules file: thresholds and timers in YAML, validated once at start-up.

A rules file has ``defaults`` (a full ``RuleSet``; anything left out takes the built-in
default below) and ``residents``: per-resident overrides by resident id, each a partial
``RuleSet`` deep-merged over the defaults (``null`` removes a threshold). Every resident's
merged rules are validated when the file is loaded, so a typo fails the start-up, not the
first alert of the night. Errors name the file and line, found through the composed YAML
node tree (``start_mark.line + 1``), because pydantic only knows the key path.

The ``fall`` section is opaque here: it is handed as a dict to the fall detector's own
parameter loader (``FallParams.from_dict``), which refuses unknown keys.
"""

from __future__ import annotations

import copy
import itertools
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alerts.rules.detection import Severity
from alerts.rules.fall import FallParams
from alerts.rules.news2 import RiskBand

DEFAULT_RULES_PATH: Final = Path(__file__).with_name("default_rules.yaml")

VitalName = Literal["hr_bpm", "spo2_pct", "temp_c", "resp_rate_per_min", "sbp_mmhg", "dbp_mmhg"]
VITAL_NAMES: Final[tuple[VitalName, ...]] = (
    "hr_bpm",
    "spo2_pct",
    "temp_c",
    "resp_rate_per_min",
    "sbp_mmhg",
    "dbp_mmhg",
)


class RulesConfigError(ValueError):
    """The rules file is unreadable or invalid; ``line`` is 1-based (0 when unknown)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")
        self.source = source
        self.line = line
        self.message = message


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceRules(_Model):
    """Liveness and event-time policy for every device."""

    # A reading whose device time is more than this behind the device's newest reading is
    # too late to act on (it could re-raise something already cleared).
    lateness_allowance_s: float = Field(default=120.0, ge=0)
    # Nothing at all heard from a device for this long marks it offline (checked by tick).
    offline_after_s: float = Field(default=900.0, gt=0)


class BatteryRules(_Model):
    """battery_low with hysteresis: raised below ``low_pct``, cleared at ``clear_pct``."""

    low_pct: float = Field(default=15.0, ge=0, le=100)
    clear_pct: float = Field(default=25.0, ge=0, le=100)

    @model_validator(mode="after")
    def _clear_above_low(self) -> Self:
        if self.clear_pct <= self.low_pct:
            raise ValueError("clear_pct must be above low_pct (that gap is the hysteresis)")
        return self


class VitalThresholds(_Model):
    """Limits for one vital sign: abnormal strictly below ``*_below`` or above ``*_above``."""

    critical_below: float | None = None
    warn_below: float | None = None
    warn_above: float | None = None
    critical_above: float | None = None
    # How far back inside the limit a value must come before it counts as recovered.
    hysteresis: float = Field(default=0.0, ge=0)
    min_duration_s: float | None = Field(default=None, ge=0)  # None: the vitals default
    clear_after_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        limits = [
            (name, value)
            for name in ("critical_below", "warn_below", "warn_above", "critical_above")
            if (value := getattr(self, name)) is not None
        ]
        for (low_name, low), (high_name, high) in itertools.pairwise(limits):
            if not low < high:
                raise ValueError(f"{low_name} ({low:g}) must be below {high_name} ({high:g})")
        return self


def _default_vital_thresholds() -> dict[VitalName, VitalThresholds]:
    return {
        "hr_bpm": VitalThresholds(
            critical_below=40, warn_below=50, warn_above=110, critical_above=130, hysteresis=5
        ),
        "spo2_pct": VitalThresholds(critical_below=88, warn_below=92, hysteresis=1),
        "temp_c": VitalThresholds(
            critical_below=35, warn_below=35.5, warn_above=38, critical_above=39, hysteresis=0.2
        ),
        "resp_rate_per_min": VitalThresholds(
            critical_below=8, warn_below=10, warn_above=24, critical_above=30, hysteresis=2
        ),
        "sbp_mmhg": VitalThresholds(
            critical_below=90, warn_below=100, warn_above=180, critical_above=220, hysteresis=5
        ),
        "dbp_mmhg": VitalThresholds(
            critical_below=40, warn_below=50, warn_above=110, critical_above=130, hysteresis=5
        ),
    }


class VitalsRules(_Model):
    """Threshold rules over wearable vitals."""

    min_signal_quality: float = Field(default=0.5, ge=0, le=1)  # below: the sample is ignored
    stale_after_s: float = Field(default=900.0, gt=0)  # no good sample this long: "no data"
    min_duration_s: float = Field(default=120.0, ge=0)  # an abnormal level must hold this long
    clear_after_s: float = Field(default=120.0, ge=0)  # and a recovery this long
    warn_severity: Severity = Severity.MEDIUM
    critical_severity: Severity = Severity.HIGH
    parameters: dict[VitalName, VitalThresholds] = Field(default_factory=_default_vital_thresholds)


class News2Rules(_Model):
    """NEWS2 from the latest fresh vitals; see news2.py."""

    enabled: bool = True
    spo2_scale: Literal[1, 2] = 1  # 2 for hypercapnic respiratory failure (e.g. some COPD)
    on_supplemental_oxygen: bool = False  # assumed when a sample does not say
    alert_from: RiskBand = RiskBand.LOW_MEDIUM  # lowest band that raises a detection
    min_duration_s: float = Field(default=300.0, ge=0)  # a band must hold this long to be reported

    @field_validator("alert_from")
    @classmethod
    def _above_low(cls, value: RiskBand) -> RiskBand:
        if value is RiskBand.LOW:
            raise ValueError("alert_from must be low-medium, medium or high ('low' is normal)")
        return value


_HHMM: Final = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class DailyHours(_Model):
    """A daily local-time window ``start``-``end`` (``HH:MM``); may wrap past midnight."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        match = _HHMM.match(value)
        if match is None or (match.group(1) == "24" and match.group(2) != "00"):
            raise ValueError(f"expected HH:MM (00:00-24:00), got {value!r}")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start_min >= 24 * 60:
            raise ValueError("start must be before 24:00")
        # 00:00-24:00 is all day; any other equal pair would be ambiguous (empty or all day?).
        if self.start_min == self.end_min:
            raise ValueError("start and end are the same time; the window would be ambiguous")
        return self

    @property
    def start_min(self) -> int:
        """Minutes after local midnight."""
        hours, minutes = self.start.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def end_min(self) -> int:
        """Minutes after local midnight (24:00 is 1440)."""
        hours, minutes = self.end.split(":")
        return int(hours) * 60 + int(minutes)


class HomeRules(_Model):
    """Home-sensor rules: inactivity, night wandering, bed exit, a door left open."""

    timezone: str = "UTC"  # IANA name of the home's local time, for the daily windows
    waking_hours: DailyHours = DailyHours(start="07:00", end="22:00")
    night_hours: DailyHours = DailyHours(start="22:00", end="07:00")
    inactivity_after_s: float = Field(default=4 * 3600.0, gt=0)  # of waking time without motion
    night_door_open_s: float = Field(default=600.0, gt=0)  # door opened at night, not closed again
    bed_exit_s: float = Field(default=1200.0, gt=0)  # out of bed at night, not back
    day_door_open_s: float = Field(default=1800.0, gt=0)  # door left open in the daytime

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class RuleSet(_Model):
    """Everything one resident's devices are checked against."""

    device: DeviceRules = DeviceRules()
    battery: BatteryRules = BatteryRules()
    vitals: VitalsRules = VitalsRules()
    news2: News2Rules = News2Rules()
    home: HomeRules = HomeRules()
    fall: dict[str, Any] = Field(default_factory=dict)  # FallParams loader input


class _RulesFile(_Model):
    version: Literal[1]
    defaults: RuleSet = RuleSet()
    residents: dict[str, dict[str, Any]] = Field(default_factory=dict)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """A validated rules file: the defaults and every resident's merged rules."""

    source: str
    defaults: RuleSet
    residents: Mapping[str, RuleSet]

    def for_resident(self, resident_id: str | None) -> RuleSet:
        """The resident's rules (the defaults for an unknown or unassigned resident)."""
        if resident_id is None:
            return self.defaults
        return self.residents.get(resident_id, self.defaults)

    def with_override(self, resident_id: str | None, override: Mapping[str, Any]) -> RuleSet:
        """The resident's rules with a further partial override (e.g. from the database).

        Raises ``RulesConfigError`` (no line: the override is not from the file).
        """
        base = self.for_resident(resident_id).model_dump()
        try:
            return _validate_rule_set(deep_merge(base, override))
        except pydantic.ValidationError as exc:
            where = f"override for resident {resident_id}"
            raise RulesConfigError(where, 0, _format_errors(exc, None, ())) from exc


def _validate_rule_set(raw: Mapping[str, Any]) -> RuleSet:
    rules = RuleSet.model_validate(raw)
    try:
        FallParams.from_dict(rules.fall)  # the detector's own loader: unknown keys refused
    except (ValueError, TypeError) as exc:
        # Re-raise as pydantic's error so the line mapping treats it like the rest.
        error: Any = {"type": "value_error", "loc": ("fall",), "input": rules.fall}
        error["ctx"] = {"error": exc}
        raise pydantic.ValidationError.from_exception_data("RuleSet", [error]) from exc
    return rules


def load_rules(path: str | Path = DEFAULT_RULES_PATH) -> RulesConfig:
    """Read and validate a rules file; raises ``RulesConfigError`` naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesConfigError(str(path), 0, f"cannot read: {exc.strerror}") from exc
    return load_rules_text(text, source=str(path))


def load_rules_text(text: str, *, source: str = "<rules>") -> RulesConfig:
    """Validate rules from YAML text (see ``load_rules``)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise RulesConfigError(source, line, f"not valid YAML: {exc.problem}") from exc
    if root is None or not isinstance(data, dict):
        raise RulesConfigError(source, 1, "expected a mapping with version, defaults, residents")
    _refuse_duplicate_keys(root, source)

    try:
        parsed = _RulesFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _config_error(exc, root, source, ()) from exc
    try:
        defaults = _validate_rule_set(parsed.defaults.model_dump())
    except pydantic.ValidationError as exc:
        raise _config_error(exc, root, source, ("defaults",)) from exc

    residents: dict[str, RuleSet] = {}
    base = defaults.model_dump()
    for resident_id, override in parsed.residents.items():
        try:
            residents[resident_id] = _validate_rule_set(deep_merge(base, override))
        except pydantic.ValidationError as exc:
            raise _config_error(exc, root, source, ("residents", resident_id)) from exc
    return RulesConfig(source=source, defaults=defaults, residents=residents)


def _refuse_duplicate_keys(node: yaml.Node, source: str) -> None:
    # PyYAML keeps the last of two equal keys silently; a rules file must not.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    line = key.start_mark.line + 1
                    raise RulesConfigError(source, line, f"duplicate key {key.value!r}")
                seen.add(key.value)
            _refuse_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, source)


def _line_of(root: yaml.Node, path: Sequence[str | int]) -> int:
    """1-based line of the deepest node along ``path`` that exists in the file."""
    node = root
    line = root.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _format_errors(
    exc: pydantic.ValidationError, root: yaml.Node | None, prefix: tuple[str, ...]
) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for error in errors:
        path = (*prefix, *error["loc"])
        dotted = ".".join(str(p) for p in path) or "(top level)"
        # With several errors each names its own line; the first is also in the prefix.
        where = f" (line {_line_of(root, path)})" if root is not None and len(errors) > 1 else ""
        parts.append(f"{dotted}{where}: {error['msg']}")
    return "; ".join(parts)


def _config_error(
    exc: pydantic.ValidationError, root: yaml.Node, source: str, prefix: tuple[str, ...]
) -> RulesConfigError:
    first = exc.errors(include_url=False)[0]
    path = (*prefix, *first["loc"])
    # A resident's merged rules may fail on a value that came from the defaults; point at the
    # resident's own node if it has the key, else at the defaults where the value lives.
    line = _line_of(root, path)
    if prefix[:1] == ("residents",) and line == _line_of(root, prefix):
        line = _line_of(root, ("defaults", *first["loc"])) if first["loc"] else line
    return RulesConfigError(source, line, _format_errors(exc, root, prefix))
