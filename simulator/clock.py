"""Time compression: a simulated day in minutes, with device timestamps the server accepts.

The server refuses a ``ts`` more than 5 minutes ahead of its clock, and its rules run on
device time (per device, with a lateness allowance). So the simulated clock is *anchored in
the past*: it starts at ``wall_start - days`` and runs ``speed`` times faster than the wall
clock, so the last simulated second lands at (or just before) the real "now". Every device
timestamp is then in the past, each device's clock moves forward monotonically, and the
rules see real spans (a 20-minute night walk lasts 20 device minutes). The server's receive
time (and so an incident's ``raised_at``) is wall-clock; the ground truth records both.

``anchor="wall"`` is the alternative for live demos: device ``ts`` is the wall clock at
publish time and only the gaps between events are compressed (rules that need long spans,
such as inactivity, then cannot fire). See docs/simulator.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Anchor = Literal["past", "wall"]


@dataclass
class SimClock:
    """Maps simulated seconds (epoch-based) to wall seconds and device timestamps."""

    days: float
    speed: float
    anchor: Anchor = "past"
    # Injected for tests; the real clock otherwise.
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    wall_start_s: float = field(default=0.0)
    sim_start_s: float = field(default=0.0)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed must be positive")
        if self.days <= 0:
            raise ValueError("days must be positive")
        self.start()

    def start(self) -> None:
        """(Re)start: simulated time 0 is now, ``days`` ago (anchor "past") or now ("wall")."""
        self.wall_start_s = self.wall()
        span_s = self.days * 86400.0
        # A margin of 1 s keeps the last timestamps strictly in the past despite jitter.
        self.sim_start_s = (
            self.wall_start_s - span_s - 1.0 if self.anchor == "past" else (self.wall_start_s)
        )

    @property
    def sim_end_s(self) -> float:
        return self.sim_start_s + self.days * 86400.0

    def sim_now_s(self) -> float:
        return self.sim_start_s + (self.wall() - self.wall_start_s) * self.speed

    def wall_at(self, sim_s: float) -> float:
        """The wall-clock second at which simulated second ``sim_s`` is due."""
        return self.wall_start_s + (sim_s - self.sim_start_s) / self.speed

    def device_ts(self, sim_s: float) -> float:
        """The ``ts`` a device stamps on a reading taken at simulated second ``sim_s``."""
        if self.anchor == "past":
            # Never ahead of the wall clock, whatever the scheduling jitter.
            return min(sim_s, self.wall())
        return self.wall()

    def wait_until(self, sim_s: float, *, max_sleep_s: float = 0.5) -> None:
        """Sleep until ``sim_s`` is due (in slices, so callers can notice a stop request)."""
        delay_s = self.wall_at(sim_s) - self.wall()
        if delay_s > 0:
            self.sleep(min(delay_s, max_sleep_s))

    def due(self, sim_s: float) -> bool:
        return self.wall() >= self.wall_at(sim_s)
