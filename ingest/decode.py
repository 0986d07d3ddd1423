"""Bytes off the wire -> a typed ``Reading`` or a ``Rejection`` with a reason. One pass, no I/O.

The decoder is pure: the same (topic, payload, received time) always gives the same answer, so a
spooled message replays identically. Stateful checks (unknown device, replayed sequence numbers)
live in :mod:`ingest.validate`. Nothing here may raise anything but :class:`DecodeError`
internally; :func:`decode` itself never raises (property-tested).

Formats (docs/protocol.md): compact JSON objects, or SenML (RFC 8428) JSON arrays.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import numpy as np

from devices.readings import (
    SENSOR_STATES,
    AccelWindow,
    DeviceStatus,
    Envelope,
    HomeEvent,
    Kind,
    Reading,
    SensorType,
    SosPress,
    Vitals,
)

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class Reason(enum.StrEnum):
    """Why a message was rejected; also the ``reason`` label of the rejection metric."""

    BAD_TOPIC = "bad_topic"
    UNKNOWN_KIND = "unknown_kind"
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    INVALID_FIELD = "invalid_field"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    NO_MEASUREMENT = "no_measurement"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    DEVICE_MISMATCH = "device_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    REPLAYED_SEQ = "replayed_seq"
    BAD_SENML = "bad_senml"
    STORAGE_REJECTED = "storage_rejected"


class Rejection(msgspec.Struct, frozen=True):
    """A message that will not be stored as a reading, and why."""

    topic: str
    reason: Reason
    detail: str
    device_id: str | None
    seq: int | None
    received_ts: float


class DecodeError(Exception):
    """Raised inside the decoder; turned into a :class:`Rejection` by :func:`decode`."""

    def __init__(self, reason: Reason, detail: str, seq: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.seq = seq


class Limits(msgspec.Struct, frozen=True):
    """Bounds every message is checked against."""

    max_payload_bytes: int = 64 * 1024
    max_future_skew_s: float = 300.0
    max_age_s: float = 30 * 86400.0
    max_accel_samples: int = 4096
    max_accel_window_s: float = 30.0


MAX_ABS_G = 64.0


# --- wire formats (compact JSON) -------------------------------------------------------------
# Ranges are declared as msgspec constraints, so range checks run inside the C decoder; a
# violation surfaces as a ValidationError that :func:`_compact` maps to ``out_of_range``.
# Physically possible ranges (not clinical thresholds: those are the rule engine's business).
HrBpm = Annotated[float, msgspec.Meta(ge=10.0, le=300.0)]
Spo2Pct = Annotated[float, msgspec.Meta(ge=40.0, le=100.0)]
TempC = Annotated[float, msgspec.Meta(ge=25.0, le=45.0)]
RespRate = Annotated[float, msgspec.Meta(ge=0.0, le=80.0)]
SbpMmhg = Annotated[float, msgspec.Meta(ge=40.0, le=300.0)]
DbpMmhg = Annotated[float, msgspec.Meta(ge=20.0, le=200.0)]
BatteryPct = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Quality = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Lat = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
Lon = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
AccuracyM = Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0)]
RssiDbm = Annotated[float, msgspec.Meta(ge=-150.0, le=20.0)]
RateHz = Annotated[float, msgspec.Meta(ge=1.0, le=1000.0)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class _Base(msgspec.Struct, kw_only=True):
    ts: float
    seq: Seq
    device_id: str | None = None


class _VitalsWire(_Base, kw_only=True):
    hr_bpm: HrBpm | None = None
    spo2_pct: Spo2Pct | None = None
    temp_c: TempC | None = None
    resp_rate_per_min: RespRate | None = None
    sbp_mmhg: SbpMmhg | None = None
    dbp_mmhg: DbpMmhg | None = None
    battery_pct: BatteryPct | None = None
    signal_quality: Quality | None = None
    on_oxygen: bool | None = None


class _AccelWire(_Base, kw_only=True):
    rate_hz: RateHz
    samples: list[tuple[float, float, float]] | None = None
    enc: str | None = None  # "i16le" or "f32le" with base64 "data"
    data: str | None = None
    g_per_count: float | None = None
    position: str | None = None


class _SosWire(_Base, kw_only=True):
    action: str = "press"
    lat: Lat | None = None
    lon: Lon | None = None
    accuracy_m: AccuracyM | None = None


class _EventWire(_Base, kw_only=True):
    sensor: str
    state: str
    sensor_id: str | None = None


class _StatusWire(msgspec.Struct, kw_only=True):
    state: str
    ts: float | None = None
    seq: Seq | None = None
    device_id: str | None = None
    battery_pct: BatteryPct | None = None
    rssi_dbm: RssiDbm | None = None
    firmware: str | None = None
    will: bool = False


class _SenMLRecord(msgspec.Struct):
    bn: str | None = None
    bt: float | None = None
    bu: str | None = None
    n: str | None = None
    u: str | None = None
    v: float | None = None
    vb: bool | None = None
    vs: str | None = None
    t: float | None = None


_WIRE_TYPES: dict[Kind, type[msgspec.Struct]] = {
    Kind.VITALS: _VitalsWire,
    Kind.ACCEL: _AccelWire,
    Kind.SOS: _SosWire,
    Kind.EVENT: _EventWire,
    Kind.STATUS: _StatusWire,
}
_WIRE_DECODERS: dict[Kind, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(t) for kind, t in _WIRE_TYPES.items()
}
_SENML_DECODER = msgspec.json.Decoder(list[_SenMLRecord])


# --- helpers -----------------------------------------------------------------------------------
def _check_seq(seq: int | None) -> int:
    if seq is None:
        raise DecodeError(Reason.INVALID_FIELD, "seq is required")
    return seq


def _check_ts(ts: float | None, received_ts: float, limits: Limits, seq: int | None) -> float:
    if ts is None:
        raise DecodeError(Reason.INVALID_FIELD, "ts is required", seq)
    if not math.isfinite(ts):
        raise DecodeError(Reason.NON_FINITE, "ts is not a finite number", seq)
    if ts > received_ts + limits.max_future_skew_s:
        raise DecodeError(
            Reason.FUTURE_TIMESTAMP,
            f"ts is {ts - received_ts:.0f} s ahead of the server clock "
            f"(limit {limits.max_future_skew_s:.0f} s; ts is UNIX seconds)",
            seq,
        )
    if ts < received_ts - limits.max_age_s:
        raise DecodeError(
            Reason.STALE_TIMESTAMP,
            f"ts is {(received_ts - ts) / 86400:.1f} days old "
            f"(limit {limits.max_age_s / 86400:.0f} days)",
            seq,
        )
    return ts


def _same_device(claimed: str | None, device_id: str, seq: int | None) -> None:
    if claimed is not None and claimed != device_id:
        raise DecodeError(
            Reason.DEVICE_MISMATCH,
            f"payload names device {claimed!r} but was published by {device_id!r}",
            seq,
        )


# Topics repeat (one per device and kind): remember the parse of the good ones.
_TOPIC_CACHE: dict[tuple[str, str], tuple[str, Kind]] = {}
_TOPIC_CACHE_MAX = 200_000


def parse_topic(topic: str, root: str) -> tuple[str, Kind]:
    """``{root}/{device_id}/{kind}`` -> (device_id, kind)."""
    key = (topic, root)
    hit = _TOPIC_CACHE.get(key)
    if hit is not None:
        return hit
    parsed = _parse_topic(topic, root)
    if len(_TOPIC_CACHE) >= _TOPIC_CACHE_MAX:
        _TOPIC_CACHE.clear()
    _TOPIC_CACHE[key] = parsed
    return parsed


def _parse_topic(topic: str, root: str) -> tuple[str, Kind]:
    prefix = root + "/"
    if not topic.startswith(prefix):
        raise DecodeError(Reason.BAD_TOPIC, f"topic must start with {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2:
        raise DecodeError(Reason.BAD_TOPIC, "topic must be {root}/{device_id}/{kind}")
    device_id, kind_name = parts
    if not DEVICE_ID_RE.match(device_id):
        raise DecodeError(Reason.BAD_TOPIC, "device id must match " + DEVICE_ID_RE.pattern)
    try:
        kind = Kind(kind_name)
    except ValueError:
        raise DecodeError(
            Reason.UNKNOWN_KIND,
            f"unknown kind {kind_name[:32]!r}; expected one of {', '.join(k.value for k in Kind)}",
        ) from None
    return device_id, kind


def _samples_from_wire(w: _AccelWire, limits: Limits) -> np.ndarray[Any, np.dtype[np.float32]]:
    if w.samples is not None:
        arr = np.asarray(w.samples, dtype=np.float32)
        if arr.size == 0:
            arr = arr.reshape(0, 3)
    elif w.enc is not None and w.data is not None:
        try:
            raw = base64.b64decode(w.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(Reason.INVALID_FIELD, f"data is not base64: {exc}", w.seq) from None
        if w.enc == "i16le":
            if w.g_per_count is None or not (0 < w.g_per_count < 1):
                raise DecodeError(Reason.INVALID_FIELD, "i16le needs g_per_count in (0, 1)", w.seq)
            if len(raw) % 6:
                raise DecodeError(Reason.INVALID_FIELD, "i16le data is not whole xyz triples")
            arr = np.frombuffer(raw, dtype="<i2").astype(np.float32) * np.float32(w.g_per_count)
        elif w.enc == "f32le":
            if len(raw) % 12:
                raise DecodeError(Reason.INVALID_FIELD, "f32le data is not whole xyz triples")
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            raise DecodeError(Reason.INVALID_FIELD, "enc must be i16le or f32le", w.seq)
        arr = arr.reshape(-1, 3)
    else:
        raise DecodeError(Reason.NO_MEASUREMENT, "accel needs samples or enc+data", w.seq)
    n = arr.shape[0]
    if n == 0:
        raise DecodeError(Reason.NO_MEASUREMENT, "accel window has no samples", w.seq)
    if n > limits.max_accel_samples:
        raise DecodeError(
            Reason.OVERSIZED, f"{n} samples exceed the {limits.max_accel_samples} limit", w.seq
        )
    return arr


def _decode_accel(w: _AccelWire, env: Envelope, limits: Limits) -> AccelWindow:
    rate = w.rate_hz
    arr = _samples_from_wire(w, limits)
    if arr.shape[0] / rate > limits.max_accel_window_s:
        raise DecodeError(
            Reason.OUT_OF_RANGE,
            f"window of {arr.shape[0] / rate:.1f} s exceeds {limits.max_accel_window_s:.0f} s",
            w.seq,
        )
    if not np.isfinite(arr).all():
        raise DecodeError(Reason.NON_FINITE, "accel samples contain NaN or Inf", w.seq)
    mag = np.sqrt(np.einsum("ij,ij->i", arr, arr))
    peak = float(mag.max())
    if float(np.abs(arr).max()) > MAX_ABS_G:
        raise DecodeError(Reason.OUT_OF_RANGE, f"accel sample beyond +-{MAX_ABS_G:g} g", w.seq)
    position = w.position[:16] if w.position else None
    return AccelWindow(
        env=env,
        rate_hz=rate,
        n_samples=int(arr.shape[0]),
        samples_g=arr.astype("<f4", copy=False).tobytes(),
        peak_g=peak,
        position=position,
    )


class _SeqOnly(msgspec.Struct):
    seq: Any = None


def _seq_of(payload: bytes) -> int | None:
    """Best-effort sequence number of a refused payload, so the reply can name it."""
    try:
        seq = msgspec.json.decode(payload, type=_SeqOnly).seq
    except msgspec.DecodeError:
        return None
    ok = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63
    return seq if ok else None


def _validation_reason(exc: msgspec.ValidationError, default: Reason) -> Reason:
    text = str(exc)
    if "` >= " in text or "` <= " in text:
        return Reason.OUT_OF_RANGE
    if text.startswith("Number out of range"):
        return Reason.NON_FINITE  # a literal like 1e999 is infinite as a float
    return default


def _compact(
    kind: Kind, device_id: str, payload: bytes, received_ts: float, limits: Limits
) -> Reading:
    try:
        wire = _WIRE_DECODERS[kind].decode(payload)
    except msgspec.ValidationError as exc:
        reason = _validation_reason(exc, Reason.INVALID_FIELD)
        raise DecodeError(reason, str(exc), _seq_of(payload)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(Reason.MALFORMED, str(exc)) from None
    return _build(kind, device_id, wire, received_ts, limits)


def _build(kind: Kind, device_id: str, wire: Any, received_ts: float, limits: Limits) -> Reading:
    try:
        return _build_checked(kind, device_id, wire, received_ts, limits)
    except DecodeError as exc:
        # Name the sequence number in every rejection we can, so the device can match it.
        if exc.seq is None and isinstance(wire.seq, int):
            exc.seq = wire.seq
        raise


def _build_checked(
    kind: Kind, device_id: str, wire: Any, received_ts: float, limits: Limits
) -> Reading:
    _same_device(wire.device_id, device_id, wire.seq)
    if isinstance(wire, _StatusWire):
        return _build_status(wire, device_id, received_ts, limits)
    seq = wire.seq  # bounds checked by the decoder's constraints
    env = Envelope(device_id, seq, _check_ts(wire.ts, received_ts, limits, seq), received_ts)
    if isinstance(wire, _VitalsWire):
        w = wire
        if (
            w.hr_bpm is None
            and w.spo2_pct is None
            and w.temp_c is None
            and w.resp_rate_per_min is None
            and w.sbp_mmhg is None
            and w.dbp_mmhg is None
            and w.battery_pct is None
        ):
            raise DecodeError(Reason.NO_MEASUREMENT, "vitals carry no measurement", seq)
        return Vitals(
            env=env,
            hr_bpm=w.hr_bpm,
            spo2_pct=w.spo2_pct,
            temp_c=w.temp_c,
            resp_rate_per_min=w.resp_rate_per_min,
            sbp_mmhg=w.sbp_mmhg,
            dbp_mmhg=w.dbp_mmhg,
            battery_pct=w.battery_pct,
            signal_quality=w.signal_quality,
            on_oxygen=w.on_oxygen,
        )
    if isinstance(wire, _AccelWire):
        return _decode_accel(wire, env, limits)
    if isinstance(wire, _SosWire):
        if wire.action not in ("press", "cancel"):
            raise DecodeError(Reason.INVALID_FIELD, "action must be press or cancel", seq)
        if (wire.lat is None) != (wire.lon is None):
            raise DecodeError(Reason.INVALID_FIELD, "lat and lon come together", seq)
        return SosPress(
            env=env,
            action="press" if wire.action == "press" else "cancel",
            lat=wire.lat,
            lon=wire.lon,
            accuracy_m=wire.accuracy_m,
        )
    assert isinstance(wire, _EventWire)
    try:
        sensor = SensorType(wire.sensor)
    except ValueError:
        raise DecodeError(
            Reason.INVALID_FIELD,
            f"sensor must be one of {', '.join(s.value for s in SensorType)}",
            seq,
        ) from None
    if wire.state not in SENSOR_STATES[sensor]:
        raise DecodeError(
            Reason.INVALID_FIELD,
            f"{sensor} state must be one of {', '.join(sorted(SENSOR_STATES[sensor]))}",
            seq,
        )
    sensor_id = wire.sensor_id
    if sensor_id is not None and not DEVICE_ID_RE.match(sensor_id):
        raise DecodeError(Reason.INVALID_FIELD, "sensor_id has invalid characters", seq)
    return HomeEvent(env=env, sensor=sensor, state=wire.state, sensor_id=sensor_id)


def _build_status(
    wire: _StatusWire, device_id: str, received_ts: float, limits: Limits
) -> DeviceStatus:
    if wire.state not in ("online", "offline"):
        raise DecodeError(Reason.INVALID_FIELD, "state must be online or offline", wire.seq)
    if wire.will:
        # A will is fixed at connect time, so its clock and counter are stale by design: it is
        # stamped with the broker hand-over time and a server-side sequence below zero that
        # can never collide with the device's own.
        seq = -int(received_ts * 1000)
        device_ts = received_ts
    else:
        seq = _check_seq(wire.seq)
        device_ts = _check_ts(wire.ts, received_ts, limits, seq)
    firmware = wire.firmware[:64] if wire.firmware else None
    return DeviceStatus(
        env=Envelope(device_id, seq, device_ts, received_ts),
        state="online" if wire.state == "online" else "offline",
        battery_pct=wire.battery_pct,
        rssi_dbm=wire.rssi_dbm,
        firmware=firmware,
        will=wire.will,
    )


# --- SenML -------------------------------------------------------------------------------------
# name -> (field, accepted units). Units are RFC 8428 / IANA SenML unit symbols.
_SENML_VITALS: dict[str, tuple[str, frozenset[str]]] = {
    "hr": ("hr_bpm", frozenset({"beat/min", "1/min"})),
    "spo2": ("spo2_pct", frozenset({"%"})),
    "temp": ("temp_c", frozenset({"Cel"})),
    "rr": ("resp_rate_per_min", frozenset({"1/min", "breaths/min"})),
    "sbp": ("sbp_mmhg", frozenset({"mmHg"})),
    "dbp": ("dbp_mmhg", frozenset({"mmHg"})),
    "battery": ("battery_pct", frozenset({"%EL", "%"})),
    "quality": ("signal_quality", frozenset({"/", "ratio", ""})),
}


def _senml(
    kind: Kind, device_id: str, payload: bytes, received_ts: float, limits: Limits
) -> Reading:
    try:
        records = _SENML_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(Reason.BAD_SENML, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(Reason.MALFORMED, str(exc)) from None
    if not records:
        raise DecodeError(Reason.BAD_SENML, "empty SenML pack")
    base_name = ""
    base_time = 0.0
    base_unit: str | None = None
    fields: dict[str, Any] = {}
    times: list[float] = []
    accel: list[tuple[float, str, float]] = []
    for rec in records:
        if rec.bn is not None:
            base_name = rec.bn
        if rec.bt is not None:
            base_time = rec.bt
        if rec.bu is not None:
            base_unit = rec.bu
        name = rec.n or ""
        rel = rec.t or 0.0
        if not math.isfinite(base_time) or not math.isfinite(rel):
            raise DecodeError(Reason.NON_FINITE, "SenML time is not finite")
        # RFC 8428: a time below 2**28 is relative to now; devices must send absolute times.
        t = base_time + rel
        unit = rec.u if rec.u is not None else base_unit
        if name == "seq":
            v = rec.v
            if v is None or not math.isfinite(v) or v != int(v):
                raise DecodeError(Reason.BAD_SENML, "seq must be an integer value")
            fields["seq"] = int(v)
            continue
        times.append(t)
        if kind is Kind.ACCEL and name in ("x", "y", "z"):
            if rec.v is None:
                raise DecodeError(Reason.BAD_SENML, "accel records need a numeric v")
            accel.append((rel + base_time, name, rec.v))
            continue
        if rec.vs is not None:
            fields[name] = rec.vs
        elif rec.vb is not None:
            fields[name] = rec.vb
        elif rec.v is not None:
            if kind is Kind.VITALS:
                if name not in _SENML_VITALS:
                    raise DecodeError(Reason.BAD_SENML, f"unknown vitals name {name[:32]!r}")
                field, units = _SENML_VITALS[name]
                if unit is not None and unit not in units:
                    raise DecodeError(
                        Reason.BAD_SENML, f"{name} unit {unit!r} not one of {sorted(units)}"
                    )
                fields[field] = rec.v
            else:
                fields[name] = rec.v
    if base_name:
        parts = [p for p in re.split(r"[:/]", base_name) if p]
        if device_id not in parts:
            raise DecodeError(
                Reason.DEVICE_MISMATCH,
                f"SenML base name {base_name[:64]!r} does not name device {device_id!r}",
                fields.get("seq"),
            )
    fields["ts"] = min(times) if times else base_time
    if kind is Kind.ACCEL:
        fields.update(_senml_accel(accel))
    wire_type = _WIRE_TYPES[kind]
    try:
        wire = msgspec.convert(fields, type=wire_type)
    except msgspec.ValidationError as exc:
        reason = _validation_reason(exc, Reason.BAD_SENML)
        raise DecodeError(reason, str(exc), fields.get("seq")) from None
    return _build(kind, device_id, wire, received_ts, limits)


def _senml_accel(records: list[tuple[float, str, float]]) -> dict[str, Any]:
    """x/y/z records at times t -> samples and a rate (times must be evenly spaced)."""
    by_time: dict[float, dict[str, float]] = {}
    for t, axis, value in records:
        by_time.setdefault(t, {})[axis] = value
    stamps = sorted(by_time)
    if not stamps or any(len(by_time[t]) != 3 for t in stamps):
        raise DecodeError(Reason.BAD_SENML, "each accel time needs x, y and z")
    samples = [(by_time[t]["x"], by_time[t]["y"], by_time[t]["z"]) for t in stamps]
    if len(stamps) < 2:
        raise DecodeError(Reason.BAD_SENML, "an accel window needs two or more samples")
    steps = np.diff(np.asarray(stamps))
    step = float(np.median(steps))
    if step <= 0 or float(np.abs(steps - step).max()) > step * 0.05:
        raise DecodeError(Reason.BAD_SENML, "accel sample times must be evenly spaced")
    return {"samples": samples, "rate_hz": 1.0 / step, "ts": stamps[0]}


# --- entry point -------------------------------------------------------------------------------
def decode(
    topic: str,
    payload: bytes,
    received_ts: float,
    *,
    root: str = "carecall/v1",
    limits: Limits = Limits(),  # noqa: B008 - immutable struct
) -> Reading | Rejection:
    """Decode one message. Never raises: every failure is a :class:`Rejection`."""
    device_id: str | None = None
    try:
        device_id, kind = parse_topic(topic, root)
        if len(payload) > limits.max_payload_bytes:
            raise DecodeError(
                Reason.OVERSIZED,
                f"payload of {len(payload)} bytes exceeds the {limits.max_payload_bytes} limit",
            )
        head = payload.lstrip()[:1]
        parse: Callable[[Kind, str, bytes, float, Limits], Reading]
        parse = _senml if head == b"[" else _compact
        return parse(kind, device_id, payload, received_ts, limits)
    except DecodeError as exc:
        return Rejection(topic, exc.reason, exc.detail, device_id, exc.seq, received_ts)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # Defence in depth: a decoder bug must dead-letter the message, not crash the bridge.
        return Rejection(
            topic,
            Reason.MALFORMED,
            f"undecodable: {type(exc).__name__}",
            device_id,
            None,
            received_ts,
        )
