"""Figures for the operator dashboard, read from the server's own Prometheus registry.

The registry holds counters and cumulative histograms; a dashboard wants rates and recent
percentiles. :class:`OpsSampler` snapshots the registry every few seconds and keeps the
differences between consecutive snapshots in a bounded ring, so the page gets the last few
minutes of history on its first request instead of drawing from an empty chart. The maths
(:func:`rates`, :func:`histogram_quantile`) are pure functions over snapshots.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]
# Sample name -> label set -> value, as collected at one instant.
Snapshot = dict[str, dict[Labels, float]]

RECEIVED: Final = "carecall_ingest_messages_received_total"
REJECTED: Final = "carecall_ingest_messages_rejected_total"
COMMIT: Final = "carecall_ingest_commit_seconds"
LAG: Final = "carecall_ingest_lag_seconds"
DURABLE: Final = "carecall_ingest_receive_to_durable_seconds"
# Gauges shown as they are (queue depths and health flags).
GAUGES: Final = {
    "pending_acks": "carecall_ingest_pending_messages",
    "spool_bytes": "carecall_ingest_spool_bytes",
    "db_up": "carecall_ingest_db_up",
    "mqtt_connected": "carecall_ingest_mqtt_connected",
    "reading_paused": "carecall_ingest_reading_paused",
    "broker_dropped_per_min": "carecall_broker_dropped_per_min",
    "broker_drop_alarm": "carecall_broker_drop_alarm",
    "alert_pending": "carecall_alert_pending_incidents",
    "consoles": "carecall_alert_ws_sessions",
}


def snapshot(registry: CollectorRegistry) -> Snapshot:
    out: Snapshot = collections.defaultdict(dict)
    for family in registry.collect():
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = float(s.value)
    return dict(out)


def _one(snap: Snapshot, name: str) -> float | None:
    values = snap.get(name)
    return None if not values else sum(values.values())


def rates(prev: Snapshot, cur: Snapshot, name: str, label: str, dt_s: float) -> dict[str, float]:
    """Per-second increase of counter ``name`` split by ``label`` (a reset counts from 0)."""
    out: dict[str, float] = {}
    if dt_s <= 0:
        return out
    before = prev.get(name, {})
    for labels, value in cur.get(name, {}).items():
        key = dict(labels).get(label, "")
        old = before.get(labels, 0.0)
        delta = value - old if value >= old else value
        out[key] = out.get(key, 0.0) + delta / dt_s
    return out


def _buckets(snap: Snapshot, name: str) -> dict[float, float]:
    """Cumulative count per upper bound, summed over every other label."""
    out: dict[float, float] = {}
    for labels, value in snap.get(f"{name}_bucket", {}).items():
        le = float(dict(labels)["le"])
        out[le] = out.get(le, 0.0) + value
    return out


def histogram_quantile(
    q: float, prev: Mapping[float, float], cur: Mapping[float, float]
) -> float | None:
    """The ``q`` quantile of the observations made between two cumulative bucket readings,
    interpolated linearly inside its bucket as Prometheus does; None when nothing was seen."""
    bounds = sorted(cur)
    deltas = [max(0.0, cur[b] - prev.get(b, 0.0)) for b in bounds]
    if not bounds or deltas[-1] <= 0:
        return None
    target = q * deltas[-1]
    lower, below = 0.0, 0.0  # the previous bucket's bound and cumulative count
    for bound, cum in zip(bounds, deltas, strict=True):
        if cum >= target:
            if math.isinf(bound):
                return lower  # above the last finite bucket: the best we can say
            width = cum - below
            frac = 1.0 if width <= 0 else (target - below) / width
            return lower + (bound - lower) * frac
        lower, below = bound, cum
    return None


@dataclass(frozen=True, slots=True)
class Point:
    """What happened between two snapshots, stamped with the later one's time."""

    t: float
    received_per_s: dict[str, float]
    rejected_per_s: dict[str, float]
    commit_p50_s: float | None
    commit_p95_s: float | None
    lag_p95_s: float | None
    durable_p95_s: float | None
    gauges: dict[str, float | None]

    def as_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "received_per_s": self.received_per_s,
            "rejected_per_s": self.rejected_per_s,
            "commit_p50_s": self.commit_p50_s,
            "commit_p95_s": self.commit_p95_s,
            "lag_p95_s": self.lag_p95_s,
            "durable_p95_s": self.durable_p95_s,
            **self.gauges,
        }


def point(prev: Snapshot, cur: Snapshot, t: float, dt_s: float) -> Point:
    def q(name: str, quantile: float) -> float | None:
        return histogram_quantile(quantile, _buckets(prev, name), _buckets(cur, name))

    return Point(
        t=t,
        received_per_s=rates(prev, cur, RECEIVED, "kind", dt_s),
        rejected_per_s=rates(prev, cur, REJECTED, "reason", dt_s),
        commit_p50_s=q(COMMIT, 0.5),
        commit_p95_s=q(COMMIT, 0.95),
        lag_p95_s=q(LAG, 0.95),
        durable_p95_s=q(DURABLE, 0.95),
        gauges={key: _one(cur, name) for key, name in GAUGES.items()},
    )


def totals(snap: Snapshot, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in snap.get(name, {}).items():
        key = dict(labels).get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


class OpsSampler:
    """Snapshots a registry every ``interval_s`` and keeps the last ``keep`` points."""

    def __init__(
        self, registry: CollectorRegistry, *, interval_s: float = 2.0, keep: int = 150
    ) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.points: collections.deque[Point] = collections.deque(maxlen=keep)
        self._last: tuple[float, Snapshot] | None = None

    def sample(self, now_s: float | None = None) -> Point | None:
        """Take one snapshot; returns the new point (None for the very first snapshot)."""
        now_s = time.time() if now_s is None else now_s
        cur = snapshot(self.registry)
        last, self._last = self._last, (now_s, cur)
        if last is None:
            return None
        p = point(last[1], cur, now_s, now_s - last[0])
        self.points.append(p)
        return p

    def latest(self) -> Snapshot:
        return self._last[1] if self._last is not None else snapshot(self.registry)

    def history(self) -> Iterable[Point]:
        return tuple(self.points)

    async def sample_loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
