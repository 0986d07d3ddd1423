"""The registry as a service of the server: its routers and its background work.

``ingest.features`` builds one :class:`RegistryService` and hands it what it needs from the
runtime (the API pool, a way to receive readings and to spawn loops, settings values); the
registry itself never imports ``ingest``. While :meth:`RegistryService.run` is entered, the
service holds the presence tracker (other features subscribe to it through
``service.presence.subscribe()``), the login throttle (its state is in the database) and the
copy of the staff table every authenticated request is checked against (``service.staff``,
kept current by ``devices.staff.watch_loop``; ``ingest.http`` hands it to the auth config).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
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
from devices.staff import StaffCache

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
    login_max_keys: int = 100_000
    login_prune_interval_s: float = 60.0
    # The staff copy re-reads the whole table this often besides following NOTIFY.
    staff_refresh_s: float = 30.0
    # Identical list reads (devices, residents) by one user within this window: one audit row.
    audit_coalesce_s: float = 600.0


class RegistryService:
    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._presence: PresenceTracker | None = None
        self._throttle: LoginThrottle | None = None
        self._staff: StaffCache | None = None
        self._config = RegistryConfig()

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

    @property
    def staff(self) -> StaffCache:
        if self._staff is None:
            raise RuntimeError("registry service is not running")
        return self._staff

    @property
    def audit_coalesce_s(self) -> float:
        return self._config.audit_coalesce_s

    def routers(self) -> list[APIRouter]:
        return build_routers(self)

    @contextlib.asynccontextmanager
    async def run(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        add_consumer: Callable[[Callable[[Reading], None]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
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
        throttle = LoginThrottle(
            free_failures=config.login_free_failures,
            window_s=config.login_failure_window_s,
            base_s=config.login_lockout_base_s,
            max_s=config.login_lockout_max_s,
            max_keys=config.login_max_keys,
        )
        self._throttle = throttle
        staff = StaffCache(refresh_s=config.staff_refresh_s)
        staff.bind(pool)
        self._staff = staff
        self._config = config
        self._pool = pool
        spawn(staff.watch_loop(_listener(pool)), "devices.staff.watch_loop")
        spawn(
            throttle.prune_loop(pool.connection, interval_s=config.login_prune_interval_s),
            "devices.login.prune_loop",
        )
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
            staff.bind(None)
            self._pool = None


def _listener(
    pool: AsyncConnectionPool[Any],
) -> Callable[[], Coroutine[Any, Any, psycopg.AsyncConnection[Any]]]:
    """Open a connection of its own (LISTEN holds it for good) to the pool's database."""

    async def connect() -> psycopg.AsyncConnection[Any]:
        conninfo = pool.conninfo
        if callable(conninfo):
            resolved = conninfo()
            conninfo = await resolved if inspect.isawaitable(resolved) else resolved
        kwargs = pool.kwargs() if callable(pool.kwargs) else pool.kwargs
        if inspect.isawaitable(kwargs):
            kwargs = await kwargs
        options = {**(kwargs or {}), "autocommit": True}
        options.setdefault("connect_timeout", 5)
        return await psycopg.AsyncConnection.connect(conninfo, **options)

    return connect
