"""Falls replay real recorded trials, resampled and rotated, in payloads the server accepts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from devices.readings import AccelWindow
from ingest.decode import Rejection, decode
from simulator.recordings import Recordings, random_rotation, resample, rotate
from simulator.scenarios import prepare_replay
from simulator.town import BELT, PENDANT, WATCH, Device, DeviceModel
from simulator.wearable import DeviceState, accel_payloads

RECORDINGS = Recordings()
needs_data = pytest.mark.skipif(
    not RECORDINGS.available(), reason=f"no recordings in {RECORDINGS.data_dir}"
)


@pytest.mark.parametrize(("src_hz", "dst_hz"), [(200, 25), (200, 50), (20, 50), (200, 200)])
def test_resample_keeps_duration_and_level(src_hz: float, dst_hz: float) -> None:
    n = int(src_hz * 4) + 1
    x = np.tile(np.array([[0.0, -1.0, 0.0]], dtype=np.float32), (n, 1))
    out = resample(x, src_hz, dst_hz)
    assert len(out) == int(4 * dst_hz) + 1
    np.testing.assert_allclose(out, np.tile([[0.0, -1.0, 0.0]], (len(out), 1)), atol=1e-6)


def test_rotation_preserves_magnitude() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    r = random_rotation(rng)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0)
    np.testing.assert_allclose(
        np.linalg.norm(rotate(x, r), axis=1), np.linalg.norm(x, axis=1), rtol=1e-5
    )


# The 25 Hz watch (i16le) and the 50 Hz pendant (f32le) from the catalogue, plus a 50 Hz belt.
BELT_50 = DeviceModel("belt-50", "belt", "waist", wearable=True, accel_rate_hz=50.0)


@needs_data
@pytest.mark.parametrize("model", [WATCH, PENDANT, BELT_50, BELT], ids=lambda m: m.name)
def test_fall_replay_decodes_as_the_device_rate(model: DeviceModel) -> None:
    device = Device(f"t-{model.name}", model, "r0001")
    rng = np.random.default_rng(42)
    replay = prepare_replay(RECORDINGS, device, is_fall=True, rng=rng)
    assert replay.is_fall and replay.rate_hz == model.accel_rate_hz
    # A real fall: an impact well above 1 g somewhere in the trial.
    peak_g = float(np.linalg.norm(replay.samples_g, axis=1).max())
    assert peak_g > 1.8
    state = DeviceState(device)
    now = time.time()
    windows = accel_payloads(now - 60, replay.samples_g, model, state)
    decoded = []
    for ts, payload in windows:
        r = decode(f"carecall/v1/{device.device_id}/accel", payload, now)
        assert not isinstance(r, Rejection), r
        assert isinstance(r, AccelWindow)
        assert r.rate_hz == model.accel_rate_hz
        assert r.position == model.position
        assert r.env.device_ts == pytest.approx(ts, abs=1e-3)
        decoded.append(np.frombuffer(r.samples_g, "<f4").reshape(-1, 3))
    got = np.concatenate(decoded)
    assert len(got) == len(replay.samples_g)
    tol_g = model.g_per_count if model.accel_encoding == "i16le" else 1e-6
    np.testing.assert_allclose(got, replay.samples_g, atol=tol_g)
    # Sequence numbers and timestamps move forward window by window.
    seqs = [int(p.split(b'"seq":')[1].split(b",")[0]) for _, p in windows]
    assert seqs == sorted(set(seqs))


@needs_data
def test_sisfall_counts_become_g() -> None:
    idx = RECORDINGS.candidates(position="waist", is_fall=False)
    dataset, i = next(c for c in idx if c[0] == "sisfall")
    trial = RECORDINGS.trial(dataset, i, position="waist")
    # Standing or walking: the mean magnitude is about 1 g, not 256 counts.
    assert 0.8 < float(np.linalg.norm(trial.samples_g, axis=1).mean()) < 1.3
    assert trial.rate_hz == 200
