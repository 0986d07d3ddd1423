"""The registry as a service of the server: its routers and its background work.

``ingest.features`` builds one :class:`RegistryService` and hands it what it needs from the
runtime (the API pool, a way to receive readings and to spawn loops, settings values); the
registry itself never imports ``ingest``. While :meth:`RegistryService.run` is entered, the
service holds the presence tracker (other features subscribe to it through
``service.presence.subscribe()``) and the login throttle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import APIRouter
from psycopg_pool import AsyncConnectionPool

from devices.api import build_routers
from devices.login import LoginThrottle
from devices.presence import PresenceTracker
from devices.readings import Reading

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    heartbeat_s: float = 60.0
    missed_heartbeats: int = 3
    presence_check_interval_s: float = 5.0
    battery_low_pct: float = 20.0
    battery_hysteresis_pct: float = 5.0
    login_free_failures: int = 5
    login_failure_window_s: float = 15 * 60
    login_lockout_base_s: float = 2.0
    login_lockout_max_s: float = 15 * 60


class RegistryService:
    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._presence: PresenceTracker | None = None
        self._throttle: LoginThrottle | None = None

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("registry service is not running")
        return self._pool

    @property
    def presence(self) -> PresenceTracker:
        if self._presence is None:
            raise RuntimeError("registry service is not running")
        return self._presence

    @property
    def throttle(self) -> LoginThrottle:
        if self._throttle is None:
            raise RuntimeError("registry service is not running")
        return self._throttle

    def routers(self) -> list[APIRouter]:
        return build_routers(self)

    @contextlib.asynccontextmanager
    async def run(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        add_consumer: Callable[[Callable[[Reading], None]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        config: RegistryConfig,
        load_timeout_s: float = 10.0,
        mirror_only: bool = False,
    ) -> AsyncIterator[None]:
        """Rebuild presence from the database, start feeding and checking it, serve.

        ``mirror_only``: this process sees no readings (the server's front when the bridge runs
        in a worker process, which keeps the live tracker): presence is re-read from the
        database every few heartbeat checks instead, for display only, and never judged here.
        """
        presence = PresenceTracker(
            heartbeat_s=config.heartbeat_s,
            missed_heartbeats=config.missed_heartbeats,
            battery_low_pct=config.battery_low_pct,
            battery_hysteresis_pct=config.battery_hysteresis_pct,
        )
        try:
            async with asyncio.timeout(load_timeout_s), pool.connection() as conn:
                n = await presence.load(conn)
            log.info("presence: rebuilt %d devices from the database", n)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            # Start anyway: devices reappear as they are heard from.
            log.warning("presence: cannot rebuild from the database (%s)", exc)
        self._presence = presence
        self._throttle = LoginThrottle(
            free_failures=config.login_free_failures,
            window_s=config.login_failure_window_s,
            base_s=config.login_lockout_base_s,
            max_s=config.login_lockout_max_s,
        )
        self._pool = pool
        if mirror_only:
            spawn(
                presence.mirror_loop(
                    pool.connection, interval_s=3 * config.presence_check_interval_s
                ),
                "devices.presence.mirror_loop",
            )
        else:
            add_consumer(presence.observe)
            spawn(
                presence.check_loop(pool.connection, interval_s=config.presence_check_interval_s),
                "devices.presence.check_loop",
            )
        try:
            yield
        finally:
            self._pool = None
