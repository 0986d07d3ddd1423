"""Registry API: login, token expiry, CRUD with paging, and the audit trail (throttling:
test_login.py; revocation and refresh: test_auth.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from devices.auth import AuthConfig
from devices.broker_acl import mosquitto_verify
from devices.feature import RegistryConfig
from tests.devices.conftest import PASSWORD, SECRET, World, bearer, new_staff, serve_registry


async def login(api: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/token", data={"username": username, "password": password})


def audit_rows(conn: psycopg.Connection[Any], actor: str, action: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT record_type, record_id, scope_path::text, source_ip, detail FROM audit_log"
        " WHERE actor = %s AND action = %s ORDER BY audit_id",
        (actor, action),
    ).fetchall()


async def test_login_me_and_token_expiry(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    who = world.a.staff["dispatcher"]
    async with serve_registry(migrated_db, auth=AuthConfig(secret="s" * 32, token_ttl_s=1)) as (
        api,
        _,
    ):
        r = await login(api, who.username, PASSWORD)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert r.json()["expires_in"] == 1
        me = await api.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        assert me.json()["username"] == who.username
        assert me.json()["scope_path"] == world.a.path
        assert "password_hash" not in me.text
        await asyncio.sleep(2.1)
        me = await api.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401
    (row,) = audit_rows(sync_db, who.username, "login")
    assert row[:4] == ("staff_user", str(who.user_id), world.a.path, "10.0.0.7")


async def test_unknown_and_retired_users_cannot_log_in(
    api: httpx.AsyncClient, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    assert (await login(api, f"ghost-{world.uid}", PASSWORD)).status_code == 401
    row = sync_db.execute(
        "SELECT actor, record_id, scope_path FROM audit_log WHERE action = 'login_failed'"
        " AND detail->>'username' = %s",
        (f"ghost-{world.uid}",),
    ).fetchone()
    assert row == ("system", None, None)


async def test_resident_and_contact_lifecycle_with_audit(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    sync_db: psycopg.Connection[Any],
) -> None:
    sup = world.a.staff["supervisor"]
    h = bearer(sup, auth_config)
    created = []
    for name in ("Zhang Wei", "Zhang Min", "Li Na"):
        r = await api.post(
            "/api/v1/residents",
            headers=h,
            json={
                "full_name": f"{name} {world.uid}",
                "community_id": world.a.community_id,
                "birth_year": 1938,
                "sex": "female",
                "waking_start": "06:30",
            },
        )
        assert r.status_code == 201, r.text
        created.append(r.json())
    assert created[0]["area_path"].endswith(world.a.community_id)
    assert created[0]["waking_start"] == "06:30:00"
    rid = created[0]["resident_id"]

    r = await api.get(
        "/api/v1/residents", headers=h, params={"name": "zhang", "limit": 1, "offset": 0}
    )
    page = r.json()
    zhangs = [x for x in page["items"] if x["full_name"].endswith(world.uid)]
    assert page["total"] >= 2 and page["limit"] == 1 and len(page["items"]) == 1
    assert zhangs
    r = await api.get(
        "/api/v1/residents",
        headers=h,
        params={"community_id": world.a.community_id, "name": "li na"},
    )
    assert [x["resident_id"] for x in r.json()["items"]] == [created[2]["resident_id"]]

    r = await api.patch(f"/api/v1/residents/{rid}", headers=h, json={"phone": "13911112222"})
    assert r.status_code == 200 and r.json()["phone"] == "13911112222"
    r = await api.get(f"/api/v1/residents/{rid}", headers=h)
    assert r.status_code == 200

    c = await api.post(
        f"/api/v1/residents/{rid}/contacts",
        headers=h,
        json={"priority": 1, "role": "family", "name": "Son", "phone": "13700000000"},
    )
    assert c.status_code == 201, c.text
    dup = await api.post(
        f"/api/v1/residents/{rid}/contacts",
        headers=h,
        json={"priority": 1, "role": "family", "name": "Other", "phone": "13700000001"},
    )
    assert dup.status_code == 409
    cid = c.json()["contact_id"]
    r = await api.patch(f"/api/v1/contacts/{cid}", headers=h, json={"relation": "son"})
    assert r.json()["relation"] == "son"
    assert (await api.delete(f"/api/v1/contacts/{cid}", headers=h)).status_code == 200
    r = await api.get(f"/api/v1/residents/{rid}/contacts", headers=h)
    assert r.json() == []
    # A retired contact frees its priority.
    again = await api.post(
        f"/api/v1/residents/{rid}/contacts",
        headers=h,
        json={"priority": 1, "role": "grid_worker", "name": "Grid", "phone": "12349"},
    )
    assert again.status_code == 201

    r = await api.delete(f"/api/v1/residents/{rid}", headers=h)
    assert r.status_code == 200 and r.json()["retired_at"] is not None
    r = await api.get("/api/v1/residents", headers=h, params={"name": "zhang wei"})
    assert rid not in [x["resident_id"] for x in r.json()["items"]]

    actions = [
        a
        for (a,) in sync_db.execute(
            "SELECT action FROM audit_log WHERE actor = %s AND (record_id = %s"
            " OR action = 'list_residents') ORDER BY audit_id",
            (sup.username, str(rid)),
        ).fetchall()
    ]
    for expected in (
        "create_resident",
        "list_residents",
        "update_resident",
        "read_resident",
        "read_contacts",
        "retire_resident",
    ):
        assert expected in actions
    reads = audit_rows(sync_db, sup.username, "read_resident")
    assert any(r[1] == str(rid) and r[3] == "10.0.0.7" for r in reads)
    listed = audit_rows(sync_db, sup.username, "list_residents")
    assert any(created[2]["resident_id"] in r[4]["resident_ids"] for r in listed)


async def test_device_lifecycle_and_provisioning(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    sync_db: psycopg.Connection[Any],
) -> None:
    op = world.a.staff["operator"]
    h = bearer(op, auth_config)
    dev = f"p-{world.uid}"
    r = await api.post(
        "/api/v1/devices",
        headers=h,
        json={
            "device_id": dev,
            "device_type": "pendant",
            "resident_id": world.a.resident_id,
            "position": "pendant",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["area_path"].endswith(world.a.community_id)
    assert r.json()["presence"] == {
        "state": "unknown",
        "last_seen_at": None,
        "battery_pct": None,
        "battery_low": False,
        "offline_reason": None,
    }
    assert (await api.post("/api/v1/devices", headers=h, json=r.json() | {})).status_code == 422
    r = await api.get(
        "/api/v1/devices", headers=h, params={"resident_id": world.a.resident_id, "active": True}
    )
    assert {x["device_id"] for x in r.json()["items"]} == {dev, world.a.device_id}
    r = await api.get("/api/v1/devices", headers=h, params={"device_type": "pendant"})
    assert [x["device_id"] for x in r.json()["items"] if x["device_id"].endswith(world.uid)] == [
        dev
    ]

    r = await api.post(f"/api/v1/devices/{dev}/credentials", headers=h)
    assert r.status_code == 201
    creds = r.json()
    assert creds["mqtt_username"] == dev and len(creds["mqtt_password"]) >= 30
    row = sync_db.execute(
        "SELECT mqtt_password_hash FROM devices WHERE device_id = %s", (dev,)
    ).fetchone()
    assert row is not None and mosquitto_verify(creds["mqtt_password"], row[0])
    assert (await api.get(f"/api/v1/devices/{dev}", headers=h)).json()["provisioned"] is True

    r = await api.delete(f"/api/v1/devices/{dev}", headers=h)
    assert r.status_code == 200
    assert r.json()["active"] is False and r.json()["provisioned"] is False
    assert (await api.post(f"/api/v1/devices/{dev}/credentials", headers=h)).status_code == 409
    assert [a[1] for a in audit_rows(sync_db, op.username, "provision_device")] == [dev]
    assert [a[1] for a in audit_rows(sync_db, op.username, "retire_device")] == [dev]


async def test_areas_and_staff_by_admin(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
) -> None:
    district_admin = world.a.staff["admin"]
    h = bearer(district_admin, auth_config)
    r = await api.post(
        "/api/v1/areas",
        headers=h,
        json={"area_id": f"n{world.uid}", "parent_id": world.a.street_id, "name": "New"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["level"] == "community"
    assert r.json()["path"] == f"{world.a.path}.{world.a.street_id}.n{world.uid}"
    # A district admin cannot create a city.
    r = await api.post("/api/v1/areas", headers=h, json={"area_id": f"x{world.uid}", "name": "X"})
    assert r.status_code == 422
    # A street with a live community cannot be retired.
    assert (await api.delete(f"/api/v1/areas/{world.a.street_id}", headers=h)).status_code == 409
    assert (await api.delete(f"/api/v1/areas/n{world.uid}", headers=h)).status_code == 200

    r = await api.post(
        "/api/v1/staff",
        headers=h,
        json={
            "username": f"new-{world.uid}",
            "full_name": "New Dispatcher",
            "role": "dispatcher",
            "scope_path": world.a.path,
            "password": "a long enough password",
        },
    )
    assert r.status_code == 201, r.text
    uid = r.json()["user_id"]
    assert (await login(api, f"new-{world.uid}", "a long enough password")).status_code == 200
    r = await api.patch(f"/api/v1/staff/{uid}", headers=h, json={"on_duty": True})
    assert r.json()["on_duty"] is True
    assert (await api.delete(f"/api/v1/staff/{uid}", headers=h)).status_code == 200
    assert (await login(api, f"new-{world.uid}", "a long enough password")).status_code == 401


def test_audit_log_refuses_update_and_delete(sync_db: psycopg.Connection[Any]) -> None:
    sync_db.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'probe')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sync_db.execute("UPDATE audit_log SET actor = 'someone else' WHERE action = 'probe'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sync_db.execute("DELETE FROM audit_log WHERE action = 'probe'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sync_db.execute("TRUNCATE audit_log")


async def test_api_has_no_way_to_change_the_audit_log(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    assert set(spec["paths"]["/api/v1/audit"]) == {"get"}


async def test_null_for_a_required_field_is_a_client_error(
    api: httpx.AsyncClient, auth_config: AuthConfig, world: World
) -> None:
    h = bearer(world.a.staff["supervisor"], auth_config)
    r = await api.patch(
        f"/api/v1/residents/{world.a.resident_id}", headers=h, json={"full_name": None}
    )
    assert r.status_code == 422, r.text


async def test_device_reads_are_audited_like_resident_reads(
    migrated_db: str, world: World, sync_db: psycopg.Connection[Any]
) -> None:
    """One row per read of one device (detail, presence); list reads coalesced: identical
    re-reads within the window add to the first row's count, other results or filters do not."""
    disp = new_staff(sync_db, "dispatcher", world.a.path)
    auth = AuthConfig(secret=SECRET)
    h = bearer(disp, auth)
    dev = world.a.device_id
    async with serve_registry(migrated_db, RegistryConfig(audit_coalesce_s=600)) as (api, _):
        for _ in range(2):
            assert (await api.get(f"/api/v1/devices/{dev}", headers=h)).status_code == 200
        assert (await api.get(f"/api/v1/devices/{dev}/presence", headers=h)).status_code == 200
        mine = {"resident_id": world.a.resident_id}
        for _ in range(3):
            r = await api.get("/api/v1/devices", headers=h, params=mine)
            every = [x["device_id"] for x in r.json()["items"]]
            assert dev in every
        r = await api.get("/api/v1/devices", headers=h, params={**mine, "active": True})
        active = [x["device_id"] for x in r.json()["items"]]
        # Out of scope: 404 and nothing read, so nothing audited.
        b_dev = world.b.device_id
        assert (await api.get(f"/api/v1/devices/{b_dev}", headers=h)).status_code == 404
        for _ in range(2):
            assert (await api.get("/api/v1/residents", headers=h)).status_code == 200

    reads = audit_rows(sync_db, disp.username, "read_device")
    assert [r[:4] for r in reads] == [("device", dev, world.a.path + f".{world.a.street_id}"
                                       f".{world.a.community_id}", "10.0.0.7")] * 2  # fmt: skip
    assert [r[1] for r in audit_rows(sync_db, disp.username, "read_presence")] == [dev]
    listed = audit_rows(sync_db, disp.username, "list_devices")
    assert [r[4]["device_ids"] for r in listed] == [every, active]
    assert [r[4]["filters"]["active"] for r in listed] == [None, True]
    counts = sync_db.execute(
        "SELECT action, reads FROM audit_read_windows WHERE actor = %s ORDER BY last_at",
        (disp.username,),
    ).fetchall()
    assert sorted(counts) == [("list_devices", 1), ("list_devices", 3), ("list_residents", 2)]
    assert len(audit_rows(sync_db, disp.username, "list_residents")) == 1
