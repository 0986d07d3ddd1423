"""Appending to an incident's history (``incident_events``): who did what, when."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def ts(epoch_s: float) -> dt.datetime:
    """Epoch seconds as an aware datetime (what psycopg sends as timestamptz)."""
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)


async def add_event(
    conn: psycopg.AsyncConnection[Any],
    incident_id: int,
    *,
    at_ts: float,
    actor: str,
    action: str,
    from_state: str | None = None,
    to_state: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One row; its trigger notifies every server's WebSocket hub."""
    await conn.execute(
        "INSERT INTO incident_events (incident_id, at, actor, action, from_state, to_state,"
        " detail) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (incident_id, ts(at_ts), actor, action, from_state, to_state, Jsonb(detail or {})),
    )
