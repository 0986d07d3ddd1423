from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from ingest.migrate import migrate
from tests.fixtures.services import Mosquitto, scratch_database


@pytest.fixture(scope="session")
def migrated_db() -> Iterator[str]:
    """One migrated database for the session; tests isolate themselves by device id prefix."""
    with scratch_database() as url:

        async def _go() -> None:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await migrate(conn)

        asyncio.run(_go())
        yield url


@pytest.fixture
def uid() -> str:
    """A short unique id for this test's devices, topics and client ids."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
async def db(migrated_db: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as conn:
        yield conn


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto with the shipped limits (deploy/mosquitto), for tests that kill or
    restart something and need the broker to keep a session's backlog."""
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.kill()
