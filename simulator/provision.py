"""Putting the simulated town into CareCall's registry, like an installer would.

Two ways: the registry REST API (areas, residents, devices, per-device MQTT credentials) when
an admin login is given, tolerant of what already exists; or, for tests and throw-away
databases, ``register_sql`` which only inserts the device ids (the bridge refuses unknown
devices, nothing else is needed for telemetry to be stored).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from simulator.town import Town

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


@dataclass
class Provisioned:
    credentials: dict[str, str] = field(default_factory=dict)  # device id -> MQTT password
    resident_ids: dict[str, int] = field(default_factory=dict)  # town key -> registry id
    problems: list[str] = field(default_factory=list)


def _ok(resp: httpx.Response, what: str, out: Provisioned) -> bool:
    """2xx, or 409 (already there: a re-run) count as fine; anything else is noted."""
    if resp.is_success or resp.status_code == 409:
        return True
    out.problems.append(f"{what}: HTTP {resp.status_code} {resp.text[:200]}")
    return False


def provision_rest(
    town: Town,
    api_url: str,
    username: str,
    password: str,
    *,
    with_credentials: bool = True,
    timeout_s: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> Provisioned:
    import httpx  # noqa: PLC0415 - a dev extra today: only --report and --provision need it

    out = Provisioned()
    with httpx.Client(base_url=api_url, timeout=timeout_s, transport=transport) as http:
        tok = http.post("/api/v1/auth/token", data={"username": username, "password": password})
        if not tok.is_success:
            out.problems.append(f"login: HTTP {tok.status_code}")
            return out
        http.headers["Authorization"] = f"Bearer {tok.json()['access_token']}"
        areas = [
            (town.city_id, None, town.name),
            (town.district_id, town.city_id, f"{town.name} district"),
            (town.street_id, town.district_id, f"{town.name} street"),
        ]
        areas += [(c, town.street_id, f"Community {c}") for c in town.community_ids]
        for area_id, parent, name in areas:
            area = {"area_id": area_id, "parent_id": parent, "name": name}
            _ok(http.post("/api/v1/areas", json=area), f"area {area_id}", out)
        for r in town.residents:
            resp = http.post(
                "/api/v1/residents",
                json={
                    "full_name": r.name,
                    "birth_year": r.birth_year,
                    "sex": r.sex,
                    "address": f"{r.key}, {town.name}",
                    "community_id": r.community_id,
                    "home_lat": r.home_lat,
                    "home_lon": r.home_lon,
                },
            )
            if not _ok(resp, f"resident {r.key}", out) or not resp.is_success:
                continue
            rid = int(resp.json()["resident_id"])
            out.resident_ids[r.key] = rid
            for d in r.devices:
                body = {
                    "device_id": d.device_id,
                    "device_type": d.model.device_type,
                    "model": d.model.name,
                    "firmware": d.model.firmware,
                    "resident_id": rid,
                    "position": d.model.position,
                }
                if not _ok(http.post("/api/v1/devices", json=body), d.device_id, out):
                    continue
                if with_credentials:
                    cred = http.post(f"/api/v1/devices/{d.device_id}/credentials")
                    if _ok(cred, f"credentials {d.device_id}", out) and cred.is_success:
                        out.credentials[d.device_id] = str(cred.json()["mqtt_password"])
    for p in out.problems:
        log.warning("provisioning: %s", p)
    return out


def register_sql(database_url: str, device_ids: list[str]) -> None:
    """Insert bare device rows (tests, throw-away databases): no residents, no credentials."""
    import psycopg  # noqa: PLC0415 - only this fallback needs a database driver

    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (device_id) VALUES (%s) ON CONFLICT DO NOTHING",
            [(d,) for d in device_ids],
        )
