"""Tokens follow the staff table: retirement, password, role and scope changes take effect at
once (through the process's staff copy, kept current by NOTIFY), and sessions are refreshed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from devices.auth import (
    AuthConfig,
    AuthError,
    Principal,
    authenticate,
    decode_token,
    issue_token,
)
from devices.feature import RegistryConfig
from tests.devices.conftest import (
    PASSWORD,
    SECRET,
    World,
    bearer,
    new_staff,
    serve_registry,
)

AUTH = AuthConfig(secret=SECRET, token_ttl_s=300)
ME = "/api/v1/auth/me"


async def within(
    check: Callable[[], Awaitable[bool]], timeout_s: float, step_s: float = 0.02
) -> float:
    """Seconds until ``check()`` holds; fails after ``timeout_s``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(step_s)
    return time.monotonic() - start


async def holds(value: bool) -> bool:
    return value


async def status_of(api: httpx.AsyncClient, path: str, headers: dict[str, str]) -> int:
    return (await api.get(path, headers=headers)).status_code


async def test_a_retired_users_token_is_refused_at_once(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    async with serve_registry(migrated_db) as (api, service):
        h = bearer(disp, AUTH)
        assert await status_of(api, ME, h) == 200
        await within(lambda: holds(service.staff.listening), 5)
        # Retired by plain SQL, as another process (or an admin's psql) would.
        sync_db.execute(
            "UPDATE staff_users SET retired_at = now() WHERE user_id = %s", (disp.user_id,)
        )

        async def refused() -> bool:
            return await status_of(api, ME, h) == 401

        took_s = await within(refused, 2.0)
        print(f"retired user refused {took_s * 1000:.0f} ms after the UPDATE")
        assert took_s < 1.0
        residents = await api.get(f"/api/v1/residents/{world.a.resident_id}", headers=h)
        assert residents.status_code == 401


async def test_role_and_scope_changes_take_effect_on_the_same_token(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    admin = bearer(world.admin, AUTH)
    async with serve_registry(migrated_db) as (api, _):
        h = bearer(disp, AUTH)
        a_res, b_res = (f"/api/v1/residents/{d.resident_id}" for d in (world.a, world.b))
        assert (await status_of(api, a_res, h), await status_of(api, b_res, h)) == (200, 404)

        r = await api.patch(
            f"/api/v1/staff/{disp.user_id}", headers=admin, json={"scope_path": world.b.path}
        )
        assert r.status_code == 200, r.text
        await within(lambda: _is(status_of(api, b_res, h), 200), 2.0)
        assert await status_of(api, a_res, h) == 404
        assert (await api.get(ME, headers=h)).json()["scope_path"] == world.b.path

        r = await api.patch(
            f"/api/v1/staff/{disp.user_id}", headers=admin, json={"role": "operator"}
        )
        assert r.status_code == 200, r.text
        # Operators read no resident data: the same token is now refused by role.
        await within(lambda: _is(status_of(api, b_res, h), 403), 2.0)
        assert await status_of(api, f"/api/v1/devices/{world.b.device_id}", h) == 200


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_password_change_revokes_every_token(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    sup = new_staff(sync_db, "supervisor", world.a.path)
    async with serve_registry(migrated_db) as (api, _):
        r = await api.post(
            "/api/v1/auth/token", data={"username": sup.username, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        old = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert await status_of(api, ME, old) == 200
        r = await api.patch(
            f"/api/v1/staff/{sup.user_id}",
            headers=bearer(world.admin, AUTH),
            json={"password": "another long password"},
        )
        assert r.status_code == 200
        await within(lambda: _is(status_of(api, ME, old), 401), 2.0)
        r = await api.post(
            "/api/v1/auth/token",
            data={"username": sup.username, "password": "another long password"},
        )
        assert r.status_code == 200
        assert decode_token(r.json()["access_token"], AUTH).token_version == 1
        assert (
            await status_of(api, ME, {"Authorization": f"Bearer {r.json()['access_token']}"}) == 200
        )


async def test_a_cached_user_needs_no_database_and_an_unknown_one_is_read_once(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    async with serve_registry(migrated_db) as (_, service):
        staff = service.staff
        await within(lambda: holds(staff.loaded), 5)
        config = AuthConfig(secret=SECRET, staff=staff)
        token = issue_token(disp, config)
        later = new_staff(sync_db, "dispatcher", world.b.path)
        # Take the database away: a user the copy holds is still admitted from memory.
        staff.bind(None)
        assert await authenticate(token, config) == disp
        # Once the table was read, a user the copy does not hold (and cannot read) is refused.
        await within(lambda: holds(staff.knows(later.user_id)), 2.0)  # heard by NOTIFY
        ghost = Principal(10**9, "ghost", "admin", "")
        with pytest.raises(AuthError):
            await authenticate(issue_token(ghost, config), config)
        assert await authenticate(issue_token(later, config), config) == later
        # With the database back, the unknown id is read once and found missing.
        staff.bind(service.pool)
        with pytest.raises(AuthError):
            await authenticate(issue_token(ghost, config), config)
        assert staff.knows(ghost.user_id) and staff.get(ghost.user_id) is None


async def test_a_missed_notification_is_caught_by_the_periodic_reread(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    config = RegistryConfig(staff_refresh_s=0.5)
    async with serve_registry(migrated_db, config) as (api, _):
        h = bearer(disp, AUTH)
        assert await status_of(api, ME, h) == 200
        with psycopg.connect(migrated_db, autocommit=True) as quiet:
            # Triggers off for this session: no NOTIFY (and no token version bump).
            quiet.execute("SET session_replication_role = replica")
            quiet.execute(
                "UPDATE staff_users SET retired_at = now() WHERE user_id = %s", (disp.user_id,)
            )
        took_s = await within(lambda: _is(status_of(api, ME, h), 401), 3.0)
        assert took_s < 1.5


# -- refresh -------------------------------------------------------------------------------------


async def refresh(api: httpx.AsyncClient, token: str) -> httpx.Response:
    return await api.post("/api/v1/auth/refresh", headers={"Authorization": f"Bearer {token}"})


async def test_refresh_renews_the_session_with_current_rights(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    async with serve_registry(migrated_db, auth=AuthConfig(secret=SECRET, token_ttl_s=60)) as (
        api,
        _,
    ):
        r = await api.post(
            "/api/v1/auth/token", data={"username": disp.username, "password": PASSWORD}
        )
        first = r.json()["access_token"]
        signed_in = decode_token(first, AUTH)
        await asyncio.sleep(1.1)  # a later second, so the new token differs
        sync_db.execute(
            "UPDATE staff_users SET scope_path = %s::ltree WHERE user_id = %s",
            (world.b.path, disp.user_id),
        )
        r = await refresh(api, first)
        assert r.status_code == 200, r.text
        assert r.json()["expires_in"] == 60
        second = decode_token(r.json()["access_token"], AUTH)
        assert second.auth_time == signed_in.auth_time  # the same session
        assert second.issued_at > signed_in.issued_at
        assert second.principal.scope_path == world.b.path  # what the user may do now
        h = {"Authorization": f"Bearer {r.json()['access_token']}"}
        assert (await api.get(ME, headers=h)).json()["username"] == disp.username
        # The old token is not consumed: refreshing is idempotent, the old one just expires.
        assert (await refresh(api, first)).status_code == 200
    audited = sync_db.execute(
        "SELECT count(*), min(source_ip) FROM audit_log WHERE action = 'refresh_token'"
        " AND actor = %s",
        (disp.username,),
    ).fetchone()
    assert audited == (2, "10.0.0.7")


async def test_refresh_is_refused_when_sign_in_is_due(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    config = AuthConfig(secret=SECRET, token_ttl_s=900, session_max_s=3600)
    async with serve_registry(migrated_db, auth=config) as (api, _):
        now = int(time.time())
        # Expired, forged, or no token at all.
        assert (await refresh(api, issue_token(disp, config, now=now - 901))).status_code == 401
        assert (
            await refresh(api, issue_token(disp, AuthConfig(secret="x" * 32)))
        ).status_code == 401
        assert (await api.post("/api/v1/auth/refresh")).status_code == 401
        # A session that began more than session_max_s ago.
        old = issue_token(disp, config, auth_time=now - 3601, now=now - 60)
        r = await refresh(api, old)
        assert r.status_code == 401 and "sign in again" in r.json()["detail"]
        # Near the end of the session, the new token ends with it.
        late = issue_token(disp, config, auth_time=now - 3500, now=now - 60)
        r = await refresh(api, late)
        assert r.status_code == 200
        assert 95 <= r.json()["expires_in"] <= 100
        claims = jwt.decode(
            r.json()["access_token"], SECRET, algorithms=["HS256"], issuer="carecall"
        )
        assert claims["exp"] == now - 3500 + 3600
        # A retired user cannot refresh, however fresh the token.
        fresh = issue_token(disp, config)
        sync_db.execute(
            "UPDATE staff_users SET retired_at = now() WHERE user_id = %s", (disp.user_id,)
        )
        assert (await refresh(api, fresh)).status_code == 401
