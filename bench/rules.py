"""Rule-engine throughput and per-device memory with 10,000 simulated devices in memory.

    .venv/bin/python bench/rules.py [--devices 10000] [--seconds 6] [--batch 5000] [--repeat 3]

Prints a table and, last, one JSON line with the same figures. Measured, on one core:

* accel samples/s through the fall detector *as the server runs it*: readings handed to
  ``RuleRunner.process_batch`` in batches like the alert engine's (``--batch``, default
  5,000, and 1,000), 1 s windows at 50 Hz and at 200 Hz, devices already known; and, for
  comparison, one reading at a time through ``RuleRunner.process``;
* accel samples/s through the detector alone: ``FallDetector.feed`` one device at a time and
  ``FallDetectorBank.feed_many`` with all devices' windows of a second in one call;
* vitals samples/s and detections/s through the vitals + NEWS2 rules (``process`` and
  ``process_batch``), on a stream where 5 % of devices deteriorate;
* bytes of rule state per device with tracemalloc, counted from *before* the readings and
  the runner exist until the readings are gone (so preallocated columns count, and so does
  whatever the runner keeps of the readings: timestamps, sensor ids) over devices that have
  seen data: a wearable (vitals and accelerometer), a gateway (vitals, an open door and
  motion at home) and a device with every kind of state; with the columns sized for the
  fleet and with the default capacity grown on demand. Device-id strings are shown apart.

Each throughput is measured ``--repeat`` times (fresh runner each time) in CPU time of the
bench process (``time.process_time``: on a shared machine, wall time also counts other
tenants); the table shows the median and the range. Targets (docs/rules.md): >= 5M accel
samples/s through ``process_batch`` at 50 Hz, and <= 1 KB of rule state per device.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts.rules.config import load_rules
from alerts.rules.fall import FallDetector, FallDetectorBank
from alerts.rules.runner import RuleRunner
from devices.readings import AccelWindow, Envelope, HomeEvent, Reading, SensorType, Vitals

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


def accel_windows(data: np.ndarray, phases_s: np.ndarray) -> list[list[AccelWindow]]:
    """Per second, every device's 1 s window, in arrival order (devices at their own phase
    to the 0.2 s blocks, as unsynchronised devices are)."""
    n_devices, seconds, rate_hz = data.shape[0], data.shape[1], data.shape[2]
    out = []
    for s in range(seconds):
        second = []
        for d in range(n_devices):
            ts = T0 + s + float(phases_s[d])
            second.append(
                AccelWindow(
                    env=Envelope(device_id=f"dev-{d:05d}", seq=s, device_ts=ts, received_ts=ts),
                    rate_hz=float(rate_hz),
                    n_samples=rate_hz,
                    samples_g=data[d, s].astype("<f4").tobytes(),
                    peak_g=float(np.linalg.norm(data[d, s], axis=1).max()),
                )
            )
        out.append(second)
    return out


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
    """CPU seconds of this process (other tenants of a shared machine do not count; numpy
    runs these operations on one thread) and what ``fn`` returned."""
    start = time.process_time()
    found = fn()
    return time.process_time() - start, found


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def new_runner(n_devices: int | None = None) -> RuleRunner:
    if n_devices is None:
        return RuleRunner(load_rules(), resident_for=lambda _: None)
    return RuleRunner(load_rules(), resident_for=lambda _: None, initial_capacity=n_devices)


# -- accelerometer ----------------------------------------------------------------------------


def bench_accel(
    n_devices: int, seconds: int, rate_hz: int, batches: Sequence[int], repeat: int
) -> dict[str, Any]:
    rng = np.random.default_rng(42 + rate_hz)
    data = accel_streams(n_devices, seconds, rate_hz, rng)
    phases_s = rng.uniform(0.0, 1.0, n_devices)
    windows = accel_windows(data, phases_s)
    # The first second introduces the devices to the runner (resident lookup, slots); the
    # figures are for the seconds after it, as in a server that has been running.
    steady = [w for second in windows[1:] for w in second]
    samples = len(steady) * rate_hz
    falls = int(n_devices * FALLING_SHARE)
    out: dict[str, Any] = {}

    for batch in batches:
        rates, found = [], set()
        for _ in range(repeat):
            runner = new_runner(n_devices)
            runner.process_batch(windows[0])

            def run(runner: RuleRunner = runner, batch: int = batch) -> int:
                return sum(
                    len(runner.process_batch(steady[i : i + batch]))
                    for i in range(0, len(steady), batch)
                )

            elapsed, n_found = timed(run)
            rates.append(samples / elapsed)
            found.add(n_found)
        out[f"runner_batch{batch}_samples_per_s"] = spread(rates)
        out[f"runner_batch{batch}_falls_found"] = sorted(found)

    rates, found = [], set()
    for _ in range(repeat):
        runner = new_runner(n_devices)
        for w in windows[0]:
            runner.process(w)
        elapsed, n_found = timed(lambda runner=runner: sum(len(runner.process(w)) for w in steady))
        rates.append(samples / elapsed)
        found.add(n_found)
    out["runner_process_samples_per_s"] = spread(rates)
    out["runner_process_falls_found"] = sorted(found)

    # The detector alone, fed arrays (no readings, no runner).
    starts = T0 + phases_s
    rates, found = [], set()
    for _ in range(repeat):
        detectors = [FallDetector() for _ in range(n_devices)]

        def direct(detectors: list[FallDetector] = detectors) -> int:
            return sum(
                len(detectors[d].feed(float(starts[d]) + s, rate_hz, data[d, s]))
                for s in range(seconds)
                for d in range(n_devices)
            )

        elapsed, n_found = timed(direct)
        rates.append(n_devices * seconds * rate_hz / elapsed)
        found.add(n_found)
    out["detector_feed_samples_per_s"] = spread(rates)
    out["detector_feed_falls_found"] = sorted(found)

    rates, found = [], set()
    slots = np.arange(n_devices)
    for _ in range(repeat):
        bank = FallDetectorBank(n_devices)

        def many(bank: FallDetectorBank = bank) -> int:
            return sum(
                len(bank.feed_many(slots, starts + s, rate_hz, data[:, s])) for s in range(seconds)
            )

        elapsed, n_found = timed(many)
        rates.append(n_devices * seconds * rate_hz / elapsed)
        found.add(n_found)
    out["detector_feed_many_samples_per_s"] = spread(rates)
    out["detector_feed_many_falls_found"] = sorted(found)
    out["falls_injected"] = falls
    return {f"accel_{rate_hz}hz_{k}": v for k, v in out.items()}


# -- vitals -------------------------------------------------------------------------------------


def bench_vitals(n_devices: int, rounds: int, repeat: int) -> dict[str, Any]:
    stream = vitals_stream(n_devices, rounds, np.random.default_rng(7))
    one_rates, one_det, batch_rates, batch_det = [], [], [], []
    found = set()
    for _ in range(repeat):
        one = new_runner(n_devices)
        elapsed, n = timed(lambda one=one: sum(len(one.process(r)) for r in stream))
        one_rates.append(len(stream) / elapsed)
        one_det.append(n / elapsed)
        found.add(n)
        batched = new_runner(n_devices)
        batch = n_devices  # one sample per device per array step

        def run_batched(batched: RuleRunner = batched, batch: int = batch) -> int:
            return sum(
                len(batched.process_batch(stream[i : i + batch]))
                for i in range(0, len(stream), batch)
            )

        elapsed, n = timed(run_batched)
        batch_rates.append(len(stream) / elapsed)
        batch_det.append(n / elapsed)
        found.add(n)
    return {
        "vitals_samples": len(stream),
        "vitals_detections": sorted(found),
        "vitals_process_samples_per_s": spread(one_rates),
        "vitals_process_detections_per_s": spread(one_det),
        "vitals_batch_samples_per_s": spread(batch_rates),
        "vitals_batch_detections_per_s": spread(batch_det),
    }


# -- memory -------------------------------------------------------------------------------------


def _readings_for(
    device_id: str, d: int, *, home: bool, window: bytes, accel: bool = True
) -> list[list[Reading]]:
    """Three seconds of a device's readings: vitals, 1 s accel windows, home events."""
    rounds: list[list[Reading]] = []
    for s in range(3):
        ts = T0 + s + d * 1e-4
        env = Envelope(device_id=device_id, seq=s, device_ts=ts, received_ts=ts + 0.2)
        readings: list[Reading] = []
        if accel:
            readings.append(
                AccelWindow(env=env, rate_hz=50.0, n_samples=50, samples_g=window, peak_g=1.0)
            )
        if s == 0:
            readings.append(
                Vitals(
                    env=env, hr_bpm=72, spo2_pct=97, temp_c=36.8, resp_rate_per_min=15,
                    sbp_mmhg=118, dbp_mmhg=76,
                )
            )  # fmt: skip
            if home:
                # A door held open keeps the largest home state (an open-door timer).
                # Its sensor id is a fresh string per device, as decoding a message makes.
                door = f"door-{d % 3}"
                readings.append(
                    HomeEvent(env=env, sensor=SensorType.DOOR, state="open", sensor_id=door)
                )
                readings.append(HomeEvent(env=env, sensor=SensorType.MOTION, state="active"))
        rounds.append(readings)
    return rounds


