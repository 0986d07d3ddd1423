"""The append-only audit trail: every read of personal data and every change is recorded."""

from __future__ import annotations

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
