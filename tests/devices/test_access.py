"""Scope and roles: district A's staff can neither read, change nor detect district B's records."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from devices.auth import AuthConfig, Principal
from tests.devices.conftest import World, bearer

NO_INT = 2_000_000_000  # an id nobody has
CONTACT = {"priority": 9, "role": "neighbour", "name": "N", "phone": "139000"}

# (method, path with {placeholders}, the district-A role allowed to use it, body)
BY_ID: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/areas/{community}", "dispatcher", None),
    ("PATCH", "/api/v1/areas/{community}", "admin", {"name": "pwned"}),
    ("DELETE", "/api/v1/areas/{community}", "admin", None),
    ("GET", "/api/v1/residents/{resident}", "dispatcher", None),
    ("PATCH", "/api/v1/residents/{resident}", "supervisor", {"phone": "1"}),
    ("DELETE", "/api/v1/residents/{resident}", "supervisor", None),
    ("GET", "/api/v1/residents/{resident}/contacts", "dispatcher", None),
    ("POST", "/api/v1/residents/{resident}/contacts", "supervisor", CONTACT),
    ("PATCH", "/api/v1/contacts/{contact}", "supervisor", {"phone": "1234"}),
    ("DELETE", "/api/v1/contacts/{contact}", "supervisor", None),
    ("GET", "/api/v1/devices/{device}", "dispatcher", None),
    ("GET", "/api/v1/devices/{device}/presence", "dispatcher", None),
    ("PATCH", "/api/v1/devices/{device}", "operator", {"firmware": "evil"}),
    ("DELETE", "/api/v1/devices/{device}", "operator", None),
    ("POST", "/api/v1/devices/{device}/credentials", "operator", None),
    ("GET", "/api/v1/staff/{staff}", "admin", None),
    ("PATCH", "/api/v1/staff/{staff}", "admin", {"on_duty": True}),
    ("DELETE", "/api/v1/staff/{staff}", "admin", None),
]


def ids_of(world: World, district: str) -> dict[str, Any]:
    d = world.a if district == "a" else world.b
    return {
        "community": d.community_id,
        "resident": d.resident_id,
        "contact": d.contact_id,
        "device": d.device_id,
        "staff": d.staff["dispatcher"].user_id,
    }


def missing_ids(world: World) -> dict[str, Any]:
    return {
        "community": f"none{world.uid}",
        "resident": NO_INT,
        "contact": NO_INT,
        "device": f"none-{world.uid}",
        "staff": NO_INT,
    }


async def call(
    api: httpx.AsyncClient,
    config: AuthConfig,
    who: Principal,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    **params: Any,
) -> httpx.Response:
    return await api.request(
        method, path, json=body, params=params or None, headers=bearer(who, config)
    )


def b_untouched(conn: psycopg.Connection[Any], world: World) -> None:
    b = world.b
    rows = conn.execute(
        "SELECT (SELECT retired_at IS NULL AND name = 'Community b' FROM areas"
        "        WHERE area_id = %s),"
        " (SELECT retired_at IS NULL AND phone IS NULL FROM residents WHERE resident_id = %s),"
        " (SELECT retired_at IS NULL AND phone = '13800000000' FROM contacts"
        "        WHERE contact_id = %s),"
        " (SELECT active AND firmware IS NULL AND mqtt_password_hash IS NULL FROM devices"
        "        WHERE device_id = %s),"
        " (SELECT retired_at IS NULL AND NOT on_duty FROM staff_users WHERE user_id = %s),"
        " (SELECT count(*) = 1 FROM contacts WHERE resident_id = %s)",
        (
            b.community_id, b.resident_id, b.contact_id, b.device_id,
            b.staff["dispatcher"].user_id, b.resident_id,
        ),
    ).fetchone()  # fmt: skip
    assert rows == (True,) * 6


@pytest.mark.parametrize(("method", "template", "role", "body"), BY_ID)
async def test_out_of_scope_id_answers_like_a_missing_one(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    sync_db: psycopg.Connection[Any],
    method: str,
    template: str,
    role: str,
    body: dict[str, Any] | None,
) -> None:
    who = world.a.staff[role]
    other = await call(api, auth_config, who, method, template.format(**ids_of(world, "b")), body)
    missing = await call(api, auth_config, who, method, template.format(**missing_ids(world)), body)
    assert other.status_code == 404, other.text
    assert (other.status_code, other.json()) == (missing.status_code, missing.json())
    assert "b" + world.uid not in other.text
    b_untouched(sync_db, world)
    # The same caller does reach the same endpoint in its own district (reads only: writes
    # here would disturb the other tests sharing this world).
    if method == "GET":
        own = await call(api, auth_config, who, method, template.format(**ids_of(world, "a")))
        assert own.status_code == 200, own.text


async def test_enumerating_resident_ids_reveals_nothing(
    api: httpx.AsyncClient, auth_config: AuthConfig, world: World
) -> None:
    who = world.a.staff["dispatcher"]
    bodies = set()
    for rid in range(world.b.resident_id - 3, world.b.resident_id + 4):
        if rid == world.a.resident_id:
            continue
        r = await call(api, auth_config, who, "GET", f"/api/v1/residents/{rid}")
        assert r.status_code == 404
        bodies.add(r.text)
    assert bodies == {'{"detail":"resident not found"}'}


# A-staff creating or moving things into B: refused exactly like a nonexistent target.
REFERENCES: list[tuple[str, str, str, dict[str, Any], str]] = [
    ("POST", "/api/v1/residents", "supervisor",
     {"full_name": "X", "community_id": "{community}"}, "community_id"),
    ("PATCH", "/api/v1/residents/{own_resident}", "supervisor",
     {"community_id": "{community}"}, "community_id"),
    ("POST", "/api/v1/devices", "operator",
     {"device_id": "x-{uid}", "device_type": "watch", "resident_id": "{resident}"}, "resident_id"),
    ("POST", "/api/v1/devices", "operator",
     {"device_id": "x-{uid}", "device_type": "gas_sensor", "community_id": "{community}"},
     "community_id"),
    ("PATCH", "/api/v1/devices/{own_device}", "operator",
     {"resident_id": "{resident}"}, "resident_id"),
    ("POST", "/api/v1/areas", "admin",
     {"area_id": "x{uid}", "parent_id": "{district}", "name": "X"}, "parent_id"),
    ("POST", "/api/v1/staff", "admin",
     {"username": "x-{uid}", "full_name": "X", "role": "dispatcher", "scope_path": "{path}",
      "password": "long enough password"}, "scope_path"),
]  # fmt: skip


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    if isinstance(value, str):
        return value.format(**ids)
    return value


@pytest.mark.parametrize(("method", "template", "role", "body", "field"), REFERENCES)
async def test_references_into_another_district_are_refused_like_missing_ones(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    method: str,
    template: str,
    role: str,
    body: dict[str, Any],
    field: str,
) -> None:
    who = world.a.staff[role]
    common = {
        "uid": world.uid,
        "own_resident": world.a.resident_id,
        "own_device": world.a.device_id,
    }
    b = {
        **common,
        "community": world.b.community_id,
        "resident": world.b.resident_id,
        "district": world.b.district_id,
        "path": world.b.path,
    }
    none = {
        **common,
        "community": f"none{world.uid}",
        "resident": NO_INT,
        "district": f"none{world.uid}",
        "path": f"{world.city_id}.none{world.uid}",
    }
    path = template.format(**common)
    other = await call(
        api, auth_config, who, method, path, {k: _fill(v, b) for k, v in body.items()}
    )
    missing = await call(
        api, auth_config, who, method, path, {k: _fill(v, none) for k, v in body.items()}
    )
    assert other.status_code == 422, other.text
    assert other.json()["detail"].startswith(field)
    assert other.json() == missing.json()


LISTS = [
    ("/api/v1/residents", "dispatcher", "resident_id", "resident"),
    ("/api/v1/devices", "dispatcher", "device_id", "device"),
    ("/api/v1/devices", "operator", "device_id", "device"),
    ("/api/v1/staff", "admin", "user_id", "staff"),
    ("/api/v1/areas", "dispatcher", "area_id", "community"),
]


@pytest.mark.parametrize(("path", "role", "key", "kind"), LISTS)
async def test_listings_hold_only_the_callers_subtree(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    path: str,
    role: str,
    key: str,
    kind: str,
) -> None:
    who = world.a.staff[role]
    r = await call(api, auth_config, who, "GET", path, limit=500)
    assert r.status_code == 200, r.text
    got = {item[key] for item in r.json()["items"]}
    assert ids_of(world, "a")[kind] in got
    assert ids_of(world, "b")[kind] not in got
    # Filtering by the other district's areas finds nothing, rather than an error.
    if path != "/api/v1/staff":
        key_name = "under" if path.endswith("areas") else "area_id"
        for area in (world.b.district_id, world.b.community_id):
            r = await call(api, auth_config, who, "GET", path, **{key_name: area})
            assert r.status_code == 200 and r.json()["total"] == 0, r.text
    admin = await call(api, auth_config, world.admin, "GET", path, limit=500)
    everything = {item[key] for item in admin.json()["items"]}
    assert {ids_of(world, "a")[kind], ids_of(world, "b")[kind]} <= everything


async def test_audit_listing_is_scoped(
    api: httpx.AsyncClient, auth_config: AuthConfig, world: World
) -> None:
    for d in (world.a, world.b):
        r = await call(
            api, auth_config, d.staff["dispatcher"], "GET", f"/api/v1/residents/{d.resident_id}"
        )
        assert r.status_code == 200
    r = await call(
        api, auth_config, world.a.staff["supervisor"], "GET", "/api/v1/audit",
        action="read_resident", limit=500,
    )  # fmt: skip
    assert r.status_code == 200
    record_ids = {row["record_id"] for row in r.json()["items"]}
    assert str(world.a.resident_id) in record_ids
    assert str(world.b.resident_id) not in record_ids
    r = await call(
        api, auth_config, world.a.staff["supervisor"], "GET", "/api/v1/audit",
        record_id=str(world.b.resident_id),
    )  # fmt: skip
    assert r.json()["total"] == 0


# Role checks on the caller's own district: (role, method, path) that must be refused.
FORBIDDEN = [
    ("operator", "GET", "/api/v1/residents"),
    ("operator", "GET", "/api/v1/residents/{resident}"),
    ("operator", "GET", "/api/v1/residents/{resident}/contacts"),
    ("dispatcher", "PATCH", "/api/v1/residents/{resident}"),
    ("dispatcher", "POST", "/api/v1/residents"),
    ("dispatcher", "POST", "/api/v1/residents/{resident}/contacts"),
    ("dispatcher", "DELETE", "/api/v1/contacts/{contact}"),
    ("operator", "PATCH", "/api/v1/contacts/{contact}"),
    ("dispatcher", "POST", "/api/v1/devices"),
    ("supervisor", "PATCH", "/api/v1/devices/{device}"),
    ("supervisor", "POST", "/api/v1/devices/{device}/credentials"),
    ("dispatcher", "DELETE", "/api/v1/devices/{device}"),
    ("dispatcher", "GET", "/api/v1/audit"),
    ("operator", "GET", "/api/v1/audit"),
    ("supervisor", "GET", "/api/v1/staff"),
    ("supervisor", "POST", "/api/v1/staff"),
    ("operator", "DELETE", "/api/v1/staff/{staff}"),
    ("supervisor", "POST", "/api/v1/areas"),
    ("operator", "PATCH", "/api/v1/areas/{community}"),
]


@pytest.mark.parametrize(("role", "method", "template"), FORBIDDEN)
async def test_roles(
    api: httpx.AsyncClient,
    auth_config: AuthConfig,
    world: World,
    sync_db: psycopg.Connection[Any],
    role: str,
    method: str,
    template: str,
) -> None:
    path = template.format(**ids_of(world, "a"))
    body = {} if method in ("POST", "PATCH") else None
    r = await call(api, auth_config, world.a.staff[role], method, path, body)
    assert r.status_code == 403, r.text
    # Forbidden does not depend on the record: same answer for another district's id.
    r_b = await call(
        api, auth_config, world.a.staff[role], method, template.format(**ids_of(world, "b")), body
    )
    assert (r_b.status_code, r_b.json()) == (403, r.json())


@pytest.mark.parametrize(
    "path",
    ["/api/v1/residents", "/api/v1/devices", "/api/v1/audit", "/api/v1/staff", "/api/v1/auth/me"],
)
async def test_every_endpoint_needs_a_valid_token(
    api: httpx.AsyncClient, auth_config: AuthConfig, world: World, path: str
) -> None:
    assert (await api.get(path)).status_code == 401
    forged = bearer(world.admin, AuthConfig(secret="x" * 32))
    assert (await api.get(path, headers=forged)).status_code == 401
    expired = bearer(world.admin, auth_config, now=1_000_000_000)
    assert (await api.get(path, headers=expired)).status_code == 401


async def test_every_api_route_is_authenticated(api: httpx.AsyncClient) -> None:
    """No route slips through without a bearer requirement (except getting a token)."""
    spec = (await api.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path == "/api/v1/auth/token":
                continue
            assert op.get("security"), f"{method.upper()} {path} is not authenticated"
