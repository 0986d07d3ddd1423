"""Run the whole server in-process (ingest + alerts feature + HTTP on a real port)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from websockets.asyncio.client import ClientConnection

from ingest.features import ALERTS, Feature
from ingest.http import create_app
from ingest.service import Runtime, run_ingest
from ingest.settings import Settings
from tests.alerts.world import SECRET
from tests.fixtures.services import free_port
from tests.ingest.helpers import bridge_settings


def server_settings(db_url: str, uid: str, spool_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"secret_key": SECRET, "alerts_tick_interval_s": 1.0}
    values.update(overrides)
    return bridge_settings(db_url, uid, spool_dir, **values)


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, features: Sequence[Feature] = (ALERTS,)
) -> AsyncIterator[tuple[Runtime, str]]:
    runs = [f.run for f in features if f.run is not None]
    async with run_ingest(settings, features=runs) as rt:
        app = create_app(rt, features)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        task = asyncio.create_task(server.serve(), name="test.uvicorn")
        # uvicorn offers no event for "listening": poll its flag.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        try:
            yield rt, f"127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


async def next_message(
    ws: ClientConnection, kind: str, timeout_s: float = 10.0, **match: Any
) -> dict[str, Any]:
    """The next message of ``kind`` (other kinds are skipped) whose fields match."""
    async with asyncio.timeout(timeout_s):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("kind") == kind and all(msg.get(k) == v for k, v in match.items()):
                return msg  # type: ignore[no-any-return]