def state_bytes(n_devices: int, *, home: bool, accel: bool, presized: bool) -> dict[str, float]:
    """tracemalloc growth from before the readings and the runner exist until every device
    has seen data and the readings are gone: whatever the runner keeps of them (device-id
    strings, timestamps it holds on to) counts, as do its preallocated columns."""
    rng = np.random.default_rng(3)
    upright = np.array([0.0, 0.0, 1.0])
    window = (rng.normal(0, 0.05, (50, 3)) + upright).astype("<f4").tobytes()
    # Warm up everything that is built once per process (imports, caches, compiled rules).
    warm = new_runner()
    for s in range(3):  # several devices per batch, so that the vectorised paths run too
        warm.process_batch(
            [
                r
                for d in range(8)
                for r in _readings_for(f"warm-{d}", d, home=True, window=window)[s]
            ]
        )
    del warm
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    ids = [f"dev-{d:05d}" for d in range(n_devices)]
    per_device = [
        _readings_for(i, d, home=home, window=window, accel=accel) for d, i in enumerate(ids)
    ]
    runner = new_runner(n_devices if presized else None)
    for s in range(3):
        runner.process_batch([r for rounds in per_device for r in rounds[s]])
    del per_device  # the readings are the caller's; what the runner keeps stays alive
    ids_bytes = sum(sys.getsizeof(i) for i in ids)
    del ids  # the runner keeps the ids it needs (dict keys, device records)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert len(runner) == n_devices
    return {
        "bytes_per_device": (grown - ids_bytes) / n_devices,
        "bytes_per_device_with_ids": grown / n_devices,
    }


