"""Prometheus figures of the alert side, registered on the server's registry.

The hop histogram is observed from the incident's trace stamps (not from separate timers), so
the metrics and the trace shown on an incident can never disagree.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_HOP_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    180.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

# The trace hops, in order; each is observed as "this stamp minus the previous one", except
# acknowledge/dispatch/resolve which are measured from ``raised`` (what the KPIs use).
HOPS = ("broker", "handover", "detect", "raise", "push", "acknowledge", "dispatch", "resolve")


def district_of(area_path: str | None) -> str:
    """The label for a path: its first two levels (city.district), or 'unknown'."""
    if not area_path:
        return "unknown"
    return ".".join(area_path.split(".")[:2])


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.hop_seconds = Histogram(
            "carecall_alert_hop_seconds",
            "Latency of one hop of an incident's trace",
            ["hop", "severity", "district"],
            buckets=_HOP_BUCKETS_S,
            registry=r,
        )
        self.incidents = Counter(
            "carecall_alert_incidents",
            "Detections by what the incident layer did with them",
            ["outcome", "kind"],
            registry=r,
        )
        self.suppressed = Counter(
            "carecall_alert_suppressed",
            "Detections recorded as suppressed (maintenance, device offline)",
            ["reason"],
            registry=r,
        )
        self.rule_input_dropped = Counter(
            "carecall_alert_rule_input_dropped",
            "Readings the rule runner's queue could not take (they are still stored)",
            registry=r,
        )
        self.channel_sent = Counter(
            "carecall_alert_channel_sent", "Notices delivered", ["channel"], registry=r
        )
        self.channel_failed = Counter(
            "carecall_alert_channel_failed",
            "Notices a channel gave up on (timeouts, errors, full queue)",
            ["channel", "reason"],
            registry=r,
        )
        self.pending = Gauge(
            "carecall_alert_pending_incidents",
            "Urgent detections waiting for the database (written when it is back)",
            registry=r,
        )
        self.escalations = Counter(
            "carecall_alert_escalations", "Timer steps taken", ["step"], registry=r
        )
        self.ws_sessions = Gauge(
            "carecall_alert_ws_sessions", "Connected dispatcher consoles", registry=r
        )

    def hop(self, hop: str, seconds: float, severity: str, area_path: str | None) -> None:
        self.hop_seconds.labels(hop, severity, district_of(area_path)).observe(max(0.0, seconds))
