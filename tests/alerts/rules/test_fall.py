"""The streaming fall detector on synthetic movements (known impact time) and a few real trials."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alerts.rules.fall import (
    MAX_DECISION_DELAY_S,
    FallDetector,
    FallDetectorBank,
    FallEvent,
    FallParams,
    fall_params_from_dict,
)
from alerts.rules.fall_eval import load_trials, resample_g, run_trial

SYNTH_HZ = 1000.0  # movements are drawn finely, then resampled like a device's ADC would
T0_S = 1_700_000_000.0  # epoch-sized times, so float rounding of timestamps is exercised
DATA_DIR = Path(__file__).resolve().parents[4] / "shared" / "data"


def _rotation(seed: int) -> np.ndarray:
    """A random sensor mounting: the detector must not care which axis is vertical."""
    if seed == 0:
        return np.eye(3)
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    rotation: np.ndarray = q * np.sign(np.diag(r))
    return rotation


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return unit


def synth_movement(
    kind: str, *, rate_hz: float = 200.0, seed: int = 0, duration_s: float = 14.0
) -> tuple[np.ndarray, float]:
    """(samples in g at rate_hz, impact time in s from the start; NaN if none).

    Body frame: ``up`` is the trunk's long axis, ``fwd`` points out of the belly. Kinds:
    ``fall`` (walk, stumble, free fall, impact, lie still), ``walk``, ``sit`` (walk, sit down
    firmly on a chair), ``lie_on_bed`` (stand, lie down slowly), ``jump`` (stand, jump).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * SYNTH_HZ)) / SYNTH_HZ
    up = np.array([0.0, 1.0, 0.0])
    fwd = np.array([0.0, 0.0, 1.0])
    side = np.array([1.0, 0.0, 0.0])
    gait = (
        up[None, :] * (0.22 * np.sin(2 * np.pi * 1.8 * t))[:, None]
        + fwd[None, :] * (0.12 * np.sin(2 * np.pi * 0.9 * t))[:, None]
        + side[None, :] * (0.06 * np.sin(2 * np.pi * 0.9 * t + 1.0))[:, None]
    )
    direction = np.tile(up, (t.size, 1))  # where gravity's reaction points in the body frame
    magnitude = np.ones(t.size)
    extra = np.zeros((t.size, 3))
    impact_s = math.nan

    def turn(start_s: float, end_s: float, to: np.ndarray) -> None:
        w = np.clip((t - start_s) / (end_s - start_s), 0.0, 1.0)[:, None]
        direction[:] = _unit((1 - w) * direction + w * to[None, :])

    def pulse(center_s: float, width_s: float, peak_g: float, along: np.ndarray) -> None:
        x = (t - center_s) / width_s + 0.5
        shape = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)), 0.0)
        extra[:] += shape[:, None] * peak_g * along[None, :]

    moving = np.ones(t.size)
    if kind == "fall":
        impact_s = 6.0
        moving[t > 5.3] = 0.0
        magnitude -= 0.75 * np.clip(1 - np.abs(t - 5.75) / 0.25, 0, 1)  # free-fall dip
        turn(5.4, 5.95, _unit(fwd + 0.2 * side))
        pulse(impact_s, 0.08, 5.0, _unit(fwd + 0.3 * up))
        pulse(impact_s + 0.25, 0.1, 1.2, _unit(up + fwd))  # second, smaller hit
    elif kind == "walk":
        pass
    elif kind == "sit":
        moving[t > 5.0] = 0.0
        magnitude -= 0.3 * np.clip(1 - np.abs(t - 5.6) / 0.2, 0, 1)
        turn(5.4, 6.0, _unit(up + 0.35 * fwd))  # the pelvis tilts back about 20 degrees
        pulse(5.9, 0.12, 0.9, up)
    elif kind == "lie_on_bed":
        moving[t > 3.0] = 0.0
        turn(5.0, 7.5, fwd)
        pulse(7.4, 0.2, 0.4, fwd)
    elif kind == "jump":
        moving[t > 3.0] = 0.0
        magnitude -= 0.95 * ((t > 5.0) & (t < 5.3))
        pulse(5.35, 0.08, 4.0, up)
    else:
        raise ValueError(kind)
    body = direction * magnitude[:, None] + extra + gait * moving[:, None]
    body += rng.normal(0.0, 0.015, body.shape)
    sensor = body @ _rotation(seed).T
    return resample_g(sensor, SYNTH_HZ, rate_hz), impact_s


