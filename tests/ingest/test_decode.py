from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.readings import AccelWindow, DeviceStatus, HomeEvent, SensorType, SosPress, Vitals
from ingest.decode import Limits, Reason, Rejection, decode

NOW = 1_800_000_000.0
ROOT = "carecall/v1"


def t(device: str, kind: str) -> str:
    return f"{ROOT}/{device}/{kind}"


def j(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def ok(topic: str, payload: bytes):  # type: ignore[no-untyped-def]
    r = decode(topic, payload, NOW)
    assert not isinstance(r, Rejection), r
    return r


def rejected(topic: str, payload: bytes, **kw: object) -> Rejection:
    r = decode(topic, payload, NOW, **kw)  # type: ignore[arg-type]
    assert isinstance(r, Rejection), r
    return r


# --- accepted -----------------------------------------------------------------------------------
def test_vitals_compact() -> None:
    r = ok(
        t("w1", "vitals"),
        j(
            ts=NOW - 1.5,
            seq=7,
            hr_bpm=72,
            spo2_pct=97.0,
            temp_c=36.6,
            resp_rate_per_min=16,
            sbp_mmhg=121,
            dbp_mmhg=79,
            battery_pct=80,
            signal_quality=0.9,
            on_oxygen=False,
        ),
    )
    assert isinstance(r, Vitals)
    assert (r.env.device_id, r.env.seq, r.env.device_ts, r.env.received_ts) == (
        "w1",
        7,
        NOW - 1.5,
        NOW,
    )
    assert (r.hr_bpm, r.spo2_pct, r.sbp_mmhg, r.on_oxygen) == (72, 97, 121, False)


def test_vitals_partial_is_no_data_not_zero() -> None:
    r = ok(t("w1", "vitals"), j(ts=NOW, seq=1, spo2_pct=95))
    assert isinstance(r, Vitals)
    assert r.hr_bpm is None and r.temp_c is None


def test_accel_json_triples() -> None:
    samples = [[0.0, -1.0, 0.02], [0.1, -0.9, 0.0], [2.5, -3.0, 1.0]]
    r = ok(t("b1", "accel"), j(ts=NOW, seq=2, rate_hz=50, samples=samples, position="waist"))
    assert isinstance(r, AccelWindow)
    arr = np.frombuffer(r.samples_g, "<f4").reshape(-1, 3)
    np.testing.assert_allclose(arr, samples, rtol=1e-6)
    assert r.n_samples == 3 and r.rate_hz == 50 and r.position == "waist"
    assert r.peak_g == pytest.approx(math.sqrt(2.5**2 + 9 + 1), rel=1e-6)


def test_accel_binary_i16() -> None:
    counts = np.array([[0, -256, 0], [512, 0, 0]], dtype="<i2")
    data = base64.b64encode(counts.tobytes()).decode()
    r = ok(
        t("b1", "accel"), j(ts=NOW, seq=3, rate_hz=200, enc="i16le", data=data, g_per_count=1 / 256)
    )
    assert isinstance(r, AccelWindow)
    arr = np.frombuffer(r.samples_g, "<f4").reshape(-1, 3)
    np.testing.assert_allclose(arr, [[0, -1, 0], [2, 0, 0]])


def test_sos_with_location_and_cancel() -> None:
    r = ok(t("p1", "sos"), j(ts=NOW, seq=9, lat=38.04, lon=114.51, accuracy_m=12))
    assert isinstance(r, SosPress) and r.action == "press" and r.lat == 38.04
    c = ok(t("p1", "sos"), j(ts=NOW, seq=10, action="cancel"))
    assert isinstance(c, SosPress) and c.action == "cancel"


@pytest.mark.parametrize(
    ("sensor", "state"),
    [
        ("motion", "active"),
        ("door", "open"),
        ("bed", "empty"),
        ("smoke", "alarm"),
        ("gas", "alarm"),
        ("water", "leak"),
    ],
)
def test_home_events(sensor: str, state: str) -> None:
    r = ok(t("gw1", "event"), j(ts=NOW, seq=1, sensor=sensor, state=state, sensor_id="kitchen"))
    assert isinstance(r, HomeEvent) and r.sensor == SensorType(sensor) and r.state == state


def test_status_heartbeat_and_will() -> None:
    r = ok(t("w1", "status"), j(ts=NOW, seq=5, state="online", battery_pct=55, rssi_dbm=-70))
    assert isinstance(r, DeviceStatus) and r.state == "online" and not r.will
    w = ok(t("w1", "status"), j(state="offline", will=True))
    assert isinstance(w, DeviceStatus) and w.will and w.env.seq < 0 and w.env.device_ts == NOW


def test_senml_vitals() -> None:
    pack = [
        {"bn": "urn:dev:carecall:w9:", "bt": NOW - 2, "n": "hr", "u": "beat/min", "v": 64},
        {"n": "spo2", "u": "%", "v": 96},
        {"n": "temp", "u": "Cel", "v": 36.9},
        {"n": "seq", "v": 44},
    ]
    r = ok(t("w9", "vitals"), json.dumps(pack).encode())
    assert isinstance(r, Vitals)
    assert (r.env.seq, r.env.device_ts, r.hr_bpm, r.spo2_pct, r.temp_c) == (
        44,
        NOW - 2,
        64,
        96,
        36.9,
    )


def test_senml_event_and_accel() -> None:
    ev = [
        {"bt": NOW, "n": "sensor", "vs": "door"},
        {"n": "state", "vs": "open"},
        {"n": "seq", "v": 3},
    ]
    r = ok(t("gw", "event"), json.dumps(ev).encode())
    assert isinstance(r, HomeEvent) and r.state == "open"
    acc = [{"bt": NOW, "n": "seq", "v": 4}]
    for i in range(4):
        acc += [{"n": a, "t": i * 0.02, "v": v} for a, v in (("x", 0.0), ("y", -1.0), ("z", 0.1))]
    w = ok(t("b", "accel"), json.dumps(acc).encode())
    assert isinstance(w, AccelWindow) and w.n_samples == 4
    assert w.rate_hz == pytest.approx(50)


# --- refused, each with its reason ---------------------------------------------------------------
BAD = [
    ("bad topic root", "other/v1/w1/vitals", j(ts=NOW, seq=1, hr_bpm=70), Reason.BAD_TOPIC),
    ("bad topic depth", f"{ROOT}/w1/vitals/x", j(ts=NOW, seq=1, hr_bpm=70), Reason.BAD_TOPIC),
    ("bad device id", f"{ROOT}/w 1/vitals", j(ts=NOW, seq=1, hr_bpm=70), Reason.BAD_TOPIC),
    ("unknown kind", t("w1", "selfie"), j(ts=NOW, seq=1), Reason.UNKNOWN_KIND),
    ("malformed json", t("w1", "vitals"), b'{"ts": 1, "seq":', Reason.MALFORMED),
    ("not utf8", t("w1", "vitals"), b"\xff\xfe\x00", Reason.MALFORMED),
    (
        "NaN literal",
        t("w1", "vitals"),
        b'{"ts": 1800000000, "seq": 1, "hr_bpm": NaN}',
        Reason.MALFORMED,
    ),
    (
        "huge number",
        t("w1", "vitals"),
        b'{"ts": 1800000000, "seq": 1, "hr_bpm": 1e999}',
        Reason.NON_FINITE,
    ),
    ("seq beyond 2^63", t("w1", "vitals"), j(ts=NOW, seq=2**63, hr_bpm=70), Reason.OUT_OF_RANGE),
    ("wrong type", t("w1", "vitals"), j(ts=NOW, seq="one", hr_bpm=70), Reason.INVALID_FIELD),
    ("missing seq", t("w1", "vitals"), j(ts=NOW, hr_bpm=70), Reason.INVALID_FIELD),
    ("negative seq", t("w1", "vitals"), j(ts=NOW, seq=-1, hr_bpm=70), Reason.OUT_OF_RANGE),
    ("hr out of range", t("w1", "vitals"), j(ts=NOW, seq=1, hr_bpm=900), Reason.OUT_OF_RANGE),
    ("spo2 over 100", t("w1", "vitals"), j(ts=NOW, seq=1, spo2_pct=101), Reason.OUT_OF_RANGE),
    ("no measurement", t("w1", "vitals"), j(ts=NOW, seq=1), Reason.NO_MEASUREMENT),
    ("future ts", t("w1", "vitals"), j(ts=NOW + 3600, seq=1, hr_bpm=70), Reason.FUTURE_TIMESTAMP),
    ("ts in ms", t("w1", "vitals"), j(ts=NOW * 1000, seq=1, hr_bpm=70), Reason.FUTURE_TIMESTAMP),
    (
        "stale ts",
        t("w1", "vitals"),
        j(ts=NOW - 400 * 86400, seq=1, hr_bpm=70),
        Reason.STALE_TIMESTAMP,
    ),
    (
        "spoofed device",
        t("w1", "vitals"),
        j(ts=NOW, seq=1, hr_bpm=70, device_id="w2"),
        Reason.DEVICE_MISMATCH,
    ),
    ("array of junk", t("w1", "vitals"), b"[1, 2, 3]", Reason.BAD_SENML),
    (
        "senml other device",
        t("w1", "vitals"),
        json.dumps(
            [
                {"bn": "urn:dev:carecall:w2:", "bt": NOW, "n": "hr", "u": "beat/min", "v": 60},
                {"n": "seq", "v": 1},
            ]
        ).encode(),
        Reason.DEVICE_MISMATCH,
    ),
    (
        "senml wrong unit",
        t("w1", "vitals"),
        json.dumps([{"bt": NOW, "n": "temp", "u": "Far", "v": 98}, {"n": "seq", "v": 1}]).encode(),
        Reason.BAD_SENML,
    ),
    (
        "accel NaN",
        t("b1", "accel"),
        j(
            ts=NOW,
            seq=1,
            rate_hz=50,
            enc="f32le",
            data=base64.b64encode(struct.pack("<3f", math.nan, 0, 0)).decode(),
        ),
        Reason.NON_FINITE,
    ),
    (
        "accel beyond 64 g",
        t("b1", "accel"),
        j(ts=NOW, seq=1, rate_hz=50, samples=[[70, 0, 0]]),
        Reason.OUT_OF_RANGE,
    ),
    (
        "accel empty",
        t("b1", "accel"),
        j(ts=NOW, seq=1, rate_hz=50, samples=[]),
        Reason.NO_MEASUREMENT,
    ),
    (
        "accel bad rate",
        t("b1", "accel"),
        j(ts=NOW, seq=1, rate_hz=0, samples=[[0, 0, 1]]),
        Reason.OUT_OF_RANGE,
    ),
    (
        "accel too long",
        t("b1", "accel"),
        j(ts=NOW, seq=1, rate_hz=20, samples=[[0, 0, 1]] * 1000),
        Reason.OUT_OF_RANGE,
    ),
    (
        "bad sensor",
        t("gw", "event"),
        j(ts=NOW, seq=1, sensor="toaster", state="on"),
        Reason.INVALID_FIELD,
    ),
    (
        "bad door state",
        t("gw", "event"),
        j(ts=NOW, seq=1, sensor="door", state="ajar"),
        Reason.INVALID_FIELD,
    ),
    ("sos half location", t("p1", "sos"), j(ts=NOW, seq=1, lat=10), Reason.INVALID_FIELD),
    ("sos bad action", t("p1", "sos"), j(ts=NOW, seq=1, action="maybe"), Reason.INVALID_FIELD),
    ("status bad state", t("w1", "status"), j(ts=NOW, seq=1, state="sleepy"), Reason.INVALID_FIELD),
]


@pytest.mark.parametrize(("name", "topic", "payload", "reason"), BAD, ids=[b[0] for b in BAD])
def test_rejections(name: str, topic: str, payload: bytes, reason: Reason) -> None:
    r = rejected(topic, payload)
    assert r.reason is reason, (name, r)
    assert r.detail
    assert r.received_ts == NOW


def test_oversized() -> None:
    big = j(ts=NOW, seq=1, hr_bpm=70, pad="x" * 70_000)
    r = rejected(t("w1", "vitals"), big)
    assert r.reason is Reason.OVERSIZED
    small_limit = rejected(
        t("w1", "vitals"), j(ts=NOW, seq=1, hr_bpm=70), limits=Limits(max_payload_bytes=10)
    )
    assert small_limit.reason is Reason.OVERSIZED


def test_rejection_names_device_and_seq() -> None:
    r = rejected(t("w7", "vitals"), j(ts=NOW, seq=12, hr_bpm=1000))
    assert (r.device_id, r.seq) == ("w7", 12)


# --- property tests: nothing makes the decoder raise -------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ts",
                    "seq",
                    "hr_bpm",
                    "spo2_pct",
                    "samples",
                    "rate_hz",
                    "enc",
                    "data",
                    "g_per_count",
                    "sensor",
                    "state",
                    "action",
                    "lat",
                    "lon",
                    "will",
                    "bn",
                    "bt",
                    "n",
                    "v",
                    "vs",
                    "u",
                    "t",
                    "device_id",
                    "battery_pct",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=8,
        )
    ),
    max_leaves=30,
)
topics = st.sampled_from(
    [f"{ROOT}/d1/{k}" for k in ("vitals", "accel", "sos", "event", "status")]
) | st.text(max_size=40)


@settings(max_examples=400, deadline=None)
@given(topic=topics, payload=st.binary(max_size=300))
def test_decoder_never_raises_on_bytes(topic: str, payload: bytes) -> None:
    r = decode(topic, payload, NOW)
    assert isinstance(r, (Rejection, Vitals, AccelWindow, SosPress, HomeEvent, DeviceStatus))


@settings(max_examples=600, deadline=None)
@given(topic=topics, value=json_values)
def test_decoder_never_raises_on_json(topic: str, value: object) -> None:
    try:
        payload = json.dumps(value, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    r = decode(topic, payload, NOW)
    if not isinstance(r, Rejection):
        # Whatever was accepted is within its physical bounds.
        assert abs(r.env.device_ts - NOW) <= 30 * 86400 + 1
        if isinstance(r, Vitals) and r.hr_bpm is not None:
            assert 10 <= r.hr_bpm <= 300
