"""Injected events with ground truth: what happens to whom, when, and what CareCall should say.

Planning is pure and deterministic (``plan_scenarios``); turning a plan into messages is done
by the helpers below, called by the simulation when each event is due.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from simulator.recordings import Recordings, random_rotation, resample, rotate, stillness
from simulator.routine import DAY_S, HOUR_S, Routine
from simulator.town import Device, Resident, Town

# Scenario kind -> incident kinds that count as detecting it (empty: a negative event).
EXPECTED: dict[str, tuple[str, ...]] = {
    "fall": ("fall",),
    "adl": (),
    "sos": ("sos",),
    "sos_cancelled": ("sos",),  # raised, then cancelled by the resident's "I am OK"
    "deterioration": ("news2", "vitals_abnormal"),
    "night_wandering": ("night_wandering", "bed_exit", "door_open"),
    "smoke": ("smoke",),
    "device_offline": ("device_offline",),
    "malformed": (),
    "replayed": (),
    "spoofed": (),
}
# What a negative event must not raise.
MUST_NOT_RAISE: dict[str, tuple[str, ...]] = {
    "adl": ("fall",),
    "malformed": ("sos",),
    "replayed": ("sos",),
    "spoofed": ("sos",),
}


@dataclass(frozen=True, slots=True)
class ScenarioRates:
    """Expected events per resident per simulated day."""

    fall: float = 0.12
    adl: float = 0.8
    sos: float = 0.15
    sos_cancel_share: float = 0.3
    deterioration: float = 0.05
    night_wandering: float = 0.05
    smoke: float = 0.02
    device_offline: float = 0.05
    bad_device: float = 0.1  # malformed, replayed or spoofed, evenly

    @classmethod
    def busy(cls) -> ScenarioRates:
        """Many events per day, for short demos and tests."""
        return cls(fall=2, adl=3, sos=2, deterioration=0.5, night_wandering=0.5, smoke=0.5,
                   device_offline=0.5, bad_device=1.5)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str
    resident: str
    device_id: str
    sim_s: float
    params: dict[str, float | str] = field(default_factory=dict)


def _accel_device(r: Resident, rng: random.Random) -> Device:
    return rng.choice([d for d in r.wearables if d.model.accel_rate_hz > 0])


def _vitals_device(r: Resident) -> Device | None:
    return next((d for d in r.wearables if d.model.vitals), None)


def _night_time(routine: Routine, rng: random.Random, start_s: float, end_s: float) -> float | None:
    """A moment between 1 and 3 hours into some night's sleep inside the span."""
    nights = [(a, b) for a, b in routine.sleep if a + 3 * HOUR_S < b and start_s < a and b < end_s]
    if not nights:
        return None
    a, _ = rng.choice(nights)
    return a + rng.uniform(1.0, 3.0) * HOUR_S


def plan_scenarios(
    town: Town,
    routines: dict[str, Routine],
    start_s: float,
    end_s: float,
    *,
    seed: int,
    rates: ScenarioRates = ScenarioRates(),
    min_gap_s: float = 2 * HOUR_S,
) -> list[Scenario]:
    """Draw every resident's events (Poisson counts, uniform times, at least ``min_gap_s``
    apart per resident so two events never blur into one incident)."""
    days = (end_s - start_s) / DAY_S
    # Leave room at the start (devices connect) and the end (detection has time to happen).
    lo, hi = (
        start_s + min(600.0, 0.05 * (end_s - start_s)),
        end_s - min(3600.0, 0.15 * (end_s - start_s)),
    )
    out: list[Scenario] = []
    for r in town.residents:
        rng = random.Random(f"{seed}:scenarios:{r.key}")
        nprng = np.random.default_rng(rng.getrandbits(32))
        taken: list[float] = []

        def slot(t: float | None, taken: list[float] = taken) -> float | None:
            if t is None or not lo <= t <= hi or any(abs(t - u) < min_gap_s for u in taken):
                return None
            taken.append(t)
            return t

        def count(rate: float, nprng: np.random.Generator = nprng) -> int:
            return int(nprng.poisson(rate * days))

        # The rare, important ones first, so the gap rule drops ADLs rather than falls.
        vit = _vitals_device(r)
        if vit is not None:
            for _ in range(count(rates.deterioration)):
                t = slot(rng.uniform(lo, max(lo, hi - 4 * HOUR_S)))
                if t is not None:
                    band = rng.choice(("medium", "high"))
                    out.append(Scenario("deterioration", r.key, vit.device_id, t, {"band": band}))
        for _ in range(count(rates.fall)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                out.append(Scenario("fall", r.key, _accel_device(r, rng).device_id, t))
        for _ in range(count(rates.sos)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                kind = "sos_cancelled" if rng.random() < rates.sos_cancel_share else "sos"
                out.append(Scenario(kind, r.key, r.wearables[0].device_id, t))
        for _ in range(count(rates.night_wandering)):
            t = slot(_night_time(routines[r.key], rng, lo, hi))
            if t is not None:
                out.append(Scenario("night_wandering", r.key, r.gateway.device_id, t))
        for _ in range(count(rates.smoke)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                out.append(Scenario("smoke", r.key, r.gateway.device_id, t))
        for _ in range(count(rates.device_offline)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                hours = rng.uniform(0.5, 3.0)
                out.append(
                    Scenario("device_offline", r.key, r.wearables[0].device_id, t, {"hours": hours})
                )
        for _ in range(count(rates.bad_device)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                kind = rng.choice(("malformed", "replayed", "spoofed"))
                out.append(Scenario(kind, r.key, r.wearables[0].device_id, t))
        for _ in range(count(rates.adl)):
            t = slot(rng.uniform(lo, hi))
            if t is not None:
                out.append(Scenario("adl", r.key, _accel_device(r, rng).device_id, t))
    out.sort(key=lambda s: (s.sim_s, s.resident))
    return out


@dataclass(frozen=True, slots=True)
class Replay:
    """A recorded trial prepared for one device: samples in g at the device's rate."""

    trial_id: str
    activity: str
    is_fall: bool
    rate_hz: float
    samples_g: npt.NDArray[np.float32]


def prepare_replay(
    recordings: Recordings,
    device: Device,
    *,
    is_fall: bool,
    rng: np.random.Generator,
    still_after_s: float = 10.0,
) -> Replay:
    """Pick a real trial for the device's body position, resample it to the device's rate,
    rotate it to a random mounting, and add the stillness that follows."""
    model = device.model
    candidates = recordings.candidates(position=model.position, is_fall=is_fall)
    dataset, index = candidates[int(rng.integers(len(candidates)))]
    trial = recordings.trial(dataset, index, position=model.position)
    samples = resample(trial.samples_g, trial.rate_hz, model.accel_rate_hz)
    samples = rotate(samples, random_rotation(rng))
    tail = stillness(
        samples[-max(1, int(model.accel_rate_hz)) :].mean(axis=0),
        int(still_after_s * model.accel_rate_hz),
        rng,
    )
    return Replay(
        trial.trial_id,
        trial.activity,
        trial.is_fall,
        model.accel_rate_hz,
        np.concatenate([samples, tail]),
    )
