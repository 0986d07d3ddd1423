"""The registry's REST API under /api/v1: areas, residents, contacts, devices, staff, audit.

Scope is enforced in SQL: every statement that returns or changes a resident, contact,
device, staff user or audit row carries ``area_path <@ %(scope)s`` (or the equivalent) built
from the caller's token, so an out-of-scope record is never fetched. Such a record answers
exactly like a missing one (404, same body), whatever the id, guessed or not.

Roles (docs/registry.md): dispatcher reads residents, contacts and devices; supervisor also
edits residents and contacts and queries the audit trail; operator manages devices and their
broker credentials; admin does everything, including areas and staff users. Every read of a
resident's personal data or of a device, every change, every provisioning, every login and
every token refresh is audited in the same transaction as the read or change; identical list
reads within a window share one audit row (``devices.audit.audit_list_read``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Protocol

import psycopg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordRequestForm
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from devices.audit import audit, audit_list_read, read_key
from devices.auth import (
    AuthError,
    Principal,
    PrincipalDep,
    admit,
    decode_token,
    get_auth_config,
    hash_password,
    issue_token,
    oauth2_scheme,
    require_roles,
    verify_password,
)
from devices.broker_acl import mosquitto_hash, new_device_password, usable_as_broker_username
from devices.errors import (
    ConflictError,
    InvalidReferenceError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from devices.login import LoginThrottle
from devices.presence import PresenceTracker
from devices.schemas import (
    AreaIn,
    AreaOut,
    AreaPatch,
    AuditOut,
    ContactIn,
    ContactOut,
    ContactPatch,
    CredentialsOut,
    DeviceIn,
    DeviceOut,
    DevicePatch,
    Page,
    PresenceOut,
    ResidentIn,
    ResidentOut,
    ResidentPatch,
    StaffIn,
    StaffOut,
    StaffPatch,
    TokenOut,
)
from devices.staff import StaffAccess, StaffCache

Conn = psycopg.AsyncConnection[Any]

READ_PERSONAL = ("dispatcher", "supervisor", "admin")
EDIT_PERSONAL = ("supervisor", "admin")
READ_DEVICES = ("dispatcher", "supervisor", "operator", "admin")
EDIT_DEVICES = ("operator", "admin")
READ_AUDIT = ("supervisor", "admin")
ADMIN = ("admin",)
# Roles that see devices not yet placed anywhere (area_path NULL): the stock being provisioned.
STOCK_ROLES = ("operator", "admin")

_LEVELS = ("city", "district", "street", "community")

# Module level, not inside the router builders: FastAPI resolves these (string) annotations
# in the module's namespace.
AdminDep = Annotated[Principal, require_roles(*ADMIN)]
PersonalReaderDep = Annotated[Principal, require_roles(*READ_PERSONAL)]
PersonalEditorDep = Annotated[Principal, require_roles(*EDIT_PERSONAL)]
DeviceReaderDep = Annotated[Principal, require_roles(*READ_DEVICES)]
DeviceEditorDep = Annotated[Principal, require_roles(*EDIT_DEVICES)]
AuditorDep = Annotated[Principal, require_roles(*READ_AUDIT)]


class RegistryContext(Protocol):
    """What the routes need from the running registry service (devices.feature)."""

    @property
    def pool(self) -> AsyncConnectionPool[Any]: ...

    @property
    def presence(self) -> PresenceTracker: ...

    @property
    def throttle(self) -> LoginThrottle: ...

    @property
    def staff(self) -> StaffCache: ...

    @property
    def audit_coalesce_s(self) -> float: ...


class RegistryRoute(APIRoute):
    """Maps the registry's domain errors, and the database's integrity errors, to HTTP."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RegistryError as exc:
                return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
            except psycopg.errors.UniqueViolation:
                return JSONResponse({"detail": "already exists"}, status_code=409)
            except (
                psycopg.errors.CheckViolation,
                psycopg.errors.ForeignKeyViolation,
                psycopg.errors.NotNullViolation,
            ) as exc:
                detail = exc.diag.message_primary or "constraint violated"
                return JSONResponse({"detail": detail}, status_code=422)

        return route


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _audit_listing(
    conn: Conn,
    ctx: RegistryContext,
    request: Request,
    principal: Principal,
    *,
    record_type: str,
    ids: list[Any],
    filters: dict[str, Any],
) -> None:
    """A listing of ``record_type`` rows: one audit row per identical read within the
    coalescing window (devices/audit.py), naming the rows returned."""
    id_key = f"{record_type}_ids"
    await audit_list_read(
        conn,
        principal,
        f"list_{record_type}s",
        key=read_key(scope=principal.scope_path, filters=filters, **{id_key: ids}),
        now_ts=time.time(),
        window_s=ctx.audit_coalesce_s,
        record_type=record_type,
        scope_path=principal.scope_path,
        source_ip=_ip(request),
        detail={id_key: ids, "filters": filters},
    )


def _scope(p: Principal) -> dict[str, Any]:
    return {"scope": p.scope_path, "stock": p.role in STOCK_ROLES}


