"""The ground-truth log: one JSON line per injected event, written as it is injected.

Both clocks are kept: ``start_ts``/``end_ts`` are device time (what the rules see) and
``wall_start_s`` is when the first message of the event was published (what an incident's
``raised_at`` is compared with for the detection delay).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import msgspec


class GroundTruthEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One injected event and what CareCall is expected to raise for it."""

    event_id: str
    kind: str  # fall, adl, sos, sos_cancelled, deterioration, night_wandering, smoke, ...
    resident: str
    devices: tuple[str, ...]
    start_ts: float
    end_ts: float
    wall_start_s: float
    # Incident kinds any of which counts as a detection; empty: nothing should be raised.
    expected: tuple[str, ...] = ()
    # For a negative event (an ADL, a malformed message): the incident kinds it must not raise.
    must_not_raise: tuple[str, ...] = ()
    # The simulated clock (simulator/clock.py): "past" runs cannot judge the server's
    # wall-clock timer rules (see simulator/report.py).
    anchor: str = "past"
    detail: dict[str, str | float | int | bool] = {}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(GroundTruthEvent)


class GroundTruthLog:
    """Append-only JSONL writer, flushed per line so a killed run leaves a usable log."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.events: list[GroundTruthEvent] = []
        self._file: IO[bytes] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> GroundTruthLog:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, event: GroundTruthEvent) -> None:
        with self._lock:
            self.events.append(event)
            if self._file is not None:
                self._file.write(_encoder.encode(event) + b"\n")
                self._file.flush()


def read_ground_truth(path: Path) -> list[GroundTruthEvent]:
    return list(iter_lines(path.read_bytes().splitlines()))


def iter_lines(lines: Iterable[bytes]) -> Iterator[GroundTruthEvent]:
    for line in lines:
        if line.strip():
            yield _decoder.decode(line)
