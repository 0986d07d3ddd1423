"""A small service network per test, written straight into the registry tables.

Two districts (``a`` and ``b``) of one city, one street and one community each; resident
``r1`` in community ``ca`` with three contacts, ``r2`` in ``cb``; a watch each; dispatchers at
every level of district ``a``, one dispatcher in ``b``, and a city supervisor. Every id carries
the test's uid so tests never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from alerts.incidents import IncidentInput
from alerts.rules.detection import DetectionKind, Severity, make_detection
from devices.auth import AuthConfig, Principal, issue_token

SECRET = "alerts-test-secret-0123456789abcdef-not-for-production"
AUTH = AuthConfig(secret=SECRET, token_ttl_s=3600)


@dataclass
class World:
    uid: str
    city: str
    path_a: str  # community ca's path (district a)
    path_b: str  # community cb's path (district b)
    residents: dict[str, int] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    staff: dict[str, Principal] = field(default_factory=dict)

    def token(self, who: str) -> str:
        return issue_token(self.staff[who], AUTH)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(who)}"}


async def build_world(
    db: psycopg.AsyncConnection[Any], uid: str, *, on_duty: tuple[str, ...] = ("disp_ca",)
) -> World:
    city = f"x{uid}"
    da, db_, sa, sb, ca, cb = (f"{p}{uid}" for p in ("da", "db", "sa", "sb", "ca", "cb"))
    w = World(uid, city, f"{city}.{da}.{sa}.{ca}", f"{city}.{db_}.{sb}.{cb}")
    areas = [
        (city, city, "city"),
        (da, f"{city}.{da}", "district"),
        (db_, f"{city}.{db_}", "district"),
        (sa, f"{city}.{da}.{sa}", "street"),
        (sb, f"{city}.{db_}.{sb}", "street"),
        (ca, w.path_a, "community"),
        (cb, w.path_b, "community"),
    ]
    for area_id, path, level in areas:
        await db.execute(
            "INSERT INTO areas (area_id, path, level, name) VALUES (%s, %s::ltree, %s, %s)",
            (area_id, path, level, area_id),
        )
    for name, community, lat in (("r1", ca, 38.04), ("r2", cb, 38.05)):
        cur = await db.execute(
            "INSERT INTO residents (full_name, community_id, home_lat, home_lon, address)"
            " VALUES (%s, %s, %s, 114.5, 'Building 3') RETURNING resident_id",
            (f"{name}-{uid}", community, lat),
        )
        row = await cur.fetchone()
        assert row is not None
        w.residents[name] = int(row[0])
        dev = f"{uid}-{name}w"
        w.devices[name] = dev
        await db.execute(
            "INSERT INTO devices (device_id, resident_id, position) VALUES (%s, %s, 'wrist')",
            (dev, row[0]),
        )
    # Priorities deliberately not in role order: the chain goes by role first.
    for prio, role, name in (
        (3, "family", "daughter"),
        (1, "community_helper", "helper"),
        (2, "grid_worker", "grid"),
    ):
        await db.execute(
            "INSERT INTO contacts (resident_id, priority, role, name, phone)"
            " VALUES (%s, %s, %s, %s, %s)",
            (w.residents["r1"], prio, role, name, f"+86-{role}-{uid}"),
        )
    staff = [
        ("disp_ca", "dispatcher", w.path_a),
        ("disp_sa", "dispatcher", f"{city}.{da}.{sa}"),
        ("disp_da", "dispatcher", f"{city}.{da}"),
        ("disp_city", "dispatcher", city),
        ("disp_db", "dispatcher", f"{city}.{db_}"),
        ("sup", "supervisor", city),
        ("oper_db", "operator", f"{city}.{db_}"),
    ]
    for short, role, scope in staff:
        username = f"{short}_{uid}"
        cur = await db.execute(
            "INSERT INTO staff_users (username, full_name, role, scope_path, password_hash,"
            " phone, on_duty) VALUES (%s, %s, %s, %s::ltree, 'x', %s, %s) RETURNING user_id",
            (username, short, role, scope, f"+86-{short}-{uid}", short in on_duty),
        )
        row = await cur.fetchone()
        assert row is not None
        w.staff[short] = Principal(int(row[0]), username, role, scope)
    return w


def det(
    w: World,
    kind: DetectionKind,
    event_ts: float,
    *,
    who: str = "r1",
    severity: Severity | None = None,
    **evidence: Any,
) -> IncidentInput:
    if severity is None and kind in (DetectionKind.VITALS_ABNORMAL, DetectionKind.NEWS2):
        severity = Severity.HIGH
    d = make_detection(
        device_id=w.devices[who],
        resident_id=str(w.residents[who]),
        kind=kind,
        event_ts=event_ts,
        detected_ts=event_ts + 0.01,
        evidence=evidence,
        severity=severity,
    )
    path = w.path_a if who == "r1" else w.path_b
    return IncidentInput.from_detection(d, resident_id=w.residents[who], area_path=path)


class FakeGateway:
    """A tiny HTTP server that records every request; ``delay_s`` makes it hang first."""

    def __init__(self, *, status: int = 200, delay_s: float = 0.0, fail_first: int = 0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.fail_first = fail_first
        self.requests: list[tuple[str, dict[str, str], bytes, float]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, _, b, _ in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {
                k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.requests.append((path, headers, body, time.monotonic()))
            status = 503 if len(self.requests) <= self.fail_first else self.status
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeGateway]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
