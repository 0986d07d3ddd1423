"""HTTP and WebSocket surface of the alert side, under /api/v1.

Every read and write takes the caller's scope and filters in SQL; an incident outside it
answers 404 exactly like one that does not exist. Every call is audited; identical list reads
within a window are one audit row with a count (``devices.audit.audit_list_read``). The
WebSocket carries notices to the console and one frame back, ``shown`` (what the console's
screen now shows, which stamps "delivered").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal

import msgspec
import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, WebSocket, status
from fastapi.encoders import jsonable_encoder
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect

from alerts.channels import verify
from alerts.engine import AlertEngine
from alerts.errors import IncidentNotFoundError, InvalidTransitionError, NotFoundError
from alerts.escalation import call_result
from alerts.incidents import CLOSED_STATES, HELP, OPEN_STATES, OUTCOMES
from alerts.kpi import kpis, local_days
from devices.audit import audit, audit_list_read, read_key
from devices.auth import AuthError, Principal, principal_from_token, require_roles

log = logging.getLogger(__name__)

STAFF = ("dispatcher", "supervisor", "operator", "admin")
RESPONDERS = ("dispatcher", "supervisor", "admin")
MAX_SHOWN = 1000  # incident ids in one "shown" frame (the queue's own limit)


def get_engine(request: Request) -> AlertEngine:
    """The engine of this server (``runtime.services['alerts']``, set by the feature)."""
    engine = getattr(request.app.state, "alerts", None)
    if engine is None:
        engine = request.app.state.runtime.services.get("alerts")
    if not isinstance(engine, AlertEngine):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "alerts not running")
    return engine


EngineDep = Annotated[AlertEngine, Depends(get_engine)]
Staff = Annotated[Principal, require_roles(*STAFF)]
Responder = Annotated[Principal, require_roles(*RESPONDERS)]


@contextlib.contextmanager
def _domain_errors() -> Iterator[None]:
    try:
        yield
    except (IncidentNotFoundError, NotFoundError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    except InvalidTransitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _admin(principal: Principal) -> bool:
    """Admins also see incidents of devices nobody can place (docs/alerts.md, "Access")."""
    return principal.role == "admin"


class ShownFrame(msgspec.Struct, frozen=True, tag_field="type", tag="shown"):
    """Console -> server: these incidents are now on my screen (docs/console.md)."""

    incident_ids: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]], msgspec.Meta(max_length=MAX_SHOWN)
    ]


class DispatchBody(BaseModel):
    help: list[str] = Field(
        min_length=1, description="family, community_helper, grid_worker, ambulance_120, ..."
    )
    note: str = Field(default="", max_length=2000)


class ResolveBody(BaseModel):
    outcome: str
    reason: str | None = Field(default=None, max_length=2000)


class CancelBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class NoteBody(BaseModel):
    text: str = Field(min_length=1, max_length=4000)


class WindowBody(BaseModel):
    device_id: str | None = None
    area_path: str | None = Field(default=None, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+){0,3}$")
    starts_at: dt.datetime
    ends_at: dt.datetime
    reason: str = Field(default="", max_length=500)


class CallResultBody(BaseModel):
    status: Literal["accepted", "declined", "no_answer"]


def _client_frame(text: str) -> ShownFrame | None:
    """The one message a console sends; anything else is ignored (and logged)."""
    try:
        return msgspec.json.decode(text, type=ShownFrame)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        log.info("ignored console frame: %s (%.100s)", exc, text)
        return None


async def _shown(engine: AlertEngine, principal: Principal, incident_ids: list[int]) -> None:
    """Stamp "delivered" for what a dispatcher's screen now shows (in scope, still raised)."""
    if not incident_ids:
        return
    try:
        async with asyncio.timeout(engine.config.db_timeout_s):
            async with engine.pool.connection() as conn:
                await engine.store.mark_shown(
                    conn,
                    incident_ids,
                    actor=principal.username,
                    scope=principal.scope_path,
                    admin=_admin(principal),
                    now_ts=engine.clock.now(),
                )
    except (psycopg.OperationalError, PoolTimeout, TimeoutError, OSError) as exc:
        # The console confirms again on its next queue read; the live path does not wait.
        log.warning("delivered stamp for %d incidents deferred: %r", len(incident_ids), exc)
    except psycopg.Error:
        # Refused by the database: the console's socket must stay up regardless.
        log.exception("delivered stamp for %d incidents failed", len(incident_ids))