def feed_in_chunks(
    detector: FallDetector, acc: np.ndarray, rate_hz: float, chunk: int
) -> list[FallEvent]:
    events: list[FallEvent] = []
    for start in range(0, acc.shape[0], chunk):
        events += detector.feed(T0_S + start / rate_hz, rate_hz, acc[start : start + chunk])
    return events


RATES_HZ = [20.0, 25.0, 50.0, 100.0, 200.0]


@pytest.mark.parametrize("rate_hz", RATES_HZ)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_fall_is_reported_once_within_5_s_with_its_impact_time(
    rate_hz: float, seed: int
) -> None:
    acc, impact_s = synth_movement("fall", rate_hz=rate_hz, seed=seed)
    events = feed_in_chunks(FallDetector(), acc, rate_hz, round(rate_hz))  # 1 s windows
    assert len(events) == 1
    ev = events[0]
    assert ev.impact_ts == pytest.approx(T0_S + impact_s, abs=1.0 / rate_hz + 0.03)
    assert 0.0 < ev.detected_ts - ev.impact_ts <= MAX_DECISION_DELAY_S
    assert ev.peak_g > 2.0
    assert ev.evidence["tilt_deg"] > 60.0
    assert ev.evidence["post_std_g"] < 0.1


def test_fall_evidence_hardly_depends_on_the_sample_rate() -> None:
    found = {}
    for rate_hz in RATES_HZ:
        acc, _ = synth_movement("fall", rate_hz=rate_hz, seed=3)
        (ev,) = feed_in_chunks(FallDetector(), acc, rate_hz, round(rate_hz))
        found[rate_hz] = ev
    ref = found[200.0]
    for ev in found.values():
        assert ev.evidence["tilt_deg"] == pytest.approx(ref.evidence["tilt_deg"], abs=5.0)
        # The impact's area survives low-pass filtering; the peak does not, by design.
        assert ev.evidence["impact_area_gs"] == pytest.approx(
            ref.evidence["impact_area_gs"], rel=0.25
        )
        assert ev.evidence["post_std_g"] == pytest.approx(ref.evidence["post_std_g"], abs=0.03)


@pytest.mark.parametrize("kind", ["walk", "sit", "lie_on_bed", "jump"])
@pytest.mark.parametrize("rate_hz", [20.0, 50.0, 200.0])
def test_daily_activities_are_not_falls(kind: str, rate_hz: float) -> None:
    acc, _ = synth_movement(kind, rate_hz=rate_hz, seed=4)
    assert feed_in_chunks(FallDetector(), acc, rate_hz, round(rate_hz)) == []


def _event_key(ev: FallEvent) -> tuple[float, float, float]:
    return (ev.impact_ts, ev.detected_ts, ev.peak_g)


