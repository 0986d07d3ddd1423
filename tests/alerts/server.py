"""Run the whole server in-process (ingest + alerts feature + HTTP on a real port)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from ingest.features import ALERTS, Feature
from ingest.service import Runtime
from ingest.settings import Settings
from tests.alerts.world import SECRET
from tests.fixtures.server import serving
from tests.ingest.helpers import bridge_settings


def server_settings(db_url: str, uid: str, spool_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"secret_key": SECRET, "alerts_tick_interval_s": 1.0}
    values.update(overrides)
    return bridge_settings(db_url, uid, spool_dir, **values)


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, features: Sequence[Feature] = (ALERTS,)
) -> AsyncIterator[tuple[Runtime, str]]:
    async with serving(settings, features) as (rt, port):
        yield rt, f"127.0.0.1:{port}"


async def next_message(
    ws: ClientConnection, kind: str, timeout_s: float = 10.0, **match: Any
) -> dict[str, Any]:
    """The next message of ``kind`` (other kinds are skipped) whose fields match."""
    async with asyncio.timeout(timeout_s):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("kind") == kind and all(msg.get(k) == v for k, v in match.items()):
                return msg  # type: ignore[no-any-return]
