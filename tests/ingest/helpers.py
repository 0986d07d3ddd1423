"""Shared helpers for ingest tests: settings for an in-process bridge, message builders."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ingest.settings import Settings
from tests.fixtures.services import MQTT_PORT


def bridge_settings(
    db_url: str, uid: str, spool_dir: Path, *, port: int = MQTT_PORT, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "environment": "test",
        "database_url": db_url,
        "mqtt_host": "127.0.0.1",
        "mqtt_port": port,
        "topic_root": f"t{uid}/carecall/v1",
        "mqtt_client_id": f"ingest-{uid}",
        "spool_dir": spool_dir,
        "db_write_timeout_s": 2.0,
        "db_connect_timeout_s": 2.0,
        # In-process tests reach into the bridge (rt.bridge, rt.source); the two-process
        # server is tested in tests/ingest/test_worker.py.
        "ingest_worker": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def vitals(seq: int, ts: float | None = None, **fields: object) -> bytes:
    body = {"ts": time.time() if ts is None else ts, "seq": seq, "hr_bpm": 70 + seq % 20}
    body.update(fields)
    return json.dumps(body).encode()


def payload(**fields: object) -> bytes:
    fields.setdefault("ts", time.time())
    return json.dumps(fields).encode()
