from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.clock import ManualClock
from alerts.engine import AlertEngine, EngineConfig
from alerts.setup import alert_engine
from tests.alerts.world import World, build_world


@pytest.fixture
async def world(db: psycopg.AsyncConnection[Any], uid: str) -> World:
    return await build_world(db, uid)


@pytest.fixture
async def pool(migrated_db: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    p: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_db, min_size=1, max_size=6, open=False, kwargs={"autocommit": True}
    )
    await p.open()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def engine(
    pool: AsyncConnectionPool[Any], migrated_db: str, clock: ManualClock
) -> AsyncIterator[AlertEngine]:
    """An engine that is built but not running: tests drive its parts directly."""
    async with alert_engine(
        pool=pool,
        conninfo=migrated_db,
        registry=CollectorRegistry(),
        config=EngineConfig(cancel_window_s=60.0),
        clock=clock,
    ) as e:
        yield e
