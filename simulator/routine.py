"""Daily routines: sleep, meals, walks, toilet at night, as home-sensor events.

Pure and deterministic: the same (resident, seed, span) gives the same events. Times are
simulated epoch seconds; hours of the day are local (the town's UTC offset).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulator.town import ROOMS, Resident

HOUR_S = 3600.0
DAY_S = 86400.0


@dataclass(frozen=True, slots=True, order=True)
class HomeEvent:
    """One home-sensor state change, as the gateway reports it."""

    sim_s: float
    resident_key: str
    sensor: str  # motion, door, bed, smoke, gas, water
    state: str
    sensor_id: str


@dataclass(frozen=True, slots=True)
class Routine:
    events: tuple[HomeEvent, ...]
    sleep: tuple[tuple[float, float], ...]  # (start, end) simulated seconds in bed asleep
    away: tuple[tuple[float, float], ...]  # out of the home

    def asleep(self, sim_s: float) -> bool:
        return any(a <= sim_s < b for a, b in self.sleep)

    def out(self, sim_s: float) -> bool:
        """Out of the home (on a walk)."""
        return any(a <= sim_s < b for a, b in self.away)


def local_midnights(start_s: float, end_s: float, utc_offset_h: float) -> list[float]:
    """Every local midnight from the one before ``start_s`` to the one after ``end_s``."""
    offset_s = utc_offset_h * HOUR_S
    first = math.floor((start_s + offset_s) / DAY_S) * DAY_S - offset_s
    out = []
    t = first - DAY_S
    while t <= end_s + DAY_S:
        out.append(t)
        t += DAY_S
    return out


def _motion(out: list[HomeEvent], key: str, t: float, room: str, dur_s: float) -> None:
    out.append(HomeEvent(t, key, "motion", "active", f"motion-{room}"))
    out.append(HomeEvent(t + dur_s, key, "motion", "inactive", f"motion-{room}"))


def day_routine(
    resident: Resident, midnight_s: float, rng: random.Random
) -> tuple[list[HomeEvent], tuple[float, float], list[tuple[float, float]]]:
    """One day from ``midnight_s``: events, the night's sleep (ending this morning), walks."""
    key = resident.key
    ev: list[HomeEvent] = []
    wake = midnight_s + (resident.wake_h + rng.gauss(0, 0.3)) * HOUR_S
    bed = midnight_s + (resident.bed_h + rng.gauss(0, 0.4)) * HOUR_S
    ev.append(HomeEvent(wake, key, "bed", "empty", "bed"))
    _motion(ev, key, wake + 30, "bathroom", rng.uniform(300, 900))
    away: list[tuple[float, float]] = []
    # Meals: breakfast, lunch, dinner in the kitchen.
    for meal_h, dur_min in ((0.8, 25), (5.5, 40), (11.0, 40)):
        t = wake + (meal_h + rng.gauss(0, 0.3)) * HOUR_S
        if t < bed - HOUR_S:
            _motion(ev, key, t, "kitchen", dur_min * 60 * rng.uniform(0.7, 1.3))
    # A walk most days: out through the front door and back.
    if rng.random() < 0.8:
        out_s = wake + rng.uniform(2.0, 8.0) * HOUR_S
        back_s = out_s + rng.uniform(25, 90) * 60
        if back_s < bed - HOUR_S:
            for t in (out_s, back_s):
                ev.append(HomeEvent(t, key, "door", "open", "front-door"))
                ev.append(HomeEvent(t + rng.uniform(5, 20), key, "door", "closed", "front-door"))
            away.append((out_s, back_s))
    # Pottering about between meals: without it a 4-hour quiet spell looks like inactivity.
    t = wake + rng.uniform(0.3, 1.0) * HOUR_S
    while t < bed - 0.5 * HOUR_S:
        _motion(ev, key, t, rng.choice(ROOMS), rng.uniform(60, 900))
        t += rng.uniform(0.5, 1.5) * HOUR_S
    # Afternoon and evening in the living room.
    _motion(ev, key, wake + rng.uniform(6.5, 7.5) * HOUR_S, "living", rng.uniform(1, 3) * HOUR_S)
    ev.append(HomeEvent(bed, key, "bed", "occupied", "bed"))
    # Toilet at night (after bedtime): bed empty, bathroom motion, back to bed.
    n_trips = min(3, int(rng.expovariate(1.0 / 1.2)))
    for _ in range(n_trips):
        t = bed + rng.uniform(1.5, 7.0) * HOUR_S
        dur_s = rng.uniform(180, 600)
        ev.append(HomeEvent(t, key, "bed", "empty", "bed"))
        _motion(ev, key, t + 20, "bathroom", dur_s)
        ev.append(HomeEvent(t + dur_s + 60, key, "bed", "occupied", "bed"))
    # Nobody moves about the home while its resident is out on a walk.
    ev = [
        e for e in ev
        if not (e.sensor == "motion" and any(a <= e.sim_s < b for a, b in away))
    ]  # fmt: skip
    # Sleep from the previous evening's bedtime until this morning's wake-up.
    prev_bed = midnight_s - DAY_S + resident.bed_h * HOUR_S
    return ev, (prev_bed, wake), away


def build_routine(
    resident: Resident, start_s: float, end_s: float, *, seed: int, utc_offset_h: float = 8.0
) -> Routine:
    """Every routine event of ``resident`` within ``[start_s, end_s)``, time-ordered."""
    events: list[HomeEvent] = []
    sleep: list[tuple[float, float]] = []
    away: list[tuple[float, float]] = []
    for midnight in local_midnights(start_s, end_s, utc_offset_h):
        # One generator per (resident, day): adding residents or days changes nothing else.
        rng = random.Random(f"{seed}:{resident.key}:{int(midnight)}")
        ev, night, walks = day_routine(resident, midnight, rng)
        events.extend(e for e in ev if start_s <= e.sim_s < end_s)
        sleep.append(night)
        away.extend(walks)
    events.sort()
    return Routine(tuple(events), tuple(sleep), tuple(away))
