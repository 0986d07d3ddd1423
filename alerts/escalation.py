"""Escalation: timers as rows, taken by a loop with FOR UPDATE SKIP LOCKED.

On open (:func:`on_opened`) an incident gets an ``ack_t1`` timer (T1 of its routing level and
severity, from ``escalation_policy``), a critical one also ``ack_t2``, and, where the policy
says so, the first call to the resident's contacts. When a timer is due:

- ``ack_t1``, not yet acknowledged: widen the route one level (community -> street ->
  district -> city), notify again, and set the next T1 (at city level it keeps re-notifying).
- ``ack_t2``, not yet acknowledged: page the supervisors who cover the area.
- ``contact``, the phone rang out: that call is ``no_answer``; call the next contact (family
  first, then the community helper, then the grid worker, then anyone else) until one accepts
  through the gateway's callback (:func:`call_result`).

Each due timer is marked done in the same transaction as its effects, and locked rows are
skipped, so two servers never take the same step and a crash repeats at most an uncommitted
one. The loop locks the incident with its timer and skips either if locked, so an
acknowledgement in flight is never raced (and never deadlocked). Notices are handed to the
channels only after the commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from alerts import routing
from alerts.channels import CALL_CONTACT, ESCALATED, PAGE_SUPERVISOR, Notice
from alerts.clock import Clock
from alerts.events import add_event, ts
from alerts.metrics import AlertMetrics

log = logging.getLogger(__name__)

_UNACKED: Final = ("raised", "delivered")
_OPEN: Final = ("raised", "delivered", "acknowledged", "dispatched")
_ROLE_ORDER_SQL: Final = (
    "CASE c.role WHEN 'family' THEN 0 WHEN 'community_helper' THEN 1"
    " WHEN 'grid_worker' THEN 2 ELSE 3 END"
)


async def _timer(
    conn: psycopg.AsyncConnection[Any],
    incident_id: int,
    kind: str,
    due_ts: float,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO incident_timers (incident_id, kind, due_at, detail) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (incident_id, kind) WHERE done_at IS NULL"
        " DO UPDATE SET due_at = EXCLUDED.due_at, detail = EXCLUDED.detail",
        (incident_id, kind, ts(due_ts), Jsonb(detail or {})),
    )


async def on_opened(
    conn: psycopg.AsyncConnection[Any],
    incident_id: int,
    *,
    resident_id: int | None,
    area_path: str | None,
    level: int,
    severity: str,
    now_ts: float,
) -> list[Notice]:
    """Set the first timers of a new incident; returns the notices to send after commit."""
    step = await routing.policy_for(conn, level, severity)
    await _timer(conn, incident_id, "ack_t1", now_ts + step.t1_s)
    if step.t2_s is not None:
        await _timer(conn, incident_id, "ack_t2", now_ts + step.t2_s)
    if step.call_contacts and resident_id is not None:
        return await call_next(
            conn,
            incident_id,
            resident_id=resident_id,
            area_path=area_path,
            severity=severity,
            now_ts=now_ts,
            ring_s=step.contact_ring_s,
        )
    return []


async def stop(
    conn: psycopg.AsyncConnection[Any],
    incident_id: int,
    now_ts: float,
    *,
    kinds: Sequence[str] | None,
) -> None:
    """Cancel pending timers (all of them when ``kinds`` is None: the incident closed)."""
    await conn.execute(
        "UPDATE incident_timers SET done_at = %s WHERE incident_id = %s AND done_at IS NULL"
        " AND (%s::text[] IS NULL OR kind = ANY(%s::text[]))",
        (
            ts(now_ts),
            incident_id,
            None if kinds is None else list(kinds),
            None if kinds is None else list(kinds),
        ),
    )


async def call_next(
    conn: psycopg.AsyncConnection[Any],
    incident_id: int,
    *,
    resident_id: int,
    area_path: str | None,
    severity: str,
    now_ts: float,
    ring_s: float,
) -> list[Notice]:
    """Ring the next contact not yet called for this incident (or record that none is left)."""
    cur = await conn.execute(
        f"""SELECT c.contact_id, c.role, c.name, c.phone,
                   (SELECT count(*) FROM incident_calls WHERE incident_id = %(inc)s)
            FROM contacts c
            WHERE c.resident_id = %(rid)s AND NOT EXISTS (
                SELECT 1 FROM incident_calls k
                WHERE k.incident_id = %(inc)s AND k.contact_id = c.contact_id)
            ORDER BY {_ROLE_ORDER_SQL}, c.priority LIMIT 1""",
        {"inc": incident_id, "rid": resident_id},
    )
    row = await cur.fetchone()
    if row is None:
        await add_event(
            conn, incident_id, at_ts=now_ts, actor="system", action="contacts_exhausted"
        )
        return []
    contact_id, role, name, phone, n_called = row
    cur = await conn.execute(
        "INSERT INTO incident_calls (incident_id, contact_id, role, phone, attempt, called_at)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING call_id",
        (incident_id, contact_id, role, phone, int(n_called) + 1, ts(now_ts)),
    )
    call_row = await cur.fetchone()
    assert call_row is not None
    call_id = int(call_row[0])
    await _timer(
        conn, incident_id, "contact", now_ts + ring_s, {"call_id": call_id, "ring_s": ring_s}
    )
    await add_event(
        conn,
        incident_id,
        at_ts=now_ts,
        actor="system",
        action="contact_called",
        detail={"call_id": call_id, "role": role, "name": name},
    )
    return [
        Notice(
            kind=CALL_CONTACT,
            key=f"call:{call_id}",
            area_path=area_path,
            severity=severity,
            incident_id=incident_id,
            phones=(str(phone),),
            voice=True,
            body={
                "call_id": call_id,
                "role": role,
                "text": f"CareCall: {name}, your relative needs help (incident {incident_id})."
                " Press 1 to accept.",
            },
        )
    ]


async def call_result(
    conn: psycopg.AsyncConnection[Any], call_id: int, status: str, *, now_ts: float
) -> tuple[int | None, list[Notice]]:
    """The gateway reports a call's outcome; accepted stops the chain, anything else moves on.

    Idempotent: a repeated callback for a call already settled changes nothing.
    """
    async with conn.transaction():
        # Lock order everywhere: the incident first, then its timers or calls (no deadlock
        # with the escalation loop, which takes incident and timer together, skipping locked).
        cur = await conn.execute(
            """SELECT i.incident_id, i.resident_id, i.area_path::text, i.severity, i.state,
                      i.route_level
               FROM incidents i
               WHERE i.incident_id = (SELECT incident_id FROM incident_calls WHERE call_id = %s)
               FOR UPDATE""",
            (call_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None, []
        incident_id, resident_id, area, severity, inc_state, level = row
        cur = await conn.execute(
            "SELECT state FROM incident_calls WHERE call_id = %s FOR UPDATE", (call_id,)
        )
        call_row = await cur.fetchone()
        assert call_row is not None
        call_state = call_row[0]
        if call_state != "calling":
            return int(incident_id), []
        await conn.execute(
            "UPDATE incident_calls SET state = %s, answered_at = %s WHERE call_id = %s",
            (status, ts(now_ts), call_id),
        )
        await stop(conn, incident_id, now_ts, kinds=("contact",))
        action = "contact_accepted" if status == "accepted" else f"contact_{status}"
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor="gateway",
            action=action,
            detail={"call_id": call_id},
        )
        if status == "accepted" or inc_state not in _OPEN or resident_id is None:
            return int(incident_id), []
        step = await routing.policy_for(conn, int(level), str(severity))
        notices = await call_next(
            conn,
            int(incident_id),
            resident_id=int(resident_id),
            area_path=area,
            severity=str(severity),
            now_ts=now_ts,
            ring_s=step.contact_ring_s,
        )
        return int(incident_id), notices


class Escalator:
    """Takes due timers and applies them; see the module docstring."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[Any],
        clock: Clock,
        metrics: AlertMetrics,
        publish: Callable[[Notice], None],
        batch_size: int = 100,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._metrics = metrics
        self._publish = publish
        self._batch_size = batch_size

    async def run_due(self) -> int:
        """Apply every timer due now; returns how many were taken."""
        total = 0
        while True:
            now_ts = self._clock.now()
            notices: list[Notice] = []
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    """SELECT t.timer_id, t.incident_id, t.kind, t.detail, i.state, i.severity,
                              i.area_path::text, i.route_level, i.resident_id, i.routed_to
                       FROM incident_timers t JOIN incidents i USING (incident_id)
                       WHERE t.done_at IS NULL AND t.due_at <= %s
                       ORDER BY t.due_at LIMIT %s
                       FOR UPDATE OF t, i SKIP LOCKED""",
                    (ts(now_ts), self._batch_size),
                )
                rows = await cur.fetchall()
                for row in rows:
                    await conn.execute(
                        "UPDATE incident_timers SET done_at = %s WHERE timer_id = %s",
                        (ts(now_ts), row[0]),
                    )
                    notices += await self._apply(conn, row, now_ts)
            for notice in notices:
                self._publish(notice)
            total += len(rows)
            if len(rows) < self._batch_size:
                return total

    async def _apply(
        self, conn: psycopg.AsyncConnection[Any], row: tuple[Any, ...], now_ts: float
    ) -> list[Notice]:
        _, incident_id, kind, detail, state, severity, area, level, resident_id, routed = row
        if kind == "contact":
            call_id = int(detail["call_id"])
            cur = await conn.execute(
                "UPDATE incident_calls SET state = 'no_answer' WHERE call_id = %s"
                " AND state = 'calling' RETURNING call_id",
                (call_id,),
            )
            if await cur.fetchone() is None or state not in _OPEN or resident_id is None:
                return []
            self._metrics.escalations.labels("contact_no_answer").inc()
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor="system",
                action="contact_no_answer",
                detail={"call_id": call_id},
            )
            return await call_next(
                conn,
                incident_id,
                resident_id=resident_id,
                area_path=area,
                severity=severity,
                now_ts=now_ts,
                ring_s=float(detail.get("ring_s", 45.0)),
            )
        if state not in _UNACKED:
            return []  # acknowledged meanwhile (its timers were stopped; a race is harmless)
        if kind == "ack_t2":
            return await self._page_supervisors(conn, incident_id, area, severity, now_ts)
        # ack_t1: widen and re-notify.
        new_level = min(int(level) + 1, routing.TOP_LEVEL)
        rt = await routing.route(conn, area, from_level=new_level)
        names = sorted(set(routed) | set(rt.usernames))
        await conn.execute(
            "UPDATE incidents SET route_level = %s, routed_to = %s WHERE incident_id = %s",
            (rt.level, names, incident_id),
        )
        step = await routing.policy_for(conn, rt.level, severity)
        await _timer(conn, incident_id, "ack_t1", now_ts + step.t1_s)
        self._metrics.escalations.labels(f"t1_{rt.level_name}").inc()
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor="system",
            action="escalated",
            detail={
                "route_level": rt.level_name,
                "routed_to": names,
                "reason": "not acknowledged within T1",
            },
        )
        return [
            Notice(
                kind=ESCALATED,
                key=f"incident:{incident_id}:t1:{now_ts:.0f}",
                area_path=area,
                severity=severity,
                incident_id=incident_id,
                body={"route_level": rt.level_name, "routed_to": names},
            )
        ]

    async def _page_supervisors(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        area: str | None,
        severity: str,
        now_ts: float,
    ) -> list[Notice]:
        sups = await routing.supervisors(conn, area)
        self._metrics.escalations.labels("t2_supervisor").inc()
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor="system",
            action="supervisor_paged",
            detail={
                "supervisors": [u for u, _ in sups],
                "reason": "critical, not acknowledged within T2",
            },
        )
        phones = tuple(p for _, p in sups if p)
        if not sups:
            log.critical("incident %s: no supervisor covers %s", incident_id, area)
        return [
            Notice(
                kind=PAGE_SUPERVISOR,
                key=f"incident:{incident_id}:t2",
                area_path=area,
                severity=severity,
                incident_id=incident_id,
                phones=phones,
                body={
                    "supervisors": [u for u, _ in sups],
                    "text": f"CareCall: critical incident {incident_id} not acknowledged.",
                },
            )
        ]

    async def escalation_loop(self, *, interval_s: float) -> None:
        delay_s = interval_s
        while True:
            try:
                await self.run_due()
                delay_s = interval_s
            except (psycopg.OperationalError, OSError, PoolTimeout) as exc:
                log.warning("escalation: database unavailable (%s); retrying", exc)
                delay_s = min(max(delay_s * 2, interval_s), 10.0)
            await asyncio.sleep(delay_s)