@pytest.mark.parametrize("rate_hz", [20.0, 50.0, 200.0])
@pytest.mark.parametrize(
    "chunk_s",
    [
        1 / 200,  # one sample at a time at 200 Hz (several at lower rates)
        0.13,  # windows that do not line up with the 0.2 s blocks
        0.5,
        1.0,
        2.0,
        3.7,
        "split_impact",  # a window boundary right in the middle of the impact pulse
        "random",  # window lengths drawn between one sample and 2.5 s
    ],
)
def test_events_do_not_depend_on_how_the_stream_is_cut(rate_hz: float, chunk_s: object) -> None:
    fall, _ = synth_movement("fall", rate_hz=rate_hz, seed=5)
    jump, _ = synth_movement("jump", rate_hz=rate_hz, seed=6, duration_s=8.0)
    stream = np.concatenate([jump, fall, fall])  # several episodes, two falls 14 s apart
    whole = FallDetector().feed(T0_S, rate_hz, stream)
    assert len(whole) == 2
    detector = FallDetector()
    if chunk_s == "split_impact":
        cut = int((8.0 + 6.0) * rate_hz)  # the first fall's impact sample
        cuts = [0, cut, cut + 1, stream.shape[0]]
        parts: list[FallEvent] = []
        for a, b in itertools.pairwise(cuts):
            parts += detector.feed(T0_S + a / rate_hz, rate_hz, stream[a:b])
    elif chunk_s == "random":
        rng = np.random.default_rng(int(rate_hz))
        lengths = rng.integers(1, int(2.5 * rate_hz), size=stream.shape[0])
        ends = np.cumsum(lengths)
        cuts = [0, *ends[ends < stream.shape[0]].tolist(), stream.shape[0]]
        parts = []
        for a, b in itertools.pairwise(cuts):
            parts += detector.feed(T0_S + a / rate_hz, rate_hz, stream[a:b])
    else:
        assert isinstance(chunk_s, float)
        parts = feed_in_chunks(detector, stream, rate_hz, max(1, round(chunk_s * rate_hz)))
    assert len(parts) == len(whole)
    for got, want in zip(parts, whole, strict=True):
        assert _event_key(got) == pytest.approx(_event_key(want), abs=1e-6)
        assert got.evidence == pytest.approx(want.evidence, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("chunk", [1, 13, 50, 120])
def test_nan_rows_do_not_make_chunking_matter(chunk: int) -> None:
    # Windows with NaN rows take the per-sample-time path, clean ones the arithmetic path:
    # both must put every sample in the same block.
    rate_hz = 50.0
    fall, _ = synth_movement("fall", rate_hz=rate_hz, seed=10)
    stream = np.concatenate([fall, fall])
    stream[::37] = np.nan
    whole = FallDetector().feed(T0_S, rate_hz, stream)
    parts = feed_in_chunks(FallDetector(), stream, rate_hz, chunk)
    assert len(whole) == 2
    assert len(parts) == len(whole)
    for got, want in zip(parts, whole, strict=True):
        assert _event_key(got) == pytest.approx(_event_key(want), abs=1e-6)
        assert got.evidence == pytest.approx(want.evidence, rel=1e-4, abs=1e-5)


def test_a_rate_change_mid_stream_keeps_detecting() -> None:
    before, _ = synth_movement("walk", rate_hz=50.0, seed=7, duration_s=6.0)
    fall, impact_s = synth_movement("fall", rate_hz=20.0, seed=7)
    detector = FallDetector()
    assert detector.feed(T0_S, 50.0, before) == []
    events = detector.feed(T0_S + 6.0, 20.0, fall)
    assert len(events) == 1
    assert events[0].impact_ts == pytest.approx(T0_S + 6.0 + impact_s, abs=0.1)


def _with_nan_rows(acc: np.ndarray, every: int) -> np.ndarray:
    out = acc.copy()
    out[::every] = np.nan
    return out


@pytest.mark.parametrize(
    "case",
    ["nan_rows", "nan_window", "inf_rows", "gap_before_fall", "overlap", "empty", "replay"],
)
def test_bad_input_never_raises(case: str) -> None:
    rate_hz = 50.0
    fall, impact_s = synth_movement("fall", rate_hz=rate_hz, seed=8)
    detector = FallDetector()
    events: list[FallEvent] = []
    if case == "nan_rows":
        events = feed_in_chunks(detector, _with_nan_rows(fall, 7), rate_hz, 50)
        assert len(events) == 1  # a few lost samples must not hide a fall
    elif case == "nan_window":
        events += detector.feed(T0_S, rate_hz, np.full((50, 3), np.nan))
        events += feed_in_chunks(detector, fall, rate_hz, 50)
        assert len(events) == 1
    elif case == "inf_rows":
        bad = fall.copy()
        bad[100:103] = np.inf
        events = feed_in_chunks(detector, bad, rate_hz, 50)
        assert len(events) == 1
    elif case == "gap_before_fall":
        walk, _ = synth_movement("walk", rate_hz=rate_hz, seed=8, duration_s=5.0)
        events += detector.feed(T0_S - 600.0, rate_hz, walk)  # ten minutes of silence
        events += feed_in_chunks(detector, fall, rate_hz, 50)
        assert len(events) == 1
    elif case == "overlap":
        # Windows that overlap by half: the repeated samples are ignored.
        for start in range(0, fall.shape[0], 25):
            events += detector.feed(T0_S + start / rate_hz, rate_hz, fall[start : start + 50])
        assert len(events) == 1
    elif case == "empty":
        events += detector.feed(T0_S, rate_hz, np.zeros((0, 3)))
        events += feed_in_chunks(detector, fall, rate_hz, 50)
        assert len(events) == 1
    elif case == "replay":
        events += feed_in_chunks(detector, fall, rate_hz, 50)
        events += feed_in_chunks(detector, fall, rate_hz, 50)  # same timestamps again
        assert len(events) == 1
    assert events[0].impact_ts == pytest.approx(T0_S + impact_s, abs=0.05)


def test_a_device_that_goes_silent_after_an_impact_raises_nothing_and_reports_nothing() -> None:
    rate_hz = 50.0
    fall, impact_s = synth_movement("fall", rate_hz=rate_hz, seed=9)
    detector = FallDetector()
    cut = int((impact_s + 0.5) * rate_hz)
    assert feed_in_chunks(detector, fall[:cut], rate_hz, 50) == []
    # It comes back a minute later, lying still: the stillness window had no data.
    later = detector.feed(T0_S + 60.0, rate_hz, fall[-100:])
    assert later == []
    assert detector.state_nbytes() <= 1024


@pytest.mark.parametrize(
    ("t0_s", "rate_hz", "shape", "message"),
    [
        (T0_S, 0.0, (10, 3), "rate_hz"),
        (T0_S, math.nan, (10, 3), "rate_hz"),
        (math.inf, 50.0, (10, 3), "t0_s"),
        (T0_S, 50.0, (10, 2), "shape"),
    ],
)
def test_malformed_calls_are_refused_clearly(
    t0_s: float, rate_hz: float, shape: tuple[int, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FallDetector().feed(t0_s, rate_hz, np.zeros(shape))


def test_state_is_small_and_does_not_grow() -> None:
    detector = FallDetector()
    before = detector.state_nbytes()
    for seed in range(3):
        for kind in ("fall", "walk", "jump"):
            acc, _ = synth_movement(kind, rate_hz=200.0, seed=seed)
            feed_in_chunks(detector, acc, 200.0, 200)
    assert detector.state_nbytes() == before <= 1024


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"impact_g": 3.5, "tilt_deg": 45}, None),
        ({"stillness_std_g": "0.25"}, None),
        ({"impact_gee": 3.0}, "impact_gee"),
        ({"tilt_deg": "steep"}, "tilt_deg"),
        ({"tilt_deg": True}, "tilt_deg"),
        ({"impact_g": -1.0}, "impact_g"),
        ({"stillness_delay_s": 2.0, "stillness_s": 3.5}, "5.0 s"),
        ({"trigger_g": 4.0}, "trigger_g"),
    ],
)
def test_params_from_a_rules_file_dict(values: dict[str, object], error: str | None) -> None:
    if error is None:
        params = fall_params_from_dict(values)
        for key, value in values.items():
            assert getattr(params, key) == float(str(value))
    else:
        with pytest.raises(ValueError, match=error):
            fall_params_from_dict(values)


