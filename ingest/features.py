"""The features the server is composed of: their HTTP routers and their background services.

Each feature package stays ignorant of ``ingest``; the small adapters here hand it what it
needs from the :class:`~ingest.service.Runtime` (pool, settings values, live lane, consumers).
``carecall serve`` runs every feature in :data:`FEATURES`; tests pick the ones they need.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from fastapi import APIRouter
from pydantic import SecretStr

from ingest.service import Runtime


@dataclass(frozen=True)
class Feature:
    name: str
    routers: Callable[[], list[APIRouter]] = list
    # Background services: entered after the runtime is up, left before it closes.
    run: Callable[[Runtime], AbstractAsyncContextManager[None]] | None = None
    tags: list[str] = field(default_factory=list)


def registry_feature() -> Feature:
    """Areas, residents, devices, staff, auth, audit and presence (devices/)."""
    from devices.feature import RegistryConfig, RegistryService  # noqa: PLC0415

    service = RegistryService()

    @contextlib.asynccontextmanager
    async def run(rt: Runtime) -> AsyncIterator[None]:
        s = rt.settings
        config = RegistryConfig(
            heartbeat_s=s.presence_heartbeat_s,
            missed_heartbeats=s.presence_missed_heartbeats,
            presence_check_interval_s=s.presence_check_interval_s,
            battery_low_pct=s.battery_low_pct,
            battery_hysteresis_pct=s.battery_hysteresis_pct,
            login_free_failures=s.login_free_failures,
            login_failure_window_s=s.login_failure_window_s,
            login_lockout_base_s=s.login_lockout_base_s,
            login_lockout_max_s=s.login_lockout_max_s,
            login_max_keys=s.login_throttle_max_keys,
            staff_refresh_s=s.staff_refresh_s,
            audit_coalesce_s=s.audit_coalesce_s,
        )
        async with service.run(
            pool=rt.pool,
            add_consumer=rt.add_consumer,
            spawn=rt.spawn,
            config=config,
            mirror_only=rt.role == "front",  # the worker keeps the live tracker
        ):
            # Features after this one (alerts) subscribe to presence changes.
            rt.services["registry"] = service
            rt.services["presence"] = service.presence
            yield

    return Feature(name="registry", routers=service.routers, run=run, tags=["registry"])


FEATURES: list[Feature] = [registry_feature()]


@contextlib.asynccontextmanager
async def _run_alerts(rt: Runtime) -> AsyncIterator[None]:
    """Alerts: the rule runner on the ingest stream, incidents, escalation, channels."""
    from alerts.engine import EngineConfig  # noqa: PLC0415 - keep start-up imports lazy
    from alerts.setup import alert_engine  # noqa: PLC0415

    s = rt.settings

    def secret(v: SecretStr | None) -> str | None:
        return None if v is None else v.get_secret_value()

    config = EngineConfig(
        cancel_window_s=s.alerts_cancel_window_s,
        queue_size=s.alerts_queue_size,
        tick_interval_s=s.alerts_tick_interval_s,
        escalation_interval_s=s.alerts_escalation_interval_s,
        db_timeout_s=s.db_connect_timeout_s,
        gateway_callback_secret=secret(s.alerts_gateway_callback_secret),
        timezone=s.alerts_timezone,
        audit_coalesce_s=s.audit_coalesce_s,
    )
    # Split by role (docs/ingest.md, "Two processes"): the worker runs the rules on the
    # reading stream and writes what they detect; the front shows urgent readings from the
    # urgent lane, pushes incident events to consoles, stamps deliveries and escalates. Both
    # write incidents through the same database upsert, so either may see a press first.
    # (The live and presence loops follow from the lane and tracker each role passes.)
    without = {
        "front": ("rules_loop", "tick_loop"),
        "worker": ("delivered_loop", "escalation_loop"),
    }.get(rt.role, ())
    async with alert_engine(
        pool=rt.pool,
        conninfo=rt.conninfo,
        registry=rt.metrics.registry,
        config=config,
        live_lane=None if rt.role == "worker" else rt.live_lane,
        presence=None if rt.role == "front" else rt.services.get("presence"),
        rules_path=s.alerts_rules_path,
        channel_timeout_s=s.alerts_channel_timeout_s,
        webhook_url=s.alerts_webhook_url,
        webhook_secret=secret(s.alerts_webhook_secret),
        gateway_url=s.alerts_gateway_url,
        gateway_api_key=secret(s.alerts_gateway_api_key),
        public_url=s.alerts_public_url,
    ) as engine:
        rt.services["alerts"] = engine
        if rt.role != "front":
            rt.add_consumer(engine.consume)
        # With a worker, the urgent lane is the front's only sight of an SOS before storage.
        if rt.role == "front" or (rt.role == "all" and s.alerts_urgent_lane):
            rt.spawn(_urgent_lane(rt), "alerts.urgent.urgent_loop")
        async with engine.running(
            on_failure=lambda _exc: rt.failed.set(), without=without, reconcile=rt.role != "worker"
        ):
            yield


async def _urgent_lane(rt: Runtime) -> None:
    from alerts.live import Urgent  # noqa: PLC0415
    from alerts.urgent import urgent_loop  # noqa: PLC0415
    from devices.readings import HomeEvent, SensorType, SosPress  # noqa: PLC0415
    from ingest.decode import Limits, decode  # noqa: PLC0415

    s = rt.settings
    limits = Limits(
        max_payload_bytes=s.max_payload_bytes,
        max_future_skew_s=s.max_future_skew_s,
        max_age_s=s.max_age_s,
    )

    def decode_urgent(topic: str, payload: bytes, received_ts: float) -> Urgent | None:
        r = decode(topic, payload, received_ts, root=s.topic_root, limits=limits)
        if not (
            isinstance(r, SosPress)
            or (
                isinstance(r, HomeEvent)
                and r.sensor in (SensorType.SMOKE, SensorType.GAS)
                and r.state == "alarm"
            )
        ):
            return None
        # The bridge's own checks, on the same memory: an unknown device or a replayed
        # sequence number is refused here too, and whichever lane sees a press first is the
        # one that hands it over (the other sees a duplicate).
        if rt.validator.check(r, topic, received_ts) is not False:
            return None
        return r

    await urgent_loop(
        host=rt.mqtt_host,
        port=rt.mqtt_port,
        topic_root=s.topic_root,
        client_id=f"{s.mqtt_client_id}-urgent",
        decode=decode_urgent,
        offer=rt.live_lane.offer,
        username=s.mqtt_username,
        password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
        mqtt_v5="mqtt" not in rt.embedded,
    )


def _alerts_routers() -> list[APIRouter]:
    from alerts.api import routers  # noqa: PLC0415

    return routers()


ALERTS = Feature(name="alerts", routers=_alerts_routers, run=_run_alerts, tags=["alerts"])
FEATURES.append(ALERTS)


def _web_feature() -> Feature:
    """The dispatcher console and the operator dashboard (ingest/web/, docs/console.md)."""
    from ingest.web import web_feature  # noqa: PLC0415 - it imports Feature from here

    return web_feature()


FEATURES.append(_web_feature())

# What the ingest worker runs of these (docs/ingest.md, "Two processes"): the features that
# consume the reading stream. The front runs them all, each in its "front" role.
WORKER_FEATURES = frozenset({"registry", "alerts"})
