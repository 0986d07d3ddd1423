"""The dashboard's figures: rates and percentiles from two snapshots of a Prometheus registry."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from ingest.metrics import IngestMetrics
from ingest.web.ops import OpsSampler, histogram_quantile, rates

INF = math.inf


@pytest.mark.parametrize(
    ("q", "prev", "cur", "expected"),
    [
        # nothing observed in the interval
        (0.5, {}, {0.1: 0, 1.0: 0, INF: 0}, None),
        (0.5, {0.1: 5, 1.0: 5, INF: 5}, {0.1: 5, 1.0: 5, INF: 5}, None),
        # all in the first bucket: interpolated from 0
        (0.5, {}, {0.1: 10, 1.0: 10, INF: 10}, 0.05),
        # half below 0.1, half in (0.1, 1.0]: p50 at the edge, p95 inside the second bucket
        (0.5, {}, {0.1: 5, 1.0: 10, INF: 10}, 0.1),
        (0.95, {}, {0.1: 5, 1.0: 10, INF: 10}, 0.1 + 0.9 * 0.9),
        # only what happened since the previous snapshot counts
        (0.5, {0.1: 100, 1.0: 100, INF: 100}, {0.1: 100, 1.0: 110, INF: 110}, 0.55),
        # beyond the last finite bucket: the last finite bound is the best answer
        (0.99, {}, {0.1: 0, 1.0: 0, INF: 4}, 1.0),
    ],
)
def test_histogram_quantile(
    q: float, prev: dict[float, float], cur: dict[float, float], expected: float | None
) -> None:
    got = histogram_quantile(q, prev, cur)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_rates_split_by_label_and_survive_a_reset() -> None:
    name = "m_total"
    prev = {name: {(("kind", "vitals"),): 100.0, (("kind", "sos"),): 5.0}}
    cur = {name: {(("kind", "vitals"),): 160.0, (("kind", "sos"),): 2.0}}
    # sos went backwards (a restart): count from zero, never a negative rate
    assert rates(prev, cur, name, "kind", 2.0) == {"vitals": 30.0, "sos": 1.0}
    assert rates(prev, cur, name, "kind", 0.0) == {}


def test_sampler_turns_the_ingest_registry_into_points() -> None:
    m = IngestMetrics(CollectorRegistry())
    sampler = OpsSampler(m.registry, keep=3)
    assert sampler.sample(now_s=100.0) is None  # the first snapshot has nothing to compare
    m.received.labels("vitals").inc(40)
    m.rejected.labels("malformed").inc(2)
    for s in (0.004, 0.004, 0.004, 0.04):
        m.commit_seconds.observe(s)
    m.pending.set(7)
    m.spool_bytes.set(4096)
    p = sampler.sample(now_s=102.0)
    assert p is not None
    assert p.received_per_s == {"vitals": 20.0}
    assert p.rejected_per_s == {"malformed": 1.0}
    assert p.commit_p50_s is not None and 0.002 < p.commit_p50_s <= 0.005
    assert p.commit_p95_s is not None and 0.02 < p.commit_p95_s <= 0.05
    assert p.lag_p95_s is None  # nothing observed
    assert p.gauges["pending_acks"] == 7 and p.gauges["spool_bytes"] == 4096
    assert p.gauges["consoles"] is None  # the alerts metrics are not on this registry
    for t in (104.0, 106.0, 108.0):
        sampler.sample(now_s=t)
    assert [x.t for x in sampler.history()] == [104.0, 106.0, 108.0]  # bounded
