"""Background accelerometer streaming: the signal (posture, walking from real recordings),
what the server's decoder and fall detector make of it, and how the simulation schedules it
(device rate, thinning, never overlapping an injected trial, off with accel_stream=False)."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts.rules.fall import FallDetector, FallParams
from devices.readings import AccelWindow
from ingest.decode import Rejection, decode
from simulator.groundtruth import read_ground_truth
from simulator.motion import BackgroundMotion
from simulator.publisher import BrokerAddress
from simulator.recordings import Recordings, walking_samples
from simulator.scenarios import Scenario
from simulator.simulation import Simulation
from simulator.town import (
    BELT,
    CHEST_BAND,
    PENDANT,
    WATCH,
    WEARABLE_MODELS,
    Device,
    DeviceModel,
)
from simulator.wearable import DeviceState, accel_payloads
from tests.fixtures.services import Mosquitto

RECORDINGS = Recordings()
needs_data = pytest.mark.skipif(
    not RECORDINGS.available(), reason=f"no recordings in {RECORDINGS.data_dir}"
)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(a.dot(b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


@pytest.mark.parametrize("rate_hz", [20.0, 25.0, 50.0, 200.0])
def test_quiet_and_lying_are_one_g_in_two_postures(rate_hz: float) -> None:
    motion = BackgroundMotion(rate_hz, rng=np.random.default_rng(1))  # synthetic: no walking
    n = int(2 * rate_hz)
    quiet = motion.window(1000.0, n)
    assert quiet.shape == (n, 3) and quiet.dtype == np.float32
    assert motion.activity == "quiet"
    lying = motion.window(1002.0, n, asleep=True)
    assert motion.activity == "lying"
    for w in (quiet, lying):
        mag = np.linalg.norm(w, axis=1)
        assert abs(float(mag.mean()) - 1.0) < 0.03
        assert float(mag.std()) < 0.05  # still: no impact-like spikes
    # Lying turns gravity by 90 degrees from upright; a quiet bout tilts at most 25.
    upright = motion.mount @ motion.upright
    assert angle_deg(lying.mean(axis=0), upright) == pytest.approx(90.0, abs=3.0)
    assert angle_deg(quiet.mean(axis=0), upright) < 27.0


def test_out_of_home_is_walking_and_same_seed_same_signal() -> None:
    a = BackgroundMotion(50.0, rng=np.random.default_rng(7))
    b = BackgroundMotion(50.0, rng=np.random.default_rng(7))
    wa = a.window(0.0, 100, out=True)
    np.testing.assert_array_equal(wa, b.window(0.0, 100, out=True))
    assert a.activity == "walking"
    quiet = a.window(10.0, 100)
    assert a.activity == "quiet"
    assert np.linalg.norm(wa, axis=1).std() > 3 * np.linalg.norm(quiet, axis=1).std()


def test_at_home_bouts_alternate_with_a_small_share_of_walking() -> None:
    motion = BackgroundMotion(25.0, rng=np.random.default_rng(3))
    seconds = 6 * 3600
    kinds = []
    for t in range(0, seconds, 2):
        motion.window(float(t), 50)
        kinds.append(motion.activity)
    walking = kinds.count("walking") / len(kinds)
    assert set(kinds) == {"quiet", "walking"}
    assert 0.02 < walking < 0.2


@needs_data
@pytest.mark.parametrize("model", WEARABLE_MODELS, ids=lambda m: m.name)
def test_walking_comes_from_the_recordings(model: DeviceModel) -> None:
    walks = walking_samples(RECORDINGS, position=model.position, rate_hz=model.accel_rate_hz)
    assert walks, model.position
    # Real walking at the device's rate: about 1 g on average, steps well above noise.
    for w in walks:
        mag = np.linalg.norm(w, axis=1)
        assert 0.85 < float(mag.mean()) < 1.15
        assert float(mag.std()) > 0.05
    motion = BackgroundMotion(model.accel_rate_hz, rng=np.random.default_rng(0), walking=walks)
    n = int(model.accel_rate_hz * 2)
    got = motion.window(0.0, n, out=True)
    # The same samples as the first recorded walk, turned by the device's mounting.
    np.testing.assert_allclose(got, walks[0][:n] @ motion.mount.T, atol=1e-5)


@pytest.mark.parametrize("model", WEARABLE_MODELS, ids=lambda m: m.name)
def test_background_windows_decode_at_the_device_rate(model: DeviceModel) -> None:
    motion = BackgroundMotion(model.accel_rate_hz, rng=np.random.default_rng(5))
    state = DeviceState(Device(f"t-{model.name}", model, "r0001"))
    now = time.time()
    samples = motion.window(now - 30, int(2 * model.accel_rate_hz))
    ((_ts, payload),) = accel_payloads(now - 30, samples, model, state)
    r = decode(f"carecall/v1/t-{model.name}/accel", payload, now)
    assert not isinstance(r, Rejection), r
    assert isinstance(r, AccelWindow)
    assert r.rate_hz == model.accel_rate_hz and r.n_samples == len(samples)
    assert r.position == model.position


@needs_data
@pytest.mark.parametrize("model", [BELT, PENDANT, WATCH, CHEST_BAND], ids=lambda m: m.name)
def test_a_day_of_background_motion_raises_no_fall(model: DeviceModel) -> None:
    """Real-time windows (speed 1) through the server's fall detector with the preset for
    where the device is worn: 2 h awake at home, 30 min out walking, 2 h asleep."""
    walks = walking_samples(RECORDINGS, position=model.position, rate_hz=model.accel_rate_hz)
    motion = BackgroundMotion(model.accel_rate_hz, rng=np.random.default_rng(11), walking=walks)
    detector = FallDetector(FallParams.for_position(model.position))
    n = int(2 * model.accel_rate_hz)
    events = []
    t = 0.0
    for span_s, kw in ((7200, {}), (1800, {"out": True}), (7200, {"asleep": True})):
        for _ in range(int(span_s / 2)):
            events += detector.feed(t, model.accel_rate_hz, motion.window(t, n, **kw))
            t += 2.0
    assert events == []


# -- in a simulation, over a real broker --------------------------------------------------------


class AccelTap:
    """Every accelerometer window published under a topic root: (device, ts, n, rate)."""

    def __init__(self, port: int, root: str) -> None:
        self.windows: list[tuple[str, float, int, float, float]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{root}/+/accel", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        width = 2 if body["enc"] == "i16le" else 4
        n = len(base64.b64decode(body["data"])) // (3 * width)
        with self.lock:
            self.windows.append(
                (msg.topic.split("/")[-2], body["ts"], n, body["rate_hz"], time.monotonic())
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_sim(
    broker: Mosquitto, tmp_path: Path, *, accel_stream: bool, with_trial: bool
) -> tuple[Simulation, list[tuple[str, float, int, float, float]]]:
    root = f"t{uuid.uuid4().hex[:8]}/carecall/v1"
    tap = AccelTap(broker.port, root)
    sim = Simulation(
        residents=3,
        days=240 / 86400,  # 4 simulated minutes ...
        speed=60.0,  # ... in 4 wall seconds
        broker=BrokerAddress("127.0.0.1", broker.port),
        topic_root=root,
        prefix=f"m{uuid.uuid4().hex[:6]}",
        seed=5,
        ground_truth=tmp_path / "gt.jsonl",
        scenarios=[],
        max_msgs_per_device_per_s=4.0,  # at speed 60: a 2 s window every 15 simulated s
        accel_stream=accel_stream,
    )
    r = sim.town.residents[0]
    if with_trial and RECORDINGS.available():
        sim.fixed_scenarios = [Scenario("adl", r.key, r.wearables[0].device_id, 61.0)]
    try:
        sim.run()
        time.sleep(0.5)
    finally:
        tap.close()
    with tap.lock:
        return sim, list(tap.windows)


def test_simulation_streams_background_windows_thinned_and_ordered(
    broker: Mosquitto, tmp_path: Path
) -> None:
    sim, windows = run_sim(broker, tmp_path, accel_stream=True, with_trial=True)
    models = {d.device_id: d.model for d in sim.town.devices}
    wearables = {d for d, m in models.items() if m.wearable}
    assert sim.accel_period_s == pytest.approx(15.0)
    assert {w[0] for w in windows} == wearables  # every wearable streams, no gateway
    assert sim.summary.accel_background > 0
    injected = sim.summary.published["accel"] - sim.summary.accel_background
    by_device: dict[str, list[tuple[float, int, float, float]]] = {}
    for dev, ts, n, rate, wall in windows:
        assert rate == models[dev].accel_rate_hz  # the device model's own rate
        by_device.setdefault(dev, []).append((ts, n, rate, wall))
    for dev, ws in by_device.items():
        ws.sort()
        # A device's windows never overlap in device time, injected trial included.
        for (ts, n, rate, _), (next_ts, *_rest) in itertools.pairwise(ws):
            assert ts + n / rate <= next_ts + 1e-3, dev
        background = [w for w in ws if w[1] <= 2 * w[2]]
        assert len(background) >= 10
    # Only the planned trial is in the ground truth; background windows are not events.
    events = read_ground_truth(tmp_path / "gt.jsonl")
    if RECORDINGS.available():
        assert [e.kind for e in events] == ["adl"]
        assert injected > 0
    else:
        assert events == []
    # Thinned: about one background window per 15 simulated s per wearable.
    per_device = sim.summary.accel_background / len(wearables)
    assert 240 / 15 - 3 <= per_device <= 240 / 15 + 1


def test_accel_stream_off_sends_only_injected_trials(broker: Mosquitto, tmp_path: Path) -> None:
    sim, windows = run_sim(broker, tmp_path, accel_stream=False, with_trial=True)
    assert sim.summary.accel_background == 0
    assert len(windows) == sim.summary.published["accel"]
    if RECORDINGS.available():
        trial_device = sim.town.residents[0].wearables[0].device_id
        assert windows and {w[0] for w in windows} == {trial_device}
