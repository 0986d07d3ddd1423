"""The web feature: the dispatcher console (/console), the operator dashboard (/ops), their
static files (/web/...) and the dashboard's JSON feed (GET /api/v1/ops/summary).

The pages are plain HTML files with one hand-written JavaScript module each; everything they
show comes from the JSON APIs of the registry and the alerts feature, so this module only
serves files and the one summary the APIs do not offer: ingest figures from the server's own
Prometheus registry, device presence, open incidents and KPIs, all within the caller's scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import psycopg
from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from devices.auth import Principal, require_roles
from ingest.service import Runtime
from ingest.web.ops import REJECTED, OpsSampler, totals

if TYPE_CHECKING:
    from ingest.features import Feature

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = HERE / "static"
OPS_ROLES: Final = ("operator", "supervisor", "admin")
SERVICE_KEY: Final = "web.ops"
# KPI days are local days of the hotline: CARECALL_ALERTS_TIMEZONE (as the alerts API uses).
_QUERY_TIMEOUT_S: Final = 3.0

# Nothing is loaded from anywhere but this server: no CDN, no tiles, no web fonts. The
# policy makes that a rule the browser enforces, and forbids inline script.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
    " frame-ancestors 'none'; form-action 'self'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

OpsReader = Annotated[Principal, require_roles(*OPS_ROLES)]
_DEVICE_SCOPE: Final = "(d.area_path <@ %(scope)s::ltree OR (d.area_path IS NULL AND %(stock)s))"
# As alerts/incidents.py: unplaced incidents only for the root of the area tree and admins.
_INCIDENT_SCOPE: Final = (
    "(i.area_path <@ %(scope)s::ltree OR (i.area_path IS NULL"
    " AND (%(admin)s OR carecall_scope_is_root(%(scope)s::ltree))))"
)
_OPEN_STATES: Final = ["raised", "delivered", "acknowledged", "dispatched"]


class _Revalidated(StaticFiles):
    """Static files the browser must revalidate (a cheap 304): after an upgrade, a page never
    runs yesterday's script against today's API."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _page(name: str) -> Response:
    body = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _sampler(rt: Runtime) -> OpsSampler:
    """The feature's sampler, or a fresh one (no history yet) when the feature is not run."""
    sampler = rt.services.get(SERVICE_KEY)
    if isinstance(sampler, OpsSampler):
        return sampler
    return OpsSampler(rt.metrics.registry)


async def _devices(rt: Runtime, principal: Principal) -> dict[str, Any] | None:
    """Devices in scope by presence; None when the registry's tracker is not running."""
    presence = rt.services.get("presence")
    if presence is None:
        return None
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT d.device_id FROM devices d WHERE d.active AND d.retired_at IS NULL"
            f" AND {_DEVICE_SCOPE}",
            {"scope": principal.scope_path, "stock": principal.role in ("operator", "admin")},
        )
        ids = [r[0] for r in await cur.fetchall()]
    counts = {"online": 0, "offline": 0, "never_seen": 0, "battery_low": 0}
    for device_id in ids:
        p = presence.snapshot(device_id)
        if p is None or p.last_seen_ts is None:
            counts["never_seen"] += 1
            continue
        counts["online" if p.online else "offline"] += 1
        counts["battery_low"] += int(p.battery_low)
    return {"total": len(ids), **counts}


async def _incidents(rt: Runtime, principal: Principal) -> dict[str, Any]:
    """Open incidents in scope, by severity and by district (with the district's names)."""
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            f"""SELECT CASE WHEN nlevel(i.area_path) >= 2 THEN subpath(i.area_path, 0, 2)::text
                            ELSE coalesce(i.area_path::text, '') END AS district,
                       i.severity, count(*) AS n
                FROM incidents i
                WHERE i.state = ANY(%(open)s) AND {_INCIDENT_SCOPE}
                GROUP BY 1, 2""",
            {
                "scope": principal.scope_path,
                "admin": principal.role == "admin",
                "open": _OPEN_STATES,
            },
        )
        rows = await cur.fetchall()
        cur = await conn.execute(
            "SELECT path::text, name, name_zh FROM areas WHERE path = ANY(%s::ltree[])",
            ([r[0] for r in rows if r[0]],),
        )
        names = {p: (n, nz) for p, n, nz in await cur.fetchall()}
    by_severity: dict[str, int] = {}
    districts: dict[str, dict[str, Any]] = {}
    for district, severity, n in rows:
        by_severity[severity] = by_severity.get(severity, 0) + int(n)
        name, name_zh = names.get(district, (district or "unknown", None))
        d = districts.setdefault(
            district, {"district": district, "name": name, "name_zh": name_zh, "by_severity": {}}
        )
        d["by_severity"][severity] = int(n)
    return {
        "by_severity": by_severity,
        "by_district": sorted(districts.values(), key=lambda d: d["district"]),
    }


