"""The login throttle, kept in PostgreSQL: shared by every server process and by a restart."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import psycopg

from devices.feature import RegistryConfig
from devices.login import LoginThrottle
from tests.devices.conftest import PASSWORD, World, serve_registry, unique_ip


async def login(api: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/token", data={"username": username, "password": password})


async def test_failed_logins_are_throttled_per_user_and_per_address(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    config = RegistryConfig(login_free_failures=3, login_lockout_base_s=0.5)
    who = world.b.staff["dispatcher"]
    ip = unique_ip()
    async with serve_registry(migrated_db, config, client_ip=ip) as (api, _):
        for _ in range(3):
            assert (await login(api, who.username, "wrong")).status_code == 401
        # Locked: even the right password is refused, without being checked.
        r = await login(api, who.username, PASSWORD)
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
        # The same address is locked out for other names too.
        r = await login(api, world.b.staff["supervisor"].username, PASSWORD)
        assert r.status_code == 429
        await asyncio.sleep(0.6)
        r = await login(api, who.username, PASSWORD)
        assert r.status_code == 200, r.text
        # Each further failure doubles the lockout: one more miss locks for 1 s.
        assert (await login(api, f"nobody-{world.uid}", "x")).status_code == 401
        assert (await login(api, who.username, PASSWORD)).status_code == 429
    failed = sync_db.execute(
        "SELECT count(*), min(source_ip), max(scope_path::text) FROM audit_log"
        " WHERE action = 'login_failed' AND detail->>'username' = %s",
        (who.username,),
    ).fetchone()
    assert failed == (3, ip, world.b.path)
    throttled = sync_db.execute(
        "SELECT count(*) FROM audit_log WHERE action = 'login_throttled'"
        " AND detail->>'username' = %s",
        (who.username,),
    ).fetchone()
    assert throttled is not None and throttled[0] >= 2
    # The success cleared the username's row; the address keeps counting.
    rows = dict(
        sync_db.execute(
            "SELECT key, failures FROM login_throttle WHERE key = ANY(%s)",
            ([f"user:{who.username.lower()}", f"ip:{ip}"],),
        ).fetchall()
    )
    assert rows == {f"ip:{ip}": 4}


async def test_two_processes_and_a_restart_share_one_lockout(
    migrated_db: str, world: World
) -> None:
    """Failures counted by one server process lock the user out on another, and the lockout
    outlives both (the state is in the database, on its clock)."""
    config = RegistryConfig(login_free_failures=2, login_lockout_base_s=30)
    who = world.a.staff["supervisor"]
    async with (
        serve_registry(migrated_db, config, client_ip=unique_ip()) as (front_1, _),
        serve_registry(migrated_db, config, client_ip=unique_ip()) as (front_2, _),
    ):
        assert (await login(front_1, who.username, "wrong")).status_code == 401
        assert (await login(front_2, who.username, "wrong")).status_code == 401
        # Two failures from two addresses on two processes: the username is locked on both.
        for api in (front_1, front_2):
            r = await login(api, who.username, PASSWORD)
            assert r.status_code == 429, r.text
            assert 25 <= int(r.headers["Retry-After"]) <= 31
    async with serve_registry(migrated_db, config, client_ip=unique_ip()) as (restarted, _):
        assert (await login(restarted, who.username, PASSWORD)).status_code == 429
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("DELETE FROM login_throttle WHERE key = %s", (f"user:{who.username}",))


async def test_lockout_doubles_up_to_the_cap_and_a_quiet_window_starts_again(
    migrated_db: str,
) -> None:
    throttle = LoginThrottle(free_failures=2, window_s=60, base_s=1.0, max_s=4.0)
    key = f"user:t-{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as conn:
        assert await throttle.retry_after_s(conn, key) == 0.0
        await throttle.failed(conn, key)
        assert await throttle.retry_after_s(conn, key) == 0.0
        waits = []
        for _ in range(5):
            await throttle.failed(conn, key, key)  # a key given twice counts once
            waits.append(await throttle.retry_after_s(conn, key))
        # 1, 2, 4, then capped at 4 (each measured a moment after the failure).
        assert [round(w) for w in waits] == [1, 2, 4, 4, 4], waits
        await conn.execute(
            "UPDATE login_throttle SET last_failure_at = last_failure_at - interval '2 minutes',"
            " locked_until = NULL WHERE key = %s",
            (key,),
        )
        # The previous failure is older than the window: the count starts again, unlocked.
        await throttle.failed(conn, key)
        cur = await conn.execute(
            "SELECT failures, locked_until FROM login_throttle WHERE key = %s", (key,)
        )
        assert await cur.fetchone() == (1, None)
        await throttle.succeeded(conn, key)
        assert await throttle.retry_after_s(conn, key) == 0.0


async def test_prune_keeps_the_table_small(migrated_db: str) -> None:
    prefix = f"ip:p-{uuid.uuid4().hex[:8]}"
    throttle = LoginThrottle(free_failures=5, window_s=60, max_keys=10)
    async with await psycopg.AsyncConnection.connect(migrated_db, autocommit=True) as conn:
        await conn.execute("DELETE FROM login_throttle")  # this test counts the whole table
        # A flood of random names: 30 keys, in three age groups.
        for i in range(30):
            await throttle.failed(conn, f"{prefix}-{i:02d}")
        await conn.execute(
            "UPDATE login_throttle SET last_failure_at = clock_timestamp() - interval '1 hour'"
            " WHERE key < %s",
            (f"{prefix}-10",),
        )
        await conn.execute(
            "UPDATE login_throttle SET last_failure_at = clock_timestamp() - interval '1 hour',"
            " locked_until = clock_timestamp() + interval '1 minute'"
            " WHERE key >= %s AND key < %s",
            (f"{prefix}-10", f"{prefix}-13"),
        )
        removed = await throttle.prune(conn)
        cur = await conn.execute("SELECT key FROM login_throttle ORDER BY key")
        left = [r[0] for r in await cur.fetchall()]
    # Stale and unlocked: gone. Stale but still locked: kept. Then the oldest beyond the cap.
    assert removed == 20
    assert len(left) == 10
    assert {f"{prefix}-{i}" for i in (10, 11, 12)} <= set(left)
    assert not any(k < f"{prefix}-10" for k in left)
