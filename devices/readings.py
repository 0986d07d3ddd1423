"""Typed, immutable values for what a device sends.

These are the messages that travel between pipeline stages once the ingest decoder has
validated a payload: nothing downstream touches raw MQTT bytes or JSON dicts. They live in
``devices`` because they describe devices' data and every other feature may import them.

Times are UNIX epoch seconds (float). ``device_ts`` is the device's own clock, ``received_ts``
the bridge's clock when the broker handed the message over.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec


class Kind(enum.StrEnum):
    """Topic kinds: the last level of ``carecall/v1/{device_id}/{kind}``."""

    VITALS = "vitals"
    ACCEL = "accel"
    SOS = "sos"
    EVENT = "event"
    STATUS = "status"


class SensorType(enum.StrEnum):
    """Home sensors that report on the ``event`` topic."""

    MOTION = "motion"
    DOOR = "door"
    BED = "bed"
    SMOKE = "smoke"
    GAS = "gas"
    WATER = "water"


# The states each home sensor may report; anything else is rejected by the decoder.
SENSOR_STATES: dict[SensorType, frozenset[str]] = {
    SensorType.MOTION: frozenset({"active", "inactive"}),
    SensorType.DOOR: frozenset({"open", "closed"}),
    SensorType.BED: frozenset({"occupied", "empty"}),
    SensorType.SMOKE: frozenset({"alarm", "clear", "test"}),
    SensorType.GAS: frozenset({"alarm", "clear", "test"}),
    SensorType.WATER: frozenset({"leak", "dry"}),
}


class Envelope(msgspec.Struct, frozen=True):
    """Identity and clocks shared by every reading."""

    device_id: str
    seq: int
    device_ts: float
    received_ts: float


class Vitals(msgspec.Struct, frozen=True, tag="vitals"):
    """One vitals sample; absent measurements are ``None`` ("no data", not "normal")."""

    env: Envelope
    hr_bpm: float | None = None
    spo2_pct: float | None = None
    temp_c: float | None = None
    resp_rate_per_min: float | None = None
    sbp_mmhg: float | None = None
    dbp_mmhg: float | None = None
    battery_pct: float | None = None
    signal_quality: float | None = None  # 0 (unusable) .. 1 (clean), as the device judges it
    on_oxygen: bool | None = None


class AccelWindow(msgspec.Struct, frozen=True, tag="accel"):
    """A window of accelerometer samples in g, starting at ``env.device_ts``.

    ``samples_g`` is little-endian float32, interleaved x, y, z: ``n_samples * 12`` bytes.
    Keeping it as bytes (not a list of floats) makes the window cheap to store and to hand to
    numpy (``numpy.frombuffer(w.samples_g, '<f4').reshape(-1, 3)``).
    """

    env: Envelope
    rate_hz: float
    n_samples: int
    samples_g: bytes
    peak_g: float
    position: str | None = None  # waist, wrist, chest, pendant: as the device model declares


class SosPress(msgspec.Struct, frozen=True, tag="sos"):
    """The SOS button: a press, or the resident's "I am OK" cancel."""

    env: Envelope
    action: Literal["press", "cancel"] = "press"
    lat: float | None = None
    lon: float | None = None
    accuracy_m: float | None = None


class HomeEvent(msgspec.Struct, frozen=True, tag="event"):
    """A home sensor's state change (motion, door, bed, smoke, gas, water)."""

    env: Envelope
    sensor: SensorType
    state: str
    sensor_id: str | None = None  # a gateway may front several sensors


class DeviceStatus(msgspec.Struct, frozen=True, tag="status"):
    """Heartbeat or last will; ``will`` is true for the broker-published offline will."""

    env: Envelope
    state: Literal["online", "offline"]
    battery_pct: float | None = None
    rssi_dbm: float | None = None
    firmware: str | None = None
    will: bool = False


Reading = Vitals | AccelWindow | SosPress | HomeEvent | DeviceStatus


def kind_of(r: Reading) -> Kind:
    """The topic kind a reading came from."""
    return _KIND_OF[type(r)]


_KIND_OF: dict[type, Kind] = {
    Vitals: Kind.VITALS,
    AccelWindow: Kind.ACCEL,
    SosPress: Kind.SOS,
    HomeEvent: Kind.EVENT,
    DeviceStatus: Kind.STATUS,
}
