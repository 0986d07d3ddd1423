"""An injectable clock: the engine never calls ``time.time()`` itself, so tests drive time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Epoch seconds."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """Time that moves only when a test says so."""

    def __init__(self, start_ts: float | None = None) -> None:
        self._now_ts = time.time() if start_ts is None else start_ts

    def now(self) -> float:
        return self._now_ts

    def advance(self, seconds: float) -> float:
        self._now_ts += seconds
        return self._now_ts
