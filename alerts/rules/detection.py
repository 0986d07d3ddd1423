"""What the rule engine hands to the alert side: typed, immutable detections.

A ``Detection`` says "this rule fired (or recovered) for this device at this device time".
Opening, merging and closing incidents is the incident layer's job; a detection with
``clears=True`` only tells it that the condition behind an earlier detection of the same
``kind`` (and, for vitals, the same ``parameter`` in the evidence) has gone away.
"""

from __future__ import annotations

import enum

import msgspec

# Evidence values are scalars so a detection serialises to JSON/msgpack without surprises.
EvidenceValue = float | str | int | bool | None
Evidence = dict[str, EvidenceValue]


class DetectionKind(enum.StrEnum):
    """What was detected."""

    SOS = "sos"
    SOS_CANCEL = "sos_cancel"
    FALL = "fall"
    VITALS_ABNORMAL = "vitals_abnormal"  # evidence["parameter"] names the vital sign
    VITALS_RECOVERED = "vitals_recovered"  # clears an earlier vitals_abnormal (same parameter)
    NEWS2 = "news2"
    INACTIVITY = "inactivity"
    NIGHT_WANDERING = "night_wandering"
    BED_EXIT = "bed_exit"
    SMOKE = "smoke"
    GAS = "gas"
    WATER_LEAK = "water_leak"
    DOOR_OPEN = "door_open"
    DEVICE_OFFLINE = "device_offline"
    BATTERY_LOW = "battery_low"


class Severity(enum.StrEnum):
    """How urgently a human must look; ordered by ``rank`` (critical is 0)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for critical up to 4 for info, so ``min(..., key=rank)`` is the worst."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}

# Fixed policy: the kinds whose severity does not depend on a measured level. Vitals and
# NEWS2 take theirs from the configured level or the risk band (see vitals.py, news2.py).
KIND_SEVERITY: dict[DetectionKind, Severity] = {
    DetectionKind.SOS: Severity.CRITICAL,
    DetectionKind.SOS_CANCEL: Severity.INFO,
    DetectionKind.FALL: Severity.CRITICAL,
    DetectionKind.SMOKE: Severity.CRITICAL,
    DetectionKind.GAS: Severity.CRITICAL,
    DetectionKind.WATER_LEAK: Severity.HIGH,
    DetectionKind.NIGHT_WANDERING: Severity.HIGH,
    DetectionKind.BED_EXIT: Severity.HIGH,
    DetectionKind.INACTIVITY: Severity.HIGH,
    DetectionKind.DOOR_OPEN: Severity.MEDIUM,
    DetectionKind.VITALS_RECOVERED: Severity.INFO,
    # Device faults are the lowest: they need a technician, not an ambulance.
    DetectionKind.DEVICE_OFFLINE: Severity.LOW,
    DetectionKind.BATTERY_LOW: Severity.LOW,
}


class Detection(msgspec.Struct, frozen=True, kw_only=True):
    """One rule outcome for one device.

    ``event_ts`` is the device's clock for the moment the condition began (the impact, the
    press, the first abnormal sample of the run); ``detected_ts`` is when the engine could
    tell (the receive time of the deciding reading, or the ``tick`` time for timers), so
    ``detected_ts - event_ts`` is the detection latency.
    """

    device_id: str
    resident_id: str | None
    kind: DetectionKind
    severity: Severity
    event_ts: float
    detected_ts: float
    evidence: Evidence = msgspec.field(default_factory=dict)
    clears: bool = False  # True: a recovery that closes an earlier detection of this kind


def make_detection(
    *,
    device_id: str,
    resident_id: str | None,
    kind: DetectionKind,
    event_ts: float,
    detected_ts: float,
    evidence: Evidence | None = None,
    severity: Severity | None = None,
    clears: bool = False,
) -> Detection:
    """Build a detection, taking the fixed severity policy unless ``severity`` is given.

    A clearing detection is informational whatever its kind: the recovery itself needs no
    one to rush anywhere.
    """
    if severity is None:
        severity = Severity.INFO if clears else KIND_SEVERITY[kind]
    return Detection(
        device_id=device_id,
        resident_id=resident_id,
        kind=kind,
        severity=severity,
        event_ts=event_ts,
        detected_ts=detected_ts,
        evidence=evidence if evidence is not None else {},
        clears=clears,
    )