def test_resident_overrides_sit_on_a_position_preset() -> None:
    wrist = FallParams.for_position("wrist")
    params = fall_params_from_dict({"tilt_deg": 30}, base=wrist)
    assert params.tilt_deg == 30.0
    assert params.pre_std_max_g == wrist.pre_std_max_g != FallParams().pre_std_max_g


def test_wrist_preset_differs_only_where_documented() -> None:
    wrist = FallParams.for_position("wrist")
    default = FallParams()
    changed = {
        f.name
        for f in dataclasses.fields(FallParams)
        if getattr(wrist, f.name) != getattr(default, f.name)
    }
    # The wrist keeps the trunk's time spans; only thresholds differ.
    assert changed == {
        "impact_g",
        "impact_area_gs",
        "freefall_g",
        "tilt_deg",
        "stillness_std_g",
        "pre_std_max_g",
    }
    assert FallParams.for_position("waist") == FallParams()
    assert FallParams.for_position(None) == FallParams()
    with pytest.raises(ValueError, match="ankle"):
        FallParams.for_position("ankle")


# A few real SisFall trials (young subject, waist, 200 Hz): falls of different kinds and
# activities that look like falls in part (quick sitting, lying down, jumping, jogging).
REAL_TRIALS = [
    ("F01_SA02_R01", True),
    ("F05_SA05_R02", True),
    ("F09_SA07_R03", True),
    ("F14_SA10_R04", True),
    ("D04_SA03_R01", False),
    ("D10_SA06_R02", False),
    ("D12_SA08_R03", False),
    ("D19_SA11_R04", False),
]


