"""The incident lifecycle: open-or-join, validated transitions, scoped reads.

States::

    raised -> delivered -> acknowledged -> dispatched -> resolved
       \\__________\\______________\\_______________________> cancelled

``raised`` (stored) and ``delivered`` (on a screen) may go straight to ``resolved`` only with
a reason (a duplicate, a test); ``cancelled`` is the resident's "I am OK" within the cancel
window or a dispatcher's decision with a reason. Every transition appends to
``incident_events`` with who and when; an action not allowed from the current state raises
:class:`~alerts.errors.InvalidTransitionError` (HTTP 409).

One open incident per episode is the database's job: the partial unique index
``incidents_one_open`` and one ``INSERT ... ON CONFLICT ... DO UPDATE`` decide, so two
detections racing on two connections (or two servers) end in one incident with two
detections. A detection's identity is recorded first (``incident_sources``): the same event
arriving again changes nothing, whether its incident is open or long closed -- the same
source key (the live lane and the rule runner both see an SOS; a replay after an outage), the
same device sequence number (a device re-sending its press), or, for a fall, an impact time
within ``SAME_EVENT_S`` (the same impact re-detected). See docs/alerts.md.

Scoped reads and actions take the caller's scope path (and whether they are an admin): an
incident of a device nobody can place is visible only at the root of the area tree.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg.types.range import Range

from alerts import escalation, routing
from alerts.channels import INCIDENT_OPENED, Notice
from alerts.errors import IncidentNotFoundError, InvalidTransitionError
from alerts.events import add_event, ts
from alerts.metrics import AlertMetrics
from alerts.rules.detection import Detection, DetectionKind, Severity

log = logging.getLogger(__name__)

OPEN_STATES: Final = ("raised", "delivered", "acknowledged", "dispatched")
CLOSED_STATES: Final = ("resolved", "cancelled")
OUTCOMES: Final = frozenset(
    {
        "real_emergency",
        "false_alarm",
        "resident_ok",
        "device_fault",
        "recovered",
        "duplicate",
        "test",
        "cancelled_by_resident",
        "other",
    }
)
HELP: Final = frozenset(
    {
        "family",
        "community_helper",
        "grid_worker",
        "ambulance_120",
        "police_110",
        "fire_119",
        "doctor",
    }
)
DEVICE_FAULTS: Final = frozenset({DetectionKind.DEVICE_OFFLINE, DetectionKind.BATTERY_LOW})
# Vitals-driven kinds: inhibited while the device that measures them is offline.
VITALS_KINDS: Final = frozenset({DetectionKind.VITALS_ABNORMAL, DetectionKind.NEWS2})
# A recovery of one kind clears the open incident of another.
CLEARS: Final = {DetectionKind.VITALS_RECOVERED: DetectionKind.VITALS_ABNORMAL}
MAX_EVIDENCE: Final = 20  # evidence kept per incident; the count goes on

# A caller sees the incidents inside their scope; incidents of a device nobody can place
# (area_path NULL) only when their scope is the root of the area tree, or they are an admin.
_SCOPE_SQL: Final = (
    "(i.area_path <@ %(scope)s::ltree OR (i.area_path IS NULL"
    " AND (%(admin)s OR carecall_scope_is_root(%(scope)s::ltree))))"
)
# How far apart (device clock) two detections of one device and kind may be and still be the
# same event (re-detected after a restart or a replay), by kind; other kinds count as the same
# event only with the same source key or sequence number. A fall's impact time can move by up
# to the detector's peak search when it is re-detected from partial history; the detector
# never reports two falls of one device closer than its refractory span (10 s).
SAME_EVENT_S: Final = {DetectionKind.FALL: 2.0}
SAME_MESSAGE_S: Final = 12 * 3600.0  # a sequence number seen again within this is a resend


def source_key(kind: str, device_id: str, event_ts: float, extra: str = "") -> str:
    """Stable identity of one detection (milliseconds of the device's clock)."""
    key = f"{kind}:{device_id}:{round(event_ts * 1e6) // 1000}"
    return f"{key}:{extra}" if extra else key


@dataclass(frozen=True, slots=True)
class IncidentInput:
    """A detection, placed in the registry and stamped with the hops so far."""

    source_key: str
    device_id: str
    resident_id: int | None
    area_path: str | None
    kind: DetectionKind
    severity: Severity
    event_ts: float
    detected_ts: float
    evidence: dict[str, Any] = field(default_factory=dict)
    broker_ts: float | None = None
    handed_ts: float | None = None
    pushed_ts: float | None = None  # already on a screen via the live path
    lat: float | None = None
    lon: float | None = None
    clears: bool = False
    seq: int | None = None  # the device's sequence number, for detections that are a message

    @property
    def episode_key(self) -> str:
        if self.kind in DEVICE_FAULTS or self.resident_id is None:
            return f"d:{self.device_id}"
        return f"r:{self.resident_id}"

    @classmethod
    def from_detection(
        cls,
        d: Detection,
        *,
        resident_id: int | None,
        area_path: str | None,
        broker_ts: float | None = None,
        handed_ts: float | None = None,
    ) -> IncidentInput:
        extra = str(d.evidence.get("parameter") or "")
        lat, lon = d.evidence.get("lat"), d.evidence.get("lon")
        seq = d.evidence.get("seq")
        return cls(
            source_key=source_key(
                d.kind.value + (":clear" if d.clears else ""), d.device_id, d.event_ts, extra
            ),
            device_id=d.device_id,
            resident_id=resident_id,
            area_path=area_path,
            kind=d.kind,
            severity=d.severity,
            event_ts=d.event_ts,
            detected_ts=d.detected_ts,
            evidence={"kind": d.kind.value, "event_ts": d.event_ts, **_finite(d.evidence)},
            broker_ts=broker_ts,
            handed_ts=handed_ts,
            lat=lat if isinstance(lat, float) else None,
            lon=lon if isinstance(lon, float) else None,
            clears=d.clears,
            seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        )


def _spans(inp: IncidentInput) -> tuple[Range[dt.datetime] | None, Range[dt.datetime] | None]:
    """The detection's event span (kind's tolerance) and sequence-number span, if any."""
    event = ts(inp.event_ts)
    event_span = seq_span = None
    tolerance_s = SAME_EVENT_S.get(inp.kind)
    if tolerance_s is not None:
        half = dt.timedelta(seconds=tolerance_s / 2)
        event_span = Range(event - half, event + half, "[)")
    if inp.seq is not None:
        window = dt.timedelta(seconds=SAME_MESSAGE_S)
        seq_span = Range(event - window, event + window, "[)")
    return event_span, seq_span


def _finite(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no infinities: a "never" timestamp (-inf) is stored as null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in evidence.items()
    }


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the incident layer did with one input."""

    action: str  # opened, joined, duplicate, suppressed, cleared, ignored
    incident_id: int | None = None
    notices: tuple[Notice, ...] = ()


class IncidentStore:
    """Incident reads and writes over a caller's connection (each call is one transaction)."""

    def __init__(self, *, metrics: AlertMetrics, cancel_window_s: float) -> None:
        self.metrics = metrics
        self.cancel_window_s = cancel_window_s

    # -- detections in ---------------------------------------------------------------------
    async def record(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, *, now_ts: float
    ) -> Recorded:
        async with conn.transaction():
            result = await self._record(conn, inp, now_ts)
        self.metrics.incidents.labels(result.action, inp.kind.value).inc()
        return result

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, now_ts: float
    ) -> Recorded:
        if inp.kind == DetectionKind.SOS_CANCEL:
            return await self._resident_cancel(conn, inp, now_ts)
        if inp.clears or inp.kind in CLEARS:
            return await self._clear(conn, inp, now_ts)
        if not await self._claim_source(conn, inp):
            return await self._duplicate(conn, inp, now_ts)
        reason = await self._suppression(conn, inp, now_ts)
        if reason is not None:
            return Recorded("suppressed")
        rt = await routing.route(conn, inp.area_path)
        state = "delivered" if inp.pushed_ts is not None else "raised"
        cur = await conn.execute(
            """INSERT INTO incidents AS i (episode_key, kind, severity, priority, state,
                   resident_id, device_id, area_path, route_level, routed_to, evidence, lat, lon,
                   event_at, broker_at, handed_at, detected_at, raised_at, pushed_at,
                   last_detection_at)
               VALUES (%(ep)s, %(kind)s, %(sev)s, %(prio)s, %(state)s, %(rid)s, %(dev)s,
                   %(area)s::ltree, %(level)s, %(routed)s, jsonb_build_array(%(ev)s::jsonb),
                   %(lat)s, %(lon)s, %(event)s, %(broker)s, %(handed)s, %(detected)s, %(now)s,
                   %(pushed)s, %(event)s)
               ON CONFLICT (episode_key, kind)
                   WHERE state IN ('raised', 'delivered', 'acknowledged', 'dispatched')
               DO UPDATE SET
                   detections = i.detections + 1,
                   last_detection_at = greatest(i.last_detection_at, EXCLUDED.last_detection_at),
                   evidence = CASE WHEN jsonb_array_length(i.evidence) < %(max_ev)s
                                   THEN i.evidence || EXCLUDED.evidence ELSE i.evidence END,
                   severity = CASE WHEN EXCLUDED.priority < i.priority
                                   THEN EXCLUDED.severity ELSE i.severity END,
                   priority = least(i.priority, EXCLUDED.priority),
                   lat = coalesce(EXCLUDED.lat, i.lat),
                   lon = coalesce(EXCLUDED.lon, i.lon)
               RETURNING incident_id, (xmax = 0) AS opened, state, severity""",
            {
                "ep": inp.episode_key,
                "kind": inp.kind.value,
                "sev": inp.severity.value,
                "prio": inp.severity.rank,
                "state": state,
                "rid": inp.resident_id,
                "dev": inp.device_id,
                "area": inp.area_path,
                "level": rt.level,
                "routed": list(rt.usernames),
                "ev": Jsonb(inp.evidence),
                "lat": inp.lat,
                "lon": inp.lon,
                "event": ts(inp.event_ts),
                "broker": None if inp.broker_ts is None else ts(inp.broker_ts),
                "handed": None if inp.handed_ts is None else ts(inp.handed_ts),
                "detected": ts(inp.detected_ts),
                "now": ts(now_ts),
                "pushed": None if inp.pushed_ts is None else ts(inp.pushed_ts),
                "max_ev": MAX_EVIDENCE,
            },
        )
        row = await cur.fetchone()
        assert row is not None
        incident_id, opened, cur_state, severity = int(row[0]), bool(row[1]), row[2], row[3]
        await conn.execute(
            "UPDATE incident_sources SET incident_id = %s WHERE source_key = %s",
            (incident_id, inp.source_key),
        )
        if not opened:
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor="system",
                action="joined",
                detail={"source_key": inp.source_key, "severity": inp.severity.value},
            )
            return Recorded("joined", incident_id)
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor="system",
            action="opened",
            to_state=state,
            detail={
                "source_key": inp.source_key,
                "route_level": rt.level_name,
                "routed_to": list(rt.usernames),
            },
        )
        self._observe_open(inp, now_ts)
        notices = [
            Notice(
                kind=INCIDENT_OPENED,
                key=f"incident:{incident_id}:opened",
                area_path=inp.area_path,
                severity=severity,
                incident_id=incident_id,
                body={
                    "state": cur_state,
                    "incident_kind": inp.kind.value,
                    "resident_id": inp.resident_id,
                    "device_id": inp.device_id,
                    "routed_to": list(rt.usernames),
                    "event_ts": inp.event_ts,
                },
            )
        ]
        notices += await escalation.on_opened(
            conn,
            incident_id,
            resident_id=inp.resident_id,
            area_path=inp.area_path,
            level=rt.level,
            severity=severity,
            now_ts=now_ts,
        )
        return Recorded("opened", incident_id, tuple(notices))

    async def _claim_source(self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput) -> bool:
        """Record the detection's identity; False when it is an event already recorded.

        One statement against the primary key (the same source key) and the two exclusion
        constraints (same sequence number; event time within the kind's tolerance): a racing
        twin on another connection waits for this one to commit, then conflicts.
        """
        event_span, seq_span = _spans(inp)
        cur = await conn.execute(
            "INSERT INTO incident_sources (source_key, device_id, kind, seq, event_span, seq_span)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING source_key",
            (inp.source_key, inp.device_id, inp.kind.value, inp.seq, event_span, seq_span),
        )
        return await cur.fetchone() is not None

    async def _duplicate(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, now_ts: float
    ) -> Recorded:
        """The same event again: nothing opens or joins; a closed incident notes the repeat."""
        event_span, seq_span = _spans(inp)
        cur = await conn.execute(
            """SELECT s.incident_id, i.state FROM incident_sources s
                   LEFT JOIN incidents i USING (incident_id)
               WHERE s.source_key = %(key)s
                  OR (s.device_id = %(dev)s AND s.kind = %(kind)s
                      AND (s.event_span && %(event_span)s::tstzrange
                           OR (s.seq = %(seq)s AND s.seq_span && %(seq_span)s::tstzrange)))
               ORDER BY s.source_key = %(key)s DESC, s.incident_id DESC NULLS LAST LIMIT 1""",
            {
                "key": inp.source_key,
                "dev": inp.device_id,
                "kind": inp.kind.value,
                "seq": inp.seq,
                "event_span": event_span,
                "seq_span": seq_span,
            },
        )
        row = await cur.fetchone()
        incident_id = None if row is None or row[0] is None else int(row[0])
        if incident_id is None or row is None or row[1] not in CLOSED_STATES:
            return Recorded("duplicate", incident_id)
        cur = await conn.execute(
            "SELECT 1 FROM incident_events WHERE incident_id = %s"
            " AND action = 'repeat_after_close' AND detail ->> 'source_key' = %s",
            (incident_id, inp.source_key),
        )
        if await cur.fetchone() is None:
            # Visible in the closed incident's history, never a silent drop; once per source
            # key (the live lane and the rule runner both hand each reading over).
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor="system",
                action="repeat_after_close",
                detail={"source_key": inp.source_key, "seq": inp.seq, "event_ts": inp.event_ts},
            )
        return Recorded("duplicate", incident_id)

    def _observe_open(self, inp: IncidentInput, now_ts: float) -> None:
        m, sev, area = self.metrics, inp.severity.value, inp.area_path
        if inp.broker_ts is not None:
            m.hop("broker", inp.broker_ts - inp.event_ts, sev, area)
            if inp.handed_ts is not None:
                m.hop("handover", inp.handed_ts - inp.broker_ts, sev, area)
        if inp.handed_ts is not None:
            m.hop("detect", inp.detected_ts - inp.handed_ts, sev, area)
        m.hop("raise", now_ts - inp.detected_ts, sev, area)
        if inp.pushed_ts is not None:
            # Shown by the live path before it was stored: the push precedes the row.
            m.hop("push", inp.pushed_ts - (inp.broker_ts or inp.detected_ts), sev, area)

    async def _suppression(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, now_ts: float
    ) -> str | None:
        """Record and return the reason this detection is not raised, if any."""
        window_id: int | None = None
        reason: str | None = None
        cur = await conn.execute(
            """SELECT window_id FROM maintenance_windows
               WHERE starts_at <= %(now)s AND ends_at > %(now)s
                 AND (device_id = %(dev)s
                      OR (%(area)s::ltree IS NOT NULL AND NOT %(critical)s
                          AND %(area)s::ltree <@ area_path))
               ORDER BY window_id LIMIT 1""",
            {
                "now": ts(now_ts),
                "dev": inp.device_id,
                "area": inp.area_path,
                "critical": inp.severity == Severity.CRITICAL,
            },
        )
        row = await cur.fetchone()
        if row is not None:
            window_id, reason = int(row[0]), "maintenance"
        elif inp.kind in VITALS_KINDS:
            cur = await conn.execute(
                "SELECT 1 FROM incidents WHERE episode_key = %s AND kind = 'device_offline'"
                " AND state IN ('raised', 'delivered', 'acknowledged', 'dispatched')",
                (f"d:{inp.device_id}",),
            )
            if await cur.fetchone() is not None:
                reason = "device_offline"
        if reason is None:
            return None
        await conn.execute(
            """INSERT INTO suppressed_detections (at, device_id, resident_id, area_path, kind,
                   severity, reason, window_id, detail)
               VALUES (%s, %s, %s, %s::ltree, %s, %s, %s, %s, %s)""",
            (
                ts(now_ts),
                inp.device_id,
                inp.resident_id,
                inp.area_path,
                inp.kind.value,
                inp.severity.value,
                reason,
                window_id,
                Jsonb(inp.evidence),
            ),
        )
        self.metrics.suppressed.labels(reason).inc()
        return reason

    async def _clear(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, now_ts: float
    ) -> Recorded:
        """A recovery: device faults resolve themselves; anything else only gets a note."""
        kind = CLEARS.get(inp.kind, inp.kind)
        episode = (
            f"d:{inp.device_id}"
            if kind in DEVICE_FAULTS or inp.resident_id is None
            else f"r:{inp.resident_id}"
        )
        cur = await conn.execute(
            "SELECT incident_id, state FROM incidents WHERE episode_key = %s AND kind = %s"
            " AND state IN ('raised', 'delivered', 'acknowledged', 'dispatched') FOR UPDATE",
            (episode, kind.value),
        )
        row = await cur.fetchone()
        if row is None:
            return Recorded("ignored")
        incident_id, state = int(row[0]), str(row[1])
        if kind in DEVICE_FAULTS:
            await self._close(
                conn,
                incident_id,
                state,
                "resolved",
                now_ts,
                actor="system",
                outcome="recovered",
                reason="the device recovered by itself",
            )
        else:
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor="system",
                action="condition_cleared",
                detail=dict(inp.evidence),
            )
        return Recorded("cleared", incident_id)

    async def _resident_cancel(
        self, conn: psycopg.AsyncConnection[Any], inp: IncidentInput, now_ts: float
    ) -> Recorded:
        """The resident pressed "I am OK": cancel their open SOS if within the window."""
        cur = await conn.execute(
            "SELECT incident_id, state, extract(epoch FROM raised_at) FROM incidents"
            " WHERE episode_key = %s AND kind = 'sos'"
            " AND state IN ('raised', 'delivered', 'acknowledged', 'dispatched') FOR UPDATE",
            (inp.episode_key,),
        )
        row = await cur.fetchone()
        if row is None:
            return Recorded("ignored")
        incident_id, state, raised_ts = int(row[0]), str(row[1]), float(row[2])
        age_s = now_ts - raised_ts
        if age_s <= self.cancel_window_s and state != "dispatched":
            await self._close(
                conn,
                incident_id,
                state,
                "cancelled",
                now_ts,
                actor="resident",
                outcome="cancelled_by_resident",
                reason=f"resident pressed cancel after {age_s:.0f} s",
            )
            return Recorded("cancelled", incident_id)
        # Too late (or help is already on the way): a human decides; the request is shown.
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor="resident",
            action="cancel_requested",
            detail={"age_s": round(age_s, 1), "window_s": self.cancel_window_s},
        )
        return Recorded("cancel_too_late", incident_id)

    # -- transitions -------------------------------------------------------------------------
    async def _close(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        from_state: str,
        to_state: str,
        now_ts: float,
        *,
        actor: str,
        outcome: str | None,
        reason: str | None,
    ) -> None:
        await conn.execute(
            "UPDATE incidents SET state = %s, resolved_at = %s, outcome = %s, closed_by = %s"
            " WHERE incident_id = %s",
            (to_state, ts(now_ts), outcome, actor, incident_id),
        )
        await escalation.stop(conn, incident_id, now_ts, kinds=None)
        await add_event(
            conn,
            incident_id,
            at_ts=now_ts,
            actor=actor,
            action=to_state,
            from_state=from_state,
            to_state=to_state,
            detail={"outcome": outcome, "reason": reason},
        )

    async def _locked(
        self, conn: psycopg.AsyncConnection[Any], incident_id: int, scope: str, admin: bool
    ) -> dict[str, Any]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT i.incident_id, i.state, i.severity, i.area_path::text AS area_path,"
            " extract(epoch FROM i.raised_at) AS raised_ts,"
            " extract(epoch FROM i.acknowledged_at) AS ack_ts"
            f" FROM incidents i WHERE i.incident_id = %(id)s AND {_SCOPE_SQL} FOR UPDATE",
            {"id": incident_id, "scope": scope, "admin": admin},
        )
        row = await cur.fetchone()
        if row is None:
            raise IncidentNotFoundError(incident_id)
        return row

    async def acknowledge(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
    ) -> str:
        async with conn.transaction():
            inc = await self._locked(conn, incident_id, scope, admin)
            if inc["state"] not in ("raised", "delivered"):
                raise InvalidTransitionError(incident_id, inc["state"], "acknowledge")
            await conn.execute(
                "UPDATE incidents SET state = 'acknowledged', acknowledged_at = %s,"
                " acknowledged_by = %s, pushed_at = coalesce(pushed_at, %s)"
                " WHERE incident_id = %s",
                (ts(now_ts), actor, ts(now_ts), incident_id),
            )
            await escalation.stop(conn, incident_id, now_ts, kinds=("ack_t1", "ack_t2"))
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor=actor,
                action="acknowledged",
                from_state=inc["state"],
                to_state="acknowledged",
            )
        self.metrics.hop(
            "acknowledge", now_ts - float(inc["raised_ts"]), inc["severity"], inc["area_path"]
        )
        return "acknowledged"

    async def dispatch(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
        help_sent: Sequence[str],
        note: str = "",
    ) -> str:
        async with conn.transaction():
            inc = await self._locked(conn, incident_id, scope, admin)
            if inc["state"] not in ("acknowledged", "dispatched"):
                raise InvalidTransitionError(
                    incident_id, inc["state"], "dispatch", "acknowledge it first"
                )
            await conn.execute(
                "UPDATE incidents SET state = 'dispatched', dispatched_at ="
                " coalesce(dispatched_at, %s), dispatched_to = dispatched_to || %s::text[]"
                " WHERE incident_id = %s",
                (ts(now_ts), list(help_sent), incident_id),
            )
            await add_event(
                conn,
                incident_id,
                at_ts=now_ts,
                actor=actor,
                action="dispatched",
                from_state=inc["state"],
                to_state="dispatched",
                detail={"help": list(help_sent), "note": note},
            )
        if inc["state"] == "acknowledged":
            self.metrics.hop(
                "dispatch", now_ts - float(inc["raised_ts"]), inc["severity"], inc["area_path"]
            )
        return "dispatched"

    async def resolve(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
        outcome: str,
        reason: str | None = None,
    ) -> str:
        async with conn.transaction():
            inc = await self._locked(conn, incident_id, scope, admin)
            state = inc["state"]
            if state in CLOSED_STATES:
                raise InvalidTransitionError(incident_id, state, "resolve")
            if state in ("raised", "delivered") and not reason:
                raise InvalidTransitionError(
                    incident_id, state, "resolve", "never acknowledged: give a reason"
                )
            await self._close(
                conn,
                incident_id,
                state,
                "resolved",
                now_ts,
                actor=actor,
                outcome=outcome,
                reason=reason,
            )
        self.metrics.hop(
            "resolve", now_ts - float(inc["raised_ts"]), inc["severity"], inc["area_path"]
        )
        return "resolved"

    async def cancel(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
        reason: str,
    ) -> str:
        async with conn.transaction():
            inc = await self._locked(conn, incident_id, scope, admin)
            if inc["state"] not in ("raised", "delivered", "acknowledged"):
                raise InvalidTransitionError(incident_id, inc["state"], "cancel")
            await self._close(
                conn,
                incident_id,
                inc["state"],
                "cancelled",
                now_ts,
                actor=actor,
                outcome="false_alarm",
                reason=reason,
            )
        return "cancelled"

    async def add_note(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
        text: str,
    ) -> None:
        async with conn.transaction():
            await self._locked(conn, incident_id, scope, admin)
            await add_event(
                conn, incident_id, at_ts=now_ts, actor=actor, action="note", detail={"text": text}
            )

    async def mark_delivered(
        self, conn: psycopg.AsyncConnection[Any], incident_id: int, *, pushed_ts: float
    ) -> bool:
        """First time on a screen: raised -> delivered (later pushes change nothing)."""
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE incidents SET state = 'delivered', pushed_at = %s"
                " WHERE incident_id = %s AND state = 'raised'"
                " RETURNING severity, area_path::text, extract(epoch FROM raised_at)",
                (ts(pushed_ts), incident_id),
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await add_event(
                conn,
                incident_id,
                at_ts=pushed_ts,
                actor="system",
                action="delivered",
                from_state="raised",
                to_state="delivered",
            )
        self.metrics.hop("push", pushed_ts - float(row[2]), row[0], row[1])
        return True

    async def mark_shown(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_ids: Sequence[int],
        *,
        actor: str,
        scope: str,
        admin: bool = False,
        now_ts: float,
    ) -> list[int]:
        """A dispatcher's console confirmed these incidents are on its screen.

        The ones still ``raised`` and inside the caller's scope become ``delivered`` now (with
        the screen hop of the trace and its histogram); the rest are left alone, so a console
        that connects, reconnects or re-reads its queue later delivers what nobody saw yet.
        """
        async with conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""UPDATE incidents i SET state = 'delivered', pushed_at = %(now)s
                    WHERE i.incident_id = ANY(%(ids)s) AND i.state = 'raised' AND {_SCOPE_SQL}
                    RETURNING i.incident_id, i.severity, i.area_path::text AS area_path,
                              extract(epoch FROM i.raised_at)::float8 AS raised_ts""",
                {"ids": list(incident_ids), "now": ts(now_ts), "scope": scope, "admin": admin},
            )
            rows = await cur.fetchall()
            for r in rows:
                await add_event(
                    conn,
                    r["incident_id"],
                    at_ts=now_ts,
                    actor=actor,
                    action="delivered",
                    from_state="raised",
                    to_state="delivered",
                    detail={"via": "console"},
                )
        for r in rows:
            self.metrics.hop("push", now_ts - r["raised_ts"], r["severity"], r["area_path"])
        return [int(r["incident_id"]) for r in rows]

    # -- reads ---------------------------------------------------------------------------------
    async def queue(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        scope: str,
        admin: bool = False,
        states: Sequence[str] = OPEN_STATES,
        severities: Sequence[str] | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """The caller's part of the tree, critical first, then oldest first."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"""SELECT i.incident_id, i.kind, i.severity, i.priority, i.state, i.resident_id,
                       i.device_id, i.area_path::text AS area_path, i.detections,
                       i.route_level, i.routed_to, i.raised_at, i.acknowledged_by,
                       r.full_name AS resident_name
                FROM incidents i LEFT JOIN residents r USING (resident_id)
                WHERE {_SCOPE_SQL} AND i.state = ANY(%(states)s)
                  AND (%(sev)s::text[] IS NULL OR i.severity = ANY(%(sev)s::text[]))
                ORDER BY i.priority, i.raised_at LIMIT %(limit)s""",
            {
                "scope": scope,
                "admin": admin,
                "states": list(states),
                "sev": None if severities is None else list(severities),
                "limit": limit,
            },
        )
        return await cur.fetchall()

    async def detail(
        self,
        conn: psycopg.AsyncConnection[Any],
        incident_id: int,
        *,
        scope: str,
        admin: bool = False,
    ) -> dict[str, Any]:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"""SELECT i.*, i.area_path::text AS area_path FROM incidents i
                WHERE i.incident_id = %(id)s AND {_SCOPE_SQL}""",
            {"id": incident_id, "scope": scope, "admin": admin},
        )
        inc = await cur.fetchone()
        if inc is None:
            raise IncidentNotFoundError(incident_id)
        out: dict[str, Any] = {"incident": inc}
        await cur.execute(
            "SELECT event_id, at, actor, action, from_state, to_state, detail"
            " FROM incident_events WHERE incident_id = %s ORDER BY event_id",
            (incident_id,),
        )
        out["events"] = await cur.fetchall()
        await cur.execute(
            "SELECT call_id, role, phone, attempt, state, called_at, answered_at"
            " FROM incident_calls WHERE incident_id = %s ORDER BY call_id",
            (incident_id,),
        )
        out["calls"] = await cur.fetchall()
        out["resident"] = None
        out["contacts"] = []
        if inc["resident_id"] is not None:
            await cur.execute(
                "SELECT resident_id, full_name, birth_year, sex, phone, address, community_id,"
                " area_path::text AS area_path, home_lat, home_lon, medical_notes"
                " FROM residents WHERE resident_id = %s",
                (inc["resident_id"],),
            )
            out["resident"] = await cur.fetchone()
            await cur.execute(
                "SELECT priority, role, name, phone, relation FROM contacts"
                " WHERE resident_id = %s ORDER BY priority",
                (inc["resident_id"],),
            )
            out["contacts"] = await cur.fetchall()
        out["vitals"] = await self._last_vitals(conn, inc["resident_id"], inc["device_id"])
        out["location"] = await self._location(conn, inc, out["resident"])
        out["trace"] = trace_of(inc)
        return out

    async def _last_vitals(
        self, conn: psycopg.AsyncConnection[Any], resident_id: int | None, device_id: str
    ) -> dict[str, Any]:
        cur = conn.cursor(row_factory=dict_row)
        devices = [device_id]
        if resident_id is not None:
            await cur.execute(
                "SELECT device_id FROM devices WHERE resident_id = %s", (resident_id,)
            )
            devices = sorted({device_id, *(r["device_id"] for r in await cur.fetchall())})
        await cur.execute(
            "SELECT device_id, device_time, hr_bpm, spo2_pct, temp_c, resp_rate_per_min,"
            " sbp_mmhg, dbp_mmhg, battery_pct FROM vitals WHERE device_id = ANY(%s)"
            " AND device_time > now() - interval '1 day' ORDER BY device_time DESC LIMIT 1",
            (devices,),
        )
        last = await cur.fetchone()
        await cur.execute(
            "SELECT bucket, device_id, n, hr_avg, spo2_avg, spo2_min, temp_avg, rr_avg, sbp_avg,"
            " dbp_avg FROM vitals_1m WHERE device_id = ANY(%s)"
            " AND bucket > now() - interval '1 hour' ORDER BY bucket DESC LIMIT 60",
            (devices,),
        )
        return {"last": last, "per_minute": await cur.fetchall()}

    async def _location(
        self,
        conn: psycopg.AsyncConnection[Any],
        inc: dict[str, Any],
        resident: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        if inc["lat"] is not None and inc["lon"] is not None:
            return {"lat": inc["lat"], "lon": inc["lon"], "source": "incident"}
        cur = await conn.execute(
            "SELECT lat, lon, accuracy_m FROM sos_presses WHERE device_id = %s"
            " AND lat IS NOT NULL AND device_time > %s - interval '1 hour'"
            " ORDER BY device_time DESC LIMIT 1",
            (inc["device_id"], inc["event_at"]),
        )
        row = await cur.fetchone()
        if row is not None:
            return {"lat": row[0], "lon": row[1], "accuracy_m": row[2], "source": "device"}
        if resident is not None and resident["home_lat"] is not None:
            return {"lat": resident["home_lat"], "lon": resident["home_lon"], "source": "home"}
        return None


_TRACE_FIELDS: Final = (
    "event_at",
    "broker_at",
    "handed_at",
    "detected_at",
    "raised_at",
    "pushed_at",
    "acknowledged_at",
    "dispatched_at",
    "resolved_at",
)


def trace_of(inc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each hop's stamp and its distance from the device's event (seconds)."""
    start = inc["event_at"]
    out: list[dict[str, Any]] = []
    for name in _TRACE_FIELDS:
        at = inc.get(name)
        hop = name.removesuffix("_at")
        out.append(
            {
                "hop": hop,
                "at": at,
                "since_event_s": None if at is None else (at - start).total_seconds(),
            }
        )
    return out