def routers() -> list[APIRouter]:
    router = APIRouter(prefix="/api/v1", tags=["alerts"])

    @router.get("/incidents")
    async def list_incidents(
        *,
        request: Request,
        engine: EngineDep,
        principal: Staff,
        state: Annotated[list[str] | None, Query()] = None,
        severity: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> Any:
        """The queue for the caller's part of the tree: critical first, then oldest."""
        states = state or list(OPEN_STATES)
        if any(s not in OPEN_STATES + CLOSED_STATES for s in states):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "unknown state")
        async with engine.pool.connection() as conn:
            rows = await engine.store.queue(
                conn,
                scope=principal.scope_path,
                admin=_admin(principal),
                states=states,
                severities=severity,
                limit=limit,
            )
            ids = sorted(int(r["incident_id"]) for r in rows)
            params = {"state": sorted(states), "severity": sorted(severity or []), "limit": limit}
            await audit_list_read(
                conn,
                principal,
                "list_incidents",
                key=read_key(scope=principal.scope_path, params=params, incident_ids=ids),
                now_ts=engine.clock.now(),
                window_s=engine.config.audit_coalesce_s,
                record_type="incident",
                scope_path=principal.scope_path,
                source_ip=_ip(request),
                detail={"n": len(rows), "incident_ids": ids, "params": params},
            )
        return jsonable_encoder(rows)

    @router.get("/incidents/{incident_id}")
    async def get_incident(
        incident_id: int, request: Request, engine: EngineDep, principal: Staff
    ) -> Any:
        """Everything needed to send help: resident, contacts, vitals, location, the trace."""
        async with engine.pool.connection() as conn:
            with _domain_errors():
                out = await engine.store.detail(
                    conn, incident_id, scope=principal.scope_path, admin=_admin(principal)
                )
            await audit(
                conn,
                principal,
                "read_incident",
                record_type="incident",
                record_id=incident_id,
                scope_path=out["incident"]["area_path"],
                source_ip=_ip(request),
            )
        return jsonable_encoder(out)

    async def _act(
        request: Request,
        engine: AlertEngine,
        principal: Principal,
        incident_id: int,
        *,
        action: str,
        detail: dict[str, Any],
        **kwargs: Any,
    ) -> dict[str, Any]:
        store = engine.store
        fns: dict[str, Callable[..., Awaitable[Any]]] = {
            "acknowledge": store.acknowledge,
            "dispatch": store.dispatch,
            "resolve": store.resolve,
            "cancel": store.cancel,
            "note": store.add_note,
        }
        fn = fns[action]
        async with engine.pool.connection() as conn:
            with _domain_errors():
                result = await fn(
                    conn,
                    incident_id,
                    actor=principal.username,
                    scope=principal.scope_path,
                    admin=_admin(principal),
                    now_ts=engine.clock.now(),
                    **kwargs,
                )
            await audit(
                conn,
                principal,
                f"{action}_incident",
                record_type="incident",
                record_id=incident_id,
                scope_path=principal.scope_path,
                source_ip=_ip(request),
                detail=detail,
            )
        return {"incident_id": incident_id, "state": result}

    @router.post("/incidents/{incident_id}/acknowledge")
    async def acknowledge(
        incident_id: int, request: Request, engine: EngineDep, principal: Responder
    ) -> dict[str, Any]:
        return await _act(request, engine, principal, incident_id, action="acknowledge", detail={})

    @router.post("/incidents/{incident_id}/dispatch")
    async def dispatch(
        incident_id: int,
        body: DispatchBody,
        request: Request,
        engine: EngineDep,
        principal: Responder,
    ) -> dict[str, Any]:
        unknown = [h for h in body.help if h not in HELP]
        if unknown:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"unknown help {unknown}")
        return await _act(
            request,
            engine,
            principal,
            incident_id,
            action="dispatch",
            detail=body.model_dump(),
            help_sent=body.help,
            note=body.note,
        )

    @router.post("/incidents/{incident_id}/notes")
    async def add_note(
        incident_id: int,
        body: NoteBody,
        request: Request,
        engine: EngineDep,
        principal: Responder,
    ) -> dict[str, Any]:
        await _act(
            request, engine, principal, incident_id, action="note", detail={}, text=body.text
        )
        return {"incident_id": incident_id, "noted": True}

    @router.post("/incidents/{incident_id}/resolve")
    async def resolve(
        incident_id: int,
        body: ResolveBody,
        request: Request,
        engine: EngineDep,
        principal: Responder,
    ) -> dict[str, Any]:
        if body.outcome not in OUTCOMES:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "unknown outcome")
        return await _act(
            request,
            engine,
            principal,
            incident_id,
            action="resolve",
            detail=body.model_dump(),
            outcome=body.outcome,
            reason=body.reason,
        )

    @router.post("/incidents/{incident_id}/cancel")
    async def cancel(
        incident_id: int,
        body: CancelBody,
        request: Request,
        engine: EngineDep,
        principal: Responder,
    ) -> dict[str, Any]:
        return await _act(
            request,
            engine,
            principal,
            incident_id,
            action="cancel",
            detail=body.model_dump(),
            reason=body.reason,
        )

    @router.get("/kpis")
    async def get_kpis(
        *,
        request: Request,
        engine: EngineDep,
        principal: Staff,
        level: Literal["community", "street", "district", "city"] = "district",
        since: dt.date | None = None,
        until: dt.date | None = None,
        include_device_faults: bool = False,
    ) -> Any:
        """Per area at ``level`` and per local day (``CARECALL_ALERTS_TIMEZONE``), in scope."""
        zone = engine.config.timezone
        since, until = local_days(engine.clock.now(), zone, since=since, until=until)
        async with engine.pool.connection() as conn:
            rows = await kpis(
                conn,
                scope=principal.scope_path,
                level=level,
                since=since,
                until=until,
                timezone=zone,
                include_device_faults=include_device_faults,
            )
            params = {
                "level": level,
                "since": since.isoformat(),
                "until": until.isoformat(),
                "include_device_faults": include_device_faults,
            }
            await audit_list_read(
                conn,
                principal,
                "read_kpis",
                key=read_key(scope=principal.scope_path, params=params),
                now_ts=engine.clock.now(),
                window_s=engine.config.audit_coalesce_s,
                scope_path=principal.scope_path,
                source_ip=_ip(request),
                detail=params,
            )
        return jsonable_encoder({"level": level, "since": since, "until": until, "rows": rows})

    @router.get("/maintenance-windows")
    async def list_windows(engine: EngineDep, principal: Staff) -> Any:
        async with engine.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT w.window_id, w.device_id, w.area_path::text, w.starts_at, w.ends_at,
                          w.reason, w.created_by,
                          (SELECT count(*) FROM suppressed_detections s
                           WHERE s.window_id = w.window_id) AS suppressed
                   FROM maintenance_windows w LEFT JOIN devices d USING (device_id)
                   WHERE coalesce(w.area_path, d.area_path) <@ %s::ltree
                   ORDER BY w.starts_at DESC LIMIT 500""",
                (principal.scope_path,),
            )
            cols = [
                "window_id",
                "device_id",
                "area_path",
                "starts_at",
                "ends_at",
                "reason",
                "created_by",
                "suppressed",
            ]
            return jsonable_encoder([dict(zip(cols, r, strict=True)) for r in await cur.fetchall()])

    @router.post("/maintenance-windows", status_code=status.HTTP_201_CREATED)
    async def create_window(
        body: WindowBody,
        request: Request,
        engine: EngineDep,
        principal: Annotated[Principal, require_roles("operator", "supervisor", "admin")],
    ) -> Any:
        if (body.device_id is None) == (body.area_path is None):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY, "give exactly one of device_id and area_path"
            )
        if body.ends_at <= body.starts_at:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "ends_at before starts_at")
        async with engine.pool.connection() as conn:
            area = body.area_path
            if body.device_id is not None:
                cur = await conn.execute(
                    "SELECT area_path::text FROM devices WHERE device_id = %s", (body.device_id,)
                )
                row = await cur.fetchone()
                area = None if row is None else row[0]
            if not principal.covers(area):
                raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
            cur = await conn.execute(
                "INSERT INTO maintenance_windows (device_id, area_path, starts_at, ends_at,"
                " reason, created_by) VALUES (%s, %s::ltree, %s, %s, %s, %s) RETURNING window_id",
                (
                    body.device_id,
                    body.area_path,
                    body.starts_at,
                    body.ends_at,
                    body.reason,
                    principal.username,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            await audit(
                conn,
                principal,
                "create_maintenance_window",
                record_type="maintenance_window",
                record_id=row[0],
                scope_path=area,
                source_ip=_ip(request),
                detail=jsonable_encoder(body.model_dump()),
            )
        return {"window_id": row[0]}

    @router.delete("/maintenance-windows/{window_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def end_window(
        window_id: int,
        request: Request,
        engine: EngineDep,
        principal: Annotated[Principal, require_roles("operator", "supervisor", "admin")],
    ) -> None:
        """End a window now (kept for the record, with its suppressed detections)."""
        async with engine.pool.connection() as conn:
            cur = await conn.execute(
                """UPDATE maintenance_windows w SET ends_at = greatest(w.starts_at + interval
                       '1 microsecond', least(w.ends_at, now()))
                   FROM (SELECT w2.window_id, coalesce(w2.area_path, d.area_path) AS area
                         FROM maintenance_windows w2 LEFT JOIN devices d USING (device_id)) a
                   WHERE w.window_id = %s AND a.window_id = w.window_id
                     AND a.area <@ %s::ltree
                   RETURNING a.area::text""",
                (window_id, principal.scope_path),
            )
            row = await cur.fetchone()
            if row is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
            await audit(
                conn,
                principal,
                "end_maintenance_window",
                record_type="maintenance_window",
                record_id=window_id,
                scope_path=row[0],
                source_ip=_ip(request),
            )

    @router.get("/suppressed")
    async def suppressed(engine: EngineDep, principal: Staff, hours: float = 24.0) -> Any:
        """Detections deliberately not raised in the last ``hours``, counted by reason."""
        async with engine.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT reason, kind, count(*) FROM suppressed_detections"
                " WHERE area_path <@ %s::ltree AND at > now() - make_interval(secs => %s)"
                " GROUP BY reason, kind ORDER BY 3 DESC",
                (principal.scope_path, hours * 3600),
            )
            return [{"reason": r, "kind": k, "count": n} for r, k, n in await cur.fetchall()]

    @router.post("/gateway/calls/{call_id}")
    async def gateway_call_result(call_id: int, request: Request, engine: EngineDep) -> Any:
        """The SMS/voice gateway's status callback, signed with the shared secret."""
        secret = engine.config.gateway_callback_secret
        if not secret:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "callbacks not configured")
        raw = await request.body()
        sig = request.headers.get("X-CareCall-Signature", "")
        if not verify(
            secret.encode(),
            raw,
            sig,
            now_s=engine.clock.now(),
            tolerance_s=engine.config.callback_tolerance_s,
        ):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad signature")
        body = CallResultBody.model_validate_json(raw)
        async with engine.pool.connection() as conn:
            incident_id, notices = await call_result(
                conn, call_id, body.status, now_ts=engine.clock.now()
            )
            if incident_id is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
            await audit(
                conn,
                None,
                "gateway_call_result",
                record_type="incident_call",
                record_id=call_id,
                source_ip=_ip(request),
                detail={"status": body.status},
            )
        for n in notices:
            engine.notifier.publish(n)
        return {"call_id": call_id, "incident_id": incident_id, "status": body.status}

    @router.websocket("/ws")
    async def console_ws(websocket: WebSocket, token: str = "") -> None:
        """Incident events for the caller's part of the tree, pushed as JSON text frames."""
        try:
            principal = principal_from_token(token, websocket.app.state.auth)
        except AuthError:
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
            return
        engine = getattr(
            websocket.app.state, "alerts", None
        ) or websocket.app.state.runtime.services.get("alerts")
        await websocket.accept()
        session = engine.hub.connect(
            principal,
            sees_unplaced=_admin(principal) or engine.cache.is_root(principal.scope_path),
        )
        try:
            await websocket.send_text(
                json.dumps(
                    {"type": "hello", "user": principal.username, "scope": principal.scope_path}
                )
            )

            async def writer() -> None:
                while True:
                    notice = await session.queue.get()
                    if session.lagging:
                        session.lagging = False
                        await websocket.send_text('{"type":"resync"}')
                    await websocket.send_text(notice.json().decode())
                    engine.hub.pushed(notice)

            async def reader() -> None:
                with contextlib.suppress(WebSocketDisconnect):
                    while True:
                        frame = _client_frame(await websocket.receive_text())
                        if frame is not None and principal.role in RESPONDERS:
                            await _shown(engine, principal, frame.incident_ids)

            tasks = [
                asyncio.create_task(writer(), name="alerts.ws.writer"),
                asyncio.create_task(reader(), name="alerts.ws.reader"),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            engine.hub.disconnect(session)

    return [router]
