"""Durable batched writes with binary COPY, idempotent on (device_id, device_time, seq).

One batch is one transaction, in one of two ways (measured in docs/ingest.md):

- fast path: ``COPY ... (FORMAT BINARY)`` straight into the real tables. A unique violation
  (the batch repeats something already stored) rolls the transaction back and the batch is
  written again by the safe path. Normal traffic never repeats itself, so this costs nothing.
- safe path, used directly when a batch may repeat stored rows (broker redelivery after a
  reconnect, spool replay, dead letters): COPY into per-connection temporary staging tables
  (``ON COMMIT DELETE ROWS``), then ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.

Times travel as float epoch seconds; both paths turn them into ``timestamptz`` with the same
arithmetic as PostgreSQL's ``to_timestamp`` (``rint((t - 946684800) * 1e6)`` microseconds), so
the idempotency key is identical whichever path wrote a row.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg import errors
from psycopg.adapt import Dumper
from psycopg.pq import Format

from devices.readings import AccelWindow, DeviceStatus, HomeEvent, Reading, SosPress, Vitals

log = logging.getLogger(__name__)

DEAD_LETTER_PAYLOAD_CAP = 4096  # bytes of a refused payload kept for inspection


class DeadLetter(msgspec.Struct, frozen=True):
    """A refused message as stored in ``dead_letters``."""

    key: bytes
    received_ts: float
    topic: str
    device_id: str | None
    seq: int | None
    reason: str
    detail: str
    payload: bytes
    payload_bytes: int

    @classmethod
    def make(
        cls,
        *,
        topic: str,
        payload: bytes,
        received_ts: float,
        reason: str,
        detail: str,
        device_id: str | None,
        seq: int | None,
    ) -> DeadLetter:
        return cls(
            # A fresh random key per refusal: identical payloads refused in the same socket
            # read stay separate rows, while a spool replay (which stores the key) is a no-op.
            key=os.urandom(16),
            received_ts=received_ts,
            topic=topic[:512],
            device_id=device_id,
            seq=seq if seq is not None and -(2**63) <= seq < 2**63 else None,
            reason=reason,
            detail=detail[:1000],
            payload=payload[:DEAD_LETTER_PAYLOAD_CAP],
            payload_bytes=len(payload),
        )


class SpoolRecord(msgspec.Struct, frozen=True):
    """What one batch looks like on the spool: exactly what would have gone to the database."""

    readings: list[Vitals | AccelWindow | SosPress | HomeEvent | DeviceStatus]
    dead: list[DeadLetter]


@dataclass(slots=True)
class WriteResult:
    inserted: dict[str, int] = field(default_factory=dict)
    offered: int = 0


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, staging type) after the envelope columns

    @property
    def stage(self) -> str:
        return f"stage_{self.name}"


_ENVELOPE = (
    ("device_id", "text"),
    ("seq", "int8"),
    ("device_ts", "float8"),
    ("received_ts", "float8"),
)
_TABLES: dict[type, _Table] = {
    Vitals: _Table(
        "vitals",
        (
            ("hr_bpm", "float4"),
            ("spo2_pct", "float4"),
            ("temp_c", "float4"),
            ("resp_rate_per_min", "float4"),
            ("sbp_mmhg", "float4"),
            ("dbp_mmhg", "float4"),
            ("battery_pct", "float4"),
            ("signal_quality", "float4"),
            ("on_oxygen", "bool"),
        ),
    ),
    AccelWindow: _Table(
        "accel_windows",
        (
            ("rate_hz", "float4"),
            ("n_samples", "int4"),
            ("peak_g", "float4"),
            ("position", "text"),
            ("samples", "bytea"),
        ),
    ),
    SosPress: _Table(
        "sos_presses",
        (("action", "text"), ("lat", "float8"), ("lon", "float8"), ("accuracy_m", "float4")),
    ),
    HomeEvent: _Table(
        "home_events", (("sensor", "text"), ("state", "text"), ("sensor_id", "text"))
    ),
    DeviceStatus: _Table(
        "device_status",
        (
            ("state", "text"),
            ("battery_pct", "float4"),
            ("rssi_dbm", "float4"),
            ("firmware", "text"),
            ("will", "bool"),
        ),
    ),
}
_DEAD = _Table(
    "dead_letters",
    (
        ("dl_key", "bytea"),
        ("received_ts", "float8"),
        ("topic", "text"),
        ("device_id", "text"),
        ("seq", "int8"),
        ("reason", "text"),
        ("detail", "text"),
        ("payload", "bytea"),
        ("payload_bytes", "int4"),
    ),
)


def _row(r: Reading) -> tuple[object, ...]:
    e = r.env
    head = (e.device_id, e.seq, e.device_ts, e.received_ts)
    if isinstance(r, Vitals):
        return (
            *head,
            r.hr_bpm,
            r.spo2_pct,
            r.temp_c,
            r.resp_rate_per_min,
            r.sbp_mmhg,
            r.dbp_mmhg,
            r.battery_pct,
            r.signal_quality,
            r.on_oxygen,
        )
    if isinstance(r, AccelWindow):
        return (*head, r.rate_hz, r.n_samples, r.peak_g, r.position, r.samples_g)
    if isinstance(r, SosPress):
        return (*head, r.action, r.lat, r.lon, r.accuracy_m)
    if isinstance(r, HomeEvent):
        return (*head, r.sensor.value, r.state, r.sensor_id)
    return (*head, r.state, r.battery_pct, r.rssi_dbm, r.firmware, r.will)


_PG_EPOCH_S = 946_684_800.0  # 2000-01-01T00:00:00Z, the origin of binary timestamptz
_INT64 = struct.Struct("!q")


class EpochSecondsDumper(Dumper):
    """Binary ``timestamptz`` from float epoch seconds, rounded exactly like ``to_timestamp``."""

    format = Format.BINARY
    oid = 1184  # timestamptz

    def dump(self, obj: object) -> bytes:
        assert isinstance(obj, float | int)
        return _INT64.pack(round((obj - _PG_EPOCH_S) * 1_000_000))


def _direct_types(t: _Table) -> list[str]:
    return ["text", "int8", "timestamptz", "timestamptz", *(ty for _, ty in t.columns)]


def _direct_copy_sql(t: _Table) -> bytes:
    cols = ", ".join(["device_id", "seq", "device_time", "received_at", *(c for c, _ in t.columns)])
    return f"COPY {t.name} ({cols}) FROM STDIN (FORMAT BINARY)".encode()


def _stage_ddl(t: _Table, *, envelope: bool = True) -> str:
    cols = (_ENVELOPE if envelope else ()) + t.columns
    body = ", ".join(f"{c} {ty}" for c, ty in cols)
    return f"CREATE TEMP TABLE IF NOT EXISTS {t.stage} ({body}) ON COMMIT DELETE ROWS"


def _move_sql(t: _Table) -> str:
    extra = [c for c, _ in t.columns]
    cols = ", ".join(["device_id", "seq", "device_time", "received_at", *extra])
    src = ", ".join(
        ["device_id", "seq", "to_timestamp(device_ts)", "to_timestamp(received_ts)", *extra]
    )
    return f"INSERT INTO {t.name} ({cols}) SELECT {src} FROM {t.stage} ON CONFLICT DO NOTHING"


_DEAD_MOVE = (
    "INSERT INTO dead_letters (dl_key, received_at, topic, device_id, seq, reason, detail,"
    " payload, payload_bytes) SELECT dl_key, to_timestamp(received_ts), topic, device_id, seq,"
    " reason, detail, payload, payload_bytes FROM stage_dead_letters ON CONFLICT DO NOTHING"
)


class Store:
    """Owns one writer connection; :meth:`write` raises ``psycopg.OperationalError`` (or a
    ``TimeoutError``) when the database is unreachable, so the caller can spool."""

    def __init__(self, *, conninfo: str, connect_timeout_s: float = 3.0) -> None:
        self.conninfo = conninfo
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # False until migrations have run: writes before that count as "database away".
        self.ready = True
        self.fallbacks = 0  # batches that hit a unique violation on the fast path

    async def connect(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
        )
        # Only this writer connection maps timestamptz in COPY to floats (see the dumper).
        conn.adapters.register_dumper(None, EpochSecondsDumper)
        try:
            for t in (*_TABLES.values(),):
                await conn.execute(_stage_ddl(t))
            await conn.execute(_stage_ddl(_DEAD, envelope=False))
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def discard(self) -> None:
        """Forget a connection that failed mid-write (its transaction is gone anyway)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)

    async def write(
        self,
        readings: Sequence[Reading],
        dead: Sequence[DeadLetter],
        *,
        may_repeat: bool = True,
    ) -> WriteResult:
        """Write one batch in one transaction; idempotent.

        ``may_repeat=False`` (fresh traffic) tries the fast direct COPY first.
        """
        if not self.ready:
            raise psycopg.OperationalError("storage schema is not migrated yet")
        await self.connect()
        conn = self._conn
        assert conn is not None
        by_type: dict[type, list[tuple[object, ...]]] = {}
        for r in readings:
            by_type.setdefault(type(r), []).append(_row(r))
        result = WriteResult(offered=len(readings))
        try:
            if not may_repeat:
                try:
                    await self._write_batch(conn, by_type, dead, result, staged=False)
                    return result
                except errors.UniqueViolation:
                    self.fallbacks += 1
                    log.info("batch repeats stored rows; writing it with ON CONFLICT")
            await self._write_batch(conn, by_type, dead, result, staged=True)
        except BaseException:
            if conn.closed or conn.broken:
                self._conn = None
            raise
        return result

    async def _write_batch(
        self,
        conn: psycopg.AsyncConnection[Any],
        by_type: dict[type, list[tuple[object, ...]]],
        dead: Sequence[DeadLetter],
        result: WriteResult,
        *,
        staged: bool,
    ) -> None:
        """One transaction: every kind's rows by the fast (direct COPY) or safe (staged) path."""
        async with conn.transaction(), conn.cursor() as cur:
            for typ, rows in by_type.items():
                t = _TABLES[typ]
                if staged:
                    await self._copy(cur, t, rows, envelope=True)
                    await cur.execute(_move_sql(t).encode())
                    result.inserted[t.name] = max(cur.rowcount, 0)
                    continue
                async with cur.copy(_direct_copy_sql(t)) as copy:
                    copy.set_types(_direct_types(t))
                    for row in rows:
                        await copy.write_row(row)
                result.inserted[t.name] = len(rows)
            if dead:
                await self._write_dead(cur, dead, result)

    async def _write_dead(
        self, cur: psycopg.AsyncCursor[Any], dead: Sequence[DeadLetter], result: WriteResult
    ) -> None:
        rows: list[tuple[object, ...]] = [
            (
                d.key,
                d.received_ts,
                d.topic,
                d.device_id,
                d.seq,
                d.reason,
                d.detail,
                d.payload,
                d.payload_bytes,
            )
            for d in dead
        ]
        await self._copy(cur, _DEAD, rows, envelope=False)
        await cur.execute(_DEAD_MOVE.encode())
        result.inserted["dead_letters"] = max(cur.rowcount, 0)

    @staticmethod
    async def _copy(
        cur: psycopg.AsyncCursor[Any],
        t: _Table,
        rows: list[tuple[object, ...]],
        *,
        envelope: bool,
    ) -> None:
        cols = (_ENVELOPE if envelope else ()) + t.columns
        names = ", ".join(c for c, _ in cols)
        stmt = f"COPY {t.stage} ({names}) FROM STDIN (FORMAT BINARY)"
        async with cur.copy(stmt.encode()) as copy:
            copy.set_types([ty for _, ty in cols])
            for row in rows:
                await copy.write_row(row)
