"""Rule-engine throughput and per-device memory with 10,000 simulated devices in memory.

    .venv/bin/python bench/rules.py [--devices 10000] [--seconds 5] [--rate-hz 50]

Prints a table and, last, one JSON line with the same figures. Measured:

* accel samples/s through the fall detector, called directly (``FallDetector.feed``) and
  through ``RuleRunner.process`` (decode from bytes, lateness, per-device lookup included);
* vitals samples/s through the vitals + NEWS2 rules, one reading at a time (``process``) and
  across devices (``process_batch``);
* detections/s for each, on a stream where some devices fall or deteriorate;
* bytes of state per device (tracemalloc): vitals + home state, and the fall detector's.

Targets (docs/rules.md): >= 5M accel samples/s through the fall detector on one core, and
<= 1 KB of vitals + home state per device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.rules.config import load_rules
from alerts.rules.fall import FallDetector
from alerts.rules.runner import RuleRunner
from devices.readings import AccelWindow, Envelope, HomeEvent, SensorType, Vitals

T0 = 1_780_000_000.0
FALLING_SHARE = 0.01  # devices whose stream contains one fall
DETERIORATING_SHARE = 0.05  # devices whose vitals go abnormal


def accel_streams(
    n_devices: int, seconds: int, rate_hz: int, rng: np.random.Generator
) -> np.ndarray:
    """(devices, seconds, rate_hz, 3) float32 in g: body movement, some with a fall."""
    n = seconds * rate_hz
    data = rng.normal(0, 0.05, (n_devices, n, 3)).astype(np.float32)
    data[..., 2] += 1.0  # upright: gravity on z
    fallers = rng.choice(n_devices, int(n_devices * FALLING_SHARE), replace=False)
    impact = int(2.5 * rate_hz)  # after the detector's 2 s of pre-fall history
    for d in fallers:
        data[d, impact - rate_hz // 5 : impact] = [0, 0, 0.2]  # free fall
        data[d, impact] = [2.5, 0.5, 3.0]  # impact
        data[d, impact + 1 :] = np.array([1.0, 0, 0]) + rng.normal(0, 0.02, (n - impact - 1, 3))
    return data.reshape(n_devices, seconds, rate_hz, 3)


def vitals_stream(n_devices: int, rounds: int, rng: np.random.Generator) -> list[Vitals]:
    """``rounds`` samples per device, 30 s apart, interleaved across devices."""
    bad = set(rng.choice(n_devices, int(n_devices * DETERIORATING_SHARE), replace=False).tolist())
    readings = []
    for r in range(rounds):
        for d in range(n_devices):
            ts = T0 + 30 * r + d * 1e-3
            sick = d in bad and r >= 2
            readings.append(
                Vitals(
                    env=Envelope(device_id=f"dev-{d:05d}", seq=r, device_ts=ts, received_ts=ts),
                    hr_bpm=float(135 if sick else 72 + rng.normal(0, 4)),
                    spo2_pct=float(89 if sick else 97),
                    temp_c=float(38.4 if sick else 36.8),
                    resp_rate_per_min=float(23 if sick else 15),
                    sbp_mmhg=float(118),
                    signal_quality=0.9,
                    battery_pct=80.0,
                )
            )
    return readings


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    detections = fn()
    return time.perf_counter() - start, detections


def bench_fall(
    n_devices: int, seconds: int, rate_hz: int, rng: np.random.Generator
) -> dict[str, Any]:
    data = accel_streams(n_devices, seconds, rate_hz, rng)
    samples = data.shape[0] * data.shape[1] * data.shape[2]

    detectors = [FallDetector() for _ in range(n_devices)]

    def direct() -> int:
        found = 0
        for s in range(seconds):
            t0 = T0 + s
            for d in range(n_devices):
                found += len(detectors[d].feed(t0, rate_hz, data[d, s]))
        return found

    direct_s, direct_found = timed(direct)

    windows = [
        [
            AccelWindow(
                env=Envelope(device_id=f"dev-{d:05d}", seq=s, device_ts=T0 + s, received_ts=T0 + s),
                rate_hz=float(rate_hz),
                n_samples=rate_hz,
                samples_g=data[d, s].astype("<f4").tobytes(),
                peak_g=float(np.linalg.norm(data[d, s], axis=1).max()),
            )
            for d in range(n_devices)
        ]
        for s in range(seconds)
    ]
    runner = RuleRunner(load_rules(), resident_for=lambda _: None, initial_capacity=n_devices)

    def through_runner() -> int:
        return sum(len(runner.process(w)) for second in windows for w in second)

    runner_s, runner_found = timed(through_runner)

    # Per-device fall state: tracemalloc over fresh detectors that have seen one window.
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    fresh = [FallDetector() for _ in range(1000)]
    for det in fresh:
        det.feed(T0, rate_hz, data[0, 0])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    fall_bytes = sum(s.size_diff for s in after.compare_to(before, "filename")) / len(fresh)
    return {
        "accel_samples": samples,
        "window_samples": rate_hz,
        "fall_direct_samples_per_s": samples / direct_s,
        "fall_direct_windows_per_s": samples / rate_hz / direct_s,
        "fall_direct_detections": direct_found,
        "fall_direct_detections_per_s": direct_found / direct_s,
        "fall_runner_samples_per_s": samples / runner_s,
        "fall_runner_detections": runner_found,
        "fall_runner_detections_per_s": runner_found / runner_s,
        "fall_state_bytes_per_device": fall_bytes,
        "fall_state_nbytes_reported": detectors[0].state_nbytes(),
    }


def bench_vitals(n_devices: int, rounds: int, rng: np.random.Generator) -> dict[str, Any]:
    stream = vitals_stream(n_devices, rounds, rng)
    config = load_rules()

    one = RuleRunner(config, resident_for=lambda _: None, initial_capacity=n_devices)
    one_s, one_found = timed(lambda: sum(len(one.process(r)) for r in stream))

    batched = RuleRunner(config, resident_for=lambda _: None, initial_capacity=n_devices)
    batch = n_devices  # one sample per device per array step

    def run_batched() -> int:
        return sum(
            len(batched.process_batch(stream[i : i + batch])) for i in range(0, len(stream), batch)
        )

    batch_s, batch_found = timed(run_batched)
    return {
        "vitals_samples": len(stream),
        "vitals_process_samples_per_s": len(stream) / one_s,
        "vitals_process_detections": one_found,
        "vitals_process_detections_per_s": one_found / one_s,
        "vitals_batch_samples_per_s": len(stream) / batch_s,
        "vitals_batch_detections": batch_found,
        "vitals_batch_detections_per_s": batch_found / batch_s,
        "vitals_columns_bytes_per_device": one.vitals_state_nbytes(),
    }


def bench_state_memory(n_devices: int) -> dict[str, Any]:
    """tracemalloc of vitals + home state for ``n_devices`` devices (ids excluded)."""
    ids = [f"dev-{d:05d}" for d in range(n_devices)]
    runner = RuleRunner(load_rules(), resident_for=lambda _: None, initial_capacity=n_devices)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for d, device_id in enumerate(ids):
        ts = T0 + d * 1e-3
        env = Envelope(device_id=device_id, seq=1, device_ts=ts, received_ts=ts)
        runner.process(
            Vitals(env=env, hr_bpm=72, spo2_pct=97, temp_c=36.8, resp_rate_per_min=15, sbp_mmhg=118)
        )
        # A door held open keeps the largest home state (an open-door timer).
        runner.process(HomeEvent(env=env, sensor=SensorType.DOOR, state="open"))
        runner.process(HomeEvent(env=env, sensor=SensorType.MOTION, state="active"))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))

    # tick() walks every device: once with nothing due, once with every door timer firing.
    quiet_s, _ = timed(lambda: len(runner.tick(T0 + 60)))
    firing_s, fired = timed(lambda: len(runner.tick(T0 + 1900)))
    return {
        "vitals_home_state_bytes_per_device": grown / n_devices,
        "tick_quiet_ms": quiet_s * 1e3,
        "tick_firing_ms": firing_s * 1e3,
        "tick_firing_detections": fired,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=6, help="accel seconds per device")
    parser.add_argument("--rate-hz", type=int, default=50)
    parser.add_argument("--vitals-rounds", type=int, default=14, help="vitals samples per device")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(42)

    figures: dict[str, Any] = {"devices": args.devices}
    figures |= bench_fall(args.devices, args.seconds, args.rate_hz, rng)
    figures |= bench_vitals(args.devices, args.vitals_rounds, rng)
    figures |= bench_state_memory(args.devices)
    figures["fall_target_met"] = figures["fall_direct_samples_per_s"] >= 5e6
    figures["state_target_met"] = figures["vitals_home_state_bytes_per_device"] <= 1024

    rows = [
        ("devices in memory", f"{args.devices:,}"),
        (f"fall detector, direct feed ({args.rate_hz}-sample windows)",
         f"{figures['fall_direct_samples_per_s']:,.0f} samples/s"),
        ("fall detector, direct feed", f"{figures['fall_direct_windows_per_s']:,.0f} windows/s"),
        ("fall detector, direct feed",
         f"{figures['fall_direct_detections_per_s']:,.1f} detections/s"
         f" ({figures['fall_direct_detections']} falls)"),
        ("fall detector via RuleRunner.process",
         f"{figures['fall_runner_samples_per_s']:,.0f} samples/s"),
        ("fall detector via RuleRunner.process",
         f"{figures['fall_runner_detections_per_s']:,.1f} detections/s"
         f" ({figures['fall_runner_detections']} falls)"),
        ("vitals rules, process (one by one)",
         f"{figures['vitals_process_samples_per_s']:,.0f} samples/s"),
        ("vitals rules, process (one by one)",
         f"{figures['vitals_process_detections_per_s']:,.0f} detections/s"
         f" ({figures['vitals_process_detections']})"),
        ("vitals rules, process_batch", f"{figures['vitals_batch_samples_per_s']:,.0f} samples/s"),
        ("vitals rules, process_batch",
         f"{figures['vitals_batch_detections_per_s']:,.0f} detections/s"
         f" ({figures['vitals_batch_detections']})"),
        ("state per device: vitals + home (tracemalloc)",
         f"{figures['vitals_home_state_bytes_per_device']:,.0f} B"),
        ("  of which vitals columns", f"{figures['vitals_columns_bytes_per_device']} B"),
        ("state per device: fall detector (tracemalloc)",
         f"{figures['fall_state_bytes_per_device']:,.0f} B"),
        (f"tick over {args.devices:,} devices, nothing due", f"{figures['tick_quiet_ms']:,.1f} ms"),
        (f"tick over {args.devices:,} devices, every door timer due",
         f"{figures['tick_firing_ms']:,.1f} ms ({figures['tick_firing_detections']} detections)"),
        ("target >= 5M accel samples/s", "met" if figures["fall_target_met"] else "NOT met"),
        ("target <= 1 KB vitals + home state", "met" if figures["state_target_met"] else "NOT met"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
