"""Judge detection quality: the ground-truth log against the incidents CareCall raised.

``score`` is pure (ground truth + incidents -> Report); ``fetch_incidents`` is the thin HTTP
layer over ``GET /api/v1/incidents`` (and ``/incidents/{id}`` for the trace stamps).

Matching: an incident matches an injected event when it is about one of the event's devices
and falls in the event's time window, on either clock: its ``event_at`` (device time) within
``[start_ts - before_s, end_ts + after_s]``, or its ``raised_at`` (wall) within
``[wall_start_s - before_s, wall_start_s + wall_after_s]``. Both are needed because some
incidents are stamped with device time (a fall's impact) and some with server time (a device
going offline).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from simulator.groundtruth import GroundTruthEvent

if TYPE_CHECKING:
    import httpx

# Trace stamps in hop order (alerts/migrations/0020_incidents.sql).
TRACE_STAMPS = ("event_at", "broker_at", "handed_at", "detected_at", "raised_at", "pushed_at")
# Incident kinds decided on the server's own clock, which a past-anchored run cannot judge:
# reported apart, not scored. None any more: the rule runner times inactivity, a door left
# open, bed exit and night wandering on each gateway's own clock (server time plus the offset
# of its device times, alerts/rules/home.py `HomeBank.device_now`), so they are scored like
# the rest. Scoring a server without that clock, pass its timer kinds to `score`.
SERVER_CLOCK_KINDS: frozenset[str] = frozenset()
ALL_STATES = ("raised", "delivered", "acknowledged", "dispatched", "resolved", "cancelled")


@dataclass(frozen=True, slots=True)
class Incident:
    """The fields of an incident the scorer uses, times as epoch seconds."""

    incident_id: int
    kind: str
    device_id: str
    state: str
    raised_s: float
    event_s: float | None = None
    trace_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Incident:
        trace = {k: _epoch(row[k]) for k in TRACE_STAMPS if row.get(k) is not None}
        return cls(
            incident_id=int(row["incident_id"]),
            kind=str(row["kind"]),
            device_id=str(row["device_id"]),
            state=str(row.get("state", "")),
            raised_s=_epoch(row["raised_at"]),
            event_s=trace.get("event_at"),
            trace_s=trace,
        )


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class Distribution:
    n: int
    p50: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls(0, math.nan, math.nan, math.nan)
        a = np.asarray(values, dtype=np.float64)
        return cls(len(a), float(np.percentile(a, 50)), float(np.percentile(a, 90)), float(a.max()))

    def text(self, unit: str = "s") -> str:
        if self.n == 0:
            return "-"
        return f"p50 {self.p50:.2f}{unit} p90 {self.p90:.2f}{unit} max {self.max:.2f}{unit}"


@dataclass(frozen=True, slots=True)
class KindScore:
    """Per injected event kind. Positives: sensitivity; negatives: specificity."""

    kind: str
    events: int
    positive: bool
    hits: int  # positives detected, or negatives that raised what they must not
    delay_s: Distribution

    @property
    def sensitivity(self) -> float | None:
        return self.hits / self.events if self.positive and self.events else None

    @property
    def specificity(self) -> float | None:
        return 1.0 - self.hits / self.events if not self.positive and self.events else None


@dataclass(frozen=True, slots=True)
class Report:
    kinds: dict[str, KindScore]
    incidents: int
    false_alarms: int
    resident_days: float
    hops: dict[str, Distribution]
    unmatched: tuple[Incident, ...] = ()
    # Not scored (SERVER_CLOCK_KINDS in a past-anchored run): event and incident counts.
    unjudged_events: dict[str, int] = field(default_factory=dict)
    unjudged_incidents: dict[str, int] = field(default_factory=dict)

    @property
    def false_alarms_per_resident_day(self) -> float:
        return self.false_alarms / self.resident_days if self.resident_days > 0 else math.nan

    def text(self) -> str:
        lines = ["kind               events  sensitivity  specificity  detection delay (wall)"]
        for k in sorted(self.kinds.values(), key=lambda k: (not k.positive, k.kind)):
            sens = "-" if k.sensitivity is None else f"{k.sensitivity:.1%}"
            spec = "-" if k.specificity is None else f"{k.specificity:.1%}"
            lines.append(f"{k.kind:<18} {k.events:>6}  {sens:>11}  {spec:>11}  {k.delay_s.text()}")
        lines.append(
            f"incidents {self.incidents}; false alarms {self.false_alarms}"
            f" = {self.false_alarms_per_resident_day:.3f} per resident-day"
            f" ({self.resident_days:g} resident-days)"
        )
        if self.unmatched:
            kinds = Counter(i.kind for i in self.unmatched)
            lines.append(
                "false alarms by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
            )
        if self.unjudged_events or self.unjudged_incidents:
            lines.append(
                "not judged (server-clock timer rules in a past-anchored run): events "
                + (", ".join(f"{k} {n}" for k, n in sorted(self.unjudged_events.items())) or "-")
                + "; incidents "
                + (", ".join(f"{k} {n}" for k, n in sorted(self.unjudged_incidents.items())) or "-")
            )
        if self.hops:
            lines.append("latency per hop (incidents carrying both stamps):")
            lines += [f"  {hop:<26} {d.text()}" for hop, d in self.hops.items()]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def dist(d: Distribution) -> dict[str, float | int | None]:
            return {
                "n": d.n,
                "p50_s": None if d.n == 0 else d.p50,
                "p90_s": None if d.n == 0 else d.p90,
                "max_s": None if d.n == 0 else d.max,
            }

        return {
            "kinds": {
                k.kind: {
                    "events": k.events,
                    "positive": k.positive,
                    "hits": k.hits,
                    "sensitivity": k.sensitivity,
                    "specificity": k.specificity,
                    "delay": dist(k.delay_s),
                }
                for k in self.kinds.values()
            },
            "incidents": self.incidents,
            "false_alarms": self.false_alarms,
            "resident_days": self.resident_days,
            "false_alarms_per_resident_day": self.false_alarms_per_resident_day,
            "hops": {h: dist(d) for h, d in self.hops.items()},
            "unjudged_events": self.unjudged_events,
            "unjudged_incidents": self.unjudged_incidents,
        }


def matches(
    e: GroundTruthEvent,
    i: Incident,
    *,
    before_s: float = 60.0,
    after_s: float = 3600.0,
    wall_after_s: float = 300.0,
) -> bool:
    if i.device_id not in e.devices:
        return False
    if i.event_s is not None and e.start_ts - before_s <= i.event_s <= e.end_ts + after_s:
        return True
    # The wall window is for incidents the server stamped itself (no device time, or an
    # event time within minutes of raising it): in a compressed run the whole simulated day
    # fits in a few wall minutes, so an incident carrying a device time is judged by it alone.
    server_stamped = i.event_s is None or 0 <= i.raised_s - i.event_s <= wall_after_s
    return (
        server_stamped and e.wall_start_s - before_s <= i.raised_s <= e.wall_start_s + wall_after_s
    )


def score(
    ground_truth: Iterable[GroundTruthEvent],
    incidents: Iterable[Incident],
    *,
    resident_days: float | None = None,
    before_s: float = 60.0,
    after_s: float = 3600.0,
    wall_after_s: float = 300.0,
    server_clock_kinds: frozenset[str] = SERVER_CLOCK_KINDS,
) -> Report:
    """Sensitivity per positive kind, specificity per negative kind, false alarms (incidents
    matching no positive event) per resident-day, detection delay, latency per hop."""
    events = list(ground_truth)
    incs = list(incidents)
    unjudged_events: Counter[str] = Counter()
    unjudged_incidents: Counter[str] = Counter()
    if any(e.anchor == "past" for e in events):
        judged = []
        for e in events:
            if e.expected and set(e.expected) <= server_clock_kinds:
                unjudged_events[e.kind] += 1
            else:
                judged.append(e)
        events = judged
        unjudged_incidents.update(i.kind for i in incs if i.kind in server_clock_kinds)
        incs = [i for i in incs if i.kind not in server_clock_kinds]
    window = {"before_s": before_s, "after_s": after_s, "wall_after_s": wall_after_s}
    explained: set[int] = set()
    by_kind: dict[str, list[GroundTruthEvent]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    kinds: dict[str, KindScore] = {}
    for kind, evs in by_kind.items():
        positive = bool(evs[0].expected)
        hits = 0
        delays: list[float] = []
        for e in evs:
            wanted = e.expected if positive else e.must_not_raise
            found = [i for i in incs if i.kind in wanted and matches(e, i, **window)]
            if positive:
                explained.update(i.incident_id for i in found)
            if found:
                hits += 1
                if positive:
                    delays.append(min(i.raised_s for i in found) - e.wall_start_s)
        kinds[kind] = KindScore(kind, len(evs), positive, hits, Distribution.of(delays))
    unmatched = tuple(i for i in incs if i.incident_id not in explained)
    if resident_days is None:
        residents = {e.resident for e in events}
        span_s = (max(e.end_ts for e in events) - min(e.start_ts for e in events)) if events else 0
        resident_days = len(residents) * max(span_s / 86400.0, 1.0 / 24)
    hops: dict[str, Distribution] = {}
    for a, b in itertools.pairwise(TRACE_STAMPS):
        vals = [i.trace_s[b] - i.trace_s[a] for i in incs if a in i.trace_s and b in i.trace_s]
        if vals:
            hops[f"{a.removesuffix('_at')} -> {b.removesuffix('_at')}"] = Distribution.of(vals)
    return Report(
        kinds,
        len(incs),
        len(unmatched),
        resident_days,
        hops,
        unmatched,
        dict(unjudged_events),
        dict(unjudged_incidents),
    )


def fetch_incidents(
    api_url: str,
    username: str,
    password: str,
    *,
    device_prefix: str | None = None,
    with_trace: bool = True,
    timeout_s: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> list[Incident]:
    """Every incident (open and closed) the user may see, optionally only the simulator's."""
    import httpx  # noqa: PLC0415 - a dev extra today: only --report and --provision need it

    with httpx.Client(base_url=api_url, timeout=timeout_s, transport=transport) as http:
        tok = http.post("/api/v1/auth/token", data={"username": username, "password": password})
        tok.raise_for_status()
        http.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
        resp = http.get("/api/v1/incidents", params={"state": list(ALL_STATES), "limit": 1000})
        resp.raise_for_status()
        rows: list[dict[str, Any]] = resp.json()
        if device_prefix is not None:
            rows = [r for r in rows if str(r.get("device_id", "")).startswith(device_prefix)]
        out = []
        for listed in rows:
            row = listed
            if with_trace:
                detail = http.get(f"/api/v1/incidents/{listed['incident_id']}")
                if detail.status_code == 200:
                    row = {**listed, **detail.json().get("incident", {})}
            out.append(Incident.from_json(row))
        return out
