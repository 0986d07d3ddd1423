"""Open WebSockets follow their user: the console socket of a dispatcher who is retired, or
whose scope changes, is closed within seconds by the server (devices/sessions.py), in the whole
server as ``carecall serve`` composes it, against the real PostgreSQL and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ingest.features import ALERTS, registry_feature
from tests.alerts.server import server_settings
from tests.alerts.world import World, build_world
from tests.fixtures.server import serving


async def open_console(port: int, w: World, who: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/api/v1/ws?token={w.token(who)}")
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    return ws


async def closed_within(ws: ClientConnection, timeout_s: float) -> tuple[float, int | None]:
    """Seconds until the server closes ``ws`` (other frames are skipped), and its code."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            return time.monotonic() - start, rcvd.code if rcvd is not None else None


@pytest.mark.parametrize("two_processes", [False, True], ids=["one-process", "front+worker"])
async def test_console_socket_of_a_retired_or_moved_dispatcher_is_closed(
    migrated_db: str,
    db: psycopg.AsyncConnection[Any],
    uid: str,
    spool_dir: Path,
    two_processes: bool,
) -> None:
    w = await build_world(db, uid)
    settings = server_settings(
        migrated_db,
        uid,
        spool_dir,
        ingest_worker=two_processes,
    )
    async with serving(settings, [registry_feature(), ALERTS]) as (rt, port):
        assert rt.role == ("front" if two_processes else "all")
        if not two_processes:
            await rt.source.client.wait_connected(5)
        retiring = await open_console(port, w, "disp_ca")
        moving = await open_console(port, w, "disp_sa")
        staying = await open_console(port, w, "disp_db")

        await db.execute(
            "UPDATE staff_users SET retired_at = now() WHERE user_id = %s",
            (w.staff["disp_ca"].user_id,),
        )
        took_s, code = await closed_within(retiring, 5.0)
        print(f"retired dispatcher's socket closed {took_s * 1000:.0f} ms after the UPDATE")
        assert code == 1008
        assert took_s < 2.0
        # Reconnecting with the same token is refused; so is any API call.
        with pytest.raises(InvalidStatus):
            await connect(f"ws://127.0.0.1:{port}/api/v1/ws?token={w.token('disp_ca')}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.get("/api/v1/incidents", headers=w.headers("disp_ca"))
            assert r.status_code == 401

            # A new scope closes the socket too; the same token reconnects with the new scope.
            await db.execute(
                "UPDATE staff_users SET scope_path = %s::ltree WHERE user_id = %s",
                (w.path_b.rsplit(".", 2)[0], w.staff["disp_sa"].user_id),
            )
            took_s, code = await closed_within(moving, 5.0)
            assert (code, took_s < 2.0) == (1008, True)
            reopened = await connect(f"ws://127.0.0.1:{port}/api/v1/ws?token={w.token('disp_sa')}")
            hello = json.loads(await reopened.recv())
            assert hello["scope"] == w.path_b.rsplit(".", 2)[0]
            await reopened.close()

            # Nobody else was touched: the other dispatcher's socket is still open and live.
            await staying.ping()
            r = await http.get("/api/v1/incidents", headers=w.headers("disp_db"))
            assert r.status_code == 200
        await staying.close()