async def _kpis(rt: Runtime, principal: Principal, level: str) -> dict[str, Any] | None:
    """The alert KPIs of the last seven local days (None if the alerts package is absent)."""
    try:
        from alerts.kpi import kpis, local_days  # noqa: PLC0415 - optional: the dashboard runs without it
    except ImportError:
        return None
    zone = rt.settings.alerts_timezone
    since, until = local_days(time.time(), zone)
    async with rt.pool.connection() as conn:
        rows = await kpis(
            conn,
            scope=principal.scope_path,
            level=level,
            since=since,
            until=until,
            timezone=zone,
        )
    return {"level": level, "since": since, "until": until, "rows": rows}


async def _guarded(name: str, coro: Awaitable[T]) -> tuple[T | None, str | None]:
    """Run one panel's query; a database problem empties that panel, not the whole page."""
    try:
        async with asyncio.timeout(_QUERY_TIMEOUT_S):
            return await coro, None
    except (psycopg.Error, OSError, TimeoutError) as exc:
        log.warning("ops summary: %s unavailable (%r)", name, exc)
        return None, f"{name} unavailable"


def build_routers() -> list[APIRouter]:
    pages = APIRouter(tags=["web"], include_in_schema=False)

    @pages.get("/console")
    async def console() -> Response:
        return _page("console.html")

    @pages.get("/ops")
    async def ops() -> Response:
        return _page("ops.html")

    pages.mount("/web", _Revalidated(directory=STATIC_DIR), name="web-static")

    api = APIRouter(prefix="/api/v1", tags=["ops"])

    @api.get("/ops/summary")
    async def ops_summary(
        request: Request,
        principal: OpsReader,
        level: Literal["community", "street", "district", "city"] = "district",
    ) -> Any:
        """Ingest throughput, rejections, write latency, lag and queue depths (the last few
        minutes, one point per sampling interval), plus devices, open incidents and KPIs in
        the caller's scope. A panel whose source is missing or down is null, with a note."""
        rt = _runtime(request)
        sampler = _sampler(rt)
        snap = sampler.latest()
        devices, devices_err = await _guarded("devices", _devices(rt, principal))
        incidents, incidents_err = await _guarded("incidents", _incidents(rt, principal))
        kpi, kpi_err = await _guarded("kpis", _kpis(rt, principal, level))
        notes = [e for e in (devices_err, incidents_err, kpi_err) if e]
        if devices is None and devices_err is None:
            notes.append("devices: the registry's presence tracker is not running")
        return jsonable_encoder(
            {
                "now": time.time(),
                "scope": principal.scope_path,
                "interval_s": sampler.interval_s,
                "uptime_s": time.time() - rt.started_ts,
                "history": [p.as_json() for p in sampler.history()],
                "rejected_total": totals(snap, REJECTED, "reason"),
                "storage": rt.storage_mode,
                "devices": devices,
                "incidents": incidents,
                "kpis": kpi,
                "notes": notes,
            }
        )

    return [pages, api]


@contextlib.asynccontextmanager
async def _run(rt: Runtime) -> AsyncIterator[None]:
    sampler = OpsSampler(rt.metrics.registry)
    rt.services[SERVICE_KEY] = sampler
    rt.spawn(sampler.sample_loop(), "ingest.web.ops.sample_loop")
    yield


def web_feature() -> Feature:
    """The console, the dashboard and their summary feed, as one feature of the server."""
    from ingest.features import Feature  # noqa: PLC0415 - ingest.features lists this feature

    return Feature(name="web", routers=build_routers, run=_run, tags=["web"])
