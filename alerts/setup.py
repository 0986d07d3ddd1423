"""Builds the alert engine and its channels from plain values (the server's settings are read
by its composition root, ``ingest.features``, not here)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.channels import Channel, GatewayChannel, Notifier, WebhookChannel, WebSocketHub
from alerts.clock import Clock, SystemClock
from alerts.engine import AlertEngine, EngineConfig, PresenceSource
from alerts.live import LiveLane
from alerts.metrics import AlertMetrics
from alerts.rules.config import DEFAULT_RULES_PATH, load_rules


@contextlib.asynccontextmanager
async def alert_engine(
    *,
    pool: AsyncConnectionPool[Any],
    conninfo: str,
    registry: CollectorRegistry,
    config: EngineConfig,
    live_lane: LiveLane | None = None,
    presence: PresenceSource | None = None,
    rules_path: Path | None = None,
    clock: Clock | None = None,
    channel_timeout_s: float = 30.0,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    gateway_url: str | None = None,
    gateway_api_key: str | None = None,
    public_url: str | None = None,
    extra_channels: tuple[Channel, ...] = (),
) -> AsyncIterator[AlertEngine]:
    """An engine with the hub and whichever HTTP channels are configured (not yet running)."""
    metrics = AlertMetrics(registry)
    hub = WebSocketHub(metrics=metrics)
    channels: list[Channel] = [hub]
    closers: list[WebhookChannel | GatewayChannel] = []
    if webhook_url:
        if not webhook_secret:
            raise ValueError("a webhook needs a signing secret (CARECALL_ALERTS_WEBHOOK_SECRET)")
        closers.append(
            WebhookChannel(url=webhook_url, secret=webhook_secret, timeout_s=channel_timeout_s)
        )
    if gateway_url:
        callback = f"{public_url.rstrip('/')}/api/v1/gateway/calls" if public_url else None
        closers.append(
            GatewayChannel(
                base_url=gateway_url,
                api_key=gateway_api_key or "",
                callback_url=callback,
                timeout_s=channel_timeout_s,
            )
        )
    channels += closers
    channels += extra_channels
    engine = AlertEngine(
        pool=pool,
        conninfo=conninfo,
        rules=load_rules(rules_path or DEFAULT_RULES_PATH),
        clock=clock or SystemClock(),
        metrics=metrics,
        notifier=Notifier(channels, metrics=metrics),
        hub=hub,
        config=config,
        live_lane=live_lane,
        presence=presence,
    )
    try:
        yield engine
    finally:
        for ch in closers:
            await ch.aclose()