@pytest.fixture(scope="module")
def sisfall() -> tuple[object, dict[str, int]]:
    path = DATA_DIR / "sisfall_tuning.npz"
    if not path.is_file():
        pytest.skip(f"SisFall tuning data not found at {path}")
    trials = load_trials(path)
    with np.load(path) as data:
        ids = {str(t): i for i, t in enumerate(data["trial_id"])}
    return trials, ids


@pytest.mark.parametrize(("trial_id", "is_fall"), REAL_TRIALS)
@pytest.mark.parametrize("rate_hz", [200.0, 20.0])
def test_real_sisfall_trials(
    sisfall: tuple[object, dict[str, int]], trial_id: str, is_fall: bool, rate_hz: float
) -> None:
    trials, ids = sisfall
    acc = trials.trial(ids[trial_id])  # type: ignore[attr-defined]
    acc = resample_g(acc, 200.0, rate_hz)
    events = run_trial(FallDetector(), acc, rate_hz, t0_s=T0_S)
    assert bool(events) == is_fall
    for ev in events:
        assert ev.detected_ts - ev.impact_ts <= MAX_DECISION_DELAY_S


def _bank_streams(rate_hz: float, n_devices: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """20 s per device: walking, falls at different times, jumps, lying down, NaN rows."""
    streams = []
    for d in range(n_devices):
        kind = ["walk", "fall", "jump", "lie_on_bed"][d % 4]
        acc, _ = synth_movement(kind, rate_hz=rate_hz, seed=20 + d, duration_s=20.0)
        if d == 5:
            acc[::41] = np.nan
        if d == 6:
            acc[int(3 * rate_hz) : int(4.5 * rate_hz)] = np.nan  # a whole window lost to NaN
        streams.append(acc)
    # Windows start anywhere relative to the 0.2 s blocks (device 0 exactly on a boundary),
    # so most devices carry an open block from one window to the next.
    t0 = T0_S + np.random.default_rng(int(rate_hz)).uniform(0.0, 1.0, n_devices)
    t0[0] = T0_S
    return np.stack(streams), t0


def _slot_state(bank: FallDetectorBank, slot: int) -> dict[str, Any]:
    """Everything a bank keeps for one device, for exact comparison."""
    episodes = bank._episodes.get(slot)
    return {
        "ring": bank._ring[slot].tobytes(),
        "part": bank._part[slot].tobytes(),
        "scalars": (
            int(bank._part_block[slot]),
            int(bank._newest_block[slot]),
            bool(bank._have_blocks[slot]),
            bool(bank._part_open[slot]),
            float(bank._last_t_s[slot]),
            float(bank._last_event_ts[slot]),
            bool(bank._busy[slot]),
        ),
        "episodes": None
        if episodes is None
        else (
            episodes.n_pend,
            episodes.open_end_s,
            episodes.pend[: episodes.n_pend].tobytes(),
            episodes.pend_ts[: episodes.n_pend].tobytes(),
        ),
    }


def _full_key(ev: FallEvent) -> tuple[float, float, float, tuple[tuple[str, float], ...]]:
    # NaN evidence (no history) must match too: compare its text.
    return (
        ev.impact_ts,
        ev.detected_ts,
        ev.peak_g,
        tuple((k, repr(v)) for k, v in ev.evidence.items()),
    )


@pytest.mark.parametrize("rate_hz", [20.0, 50.0, 200.0])
@pytest.mark.parametrize("window_s", [1.0, 0.5, 0.13])
def test_a_bank_behaves_like_separate_detectors_bit_for_bit(
    rate_hz: float, window_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one = 0
    feed = FallDetectorBank.feed

    def counting_feed(self: FallDetectorBank, *args: Any) -> list[FallEvent]:
        nonlocal one_by_one
        one_by_one += 1
        return feed(self, *args)

    monkeypatch.setattr(FallDetectorBank, "feed", counting_feed)
    n_devices = 12
    streams, t0 = _bank_streams(rate_hz, n_devices)
    win = max(1, round(window_s * rate_hz))
    n_windows = streams.shape[1] // win
    bank = FallDetectorBank(n_devices)
    alone = [FallDetector() for _ in range(n_devices)]
    from_bank: dict[int, list[FallEvent]] = {d: [] for d in range(n_devices)}
    from_alone: dict[int, list[FallEvent]] = {d: [] for d in range(n_devices)}
    jitter = np.random.default_rng(3).uniform(-0.6, 0.6, (n_windows, n_devices)) / rate_hz
    fed = 0
    for w in range(n_windows):
        # Device 3 misses window 4 (a lost window): the bank must handle the gap. Device 7
        # skips every third window (a big gap in the ring); device 9's clock jitters by up
        # to 0.6 sample periods, so some windows overlap the last one (overlap path).
        slots = [
            d for d in range(n_devices) if not (d == 3 and w == 4) and not (d == 7 and w % 3 == 1)
        ]
        sl = slice(w * win, (w + 1) * win)
        starts = t0[slots] + w * win / rate_hz
        starts[slots.index(9)] += jitter[w, 9]
        fed += len(slots)
        for slot, ev in bank.feed_many(slots, starts, rate_hz, streams[slots, sl]):
            from_bank[slot].append(ev)
        for d, start in zip(slots, starts, strict=True):
            from_alone[d] += alone[d].feed(float(start), rate_hz, streams[d, sl])
    assert sum(len(v) for v in from_alone.values()) >= 3  # the falling devices
    # Most bank windows took the batched path (quiet, on the grid), not feed() one by one
    # (the lone detectors' feed() calls are counted too).
    assert one_by_one - fed < fed / 2
    for d in range(n_devices):
        assert [_full_key(e) for e in from_bank[d]] == [_full_key(e) for e in from_alone[d]]
        assert _slot_state(bank, d) == _slot_state(alone[d]._bank, 0), d


@pytest.mark.parametrize(
    ("slots", "t0_s", "shape", "message"),
    [
        ([0, 1], [T0_S, math.nan], (2, 50, 3), "finite"),
        ([0, 1], [T0_S], (2, 50, 3), "need slots"),
        ([0, 1], [T0_S, T0_S], (2, 50, 2), "need slots"),
        ([0], [T0_S], (50, 3), "need slots"),
        ([1, 1], [T0_S, T0_S], (2, 50, 3), "differ"),
        ([0, 2], [T0_S, T0_S], (2, 50, 3), "allocated"),
    ],
)
def test_a_bank_refuses_a_malformed_batch_before_feeding_any_of_it(
    slots: list[int], t0_s: list[float], shape: tuple[int, ...], message: str
) -> None:
    bank = FallDetectorBank(2)
    with pytest.raises(ValueError, match=message):
        bank.feed_many(slots, np.array(t0_s), 50.0, np.zeros(shape))
    assert (bank._last_t_s[:2] == -math.inf).all()


def test_a_bank_device_can_have_its_own_thresholds() -> None:
    bank = FallDetectorBank(2)
    bank.set_params(1, FallParams.for_position("wrist"))
    assert bank.params_of(1) == FallParams.for_position("wrist")
    assert bank.params_of(0) == FallParams()
    with pytest.raises(ValueError, match="ring"):
        bank.add_device(FallParams(pre_start_s=6.0))  # needs a longer ring: another bank


def test_a_released_slot_is_reused_with_empty_history() -> None:
    bank = FallDetectorBank(capacity=2)
    quiet = np.tile([0.0, 0.0, 1.0], (50, 1))
    slots = [bank.add_device() for _ in range(5)]  # grows past its capacity
    assert slots == [0, 1, 2, 3, 4] and bank.capacity >= 5
    bank.feed_many(slots, T0_S + np.arange(5.0), 50.0, np.stack([quiet] * 5))
    bank.release(2)
    assert len(bank) == 4
    assert bank.add_device(FallParams.for_position("wrist")) == 2
    assert _slot_state(bank, 2) == _slot_state(FallDetectorBank(1), 0)
    assert bank._last_t_s[3] > T0_S  # the others kept theirs


def test_per_device_fall_state_is_small() -> None:
    bank = FallDetectorBank(10)
    assert bank.state_nbytes() <= 608  # ring 504, open block and sub-block 64, scalars
    fall, _ = synth_movement("fall", rate_hz=50.0, seed=1)
    detector = FallDetector()
    sizes = []
    for start in range(0, fall.shape[0], 50):
        detector.feed(T0_S + start / 50.0, 50.0, fall[start : start + 50])
        sizes.append(detector.state_nbytes())
    # Pending episodes add a little while they last, and are gone afterwards.
    assert max(sizes) > sizes[-1] == bank.state_nbytes()
    assert max(sizes) <= 1024


class _EvidenceRecorder(FallDetector):
    """Keeps every impact episode's figures instead of deciding."""

    def __init__(self) -> None:
        super().__init__(FallParams(impact_g=1.5, soft_impact_g=1.5))
        self.seen: list[dict[str, float]] = []

    def accepts(self, peak_g: float, evidence: Any) -> bool:
        self.seen.append(dict(evidence))
        return False


def _sit_down_with_dip(rate_hz: float, dip_s: float) -> np.ndarray:
    """Upright for 4 s, a dip to 0.05 g lasting ``dip_s`` ending 0.3 s before a 2.5 g
    landing (0.1 s), then 4 s tilted back, still."""
    n = int(9 * rate_hz)
    t = np.arange(n) / rate_hz
    acc = np.tile([0.0, 0.0, 1.0], (n, 1))
    dip = (t >= 4.0 - dip_s) & (t < 4.0)
    acc[dip] = [0.0, 0.0, 0.05]
    land = (t >= 4.3) & (t < 4.4)
    acc[land] = [0.0, 0.0, 2.5]
    acc[t >= 4.4] = [0.0, math.sin(math.radians(60)), math.cos(math.radians(60))]
    return acc


@pytest.mark.parametrize("chunk_s", [1.0, 0.13])
def test_a_one_sample_dip_is_no_free_fall_at_any_rate(chunk_s: float) -> None:
    # At 200 Hz one sample is 5 ms: a jolt, not a body falling. The dip is read over 50 ms,
    # so it shows as 0.95 g (ten samples, one of them low), as a 20 Hz device would see it.
    rate_hz = 200.0
    rec = _EvidenceRecorder()
    feed_in_chunks(rec, _sit_down_with_dip(rate_hz, 1 / rate_hz), rate_hz, int(chunk_s * 200))
    (evidence,) = rec.seen
    assert evidence["freefall_min_g"] > FallParams().freefall_g
    assert evidence["freefall_min_g"] == pytest.approx(math.sqrt(0.1 * 0.05**2 + 0.9), abs=0.02)


@pytest.mark.parametrize("rate_hz", RATES_HZ)
def test_a_lasting_free_fall_reads_the_same_at_every_rate(rate_hz: float) -> None:
    rec = _EvidenceRecorder()
    feed_in_chunks(rec, _sit_down_with_dip(rate_hz, 0.3), rate_hz, int(rate_hz))
    (evidence,) = rec.seen
    assert evidence["freefall_min_g"] == pytest.approx(0.05, abs=1e-6)