def bench_memory(n_devices: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = (("wearable", False, True), ("gateway", True, False), ("all_kinds", True, True))
    for name, home, accel in kinds:
        for sizing, presized in (("presized", True), ("grown", False)):
            figures = state_bytes(n_devices, home=home, accel=accel, presized=presized)
            for key, value in figures.items():
                out[f"state_{name}_{sizing}_{key}"] = value
    out["fall_state_nbytes_per_device"] = FallDetectorBank(capacity=1).state_nbytes()
    out["vitals_columns_nbytes_per_device"] = new_runner(1).vitals_state_nbytes()
    return out


def bench_tick(n_devices: int) -> dict[str, Any]:
    runner = new_runner(n_devices)
    for d in range(n_devices):
        env = Envelope(device_id=f"dev-{d:05d}", seq=1, device_ts=T0, received_ts=T0)
        runner.process(HomeEvent(env=env, sensor=SensorType.DOOR, state="open"))
        runner.process(HomeEvent(env=env, sensor=SensorType.MOTION, state="active"))
    quiet_s, _ = timed(lambda: len(runner.tick(T0 + 60)))
    firing_s, fired = timed(lambda: len(runner.tick(T0 + 1900)))
    return {"tick_quiet_ms": quiet_s * 1e3, "tick_firing_ms": firing_s * 1e3, "tick_fired": fired}


# -- report -------------------------------------------------------------------------------------


def _rate(figure: dict[str, float]) -> str:
    return (
        f"{figure['median'] / 1e6:,.2f}M  ({figure['min'] / 1e6:,.2f}-{figure['max'] / 1e6:,.2f}M)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=6, help="accel seconds per device")
    parser.add_argument("--batch", type=int, default=5_000, help="readings per process_batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--vitals-rounds", type=int, default=14, help="vitals samples per device")
    args = parser.parse_args(argv)
    n = args.devices

    figures: dict[str, Any] = {"devices": n, "batch": args.batch, "repeat": args.repeat}
    batches = sorted({args.batch, 1_000})
    for rate_hz in (50, 200):
        figures |= bench_accel(n, args.seconds, rate_hz, batches, args.repeat)
    figures |= bench_vitals(n, args.vitals_rounds, args.repeat)
    figures |= bench_memory(n)
    figures |= bench_tick(n)
    main_rate = figures[f"accel_50hz_runner_batch{args.batch}_samples_per_s"]
    figures["accel_target_met"] = main_rate["median"] >= 5e6
    figures["accel_target_met_every_run"] = main_rate["min"] >= 5e6
    figures["state_target_met"] = figures["state_all_kinds_presized_bytes_per_device"] <= 1024
    figures["state_target_met_wearable"] = (
        figures["state_wearable_presized_bytes_per_device"] <= 1024
    )

    rows: list[tuple[str, str]] = [("devices in memory", f"{n:,}")]
    for rate_hz in (50, 200):
        p = f"accel_{rate_hz}hz_"
        found = figures[p + "falls_injected"]
        for batch in batches:
            rows.append(
                (
                    f"{rate_hz} Hz, 1 s windows: RuleRunner.process_batch, batches of {batch:,}",
                    f"{_rate(figures[p + f'runner_batch{batch}_samples_per_s'])} samples/s, "
                    f"falls {figures[p + f'runner_batch{batch}_falls_found']} of {found}",
                )
            )
        rows += [
            (f"{rate_hz} Hz, 1 s windows: RuleRunner.process, one at a time",
             f"{_rate(figures[p + 'runner_process_samples_per_s'])} samples/s, "
             f"falls {figures[p + 'runner_process_falls_found']}"),
            (f"{rate_hz} Hz, 1 s windows: FallDetector.feed, one device at a time",
             f"{_rate(figures[p + 'detector_feed_samples_per_s'])} samples/s, "
             f"falls {figures[p + 'detector_feed_falls_found']}"),
            (f"{rate_hz} Hz, 1 s windows: FallDetectorBank.feed_many, {n:,} at a time",
             f"{_rate(figures[p + 'detector_feed_many_samples_per_s'])} samples/s, "
             f"falls {figures[p + 'detector_feed_many_falls_found']}"),
        ]  # fmt: skip
    v = figures
    rows += [
        ("vitals + NEWS2, process (one by one)",
         f"{v['vitals_process_samples_per_s']['median']:,.0f} samples/s, "
         f"{v['vitals_process_detections_per_s']['median']:,.0f} detections/s "
         f"({v['vitals_process_detections_per_s']['min']:,.0f}-"
         f"{v['vitals_process_detections_per_s']['max']:,.0f}; {v['vitals_detections']})"),
        ("vitals + NEWS2, process_batch",
         f"{v['vitals_batch_samples_per_s']['median']:,.0f} samples/s, "
         f"{v['vitals_batch_detections_per_s']['median']:,.0f} detections/s "
         f"({v['vitals_batch_detections_per_s']['min']:,.0f}-"
         f"{v['vitals_batch_detections_per_s']['max']:,.0f})"),
        ("state/device, wearable (vitals + fall), presized",
         f"{v['state_wearable_presized_bytes_per_device']:,.0f} B "
         f"(+ids {v['state_wearable_presized_bytes_per_device_with_ids']:,.0f} B)"),
        ("state/device, wearable, default capacity grown",
         f"{v['state_wearable_grown_bytes_per_device']:,.0f} B"),
        ("state/device, vitals + home (no accelerometer), presized",
         f"{v['state_gateway_presized_bytes_per_device']:,.0f} B "
         f"(+ids {v['state_gateway_presized_bytes_per_device_with_ids']:,.0f} B)"),
        ("state/device, vitals + fall + home, presized",
         f"{v['state_all_kinds_presized_bytes_per_device']:,.0f} B "
         f"(+ids {v['state_all_kinds_presized_bytes_per_device_with_ids']:,.0f} B)"),
        ("state/device, vitals + fall + home, default capacity grown",
         f"{v['state_all_kinds_grown_bytes_per_device']:,.0f} B"),
        ("  fall columns / vitals columns (payload)",
         f"{v['fall_state_nbytes_per_device']} B / {v['vitals_columns_nbytes_per_device']} B"),
        (f"tick over {n:,} devices: nothing due / every door timer due",
         f"{v['tick_quiet_ms']:,.1f} ms / {v['tick_firing_ms']:,.1f} ms ({v['tick_fired']})"),
        ("target >= 5M samples/s via process_batch, 50 Hz (median; every run)",
         f"{'met' if v['accel_target_met'] else 'NOT met'}; "
         f"{'met' if v['accel_target_met_every_run'] else 'NOT met'}"),
        ("target <= 1 KB rule state per device (all kinds; wearable)",
         f"{'met' if v['state_target_met'] else 'NOT met'}; "
         f"{'met' if v['state_target_met_wearable'] else 'NOT met'}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 1)
        if isinstance(value, dict):
            return {k: rounded(x) for k, x in value.items()}
        return value

    print(json.dumps({k: rounded(x) for k, x in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
