"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).

Seven parameters are scored 0-3 from the chart and summed; the aggregate and the
"any single parameter scores 3" rule give the clinical risk band:

=========  ==============================================  ==========
aggregate  condition                                       risk band
=========  ==============================================  ==========
0                                                          low
1-4        no single parameter scores 3                    low
1-4        one parameter scores 3 ("red score")            low-medium
5-6                                                        medium
>= 7                                                       high
=========  ==============================================  ==========

Values between the chart's rows. The chart is written at the resolution a nurse records:
whole breaths, % and mmHg and beats, and 0.1 degC. A device reports continuous values, so we
first record the value as a nurse would, rounding half up to that resolution (RR 11.5 -> 12,
temperature 35.05 -> 35.1), and then read the chart. Every real number therefore gets exactly
one score, there are no gaps between rows, and a value that is already at chart resolution
scores exactly as the printed chart says. A tiny epsilon absorbs binary floating point
(36.05 is stored as 36.04999...). The choice and its consequences are in docs/rules.md.

Every chart lives in one table (``_CHARTS``) read both by the scalar scorer, used per sample
by the rule runner, and by the numpy scorer, used for files and backtests; the tests hold
the two to the same answers.
"""

from __future__ import annotations

import bisect
import enum
import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

# Round half up after adding this, so 36.05 (stored as 36.04999...) is recorded as 36.1.
_ROUNDING_EPS: Final = 1e-6


class Acvpu(enum.StrEnum):
    """Level of consciousness: Alert, new Confusion, responds to Voice, to Pain, Unresponsive."""

    A = "A"
    C = "C"
    V = "V"
    P = "P"
    U = "U"

    @property
    def code(self) -> int:
        """0 for A, 1-4 for C, V, P, U (the numpy scorer's encoding)."""
        return _ACVPU_CODES[self]


_ACVPU_CODES: Final = {level: i for i, level in enumerate(Acvpu)}


class RiskBand(enum.StrEnum):
    """Clinical risk from the aggregate and the single-parameter rule."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def code(self) -> int:
        """0 low, 1 low-medium, 2 medium, 3 high (ordered, as the numpy scorer returns)."""
        return _BAND_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> RiskBand:
        """Inverse of ``code``."""
        return _BANDS_BY_CODE[code]


_BAND_CODES: Final = {band: i for i, band in enumerate(RiskBand)}
_BANDS_BY_CODE: Final = dict(enumerate(RiskBand))

# The clinical response for each band (RCP 2017, chart 2), in our words. The aggregate-0
# case shares the "low" band but calls for less, so it has its own text.
RESPONSE_SCORE_0: Final = "Minimum 12-hourly observations; continue routine NEWS2 monitoring."
RESPONSE: Final[dict[RiskBand, str]] = {
    RiskBand.LOW: (
        "Minimum 4-6-hourly observations; a registered nurse assesses the resident and decides "
        "whether to observe more often or escalate care."
    ),
    RiskBand.LOW_MEDIUM: (
        "Minimum hourly observations; a registered nurse informs the medical team caring for "
        "the resident, who review and decide whether care must be escalated (urgent "
        "ward-based response)."
    ),
    RiskBand.MEDIUM: (
        "Minimum hourly observations; a registered nurse immediately informs the medical team "
        "and requests urgent assessment by a clinician competent in acute illness; care in an "
        "environment with monitoring (key threshold for urgent response)."
    ),
    RiskBand.HIGH: (
        "Continuous monitoring of vital signs; a registered nurse immediately informs the "
        "medical team (at least specialist registrar level); emergency assessment by a team "
        "with critical-care competencies including advanced airway skills; consider transfer "
        "to level 2 or 3 care (emergency response)."
    ),
}


@dataclass(frozen=True, slots=True)
class _Chart:
    """One chart row set: ``upper_incl`` are inclusive upper edges, in recorded units."""

    scale: int  # recorded units per unit of the measurement: 1 (whole numbers) or 10 (0.1)
    upper_incl: tuple[int, ...]
    scores: tuple[int, ...]  # len(upper_incl) + 1; the last is "above the last edge"

    def score(self, value: float) -> int:
        recorded = math.floor(value * self.scale + 0.5 + _ROUNDING_EPS)
        return self.scores[bisect.bisect_left(self.upper_incl, recorded)]

    def score_array(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int8]:
        recorded = np.floor(values * self.scale + 0.5 + _ROUNDING_EPS)
        index = np.searchsorted(np.asarray(self.upper_incl, np.float64), recorded, side="left")
        return np.asarray(self.scores, np.int8)[index]


# The RCP 2017 chart. Read "upper_incl=(8, 11, 20, 24), scores=(3, 1, 0, 2, 3)" as
# <=8: 3, 9-11: 1, 12-20: 0, 21-24: 2, >=25: 3.
_RESP_RATE: Final = _Chart(1, (8, 11, 20, 24), (3, 1, 0, 2, 3))
_SPO2_SCALE1: Final = _Chart(1, (91, 93, 95), (3, 2, 1, 0))
# Scale 2 (hypercapnic respiratory failure, target 88-92 %): above 92 % scores only on oxygen.
_SPO2_SCALE2_AIR: Final = _Chart(1, (83, 85, 87), (3, 2, 1, 0))
_SPO2_SCALE2_OXYGEN: Final = _Chart(1, (83, 85, 87, 92, 94, 96), (3, 2, 1, 0, 1, 2, 3))
_SYSTOLIC_BP: Final = _Chart(1, (90, 100, 110, 219), (3, 2, 1, 0, 3))
_PULSE: Final = _Chart(1, (40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3))
_TEMPERATURE: Final = _Chart(10, (350, 360, 380, 390), (3, 1, 0, 1, 2))
_OXYGEN_SCORE: Final = 2  # "air or oxygen?": supplemental oxygen scores 2, air 0
_CONSCIOUSNESS_SCORE: Final = 3  # anything but Alert scores 3

PARAMETERS: Final = (
    "resp_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)

# Loose physical plausibility, so a unit mix-up (temperature in degF, SpO2 as 0-1) is
# refused instead of scored. Not clinical limits.
PLAUSIBLE: Final[dict[str, tuple[float, float]]] = {
    "resp_rate_per_min": (0.0, 80.0),
    "spo2_pct": (0.0, 100.0),
    "systolic_bp_mmhg": (0.0, 300.0),
    "pulse_per_min": (0.0, 300.0),
    "temp_c": (20.0, 45.0),
}


@dataclass(frozen=True, slots=True)
class News2Input:
    """One set of observations, as charted."""

    resp_rate_per_min: float
    spo2_pct: float
    systolic_bp_mmhg: float
    pulse_per_min: float
    temp_c: float
    acvpu: Acvpu = Acvpu.A
    on_supplemental_oxygen: bool = False
    spo2_scale: Literal[1, 2] = 1


@dataclass(frozen=True, slots=True)
class News2Result:
    """Per-parameter scores (keys are ``PARAMETERS``), the aggregate, band and response."""

    scores: dict[str, int]
    total: int
    risk: RiskBand
    response: str

    @property
    def has_single_3(self) -> bool:
        """True when any one parameter scores 3 (the "red score")."""
        return 3 in self.scores.values()


class News2InputError(ValueError):
    """An observation is missing, not a number, or physically implausible."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_plausible(field: str, value: float) -> None:
    """Raise ``News2InputError`` unless ``value`` is a finite number in the plausible range."""
    if not math.isfinite(value):
        raise News2InputError(field, f"not a finite number: {value!r}")
    low, high = PLAUSIBLE[field]
    if not low <= value <= high:
        raise News2InputError(field, f"{value:g} outside the plausible range {low:g}-{high:g}")


def spo2_score(spo2_pct: float, *, scale: int, on_oxygen: bool) -> int:
    """The SpO2 row of scale 1 or scale 2."""
    if scale == 1:
        return _SPO2_SCALE1.score(spo2_pct)
    if scale == 2:
        return (_SPO2_SCALE2_OXYGEN if on_oxygen else _SPO2_SCALE2_AIR).score(spo2_pct)
    raise News2InputError("spo2_scale", f"must be 1 or 2, got {scale!r}")


def risk_band(total: int, *, has_single_3: bool) -> RiskBand:
    """The band from the aggregate and the single-parameter rule."""
    if total >= 7:
        return RiskBand.HIGH
    if total >= 5:
        return RiskBand.MEDIUM
    # A single 3 always lifts an aggregate of 3-4 (a 3 alone makes the aggregate >= 3).
    return RiskBand.LOW_MEDIUM if has_single_3 else RiskBand.LOW


def response_for(total: int, band: RiskBand) -> str:
    """The clinical response text for a result."""
    return RESPONSE_SCORE_0 if total == 0 else RESPONSE[band]


def score_parameters(
    *,
    resp_rate_per_min: float,
    spo2_pct: float,
    spo2_scale: int,
    on_supplemental_oxygen: bool,
    systolic_bp_mmhg: float,
    pulse_per_min: float,
    alert: bool,
    temp_c: float,
) -> tuple[int, int, int, int, int, int, int]:
    """The seven scores in ``PARAMETERS`` order, without plausibility checks (hot path)."""
    return (
        _RESP_RATE.score(resp_rate_per_min),
        spo2_score(spo2_pct, scale=spo2_scale, on_oxygen=on_supplemental_oxygen),
        _OXYGEN_SCORE if on_supplemental_oxygen else 0,
        _SYSTOLIC_BP.score(systolic_bp_mmhg),
        _PULSE.score(pulse_per_min),
        0 if alert else _CONSCIOUSNESS_SCORE,
        _TEMPERATURE.score(temp_c),
    )


def news2_score(obs: News2Input) -> News2Result:
    """Score one set of observations exactly by the RCP 2017 chart."""
    for field in PLAUSIBLE:
        check_plausible(field, getattr(obs, field))
    scores = score_parameters(
        resp_rate_per_min=obs.resp_rate_per_min,
        spo2_pct=obs.spo2_pct,
        spo2_scale=obs.spo2_scale,
        on_supplemental_oxygen=obs.on_supplemental_oxygen,
        systolic_bp_mmhg=obs.systolic_bp_mmhg,
        pulse_per_min=obs.pulse_per_min,
        alert=Acvpu(obs.acvpu) is Acvpu.A,
        temp_c=obs.temp_c,
    )
    total = sum(scores)
    band = risk_band(total, has_single_3=3 in scores)
    return News2Result(
        scores=dict(zip(PARAMETERS, scores, strict=True)),
        total=total,
        risk=band,
        response=response_for(total, band),
    )


@dataclass(frozen=True, slots=True)
class News2Arrays:
    """The numpy scorer's result for n rows.

    ``scores`` is (n, 7) int8 in ``PARAMETERS`` order; ``total`` is int16 and ``band`` the
    ``RiskBand.code``; rows with a missing (NaN) input get -1 in all three.
    """

    scores: npt.NDArray[np.int8]
    total: npt.NDArray[np.int16]
    band: npt.NDArray[np.int8]


def news2_score_arrays(
    *,
    resp_rate_per_min: npt.ArrayLike,
    spo2_pct: npt.ArrayLike,
    spo2_scale: npt.ArrayLike,
    on_supplemental_oxygen: npt.ArrayLike,
    systolic_bp_mmhg: npt.ArrayLike,
    pulse_per_min: npt.ArrayLike,
    acvpu_code: npt.ArrayLike,
    temp_c: npt.ArrayLike,
) -> News2Arrays:
    """Score many rows at once (same chart and rounding as ``news2_score``).

    ``spo2_scale`` holds 1 or 2, ``on_supplemental_oxygen`` booleans, ``acvpu_code`` the
    ``Acvpu.code`` values. Plausibility is the caller's job (see ``check_plausible``); NaN in
    any measurement marks the row incomplete instead of scoring it as normal.
    """
    rr = np.asarray(resp_rate_per_min, np.float64)
    spo2 = np.asarray(spo2_pct, np.float64)
    scale = np.asarray(spo2_scale, np.int8)
    oxygen = np.asarray(on_supplemental_oxygen, np.bool_)
    sbp = np.asarray(systolic_bp_mmhg, np.float64)
    pulse = np.asarray(pulse_per_min, np.float64)
    acvpu = np.asarray(acvpu_code, np.int8)
    temp = np.asarray(temp_c, np.float64)

    spo2_row = np.where(
        scale == 2,
        np.where(oxygen, _SPO2_SCALE2_OXYGEN.score_array(spo2), _SPO2_SCALE2_AIR.score_array(spo2)),
        _SPO2_SCALE1.score_array(spo2),
    )
    scores = np.stack(
        [
            _RESP_RATE.score_array(rr),
            spo2_row,
            np.where(oxygen, _OXYGEN_SCORE, 0),
            _SYSTOLIC_BP.score_array(sbp),
            _PULSE.score_array(pulse),
            np.where(acvpu == 0, 0, _CONSCIOUSNESS_SCORE),
            _TEMPERATURE.score_array(temp),
        ],
        axis=-1,
    ).astype(np.int8)
    total = scores.sum(axis=-1, dtype=np.int16)
    single_3 = (scores == 3).any(axis=-1)
    band = np.select(
        [total >= 7, total >= 5, single_3],
        [RiskBand.HIGH.code, RiskBand.MEDIUM.code, RiskBand.LOW_MEDIUM.code],
        default=RiskBand.LOW.code,
    ).astype(np.int8)

    missing = np.isnan(rr) | np.isnan(spo2) | np.isnan(sbp) | np.isnan(pulse) | np.isnan(temp)
    if missing.any():
        scores[missing] = -1
        total[missing] = -1
        band[missing] = -1
    return News2Arrays(scores=scores, total=total, band=band)
