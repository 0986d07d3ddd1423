"""A small service network per test module, and the registry API served in-process.

World: city C with districts A and B; each district has one street and one community, one
resident with a contact and a watch, and one staff user per role scoped to the district; an
admin serves the whole city. Ids carry a random suffix: the session database is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from devices.auth import AuthConfig, Principal, hash_password, issue_token
from devices.feature import RegistryConfig, RegistryService

SECRET = "test-secret-for-registry-0123456789"
PASSWORD = "correct horse battery"
ROLES = ("dispatcher", "supervisor", "operator", "admin")


@dataclass
class District:
    key: str
    district_id: str
    street_id: str
    community_id: str
    path: str
    resident_id: int = 0
    contact_id: int = 0
    device_id: str = ""
    staff: dict[str, Principal] = field(default_factory=dict)


@dataclass
class World:
    uid: str
    city_id: str
    admin: Principal
    a: District
    b: District


def _make_world(conninfo: str) -> World:
    uid = uuid.uuid4().hex[:8]
    city = f"c{uid}"
    hashed = hash_password(PASSWORD)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO areas (area_id, path, level, name) VALUES (%s, %s::ltree, 'city', %s)",
            (city, city, "Test city"),
        )

        def staff(username: str, role: str, scope: str) -> Principal:
            row = conn.execute(
                "INSERT INTO staff_users (username, full_name, role, scope_path, password_hash)"
                " VALUES (%s, %s, %s, %s::ltree, %s) RETURNING user_id",
                (username, username.title(), role, scope, hashed),
            ).fetchone()
            assert row is not None
            return Principal(int(row[0]), username, role, scope)

        districts = []
        for key in ("a", "b"):
            d_id, s_id, c_id = f"d{key}{uid}", f"s{key}{uid}", f"k{key}{uid}"
            d_path = f"{city}.{d_id}"
            conn.execute(
                "INSERT INTO areas (area_id, path, level, name) VALUES"
                " (%s, %s::ltree, 'district', %s), (%s, %s::ltree, 'street', %s),"
                " (%s, %s::ltree, 'community', %s)",
                (
                    d_id, d_path, f"District {key}",
                    s_id, f"{d_path}.{s_id}", f"Street {key}",
                    c_id, f"{d_path}.{s_id}.{c_id}", f"Community {key}",
                ),
            )  # fmt: skip
            d = District(key, d_id, s_id, c_id, d_path)
            row = conn.execute(
                "INSERT INTO residents (full_name, birth_year, community_id, medical_notes)"
                " VALUES (%s, 1940, %s, 'hypertension') RETURNING resident_id",
                (f"Resident {key.upper()} {uid}", c_id),
            ).fetchone()
            assert row is not None
            d.resident_id = int(row[0])
            row = conn.execute(
                "INSERT INTO contacts (resident_id, priority, role, name, phone)"
                " VALUES (%s, 1, 'family', 'Daughter', '13800000000') RETURNING contact_id",
                (d.resident_id,),
            ).fetchone()
            assert row is not None
            d.contact_id = int(row[0])
            d.device_id = f"w{key}-{uid}"
            conn.execute(
                "INSERT INTO devices (device_id, device_type, resident_id, position)"
                " VALUES (%s, 'watch', %s, 'wrist')",
                (d.device_id, d.resident_id),
            )
            for role in ROLES:
                d.staff[role] = staff(f"{role}-{key}-{uid}", role, d_path)
            districts.append(d)
        admin = staff(f"admin-{uid}", "admin", city)
    return World(uid, city, admin, districts[0], districts[1])


@pytest.fixture(scope="module")
def world(migrated_db: str) -> World:
    return _make_world(migrated_db)


@pytest.fixture
def auth_config() -> AuthConfig:
    return AuthConfig(secret=SECRET, token_ttl_s=300)


def bearer(principal: Principal, config: AuthConfig, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(principal, config, **kw)}"}


@contextlib.asynccontextmanager
async def serve_registry(
    conninfo: str,
    config: RegistryConfig | None = None,
    auth: AuthConfig | None = None,
    *,
    client_ip: str = "10.0.0.7",
) -> AsyncIterator[tuple[httpx.AsyncClient, RegistryService]]:
    """The registry alone (no bridge): its routers on a bare app, its service running, tokens
    checked against its staff copy as in the server. Requests come from ``client_ip``; the
    login throttle is shared through the session database, so a test that trips it uses an
    address of its own."""
    service = RegistryService()
    app = FastAPI()
    for router in service.routers():
        app.include_router(router)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        conninfo, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    consumers: list[Any] = []
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Any, name: str) -> None:
        tasks.append(asyncio.create_task(coro, name=name))

    try:
        async with service.run(
            pool=pool, add_consumer=consumers.append, spawn=spawn, config=config or RegistryConfig()
        ):
            app.state.auth = dataclasses.replace(
                auth or AuthConfig(secret=SECRET, token_ttl_s=300), staff=service.staff
            )
            transport = httpx.ASGITransport(app=app, client=(client_ip, 5555))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                yield http, service
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()


_HASH: list[str] = []


def new_staff(conn: psycopg.Connection[Any], role: str, scope: str) -> Principal:
    """A staff user of the calling test's own, password PASSWORD (the module's world is shared
    by other tests: retiring or moving one of its users would disturb them)."""
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    username = f"{role}-{uuid.uuid4().hex[:10]}"
    row = conn.execute(
        "INSERT INTO staff_users (username, full_name, role, scope_path, password_hash)"
        " VALUES (%s, %s, %s, %s::ltree, %s) RETURNING user_id",
        (username, username, role, scope, _HASH[0]),
    ).fetchone()
    assert row is not None
    return Principal(int(row[0]), username, role, scope)


def unique_ip() -> str:
    """An address no other test logs in from (10.x.y.z, random)."""
    b = uuid.uuid4().bytes
    return f"10.{b[0]}.{b[1]}.{max(b[2], 1)}"


@pytest.fixture
async def api(migrated_db: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_registry(migrated_db) as (http, _):
        yield http


@pytest.fixture
def sync_db(migrated_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield conn