async def _rows(conn: Conn, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def _one(conn: Conn, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
    rows = await _rows(conn, query, params)
    return rows[0] if rows else None


async def _page(
    conn: Conn,
    *,
    select: str,
    from_where: str,
    order_by: str,
    params: dict[str, Any],
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    cur = await conn.execute(f"SELECT count(*) {from_where}", params)
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    rows = await _rows(
        conn,
        f"SELECT {select} {from_where} ORDER BY {order_by} LIMIT %(limit)s OFFSET %(offset)s",
        {**params, "limit": limit, "offset": offset},
    )
    return rows, total


def _set_clause(changes: dict[str, Any], casts: dict[str, str] | None = None) -> sql.Composed:
    """``col = %(col)s, ...`` for the fields a PATCH body actually carried."""
    casts = casts or {}
    return sql.SQL(", ").join(
        sql.SQL("{} = {}").format(
            sql.Identifier(k),
            sql.SQL(f"%({k})s{casts.get(k, '')}"),  # k is a model field name, never input
        )
        for k in changes
    )


Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, description="rows to skip")]
Ctx = Callable[[], RegistryContext]

_RESIDENT_COLS = (
    "resident_id, full_name, birth_year, sex, phone, address, community_id,"
    " area_path::text AS area_path, home_lat, home_lon, medical_notes, spo2_scale,"
    " waking_start, waking_end, created_at, updated_at, retired_at"
)
_DEVICE_COLS = (
    "device_id, device_type, model, firmware, active, resident_id, area_path::text AS area_path,"
    " position, mqtt_password_hash IS NOT NULL AS provisioned, created_at, retired_at"
)
_DEVICE_SCOPE = "(area_path <@ %(scope)s::ltree OR (area_path IS NULL AND %(stock)s))"
_CONTACT_COLS = (
    "c.contact_id, c.resident_id, c.priority, c.role, c.name, c.phone, c.relation, c.retired_at"
)
_STAFF_COLS = (
    "user_id, username, full_name, role, scope_path::text AS scope_path, phone, on_duty,"
    " created_at, retired_at"
)
_AREA_COLS = "area_id, path::text AS path, level, name, name_zh, created_at, retired_at"


def build_routers(ctx: RegistryContext) -> list[APIRouter]:
    """The registry's routers, bound to a running service."""
    return [
        _auth_router(ctx),
        _areas_router(ctx),
        _residents_router(ctx),
        _devices_router(ctx),
        _staff_router(ctx),
        _audit_router(ctx),
    ]


def _router(tag: str) -> APIRouter:
    return APIRouter(prefix="/api/v1", tags=[tag], route_class=RegistryRoute)


def _pool(ctx: RegistryContext) -> AsyncConnectionPool[Any]:
    try:
        return ctx.pool
    except RuntimeError as exc:
        raise UnavailableError("registry not running") from exc


# -- auth --------------------------------------------------------------------------------------


def _unauthorized(detail: str = "not authenticated") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _staff_cache(ctx: RegistryContext) -> StaffCache:
    try:
        return ctx.staff
    except RuntimeError as exc:
        raise UnavailableError("registry not running") from exc


_ACCESS_COLS = (
    "user_id, username, role, scope_path::text AS scope_path, token_version,"
    " retired_at IS NOT NULL AS retired"
)


def _access(row: dict[str, Any]) -> StaffAccess:
    return StaffAccess(
        row["user_id"],
        row["username"],
        row["role"],
        row["scope_path"],
        row["token_version"],
        row["retired"],
    )


def _auth_router(ctx: RegistryContext) -> APIRouter:
    r = _router("auth")

    @r.post(
        "/auth/token",
        response_model=TokenOut,
        responses={401: {"description": "wrong credentials"}, 429: {"description": "throttled"}},
    )
    async def login(
        request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> TokenOut | JSONResponse:
        """OAuth2 password flow: a short-lived bearer token, renewed by ``/auth/refresh``.
        Failed logins are throttled per username and per source address (shared by every
        server process), and every attempt is audited."""
        ip = _ip(request)
        username = form.username[:64]
        keys = (f"user:{username.lower()}", f"ip:{ip}")
        throttle = ctx.throttle
        async with _pool(ctx).connection() as conn:
            wait_s = await throttle.retry_after_s(conn, *keys)
            if wait_s > 0:
                await audit(
                    conn, None, "login_throttled", record_type="staff_user",
                    source_ip=ip, detail={"username": username},
                )  # fmt: skip
                return JSONResponse(
                    {"detail": "too many failed logins; try later"},
                    status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(int(wait_s) + 1)},
                )
            user = await _one(
                conn,
                f"SELECT {_ACCESS_COLS}, password_hash FROM staff_users"
                " WHERE username = %(u)s AND retired_at IS NULL",
                {"u": username},
            )
            # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
            ok = await asyncio.to_thread(
                verify_password, form.password, user["password_hash"] if user else None
            )
            if user is None or not ok:
                await throttle.failed(conn, *keys)
                await audit(
                    conn, None, "login_failed", record_type="staff_user",
                    record_id=user["user_id"] if user else None,
                    scope_path=user["scope_path"] if user else None,
                    source_ip=ip, detail={"username": username},
                )  # fmt: skip
                raise _unauthorized("wrong username or password")
            await throttle.succeeded(conn, keys[0])
            access = _access(user)
            _staff_cache(ctx).remember(access)
            principal = Principal(access.user_id, access.username, access.role, access.scope_path)
            await audit(
                conn, principal, "login", record_type="staff_user", record_id=principal.user_id,
                scope_path=principal.scope_path, source_ip=ip,
            )  # fmt: skip
        config = get_auth_config(request)
        token = issue_token(principal, config, token_version=access.token_version)
        return TokenOut(access_token=token, expires_in=config.token_ttl_s)

    @r.post(
        "/auth/refresh",
        response_model=TokenOut,
        responses={401: {"description": "token expired or revoked, or session too old"}},
    )
    async def refresh(request: Request, token: Annotated[str, Depends(oauth2_scheme)]) -> TokenOut:
        """A new token for the same session, from a token that is still valid. It carries the
        user's current role and scope. Refused (401: sign in again) for an expired token, a
        retired user, a revoked token (password changed) or a session that began more than
        the session limit ago (13 h by default). Audited."""
        config = get_auth_config(request)
        try:
            claims = decode_token(token, config)
        except AuthError as exc:
            raise _unauthorized() from exc
        now = int(time.time())
        session_end = claims.auth_time + config.session_max_s
        if session_end <= now:
            raise _unauthorized("session expired; sign in again")
        async with _pool(ctx).connection() as conn:
            row = await _one(
                conn,
                f"SELECT {_ACCESS_COLS} FROM staff_users WHERE user_id = %(id)s",
                {"id": claims.principal.user_id},
            )
            access = _access(row) if row is not None else None
            if access is not None:
                _staff_cache(ctx).remember(access)
            try:
                principal = admit(claims, access)
            except AuthError as exc:
                raise _unauthorized() from exc
            assert access is not None
            await audit(
                conn, principal, "refresh_token", record_type="staff_user",
                record_id=principal.user_id, scope_path=principal.scope_path,
                source_ip=_ip(request),
                detail={"auth_time": claims.auth_time},
            )  # fmt: skip
        fresh = issue_token(
            principal,
            config,
            token_version=access.token_version,
            auth_time=claims.auth_time,
            not_after=session_end,
            now=now,
        )
        return TokenOut(access_token=fresh, expires_in=min(config.token_ttl_s, session_end - now))

    @r.get("/auth/me", response_model=StaffOut)
    async def me(principal: PrincipalDep) -> StaffOut:
        """The caller's own staff record."""
        async with _pool(ctx).connection() as conn:
            row = await _one(
                conn,
                f"SELECT {_STAFF_COLS} FROM staff_users WHERE user_id = %(id)s"
                " AND retired_at IS NULL",
                {"id": principal.user_id},
            )
        if row is None:
            raise NotFoundError("staff user")
        return StaffOut(**row)

    return r


# -- areas -------------------------------------------------------------------------------------


def _areas_router(ctx: RegistryContext) -> APIRouter:
    r = _router("areas")

    @r.get("/areas", response_model=Page[AreaOut])
    async def list_areas(
        *,
        principal: PrincipalDep,
        limit: Limit = 100,
        offset: Offset = 0,
        level: Annotated[str | None, Query(pattern="^(city|district|street|community)$")] = None,
        under: Annotated[str | None, Query(description="an area id: its subtree only")] = None,
        include_retired: bool = False,
    ) -> Page[AreaOut]:
        """Areas in the caller's subtree."""
        where = ["path <@ %(scope)s::ltree"]
        if level:
            where.append("level = %(level)s")
        if under:
            where.append("path <@ (SELECT path FROM areas WHERE area_id = %(under)s)")
        if not include_retired:
            where.append("retired_at IS NULL")
        async with _pool(ctx).connection() as conn:
            rows, total = await _page(
                conn,
                select=_AREA_COLS,
                from_where="FROM areas WHERE " + " AND ".join(where),
                order_by="path",
                params={**_scope(principal), "level": level, "under": under},
                limit=limit,
                offset=offset,
            )
        return Page(items=[AreaOut(**x) for x in rows], total=total, limit=limit, offset=offset)

    @r.get("/areas/{area_id}", response_model=AreaOut)
    async def get_area(principal: PrincipalDep, area_id: str) -> AreaOut:
        async with _pool(ctx).connection() as conn:
            row = await _one(
                conn,
                f"SELECT {_AREA_COLS} FROM areas WHERE area_id = %(id)s"
                " AND path <@ %(scope)s::ltree",
                {**_scope(principal), "id": area_id},
            )
        if row is None:
            raise NotFoundError("area")
        return AreaOut(**row)

    @r.post("/areas", response_model=AreaOut, status_code=201)
    async def create_area(request: Request, principal: AdminDep, body: AreaIn) -> AreaOut:
        """A city (no parent) or a district, street or community under its parent."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            if body.parent_id is None:
                parent_path, level = "", "city"
            else:
                parent = await _one(
                    conn,
                    "SELECT path::text AS path, level FROM areas WHERE area_id = %(id)s"
                    " AND retired_at IS NULL AND path <@ %(scope)s::ltree",
                    {**_scope(principal), "id": body.parent_id},
                )
                if parent is None:
                    raise InvalidReferenceError("parent_id", "no such area")
                if parent["level"] == "community":
                    raise InvalidReferenceError("parent_id", "a community has no sub-areas")
                parent_path = parent["path"]
                level = _LEVELS[_LEVELS.index(parent["level"]) + 1]
            path = f"{parent_path}.{body.area_id}" if parent_path else body.area_id
            if not principal.covers(path):
                raise InvalidReferenceError("parent_id", "no such area")
            row = await _one(
                conn,
                f"INSERT INTO areas (area_id, path, level, name, name_zh) VALUES"
                f" (%(id)s, %(path)s::ltree, %(level)s, %(name)s, %(name_zh)s)"
                f" RETURNING {_AREA_COLS}",
                {
                    "id": body.area_id,
                    "path": path,
                    "level": level,
                    "name": body.name,
                    "name_zh": body.name_zh,
                },
            )
            assert row is not None
            await audit(
                conn, principal, "create_area", record_type="area", record_id=body.area_id,
                scope_path=path, source_ip=_ip(request),
            )  # fmt: skip
        return AreaOut(**row)

    @r.patch("/areas/{area_id}", response_model=AreaOut)
    async def update_area(
        request: Request, principal: AdminDep, area_id: str, body: AreaPatch
    ) -> AreaOut:
        changes = body.model_dump(exclude_unset=True)
        return await _update_area(ctx, request, principal, area_id, changes, action="update_area")

    @r.delete("/areas/{area_id}", response_model=AreaOut)
    async def retire_area(request: Request, principal: AdminDep, area_id: str) -> AreaOut:
        """Soft delete; refused while the area still holds live residents or sub-areas."""
        async with _pool(ctx).connection() as conn:
            busy = await _one(
                conn,
                "SELECT (SELECT count(*) FROM areas c WHERE c.path <@ a.path AND c.path <> a.path"
                "  AND c.retired_at IS NULL)"
                " + (SELECT count(*) FROM residents r WHERE r.area_path <@ a.path"
                "  AND r.retired_at IS NULL) AS n"
                " FROM areas a WHERE a.area_id = %(id)s AND a.path <@ %(scope)s::ltree",
                {**_scope(principal), "id": area_id},
            )
        if busy is not None and busy["n"] > 0:
            raise ConflictError("area still has live sub-areas or residents")
        return await _update_area(
            ctx,
            request,
            principal,
            area_id,
            {"retired_at": dt.datetime.now(dt.UTC)},
            action="retire",
        )

    return r


async def _update_area(
    ctx: RegistryContext,
    request: Request,
    principal: Principal,
    area_id: str,
    changes: dict[str, Any],
    *,
    action: str,
) -> AreaOut:
    async with _pool(ctx).connection() as conn, conn.transaction():
        if changes:
            query = sql.SQL(
                "UPDATE areas SET {} WHERE area_id = %(id)s AND path <@ %(scope)s::ltree"
                " RETURNING {}"
            ).format(_set_clause(changes), sql.SQL(_AREA_COLS))
        else:
            query = sql.SQL(
                "SELECT {} FROM areas WHERE area_id = %(id)s AND path <@ %(scope)s::ltree"
            ).format(sql.SQL(_AREA_COLS))
        row = await _one(
            conn, query.as_string(conn), {**changes, **_scope(principal), "id": area_id}
        )
        if row is None:
            raise NotFoundError("area")
        await audit(
            conn, principal, action if action != "retire" else "retire_area",
            record_type="area", record_id=area_id, scope_path=row["path"],
            source_ip=_ip(request), detail={"fields": sorted(changes)},
        )  # fmt: skip
    return AreaOut(**row)


# -- residents and contacts --------------------------------------------------------------------


async def _community_path(conn: Conn, principal: Principal, community_id: str) -> str:
    row = await _one(
        conn,
        "SELECT path::text AS path FROM areas WHERE area_id = %(id)s AND level = 'community'"
        " AND retired_at IS NULL AND path <@ %(scope)s::ltree",
        {**_scope(principal), "id": community_id},
    )
    if row is None:
        raise InvalidReferenceError("community_id", "no such community")
    return str(row["path"])


async def _resident_path(conn: Conn, principal: Principal, resident_id: int) -> str:
    """The resident's area path, or NotFoundError when missing or out of scope."""
    row = await _one(
        conn,
        "SELECT area_path::text AS p FROM residents WHERE resident_id = %(id)s"
        " AND area_path <@ %(scope)s::ltree",
        {**_scope(principal), "id": resident_id},
    )
    if row is None:
        raise NotFoundError("resident")
    return str(row["p"])


def _residents_router(ctx: RegistryContext) -> APIRouter:
    r = _router("residents")

    @r.get("/residents", response_model=Page[ResidentOut])
    async def list_residents(
        *,
        request: Request,
        principal: PersonalReaderDep,
        limit: Limit = 50,
        offset: Offset = 0,
        area_id: Annotated[str | None, Query(description="any area: its subtree")] = None,
        community_id: str | None = None,
        name: Annotated[str | None, Query(description="name starts with (case-insensitive)")] = (
            None
        ),
        include_retired: bool = False,
    ) -> Page[ResidentOut]:
        """Residents in the caller's scope. Audited: who listed whom (identical re-reads
        within the coalescing window add to one audit row's count)."""
        where = ["area_path <@ %(scope)s::ltree"]
        if area_id:
            where.append("area_path <@ (SELECT path FROM areas WHERE area_id = %(area)s)")
        if community_id:
            where.append("community_id = %(community)s")
        if name:
            where.append("lower(full_name) LIKE %(name)s")
        if not include_retired:
            where.append("retired_at IS NULL")
        like = (name or "").lower().replace("\\", "\\\\").replace("%", r"\%").replace(
            "_", r"\_"
        ) + "%"
        params = {
            **_scope(principal),
            "area": area_id,
            "community": community_id,
            "name": like if name else None,
        }
        async with _pool(ctx).connection() as conn, conn.transaction():
            rows, total = await _page(
                conn,
                select=_RESIDENT_COLS,
                from_where="FROM residents WHERE " + " AND ".join(where),
                order_by="full_name, resident_id",
                params=params,
                limit=limit,
                offset=offset,
            )
            ids = [x["resident_id"] for x in rows]
            filters = {
                "area_id": area_id,
                "community_id": community_id,
                "name": name,
                "include_retired": include_retired,
                "limit": limit,
                "offset": offset,
            }
            await _audit_listing(
                conn, ctx, request, principal, record_type="resident", ids=ids, filters=filters
            )
        return Page(items=[ResidentOut(**x) for x in rows], total=total, limit=limit, offset=offset)

    @r.get("/residents/{resident_id}", response_model=ResidentOut)
    async def get_resident(
        request: Request, principal: PersonalReaderDep, resident_id: int
    ) -> ResidentOut:
        """One resident's record (health notes included). Audited."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            row = await _one(
                conn,
                f"SELECT {_RESIDENT_COLS} FROM residents WHERE resident_id = %(id)s"
                " AND area_path <@ %(scope)s::ltree",
                {**_scope(principal), "id": resident_id},
            )
            if row is None:
                raise NotFoundError("resident")
            await audit(
                conn, principal, "read_resident", record_type="resident", record_id=resident_id,
                scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return ResidentOut(**row)

    @r.post("/residents", response_model=ResidentOut, status_code=201)
    async def create_resident(
        request: Request, principal: PersonalEditorDep, body: ResidentIn
    ) -> ResidentOut:
        values = body.model_dump()
        async with _pool(ctx).connection() as conn, conn.transaction():
            await _community_path(conn, principal, body.community_id)
            cols = list(values)
            query = sql.SQL("INSERT INTO residents ({}) VALUES ({}) RETURNING {}").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder(c) for c in cols),
                sql.SQL(_RESIDENT_COLS),
            )
            row = await _one(conn, query.as_string(conn), values)
            assert row is not None
            await audit(
                conn, principal, "create_resident", record_type="resident",
                record_id=row["resident_id"], scope_path=row["area_path"],
                source_ip=_ip(request),
            )  # fmt: skip
        return ResidentOut(**row)

    @r.patch("/residents/{resident_id}", response_model=ResidentOut)
    async def update_resident(
        request: Request, principal: PersonalEditorDep, resident_id: int, body: ResidentPatch
    ) -> ResidentOut:
        """Change some fields; moving to another community needs that community in scope."""
        changes = body.model_dump(exclude_unset=True)
        async with _pool(ctx).connection() as conn, conn.transaction():
            await _resident_path(conn, principal, resident_id)
            if changes.get("community_id") is not None:
                await _community_path(conn, principal, changes["community_id"])
            row = await _update_resident(conn, principal, resident_id, changes)
            await audit(
                conn, principal, "update_resident", record_type="resident",
                record_id=resident_id, scope_path=row["area_path"], source_ip=_ip(request),
                detail={"fields": sorted(changes)},
            )  # fmt: skip
        return ResidentOut(**row)

    @r.delete("/residents/{resident_id}", response_model=ResidentOut)
    async def retire_resident(
        request: Request, principal: PersonalEditorDep, resident_id: int
    ) -> ResidentOut:
        """Soft delete (moved away, deceased): kept for the audit trail and history."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            await _resident_path(conn, principal, resident_id)
            row = await _update_resident(
                conn, principal, resident_id, {"retired_at": dt.datetime.now(dt.UTC)}
            )
            await audit(
                conn, principal, "retire_resident", record_type="resident",
                record_id=resident_id, scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return ResidentOut(**row)

    @r.get("/residents/{resident_id}/contacts", response_model=list[ContactOut])
    async def list_contacts(
        request: Request,
        principal: PersonalReaderDep,
        resident_id: int,
        include_retired: bool = False,
    ) -> list[ContactOut]:
        """Whom to call, in order. Audited (names and phone numbers are personal data)."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            path = await _resident_path(conn, principal, resident_id)
            rows = await _rows(
                conn,
                f"SELECT {_CONTACT_COLS} FROM contacts c JOIN residents r USING (resident_id)"
                " WHERE c.resident_id = %(id)s AND r.area_path <@ %(scope)s::ltree"
                " AND (c.retired_at IS NULL OR %(all)s) ORDER BY c.retired_at NULLS FIRST,"
                " c.priority",
                {**_scope(principal), "id": resident_id, "all": include_retired},
            )
            await audit(
                conn, principal, "read_contacts", record_type="resident", record_id=resident_id,
                scope_path=path, source_ip=_ip(request),
            )  # fmt: skip
        return [ContactOut(**x) for x in rows]

    @r.post("/residents/{resident_id}/contacts", response_model=ContactOut, status_code=201)
    async def create_contact(
        request: Request, principal: PersonalEditorDep, resident_id: int, body: ContactIn
    ) -> ContactOut:
        async with _pool(ctx).connection() as conn, conn.transaction():
            path = await _resident_path(conn, principal, resident_id)
            row = await _one(
                conn,
                "INSERT INTO contacts AS c (resident_id, priority, role, name, phone, relation)"
                " VALUES (%(rid)s, %(priority)s, %(role)s, %(name)s, %(phone)s, %(relation)s)"
                f" RETURNING {_CONTACT_COLS}",
                {"rid": resident_id, **body.model_dump()},
            )
            assert row is not None
            await audit(
                conn, principal, "create_contact", record_type="contact",
                record_id=row["contact_id"], scope_path=path, source_ip=_ip(request),
                detail={"resident_id": resident_id},
            )  # fmt: skip
        return ContactOut(**row)

    @r.patch("/contacts/{contact_id}", response_model=ContactOut)
    async def update_contact(
        request: Request, principal: PersonalEditorDep, contact_id: int, body: ContactPatch
    ) -> ContactOut:
        changes = body.model_dump(exclude_unset=True)
        return await _update_contact(ctx, request, principal, contact_id, changes)

    @r.delete("/contacts/{contact_id}", response_model=ContactOut)
    async def retire_contact(
        request: Request, principal: PersonalEditorDep, contact_id: int
    ) -> ContactOut:
        return await _update_contact(
            ctx, request, principal, contact_id, {"retired_at": dt.datetime.now(dt.UTC)}
        )

    return r


async def _update_resident(
    conn: Conn, principal: Principal, resident_id: int, changes: dict[str, Any]
) -> dict[str, Any]:
    if changes:
        query = sql.SQL(
            "UPDATE residents SET {}, updated_at = now() WHERE resident_id = %(id)s"
            " AND area_path <@ %(scope)s::ltree RETURNING {}"
        ).format(_set_clause(changes), sql.SQL(_RESIDENT_COLS))
    else:
        query = sql.SQL(
            "SELECT {} FROM residents WHERE resident_id = %(id)s AND area_path <@ %(scope)s::ltree"
        ).format(sql.SQL(_RESIDENT_COLS))
    row = await _one(
        conn, query.as_string(conn), {**changes, **_scope(principal), "id": resident_id}
    )
    if row is None:
        raise NotFoundError("resident")
    return row


async def _update_contact(
    ctx: RegistryContext,
    request: Request,
    principal: Principal,
    contact_id: int,
    changes: dict[str, Any],
) -> ContactOut:
    retiring = "retired_at" in changes
    async with _pool(ctx).connection() as conn, conn.transaction():
        scoped = (
            "c.contact_id = %(id)s AND c.resident_id = r.resident_id"
            " AND r.area_path <@ %(scope)s::ltree"
        )
        cols = sql.SQL(_CONTACT_COLS + ", r.area_path::text AS area_path")
        if changes:
            query = sql.SQL(
                "UPDATE contacts c SET {} FROM residents r WHERE {} RETURNING {}"
            ).format(_set_clause(changes), sql.SQL(scoped), cols)
        else:
            query = sql.SQL("SELECT {} FROM contacts c, residents r WHERE {}").format(
                cols, sql.SQL(scoped)
            )
        rows = await _rows(
            conn,
            query.as_string(conn),
            {**changes, **_scope(principal), "id": contact_id},
        )
        if not rows:
            raise NotFoundError("contact")
        row = rows[0]
        await audit(
            conn, principal, "retire_contact" if retiring else "update_contact",
            record_type="contact", record_id=contact_id, scope_path=row.pop("area_path"),
            source_ip=_ip(request),
            detail={"resident_id": row["resident_id"], "fields": sorted(changes)},
        )  # fmt: skip
    return ContactOut(**row)


# -- devices -----------------------------------------------------------------------------------


def _presence_of(ctx: RegistryContext, device_id: str) -> PresenceOut:
    try:
        p = ctx.presence.snapshot(device_id)
    except RuntimeError:
        p = None
    if p is None:
        return PresenceOut(state="unknown")
    return PresenceOut(
        state="online" if p.online else "offline",
        last_seen_at=(
            dt.datetime.fromtimestamp(p.last_seen_ts, dt.UTC) if p.last_seen_ts else None
        ),
        battery_pct=p.battery_pct,
        battery_low=p.battery_low,
        offline_reason=p.offline_reason,
    )


def _device_out(ctx: RegistryContext, row: dict[str, Any]) -> DeviceOut:
    return DeviceOut(**row, presence=_presence_of(ctx, row["device_id"]))


def _devices_router(ctx: RegistryContext) -> APIRouter:
    r = _router("devices")

    @r.get("/devices", response_model=Page[DeviceOut])
    async def list_devices(
        *,
        request: Request,
        principal: DeviceReaderDep,
        limit: Limit = 100,
        offset: Offset = 0,
        device_type: str | None = None,
        resident_id: int | None = None,
        area_id: str | None = None,
        active: bool | None = None,
    ) -> Page[DeviceOut]:
        """Devices in the caller's scope, with their live presence. Audited like resident
        listings: who listed which devices (identical re-reads within the coalescing window
        add to one audit row's count)."""
        where = [_DEVICE_SCOPE]
        if device_type:
            where.append("device_type = %(type)s")
        if resident_id is not None:
            where.append("resident_id = %(rid)s")
        if area_id:
            where.append("area_path <@ (SELECT path FROM areas WHERE area_id = %(area)s)")
        if active is not None:
            where.append("active = %(active)s")
        async with _pool(ctx).connection() as conn, conn.transaction():
            rows, total = await _page(
                conn,
                select=_DEVICE_COLS,
                from_where="FROM devices WHERE " + " AND ".join(where),
                order_by="device_id",
                params={
                    **_scope(principal),
                    "type": device_type,
                    "rid": resident_id,
                    "area": area_id,
                    "active": active,
                },
                limit=limit,
                offset=offset,
            )
            ids = [x["device_id"] for x in rows]
            filters = {
                "device_type": device_type,
                "resident_id": resident_id,
                "area_id": area_id,
                "active": active,
                "limit": limit,
                "offset": offset,
            }
            await _audit_listing(
                conn, ctx, request, principal, record_type="device", ids=ids, filters=filters
            )
        return Page(
            items=[_device_out(ctx, x) for x in rows], total=total, limit=limit, offset=offset
        )

    @r.get("/devices/{device_id}", response_model=DeviceOut)
    async def get_device(request: Request, principal: DeviceReaderDep, device_id: str) -> DeviceOut:
        """One device: who wears it, where, and its presence. Audited."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            row = await _device(conn, principal, device_id)
            await audit(
                conn, principal, "read_device", record_type="device", record_id=device_id,
                scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return _device_out(ctx, row)

    @r.get("/devices/{device_id}/presence", response_model=PresenceOut)
    async def get_presence(
        request: Request, principal: DeviceReaderDep, device_id: str
    ) -> PresenceOut:
        """Online/offline and battery, from the bridge's in-memory tracker. Audited."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            row = await _device(conn, principal, device_id)
            await audit(
                conn, principal, "read_presence", record_type="device", record_id=device_id,
                scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return _presence_of(ctx, device_id)

    @r.post("/devices", response_model=DeviceOut, status_code=201)
    async def create_device(
        request: Request, principal: DeviceEditorDep, body: DeviceIn
    ) -> DeviceOut:
        """Register a device, for a resident or (a shared sensor) for a community."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            area_path = None
            if body.resident_id is not None:
                try:
                    await _resident_path(conn, principal, body.resident_id)
                except NotFoundError:
                    raise InvalidReferenceError("resident_id", "no such resident") from None
            elif body.community_id is not None:
                area_path = await _community_path(conn, principal, body.community_id)
            row = await _one(
                conn,
                "INSERT INTO devices (device_id, device_type, model, firmware, resident_id,"
                " area_path, position) VALUES (%(device_id)s, %(device_type)s, %(model)s,"
                " %(firmware)s, %(resident_id)s, %(area_path)s::ltree, %(position)s)"
                f" RETURNING {_DEVICE_COLS}",
                {**body.model_dump(exclude={"community_id"}), "area_path": area_path},
            )
            assert row is not None
            await audit(
                conn, principal, "create_device", record_type="device",
                record_id=body.device_id, scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return _device_out(ctx, row)

    @r.patch("/devices/{device_id}", response_model=DeviceOut)
    async def update_device(
        request: Request, principal: DeviceEditorDep, device_id: str, body: DevicePatch
    ) -> DeviceOut:
        """Change model, firmware, wearer, position, or pause it (active=false)."""
        changes = body.model_dump(exclude_unset=True)
        async with _pool(ctx).connection() as conn, conn.transaction():
            await _device(conn, principal, device_id)
            if changes.get("resident_id") is not None:
                try:
                    await _resident_path(conn, principal, changes["resident_id"])
                except NotFoundError:
                    raise InvalidReferenceError("resident_id", "no such resident") from None
            row = await _update_device(conn, principal, device_id, changes)
            await audit(
                conn, principal, "update_device", record_type="device", record_id=device_id,
                scope_path=row["area_path"], source_ip=_ip(request),
                detail={"changes": changes},
            )  # fmt: skip
        return _device_out(ctx, row)

    @r.delete("/devices/{device_id}", response_model=DeviceOut)
    async def retire_device(
        request: Request, principal: DeviceEditorDep, device_id: str
    ) -> DeviceOut:
        """Soft delete: inactive at once (the bridge refuses its messages within seconds) and
        its broker credentials are dropped (regenerate the broker files)."""
        async with _pool(ctx).connection() as conn, conn.transaction():
            await _device(conn, principal, device_id)
            row = await _update_device(
                conn, principal, device_id, {"retired_at": dt.datetime.now(dt.UTC)}
            )
            await audit(
                conn, principal, "retire_device", record_type="device", record_id=device_id,
                scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return _device_out(ctx, row)

    @r.post("/devices/{device_id}/credentials", response_model=CredentialsOut, status_code=201)
    async def provision_device(
        request: Request, principal: DeviceEditorDep, device_id: str
    ) -> CredentialsOut:
        """Issue a new random MQTT password (username = device id), returned only here; the
        previous one stops working at the next broker-config reload."""
        password = new_device_password()
        hashed = mosquitto_hash(password)
        async with _pool(ctx).connection() as conn, conn.transaction():
            row = await _device(conn, principal, device_id)
            if row["retired_at"] is not None:
                raise ConflictError("device is retired")
            if not usable_as_broker_username(device_id):
                raise ConflictError("device id cannot be a broker username (contains ':')")
            await conn.execute(
                "UPDATE devices SET mqtt_password_hash = %s WHERE device_id = %s",
                (hashed, device_id),
            )
            await audit(
                conn, principal, "provision_device", record_type="device", record_id=device_id,
                scope_path=row["area_path"], source_ip=_ip(request),
            )  # fmt: skip
        return CredentialsOut(device_id=device_id, mqtt_username=device_id, mqtt_password=password)

    return r


async def _device(conn: Conn, principal: Principal, device_id: str) -> dict[str, Any]:
    row = await _one(
        conn,
        f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = %(id)s AND {_DEVICE_SCOPE}",
        {**_scope(principal), "id": device_id},
    )
    if row is None:
        raise NotFoundError("device")
    return row


async def _update_device(
    conn: Conn, principal: Principal, device_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    if not changes:
        return await _device(conn, principal, device_id)
    query = sql.SQL("UPDATE devices SET {} WHERE device_id = %(id)s AND {} RETURNING {}").format(
        _set_clause(changes), sql.SQL(_DEVICE_SCOPE), sql.SQL(_DEVICE_COLS)
    )
    row = await _one(conn, query.as_string(conn), {**changes, **_scope(principal), "id": device_id})
    if row is None:
        raise NotFoundError("device")
    return row


# -- staff -------------------------------------------------------------------------------------


def _staff_router(ctx: RegistryContext) -> APIRouter:
    r = _router("staff")
    scoped = "scope_path <@ %(scope)s::ltree"

    @r.get("/staff", response_model=Page[StaffOut])
    async def list_staff(
        *,
        principal: AdminDep,
        limit: Limit = 100,
        offset: Offset = 0,
        role: Annotated[str | None, Query(pattern="^(dispatcher|supervisor|operator|admin)$")] = (
            None
        ),
        on_duty: bool | None = None,
        include_retired: bool = False,
    ) -> Page[StaffOut]:
        """Staff whose scope lies inside the caller's."""
        where = [scoped]
        if role:
            where.append("role = %(role)s")
        if on_duty is not None:
            where.append("on_duty = %(on_duty)s")
        if not include_retired:
            where.append("retired_at IS NULL")
        async with _pool(ctx).connection() as conn:
            rows, total = await _page(
                conn,
                select=_STAFF_COLS,
                from_where="FROM staff_users WHERE " + " AND ".join(where),
                order_by="username",
                params={**_scope(principal), "role": role, "on_duty": on_duty},
                limit=limit,
                offset=offset,
            )
        return Page(items=[StaffOut(**x) for x in rows], total=total, limit=limit, offset=offset)

    @r.get("/staff/{user_id}", response_model=StaffOut)
    async def get_staff(principal: AdminDep, user_id: int) -> StaffOut:
        async with _pool(ctx).connection() as conn:
            row = await _one(
                conn,
                f"SELECT {_STAFF_COLS} FROM staff_users WHERE user_id = %(id)s AND {scoped}",
                {**_scope(principal), "id": user_id},
            )
        if row is None:
            raise NotFoundError("staff user")
        return StaffOut(**row)

    @r.post("/staff", response_model=StaffOut, status_code=201)
    async def create_staff(request: Request, principal: AdminDep, body: StaffIn) -> StaffOut:
        """A staff user serving a subtree of the caller's own scope."""
        if not principal.covers(body.scope_path):
            raise InvalidReferenceError("scope_path", "outside your own scope")
        values = body.model_dump(exclude={"password"})
        values["password_hash"] = await asyncio.to_thread(hash_password, body.password)
        async with _pool(ctx).connection() as conn, conn.transaction():
            row = await _one(
                conn,
                "INSERT INTO staff_users (username, full_name, role, scope_path, password_hash,"
                " phone, on_duty) VALUES (%(username)s, %(full_name)s, %(role)s,"
                " %(scope_path)s::ltree, %(password_hash)s, %(phone)s, %(on_duty)s)"
                f" RETURNING {_STAFF_COLS}",
                values,
            )
            assert row is not None
            await audit(
                conn, principal, "create_staff", record_type="staff_user",
                record_id=row["user_id"], scope_path=body.scope_path, source_ip=_ip(request),
                detail={"username": body.username, "role": body.role},
            )  # fmt: skip
        return StaffOut(**row)

    @r.patch("/staff/{user_id}", response_model=StaffOut)
    async def update_staff(
        request: Request, principal: AdminDep, user_id: int, body: StaffPatch
    ) -> StaffOut:
        changes = body.model_dump(exclude_unset=True)
        if changes.get("scope_path") is not None and not principal.covers(changes["scope_path"]):
            raise InvalidReferenceError("scope_path", "outside your own scope")
        if changes.get("password") is not None:
            changes["password_hash"] = await asyncio.to_thread(
                hash_password, changes.pop("password")
            )
        return await _update_staff(ctx, request, principal, user_id, changes, action="update_staff")

    @r.delete("/staff/{user_id}", response_model=StaffOut)
    async def retire_staff(request: Request, principal: AdminDep, user_id: int) -> StaffOut:
        """Soft delete: the user can no longer log in, and every token already issued, and
        every open WebSocket of theirs, is refused within a second."""
        return await _update_staff(
            ctx,
            request,
            principal,
            user_id,
            {"retired_at": dt.datetime.now(dt.UTC)},
            action="retire",
        )

    return r


async def _update_staff(
    ctx: RegistryContext,
    request: Request,
    principal: Principal,
    user_id: int,
    changes: dict[str, Any],
    *,
    action: str,
) -> StaffOut:
    scoped = "scope_path <@ %(scope)s::ltree"
    async with _pool(ctx).connection() as conn, conn.transaction():
        if changes:
            query = sql.SQL(
                "UPDATE staff_users SET {} WHERE user_id = %(id)s AND {} RETURNING {}"
            ).format(
                _set_clause(changes, {"scope_path": "::ltree"}),
                sql.SQL(scoped),
                sql.SQL(_STAFF_COLS),
            )
        else:
            query = sql.SQL("SELECT {} FROM staff_users WHERE user_id = %(id)s AND {}").format(
                sql.SQL(_STAFF_COLS), sql.SQL(scoped)
            )
        row = await _one(
            conn, query.as_string(conn), {**changes, **_scope(principal), "id": user_id}
        )
        if row is None:
            raise NotFoundError("staff user")
        await audit(
            conn, principal, "retire_staff" if action == "retire" else action,
            record_type="staff_user", record_id=user_id, scope_path=row["scope_path"],
            source_ip=_ip(request),
            detail={"fields": sorted(k for k in changes if k != "password_hash")
                    + (["password"] if "password_hash" in changes else [])},
        )  # fmt: skip
    return StaffOut(**row)


# -- audit -------------------------------------------------------------------------------------


def _audit_router(ctx: RegistryContext) -> APIRouter:
    r = _router("audit")

    @r.get("/audit", response_model=Page[AuditOut])
    async def list_audit(
        *,
        request: Request,
        principal: AuditorDep,
        limit: Limit = 100,
        offset: Offset = 0,
        actor: str | None = None,
        action: str | None = None,
        record_type: str | None = None,
        record_id: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> Page[AuditOut]:
        """The audit trail of the caller's subtree, newest first. Reading it is audited too."""
        # Rows about no particular place (a failed login for an unknown name) are shown only
        # to those who serve the whole network (scope '').
        where = ["(scope_path <@ %(scope)s::ltree OR (scope_path IS NULL AND %(scope)s = ''))"]
        filters = {
            "actor": actor,
            "action": action,
            "record_type": record_type,
            "record_id": record_id,
        }
        where += [f"{k} = %({k})s" for k, v in filters.items() if v is not None]
        if since is not None:
            where.append("at >= %(since)s")
        if until is not None:
            where.append("at < %(until)s")
        async with _pool(ctx).connection() as conn, conn.transaction():
            rows, total = await _page(
                conn,
                select="audit_id, at, actor, actor_role, action, record_type, record_id,"
                " scope_path::text AS scope_path, source_ip, detail",
                from_where="FROM audit_log WHERE " + " AND ".join(where),
                order_by="audit_id DESC",
                params={**_scope(principal), **filters, "since": since, "until": until},
                limit=limit,
                offset=offset,
            )
            await audit(
                conn, principal, "read_audit", record_type="audit_log",
                scope_path=principal.scope_path, source_ip=_ip(request),
                detail={k: v for k, v in filters.items() if v is not None},
            )  # fmt: skip
        return Page(items=[AuditOut(**x) for x in rows], total=total, limit=limit, offset=offset)

    return r
