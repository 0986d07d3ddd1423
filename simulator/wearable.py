"""What a device says: vitals with circadian drift and noise, accelerometer windows in the
compact binary encoding, heartbeats with battery drain. Payload builders are pure."""

from __future__ import annotations

import base64
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.town import Device, DeviceModel, Resident

HOUR_S = 3600.0
MAX_WINDOW_SAMPLES = 4096  # protocol limit per accel window


def compact(body: dict[str, Any]) -> bytes:
    """Compact JSON, as a device with little bandwidth would send it."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class DeviceState:
    """A device's mutable side: its sequence counter and battery."""

    device: Device
    # Sequence numbers are never reused: start from a boot counter times 10^9 (protocol).
    boot: int = 1
    next_seq: int = 0
    battery_pct: float = 100.0
    online: bool = True
    last_status_sim_s: float = -math.inf
    rng: random.Random = field(default_factory=random.Random)

    def seq(self) -> int:
        self.next_seq += 1
        return self.boot * 1_000_000_000 + self.next_seq

    def drain(self, hours: float) -> None:
        life_h = self.device.model.battery_life_h
        self.battery_pct = max(0.0, self.battery_pct - 100.0 * hours / life_h)

    def charge(self) -> None:
        self.battery_pct = 100.0


@dataclass(frozen=True, slots=True)
class Deterioration:
    """Vitals drifting from baseline toward ``target`` between ``start_s`` and ``peak_s``,
    held until ``end_s``, then back to baseline over an hour."""

    start_s: float
    peak_s: float
    end_s: float
    target: dict[str, float]

    def weight(self, sim_s: float) -> float:
        if sim_s < self.start_s or sim_s > self.end_s + HOUR_S:
            return 0.0
        if sim_s < self.peak_s:
            return (sim_s - self.start_s) / max(1.0, self.peak_s - self.start_s)
        if sim_s <= self.end_s:
            return 1.0
        return 1.0 - (sim_s - self.end_s) / HOUR_S


# Targets scored with NEWS2 (RCP 2017, SpO2 scale 1, air): medium band 5-6, high band >= 7.
NEWS2_TARGETS: dict[str, dict[str, float]] = {
    # rr 23 (2) + SpO2 94 (1) + hr 105 (1) + temp 38.4 (1) = 5
    "medium": {"resp_rate_per_min": 23, "spo2_pct": 94, "hr_bpm": 105, "temp_c": 38.4},
    # rr 26 (3) + SpO2 90 (3) + hr 122 (2) + temp 39.3 (2) = 10
    "high": {"resp_rate_per_min": 26, "spo2_pct": 90, "hr_bpm": 122, "temp_c": 39.3},
}


def vitals_values(
    resident: Resident,
    sim_s: float,
    *,
    asleep: bool,
    rng: random.Random,
    utc_offset_h: float = 8.0,
    deteriorations: tuple[Deterioration, ...] = (),
) -> dict[str, float]:
    """One set of vitals: baseline, circadian drift, sleep, any deterioration, noise."""
    local_h = ((sim_s / HOUR_S) + utc_offset_h) % 24.0
    # Core temperature is lowest around 04:00 and highest around 16:00 (about +-0.3 C).
    circadian = -math.cos(2 * math.pi * (local_h - 4.0) / 24.0)
    base = {
        "hr_bpm": resident.hr_bpm + 3.0 * circadian - (7.0 if asleep else 0.0),
        "spo2_pct": resident.spo2_pct - (0.5 if asleep else 0.0),
        "temp_c": resident.temp_c + 0.3 * circadian,
        "resp_rate_per_min": resident.resp_rate_per_min - (2.0 if asleep else 0.0),
        "sbp_mmhg": resident.sbp_mmhg + 6.0 * circadian - (10.0 if asleep else 0.0),
        "dbp_mmhg": resident.dbp_mmhg + 3.0 * circadian - (6.0 if asleep else 0.0),
    }
    for d in deteriorations:
        w = d.weight(sim_s)
        if w > 0:
            for k, target in d.target.items():
                base[k] = base[k] + w * (target - base[k])
    noise = {
        "hr_bpm": 2.5,
        "spo2_pct": 0.6,
        "temp_c": 0.08,
        "resp_rate_per_min": 0.8,
        "sbp_mmhg": 5.0,
        "dbp_mmhg": 3.0,
    }
    return {k: v + rng.gauss(0, noise[k]) for k, v in base.items()}


def vitals_payload(
    ts: float, seq: int, values: dict[str, float], *, battery_pct: float, quality: float
) -> bytes:
    """A compact vitals message with values rounded as a device would report them."""
    return compact(
        {
            "ts": round(ts, 3),
            "seq": seq,
            "hr_bpm": round(min(220.0, max(30.0, values["hr_bpm"]))),
            "spo2_pct": round(min(100.0, max(70.0, values["spo2_pct"]))),
            "temp_c": round(values["temp_c"], 1),
            "resp_rate_per_min": round(max(4.0, values["resp_rate_per_min"])),
            "sbp_mmhg": round(values["sbp_mmhg"]),
            "dbp_mmhg": round(values["dbp_mmhg"]),
            "battery_pct": round(battery_pct),
            "signal_quality": round(quality, 2),
            "on_oxygen": False,
        }
    )


def encode_samples(samples_g: npt.NDArray[np.floating], model: DeviceModel) -> dict[str, Any]:
    """The binary part of an accel window in the model's encoding (x y z interleaved)."""
    x = np.asarray(samples_g, dtype=np.float64)
    if model.accel_encoding == "i16le":
        counts = np.clip(np.rint(x / model.g_per_count), -32768, 32767).astype("<i2")
        return {
            "enc": "i16le",
            "g_per_count": model.g_per_count,
            "data": base64.b64encode(counts.tobytes()).decode(),
        }
    return {"enc": "f32le", "data": base64.b64encode(x.astype("<f4").tobytes()).decode()}


def accel_payloads(
    start_ts: float,
    samples_g: npt.NDArray[np.floating],
    model: DeviceModel,
    state: DeviceState,
    *,
    window_s: float = 2.0,
) -> list[tuple[float, bytes]]:
    """Split a recording into consecutive windows; returns (device ts, payload) per window."""
    rate_hz = model.accel_rate_hz
    per_window = max(2, min(MAX_WINDOW_SAMPLES, round(window_s * rate_hz)))
    out = []
    for i in range(0, len(samples_g), per_window):
        chunk = samples_g[i : i + per_window]
        if len(chunk) < 2:
            break
        ts = start_ts + i / rate_hz
        body: dict[str, Any] = {
            "ts": round(ts, 3),
            "seq": state.seq(),
            "rate_hz": rate_hz,
            "position": model.position,
        }
        body.update(encode_samples(chunk, model))
        out.append((ts, compact(body)))
    return out


def status_payload(ts: float, seq: int, state: DeviceState, *, rssi_dbm: int) -> bytes:
    return compact(
        {
            "ts": round(ts, 3),
            "seq": seq,
            "state": "online",
            "battery_pct": round(state.battery_pct),
            "rssi_dbm": rssi_dbm,
            "firmware": state.device.model.firmware,
        }
    )


WILL_PAYLOAD = compact({"state": "offline", "will": True})
