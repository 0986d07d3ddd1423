"""Prometheus metrics of the ingest pipeline, on a registry owned by the composition root."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (
    0.001,
    0.002,
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
    300.0,
)


class IngestMetrics:
    """Every figure the bridge exports; one instance per registry (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "carecall_ingest_messages_received",
            "Messages taken off the broker",
            ["kind"],
            registry=r,
        )
        self.stored = Counter(
            "carecall_ingest_messages_stored",
            "Readings made durable (database or spool)",
            ["kind"],
            registry=r,
        )
        self.rejected = Counter(
            "carecall_ingest_messages_rejected",
            "Messages refused and dead-lettered",
            ["reason"],
            registry=r,
        )
        self.dead_letters_suppressed = Counter(
            "carecall_ingest_dead_letters_suppressed",
            "Refused messages counted but not kept: a key's dead-letter budget was spent",
            registry=r,
        )
        self.duplicates = Counter(
            "carecall_ingest_duplicates",
            "Messages seen again (redelivery or replay of the same reading); stored once",
            registry=r,
        )
        self.batch_rows = Histogram(
            "carecall_ingest_batch_rows",
            "Messages per durable batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "carecall_ingest_commit_seconds",
            "Time to write and commit one batch",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "carecall_ingest_lag_seconds",
            "Receive time minus device time (sampled)",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.receive_to_durable_seconds = Histogram(
            "carecall_ingest_receive_to_durable_seconds",
            "From broker hand-over to durable (sampled)",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.pending = Gauge(
            "carecall_ingest_pending_messages", "Messages received and not yet acked", registry=r
        )
        self.spool_bytes = Gauge(
            "carecall_ingest_spool_bytes", "Bytes waiting in the local spool", registry=r
        )
        self.spooled = Counter(
            "carecall_ingest_spooled_batches", "Batches made durable in the spool", registry=r
        )
        self.replayed = Counter(
            "carecall_ingest_replayed_batches",
            "Spooled batches written to the database",
            registry=r,
        )
        self.db_up = Gauge(
            "carecall_ingest_db_up", "1 when the database accepts writes", registry=r
        )
        self.mqtt_connected = Gauge(
            "carecall_ingest_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.paused = Gauge(
            "carecall_ingest_reading_paused",
            "1 while the socket is paused (backpressure)",
            registry=r,
        )
        self.live_lane = Counter(
            "carecall_ingest_live_lane",
            "Urgent readings handed to alerts before storage",
            ["kind"],
            registry=r,
        )
        self.broker_dropped = Gauge(
            "carecall_broker_dropped_messages",
            "Broker's $SYS/broker/publish/messages/dropped",
            registry=r,
        )
        self.broker_dropped_1min = Gauge(
            "carecall_broker_dropped_per_min",
            "Broker's $SYS/broker/load/publish/dropped/1min",
            registry=r,
        )
        self.broker_drop_alarm = Gauge(
            "carecall_broker_drop_alarm",
            "1 when the broker dropped messages in the last minute",
            registry=r,
        )
