"""Vital-sign thresholds with minimum duration and hysteresis, and NEWS2, for many devices.

State for every device lives in one ``VitalsBank``: a few fixed numpy columns indexed by a
device's slot (144 bytes a device), so one ``step`` advances a whole batch of devices with
array operations instead of a Python loop per parameter. The functions that do the arithmetic
(``vital_levels``, ``advance_levels``) are pure and work on any shape. A single sample takes
``step_one``, the same rules in scalars, because numpy's per-call cost dominates on six values;
the tests hold both paths to identical results and state.

Levels are signed: -2 critically low, -1 low, 0 normal, +1 high, +2 critically high.

A level is *reported* only after it has held for ``min_duration_s`` of device time (a recovery
or a step down for ``clear_after_s``), so one noisy sample raises nothing. While a level is
reported, its limits are relaxed by ``hysteresis`` (a value must come back that far inside the
limit to count as better), so a value hovering at a limit does not flap. A sample whose
``signal_quality`` is below the threshold is ignored: it neither confirms nor breaks a run.
A parameter with no good sample for ``stale_after_s`` reports "no data" (never "normal"),
and a run of samples that spans such a gap starts again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from alerts.rules.config import VITAL_NAMES, RuleSet
from alerts.rules.detection import Severity
from alerts.rules.news2 import RiskBand, news2_score_arrays, risk_band, score_parameters

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]

N_VITALS: Final = len(VITAL_NAMES)
VITAL_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(VITAL_NAMES)}
_HR, _SPO2, _TEMP, _RR, _SBP = (
    VITAL_INDEX[n] for n in ("hr_bpm", "spo2_pct", "temp_c", "resp_rate_per_min", "sbp_mmhg")
)
_NEWS2_INPUTS: Final = [_HR, _SPO2, _TEMP, _RR, _SBP]


class VitalStatus(enum.StrEnum):
    """What the engine currently believes about one parameter."""

    NO_DATA = "no_data"
    NORMAL = "normal"
    LOW = "low"
    CRITICALLY_LOW = "critically_low"
    HIGH = "high"
    CRITICALLY_HIGH = "critically_high"


_STATUS_BY_LEVEL: Final = {
    -2: VitalStatus.CRITICALLY_LOW,
    -1: VitalStatus.LOW,
    0: VitalStatus.NORMAL,
    1: VitalStatus.HIGH,
    2: VitalStatus.CRITICALLY_HIGH,
}


@dataclass(frozen=True, slots=True)
class VitalsLimits:
    """One rule set's vitals and NEWS2 settings, as arrays over ``VITAL_NAMES``.

    ``below`` is (P, 2) = [critical_below, warn_below] (-inf when unset), ``above`` is
    (P, 2) = [warn_above, critical_above] (+inf when unset).
    """

    below: F64
    above: F64
    hysteresis: F64
    min_duration_s: F64
    clear_after_s: F64
    min_signal_quality: float
    stale_after_s: float
    warn_severity: Severity
    critical_severity: Severity
    news2_enabled: bool
    news2_spo2_scale: int
    news2_default_oxygen: bool
    news2_alert_from: int  # RiskBand.code
    news2_min_duration_s: float
    # The same limits as plain floats, per parameter: (critical_below, warn_below, warn_above,
    # critical_above, hysteresis, min_duration_s, clear_after_s), for the one-sample path.
    per_parameter: tuple[tuple[float, float, float, float, float, float, float], ...]

    @classmethod
    def from_rules(cls, rules: RuleSet) -> VitalsLimits:
        """Compile a validated rule set."""
        vitals = rules.vitals
        below = np.full((N_VITALS, 2), -np.inf)
        above = np.full((N_VITALS, 2), np.inf)
        hysteresis = np.zeros(N_VITALS)
        min_duration_s = np.full(N_VITALS, vitals.min_duration_s)
        clear_after_s = np.full(N_VITALS, vitals.clear_after_s)
        for name, limits in vitals.parameters.items():
            i = VITAL_INDEX[name]
            for column, value in enumerate((limits.critical_below, limits.warn_below)):
                if value is not None:
                    below[i, column] = value
            for column, value in enumerate((limits.warn_above, limits.critical_above)):
                if value is not None:
                    above[i, column] = value
            hysteresis[i] = limits.hysteresis
            if limits.min_duration_s is not None:
                min_duration_s[i] = limits.min_duration_s
            if limits.clear_after_s is not None:
                clear_after_s[i] = limits.clear_after_s
        return cls(
            below=below,
            above=above,
            hysteresis=hysteresis,
            min_duration_s=min_duration_s,
            clear_after_s=clear_after_s,
            min_signal_quality=vitals.min_signal_quality,
            stale_after_s=vitals.stale_after_s,
            warn_severity=vitals.warn_severity,
            critical_severity=vitals.critical_severity,
            news2_enabled=rules.news2.enabled,
            news2_spo2_scale=rules.news2.spo2_scale,
            news2_default_oxygen=rules.news2.on_supplemental_oxygen,
            news2_alert_from=RiskBand(rules.news2.alert_from).code,
            news2_min_duration_s=rules.news2.min_duration_s,
            per_parameter=tuple(
                (
                    float(below[i, 0]),
                    float(below[i, 1]),
                    float(above[i, 0]),
                    float(above[i, 1]),
                    float(hysteresis[i]),
                    float(min_duration_s[i]),
                    float(clear_after_s[i]),
                )
                for i in range(N_VITALS)
            ),
        )


def vital_levels(values: F64, reported: I8, below: F64, above: F64, hysteresis: F64) -> I8:
    """Signed level of each value, with the limits already reported relaxed by hysteresis.

    ``values`` and ``reported`` are (..., P); ``below``/``above`` (..., P, 2). A NaN value
    gets level 0; callers mask it out. Escalation uses the plain limit: only the limits at
    or inside the reported level move.
    """
    side = np.sign(reported)[..., None]
    magnitude = np.abs(reported)[..., None]
    # below = [critical (level 2), warn (level 1)]; above = [warn (1), critical (2)].
    relax_below = (side < 0) & (np.array([2, 1]) <= magnitude)
    relax_above = (side > 0) & (np.array([1, 2]) <= magnitude)
    h = hysteresis[..., None]
    below_eff = below + np.where(relax_below, h, 0.0)
    above_eff = above - np.where(relax_above, h, 0.0)
    v = values[..., None]
    with np.errstate(invalid="ignore"):
        low = (v < below_eff).sum(axis=-1)
        high = (v > above_eff).sum(axis=-1)
    levels: I8 = (high - low).astype(np.int8)
    return levels


@dataclass(frozen=True, slots=True)
class LevelStep:
    """Result of ``advance_levels``: the new state and which entries changed level."""

    reported: I8
    candidate: I8
    candidate_since_ts: F64
    fired: B


def advance_levels(
    *,
    level: I8,
    ts: F64,
    reported: I8,
    candidate: I8,
    candidate_since_ts: F64,
    raise_after_s: F64,
    lower_after_s: F64,
) -> LevelStep:
    """One sample's worth of the min-duration state machine, elementwise.

    ``candidate`` is the level a run of samples is heading to and ``candidate_since_ts`` the
    device time the run began. A sample at the reported level cancels the run. A sample on
    the same side of the reported level as the run keeps the run going at whichever of the
    two is nearer the reported level (a run of "high, critical, high" is a run of "at least
    high"); a sample on the other side starts a new run. A run that has lasted long enough
    becomes the reported level: ``raise_after_s`` when moving away from normal (or across
    it), ``lower_after_s`` when moving towards it.
    """
    pending = candidate != reported
    step_new = np.sign(level.astype(np.int16) - reported)
    step_run = np.sign(candidate.astype(np.int16) - reported)
    continues = pending & (step_new == step_run) & (step_new != 0)
    nearer = np.where(np.abs(level - reported) < np.abs(candidate - reported), level, candidate)
    new_candidate = np.where(continues, nearer, level).astype(np.int8)
    new_since = np.where(continues, candidate_since_ts, ts)

    away = (np.abs(new_candidate) > np.abs(reported)) | (new_candidate * reported < 0)
    needed_s = np.where(away, raise_after_s, lower_after_s)
    fired = (new_candidate != reported) & (ts - new_since >= needed_s)
    new_reported = np.where(fired, new_candidate, reported).astype(np.int8)
    return LevelStep(new_reported, new_candidate, new_since, fired)


def vital_level_one(
    value: float,
    reported: int,
    *,
    critical_below: float,
    warn_below: float,
    warn_above: float,
    critical_above: float,
    hysteresis: float,
) -> int:
    """``vital_levels`` for one value (the per-sample path; same arithmetic)."""
    if reported < 0:
        warn_below += hysteresis
        if reported <= -2:
            critical_below += hysteresis
    elif reported > 0:
        warn_above -= hysteresis
        if reported >= 2:
            critical_above -= hysteresis
    low = (value < critical_below) + (value < warn_below)
    high = (value > warn_above) + (value > critical_above)
    return high - low


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def advance_level_one(
    *,
    level: int,
    ts: float,
    reported: int,
    candidate: int,
    candidate_since_ts: float,
    raise_after_s: float,
    lower_after_s: float,
) -> tuple[int, int, float, bool]:
    """``advance_levels`` for one entry: (reported, candidate, candidate_since_ts, fired)."""
    step_new = _sign(level - reported)
    if candidate != reported and step_new != 0 and step_new == _sign(candidate - reported):
        if abs(level - reported) < abs(candidate - reported):
            candidate = level
    else:
        candidate, candidate_since_ts = level, ts
    away = abs(candidate) > abs(reported) or candidate * reported < 0
    needed_s = raise_after_s if away else lower_after_s
    fired = candidate != reported and ts - candidate_since_ts >= needed_s
    return (candidate if fired else reported), candidate, candidate_since_ts, fired


@dataclass(frozen=True, slots=True)
class VitalsChange:
    """One parameter (or NEWS2) changing its reported level for one device."""

    slot: int
    parameter: str  # a VITAL_NAMES entry, or "news2"
    old_level: int
    new_level: int
    since_ts: float  # device time the deciding run began
    ts: float  # device time of the deciding sample
    value: float  # the deciding sample's value (NEWS2: the aggregate)
    limit: float | None  # the limit crossed (None for a recovery and for NEWS2)
    news2_scores: tuple[int, ...] | None = None


class _Gather:
    """Per-row arrays of rule-set attributes for a batch of slots.

    Most devices share a handful of rule sets, so each attribute is stacked once per distinct
    set and spread to the rows by index, not looked up row by row.
    """

    __slots__ = ("_inverse", "_sets")

    def __init__(self, table: Sequence[VitalsLimits], index: npt.NDArray[np.int16]) -> None:
        unique, self._inverse = np.unique(index, return_inverse=True)
        self._sets = [table[i] for i in unique]

    def __call__(self, attribute: str) -> npt.NDArray[Any]:
        stacked = np.stack([np.asarray(getattr(s, attribute)) for s in self._sets])
        return stacked[self._inverse]


def grow_capacity(capacity: int) -> int:
    """The next capacity of a bank of per-device columns: a quarter more (at least 64)."""
    return capacity + max(64, capacity // 4)


class VitalsBank:
    """Per-device vitals state for many devices, in columns indexed by slot."""

    __slots__ = (
        "_candidate",
        "_limits",
        "_limits_index",
        "_n_slots",
        "_news2_candidate",
        "_news2_reported",
        "_news2_since_ts",
        "_reported",
        "_since_ts",
        "last_good_ts",
        "last_value",
    )

    def __init__(self, capacity: int = 64) -> None:
        self._limits: list[VitalsLimits] = []
        self._n_slots = 0
        capacity = max(capacity, 1)
        by_param = (capacity, N_VITALS)
        self._reported = np.zeros(by_param, np.int8)  # reported level per parameter
        self._candidate = np.zeros(by_param, np.int8)  # level the current run heads to
        self._since_ts = np.full(by_param, np.nan)  # device time the run began
        self.last_good_ts = np.full(by_param, -np.inf)  # last usable sample per parameter
        self.last_value = np.full(by_param, np.nan, np.float32)
        self._limits_index = np.zeros(capacity, np.int16)
        self._news2_reported = np.zeros(capacity, np.int8)  # band code, 0 = nothing reported
        self._news2_candidate = np.zeros(capacity, np.int8)
        self._news2_since_ts = np.full(capacity, np.nan)

    def _columns(self) -> tuple[npt.NDArray[Any], ...]:
        return (
            self._reported,
            self._candidate,
            self._since_ts,
            self.last_good_ts,
            self.last_value,
            self._limits_index,
            self._news2_reported,
            self._news2_candidate,
            self._news2_since_ts,
        )

    def _grow(self) -> None:
        # Growing by a quarter keeps the amortised cost per new device constant and the
        # spare capacity (memory per device) within 25 %; doubling would allow 100 %.
        size = grow_capacity(self.capacity)
        grown = []
        for column in self._columns():
            bigger = np.empty((size, *column.shape[1:]), column.dtype)
            bigger[: column.shape[0]] = column
            grown.append(bigger)
        (
            self._reported,
            self._candidate,
            self._since_ts,
            self.last_good_ts,
            self.last_value,
            self._limits_index,
            self._news2_reported,
            self._news2_candidate,
            self._news2_since_ts,
        ) = grown
        for slot in range(self._n_slots, self.capacity):
            self.reset_slot(slot)

    @property
    def capacity(self) -> int:
        """Slots allocated (grows by a quarter when full)."""
        return int(self._reported.shape[0])

    def __len__(self) -> int:
        return self._n_slots

    def state_nbytes(self) -> int:
        """Bytes of state per slot (all columns, excluding spare capacity)."""
        return sum(c.itemsize * (c.size // c.shape[0]) for c in self._columns())

    def add_limits(self, limits: VitalsLimits) -> int:
        """Register a compiled rule set; returns its index for ``add_device``."""
        self._limits.append(limits)
        return len(self._limits) - 1

    def limits(self, slot: int) -> VitalsLimits:
        """The rule set a slot is checked against."""
        return self._limits[int(self._limits_index[slot])]

    def add_device(self, limits_index: int) -> int:
        """Allocate a slot for a new device; returns the slot."""
        if not 0 <= limits_index < len(self._limits):
            raise IndexError(f"no limits registered at {limits_index}")
        if self._n_slots == self.capacity:
            self._grow()
        slot = self._n_slots
        self._n_slots += 1
        self._limits_index[slot] = limits_index
        return slot

    def set_limits(self, slot: int, limits_index: int) -> None:
        """Check a slot against another registered rule set from now on (state is kept)."""
        if not 0 <= limits_index < len(self._limits):
            raise IndexError(f"no limits registered at {limits_index}")
        self._limits_index[slot] = limits_index

    def reset_slot(self, slot: int, limits_index: int | None = None) -> None:
        """Forget a slot's history (e.g. the device moved to another resident)."""
        self._reported[slot] = 0
        self._candidate[slot] = 0
        self._since_ts[slot] = np.nan
        self.last_good_ts[slot] = -np.inf
        self.last_value[slot] = np.nan
        self._news2_reported[slot] = 0
        self._news2_candidate[slot] = 0
        self._news2_since_ts[slot] = np.nan
        if limits_index is not None:
            self._limits_index[slot] = limits_index

    def step(
        self,
        slots: npt.NDArray[np.intp],
        ts: F64,
        values: F64,
        signal_quality: F64,
        on_oxygen: npt.NDArray[np.int8],
    ) -> list[VitalsChange]:
        """Advance ``m`` devices by one sample each; returns the level changes.

        ``slots`` (m,) must be distinct (a batch takes at most one sample per device);
        ``ts`` (m,) device time; ``values`` (m, P) in ``VITAL_NAMES`` order, NaN where the
        sample has no such measurement; ``signal_quality`` (m,) NaN when not reported;
        ``on_oxygen`` (m,) 1/0, or -1 when the sample does not say.
        """
        if np.unique(slots).size != slots.size:
            raise ValueError("a step takes at most one sample per device (slots must differ)")
        gather = _Gather(self._limits, self._limits_index[slots])
        below = gather("below")
        above = gather("above")
        hysteresis = gather("hysteresis")
        raise_after = gather("min_duration_s")
        lower_after = gather("clear_after_s")
        min_quality = gather("min_signal_quality")
        stale_after = gather("stale_after_s")

        ts2 = ts[:, None]
        last_good = self.last_good_ts[slots]
        quality_ok = ~(signal_quality < min_quality)  # NaN (not reported) counts as usable
        # Older than this parameter's last good sample: out of order, cannot rewind state.
        good = ~np.isnan(values) & quality_ok[:, None] & (ts2 > last_good)

        reported = self._reported[slots]
        candidate = self._candidate[slots]
        # A gap with no data breaks any run in progress: restart it from this sample.
        gap = (ts2 - last_good) > stale_after[:, None]
        candidate = np.where(gap, reported, candidate).astype(np.int8)
        level = vital_levels(values, reported, below, above, hysteresis)
        advanced = advance_levels(
            level=level,
            ts=np.broadcast_to(ts2, level.shape),
            reported=reported,
            candidate=candidate,
            candidate_since_ts=self._since_ts[slots],
            raise_after_s=raise_after,
            lower_after_s=lower_after,
        )
        fired = advanced.fired & good
        self._reported[slots] = np.where(good, advanced.reported, reported)
        self._candidate[slots] = np.where(good, advanced.candidate, self._candidate[slots])
        self._since_ts[slots] = np.where(good, advanced.candidate_since_ts, self._since_ts[slots])
        self.last_good_ts[slots] = np.where(good, ts2, last_good)
        self.last_value[slots] = np.where(good, values, self.last_value[slots])

        changes: list[VitalsChange] = []
        for row, param in zip(*np.nonzero(fired), strict=True):
            old, new = int(reported[row, param]), int(advanced.reported[row, param])
            limit: float | None = None
            if new < 0:
                limit = float(below[row, param, 2 + new])  # -2 -> critical, -1 -> warn
            elif new > 0:
                limit = float(above[row, param, new - 1])
            changes.append(
                VitalsChange(
                    slot=int(slots[row]),
                    parameter=VITAL_NAMES[param],
                    old_level=old,
                    new_level=new,
                    since_ts=float(advanced.candidate_since_ts[row, param]),
                    ts=float(ts[row]),
                    value=float(values[row, param]),
                    limit=limit,
                )
            )
        had_good: B = np.asarray(good.any(axis=1))
        changes.extend(self._step_news2(slots, ts, had_good, on_oxygen, gather))
        return changes

    def _step_news2(
        self,
        slots: npt.NDArray[np.intp],
        ts: F64,
        had_good: B,
        on_oxygen: npt.NDArray[np.int8],
        gather: _Gather,
    ) -> list[VitalsChange]:
        enabled = gather("news2_enabled") & had_good
        stale_after = gather("stale_after_s")
        # NEWS2 needs all five measured parameters, each fresh at this sample's time.
        fresh = (ts[:, None] - self.last_good_ts[slots][:, _NEWS2_INPUTS]) <= stale_after[:, None]
        rows = np.nonzero(enabled & fresh.all(axis=1))[0]
        if rows.size == 0:
            return []
        sel = slots[rows]
        default_oxygen = gather("news2_default_oxygen")[rows]
        oxygen = np.where(on_oxygen[rows] >= 0, on_oxygen[rows] == 1, default_oxygen)
        last = self.last_value[sel].astype(np.float64)
        result = news2_score_arrays(
            resp_rate_per_min=last[:, _RR],
            spo2_pct=last[:, _SPO2],
            spo2_scale=gather("news2_spo2_scale")[rows],
            on_supplemental_oxygen=oxygen,
            systolic_bp_mmhg=last[:, _SBP],
            pulse_per_min=last[:, _HR],
            acvpu_code=np.zeros(rows.size, np.int8),  # wearables cannot tell: assume Alert
            temp_c=last[:, _TEMP],
        )
        alert_from = gather("news2_alert_from")[rows]
        # Bands below the configured one are "nothing to report" (level 0).
        level = np.where(result.band >= alert_from, result.band, 0).astype(np.int8)
        min_duration = gather("news2_min_duration_s")[rows]
        reported = self._news2_reported[sel]
        advanced = advance_levels(
            level=level,
            ts=ts[rows],
            reported=reported,
            candidate=self._news2_candidate[sel],
            candidate_since_ts=self._news2_since_ts[sel],
            raise_after_s=min_duration,
            lower_after_s=min_duration,
        )
        self._news2_reported[sel] = advanced.reported
        self._news2_candidate[sel] = advanced.candidate
        self._news2_since_ts[sel] = advanced.candidate_since_ts
        return [
            VitalsChange(
                slot=int(sel[k]),
                parameter="news2",
                old_level=int(reported[k]),
                new_level=int(advanced.reported[k]),
                since_ts=float(advanced.candidate_since_ts[k]),
                ts=float(ts[rows[k]]),
                value=float(result.total[k]),
                limit=None,
                news2_scores=tuple(int(s) for s in result.scores[k]),
            )
            for k in np.nonzero(advanced.fired)[0]
        ]

    def step_one(
        self,
        slot: int,
        ts: float,
        values: Sequence[float | None],
        signal_quality: float | None,
        on_oxygen: bool | None,
    ) -> list[VitalsChange]:
        """``step`` for a single device and sample, in plain Python.

        Numpy costs microseconds per call on arrays of six; one sample at a time (the
        server's path) is several times faster in scalars. Same rules, same state, same
        results as ``step`` (the tests hold the two together).
        """
        limits = self._limits[int(self._limits_index[slot])]
        if signal_quality is not None and signal_quality < limits.min_signal_quality:
            return []
        changes: list[VitalsChange] = []
        reported_row, candidate_row = self._reported[slot], self._candidate[slot]
        since_row, last_good_row = self._since_ts[slot], self.last_good_ts[slot]
        had_good = False
        for i, value in enumerate(values):
            if value is None or math.isnan(value):  # no such measurement
                continue
            last_good = float(last_good_row[i])
            if not ts > last_good:
                continue
            had_good = True
            cb, wb, wa, ca, hysteresis, raise_after_s, lower_after_s = limits.per_parameter[i]
            reported = int(reported_row[i])
            candidate = int(candidate_row[i])
            if ts - last_good > limits.stale_after_s:
                candidate = reported
            level = vital_level_one(
                value,
                reported,
                critical_below=cb,
                warn_below=wb,
                warn_above=wa,
                critical_above=ca,
                hysteresis=hysteresis,
            )
            new_reported, candidate, since_ts, fired = advance_level_one(
                level=level,
                ts=ts,
                reported=reported,
                candidate=candidate,
                candidate_since_ts=float(since_row[i]),
                raise_after_s=raise_after_s,
                lower_after_s=lower_after_s,
            )
            reported_row[i], candidate_row[i], since_row[i] = new_reported, candidate, since_ts
            last_good_row[i] = ts
            self.last_value[slot, i] = value
            if fired:
                # Index by signed level: 1 warn_above, 2 critical_above, -1 warn_below, -2 ...
                limit = (None, wa, ca, cb, wb)[new_reported]
                changes.append(
                    VitalsChange(
                        slot=slot,
                        parameter=VITAL_NAMES[i],
                        old_level=reported,
                        new_level=new_reported,
                        since_ts=since_ts,
                        ts=ts,
                        value=float(value),
                        limit=limit,
                    )
                )
        if had_good and limits.news2_enabled:
            changes.extend(self._step_news2_one(slot, ts, limits, on_oxygen))
        return changes

    def _step_news2_one(
        self, slot: int, ts: float, limits: VitalsLimits, on_oxygen: bool | None
    ) -> list[VitalsChange]:
        last_good = self.last_good_ts[slot]
        if any(ts - float(last_good[i]) > limits.stale_after_s for i in _NEWS2_INPUTS):
            return []
        last = self.last_value[slot]
        scores = score_parameters(
            resp_rate_per_min=float(last[_RR]),
            spo2_pct=float(last[_SPO2]),
            spo2_scale=limits.news2_spo2_scale,
            on_supplemental_oxygen=limits.news2_default_oxygen if on_oxygen is None else on_oxygen,
            systolic_bp_mmhg=float(last[_SBP]),
            pulse_per_min=float(last[_HR]),
            alert=True,  # wearables cannot tell: assume Alert
            temp_c=float(last[_TEMP]),
        )
        total = sum(scores)
        band = risk_band(total, has_single_3=3 in scores).code
        reported = int(self._news2_reported[slot])
        new_reported, candidate, since_ts, fired = advance_level_one(
            level=band if band >= limits.news2_alert_from else 0,
            ts=ts,
            reported=reported,
            candidate=int(self._news2_candidate[slot]),
            candidate_since_ts=float(self._news2_since_ts[slot]),
            raise_after_s=limits.news2_min_duration_s,
            lower_after_s=limits.news2_min_duration_s,
        )
        self._news2_reported[slot] = new_reported
        self._news2_candidate[slot] = candidate
        self._news2_since_ts[slot] = since_ts
        if not fired:
            return []
        return [
            VitalsChange(
                slot=slot,
                parameter="news2",
                old_level=reported,
                new_level=new_reported,
                since_ts=since_ts,
                ts=ts,
                value=float(total),
                limit=None,
                news2_scores=scores,
            )
        ]

    def status(self, slot: int, now_ts: float) -> dict[str, VitalStatus]:
        """Each parameter's reported state; "no data" once its last good sample is stale."""
        stale_after_s = self.limits(slot).stale_after_s
        result: dict[str, VitalStatus] = {}
        for i, name in enumerate(VITAL_NAMES):
            if now_ts - float(self.last_good_ts[slot, i]) > stale_after_s:
                result[name] = VitalStatus.NO_DATA
            else:
                result[name] = _STATUS_BY_LEVEL[int(self._reported[slot, i])]
        return result

    def news2_level(self, slot: int) -> int:
        """The reported NEWS2 band code (0 when below the configured ``alert_from``)."""
        return int(self._news2_reported[slot])
