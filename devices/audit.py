"""The append-only audit trail: every read of personal data and every change is recorded.

:func:`audit` writes one row. Repeated *list* reads (a console re-reading its queue, a page
polling the device list) go through :func:`audit_list_read`: the first read of a window writes
the ``audit_log`` row (with what it returned); identical reads by the same user in the next
``window_s`` only add to the window's count in ``audit_read_windows``. "Identical" is the same
user, action and key, where the key (:func:`read_key`) covers the parameters, the scope and the
records returned: a list that shows a new record is a new read, audited at once. Reads of one
record (a resident, a device, an incident) are audited one row each, by their endpoints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from devices.auth import Principal


async def audit(
    conn: psycopg.AsyncConnection[Any],
    principal: Principal | None,
    action: str,
    *,
    record_type: str | None = None,
    record_id: str | int | None = None,
    scope_path: str | None = None,
    source_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit row; ``principal=None`` means the system itself acted."""
    await conn.execute(
        "INSERT INTO audit_log (actor, actor_role, action, record_type, record_id, scope_path,"
        " source_ip, detail) VALUES (%s, %s, %s, %s, %s, %s::ltree, %s, %s)",
        (
            principal.username if principal else "system",
            principal.role if principal else None,
            action,
            record_type,
            None if record_id is None else str(record_id),
            scope_path,
            source_ip,
            Jsonb(detail or {}),
        ),
    )


def read_key(**parts: Any) -> str:
    """A short stable digest of what makes two list reads identical."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


async def audit_list_read(
    conn: psycopg.AsyncConnection[Any],
    principal: Principal,
    action: str,
    *,
    key: str,
    now_ts: float,
    window_s: float,
    record_type: str | None = None,
    scope_path: str | None = None,
    source_ip: str | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Audit one list read; returns whether an ``audit_log`` row was written.

    One transaction, serialised per (user, action, key) by an advisory lock, so two racing
    reads never both open a window. ``window_s <= 0`` audits every read.
    """
    if window_s <= 0:
        await audit(
            conn,
            principal,
            action,
            record_type=record_type,
            scope_path=scope_path,
            source_ip=source_ip,
            detail=detail,
        )
        return True
    now = dt.datetime.fromtimestamp(now_ts, tz=dt.UTC)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"audit_read:{principal.username}:{action}:{key}",),
        )
        cur = await conn.execute(
            """UPDATE audit_read_windows SET reads = reads + 1, last_at = %(now)s
               WHERE (actor, action, read_key, window_start) = (
                   SELECT actor, action, read_key, window_start FROM audit_read_windows
                   WHERE actor = %(actor)s AND action = %(action)s AND read_key = %(key)s
                     AND window_start > %(now)s - make_interval(secs => window_s)
                     AND window_start <= %(now)s
                   ORDER BY window_start DESC LIMIT 1)
               RETURNING reads""",
            {"now": now, "actor": principal.username, "action": action, "key": key},
        )
        if await cur.fetchone() is not None:
            return False
        await audit(
            conn,
            principal,
            action,
            record_type=record_type,
            scope_path=scope_path,
            source_ip=source_ip,
            detail={**(detail or {}), "read_key": key, "coalesce_window_s": window_s},
        )
        await conn.execute(
            "INSERT INTO audit_read_windows (actor, action, read_key, window_start, window_s,"
            " last_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (principal.username, action, key, now, window_s, now),
        )
    return True
