"""HTTP surface of the server: health, readiness and Prometheus metrics.

Feature routers (devices, alerts, console) are added here as they arrive; each takes its
dependencies from ``app.state.runtime`` through :func:`get_runtime`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool

from devices.auth import AuthConfig
from devices.sessions import WebSocketAccessGuard
from devices.staff import StaffCache
from ingest.features import Feature
from ingest.service import Runtime


class RedactTokens(logging.Filter):
    """Access logs must not carry credentials: the WebSocket's ``?token=`` is masked."""

    _TOKEN = re.compile(r"(token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                self._TOKEN.sub(r"\1***", a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        record.msg = self._TOKEN.sub(r"\1***", str(record.msg))
        return True


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_pool(request: Request) -> AsyncConnectionPool[Any]:
    pool: AsyncConnectionPool[Any] = request.app.state.runtime.pool
    return pool


PoolDep = Annotated[AsyncConnectionPool[Any], Depends(get_pool)]


def create_app(runtime: Runtime, features: Sequence[Feature] = ()) -> FastAPI:
    app = FastAPI(
        title="CareCall",
        version="0.1.0",
        description="Emergency-call and telemetry server for home and community elderly care.",
    )
    app.state.runtime = runtime
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
    s = runtime.settings
    # Tokens are checked against the registry's copy of the staff table when it runs: a
    # retired user is refused at once, and their open WebSockets are closed (devices/staff.py).
    staff = getattr(runtime.services.get("registry"), "staff", None)
    app.state.auth = AuthConfig(
        secret=s.secret_key.get_secret_value(),
        token_ttl_s=s.access_token_ttl_s,
        session_max_s=s.session_max_s,
        staff=staff if isinstance(staff, StaffCache) else None,
    )
    if app.state.auth.staff is not None:
        app.add_middleware(WebSocketAccessGuard, config=app.state.auth)
    for feature in features:
        for router in feature.routers():
            app.include_router(router)

    @app.get("/healthz", tags=["ops"])
    async def healthz(rt: RuntimeDep) -> JSONResponse:
        """The process is alive and its loops are running."""
        if rt.failed.is_set():
            return JSONResponse({"status": "failed"}, status_code=500)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    async def readyz(rt: RuntimeDep) -> JSONResponse:
        """Ready when connected to the broker and writing to the database directly."""
        if rt.bridge is None or rt.source is None:  # the front: its worker holds the bridge
            return _front_readiness(rt)
        body: dict[str, Any] = {
            "broker": {
                "connected": rt.source.connected,
                "host": rt.mqtt_host,
                "port": rt.mqtt_port,
            },
            "database": {
                "up": rt.bridge.db_ok,
                "schema_ready": rt.schema_ready.is_set(),
                "storage": rt.storage_mode,
            },
            "spool": {"mode": rt.bridge.spool_mode, "bytes": rt.bridge.spool.size},
            "devices_known": len(rt.directory),
            "embedded": rt.embedded,
        }
        ready = rt.source.connected and rt.schema_ready.is_set() and not rt.bridge.spool_mode
        body["status"] = "ready" if ready else "degraded"
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"])
    async def metrics(rt: RuntimeDep) -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _front_readiness(rt: Runtime) -> JSONResponse:
    """The front with an ingest worker: ready when the worker is (it holds the bridge) and
    the front's own schema check passed; the worker's report is included as it was read."""
    worker: dict[str, Any] = rt.worker.summary() if rt.worker is not None else {"ready": False}
    status: dict[str, Any] = worker.get("status") or {}
    body: dict[str, Any] = {
        "broker": status.get("broker", {"connected": False}),
        "database": status.get("database", {"up": False}),
        "spool": status.get("spool"),
        "devices_known": len(rt.directory),
        "embedded": rt.embedded,
        "ingest_worker": {k: v for k, v in worker.items() if k != "status"},
    }
    ready = bool(worker["ready"]) and rt.schema_ready.is_set()
    body["status"] = "ready" if ready else "degraded"
    return JSONResponse(body, status_code=200 if ready else 503)
