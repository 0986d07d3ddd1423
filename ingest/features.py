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
        )
        async with service.run(
            pool=rt.pool, add_consumer=rt.add_consumer, spawn=rt.spawn, config=config
        ):
            # Features after this one (alerts) subscribe to presence changes.
            rt.services["registry"] = service
            rt.services["presence"] = service.presence
            yield

    return Feature(name="registry", routers=service.routers, run=run, tags=["registry"])


FEATURES: list[Feature] = [registry_feature()]
