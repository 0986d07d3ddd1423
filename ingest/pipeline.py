"""The bridge: messages in, decoded and validated, durable in batches, then acknowledged.

::

    source --submit()--> decode + validate --+--> live lane (SOS, smoke, gas: no storage wait)
                                             +--> consumers (rule runner)
                                             +--> current batch
    flush_loop: batch full or old enough -> Store.write (one transaction)
                                         -> or Spool.append + fsync when the database is away
                -> source.ack(batch, in arrival order) -> replies to devices
    recovery_loop: spool -> Store.write (idempotent) -> truncate -> back to direct writes

A message that fails validation is dead-lettered inside the same batch and acked with it, so
one bad message cannot wedge a session. Backpressure: while more than ``max_pending`` messages
are received and not yet acked, the source stops reading (the broker keeps the messages).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import msgspec
import psycopg

from alerts.live import LiveLane
from devices.readings import HomeEvent, Kind, Reading, SensorType, SosPress, kind_of
from ingest.decode import Limits, Reason, Rejection, decode
from ingest.metrics import IngestMetrics
from ingest.source import Message, Source
from ingest.spool import Spool
from ingest.store import DeadLetter, SpoolRecord, Store
from ingest.validate import Validator

log = logging.getLogger(__name__)

# Failures that mean "the database is not there right now": spool and retry later.
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError, OSError)
_KINDS = frozenset(k.value for k in Kind)
_LATENCY_SAMPLES_PER_BATCH = 32


@dataclass(slots=True)
class Batch:
    messages: list[Message] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    sos: list[SosPress] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    started_s: float = 0.0
    # Could this batch repeat rows already stored? Then skip the fast COPY path.
    may_repeat: bool = False


class TokenBuckets:
    """Per-key token buckets, bounded in size: a flood from one key cannot exhaust storage.

    A hostile or broken device sending garbage at line rate still has every message counted
    and refused, but only ``rate_per_s`` of them per second (after a ``burst``) are kept as dead
    letters; the rest are counted in ``carecall_ingest_dead_letters_suppressed_total``.
    """

    def __init__(self, *, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, now_s: float) -> bool:
        tokens, at = self._buckets.get(key, (self.burst, now_s))
        tokens = min(self.burst, tokens + max(0.0, now_s - at) * self.rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._buckets.clear()  # crude but bounded; only matters under a flood of new keys
        self._buckets[key] = (tokens, now_s)
        return allowed


def _is_urgent(r: Reading) -> TypeGuard[SosPress | HomeEvent]:
    if isinstance(r, SosPress):
        return True
    return (
        isinstance(r, HomeEvent)
        and r.sensor in (SensorType.SMOKE, SensorType.GAS)
        and r.state == "alarm"
    )


class Bridge:
    """The transport-agnostic ingest core."""

    def __init__(
        self,
        *,
        store: Store,
        spool: Spool,
        validator: Validator,
        live_lane: LiveLane,
        metrics: IngestMetrics,
        topic_root: str = "carecall/v1",
        limits: Limits = Limits(),  # noqa: B008 - immutable struct
        batch_max_rows: int = 2000,
        batch_max_delay_s: float = 0.005,
        max_pending: int = 20_000,
        write_timeout_s: float = 5.0,
        consumers: Sequence[Callable[[Reading], None]] = (),
        on_durable: Callable[[Sequence[Message], float], None] | None = None,
        dead_letters_per_min: float = 120.0,
    ) -> None:
        self.store = store
        # Called with each batch's messages and the wall time they became durable (benchmarks
        # and the alert side's "stored" stamp use it).
        self.on_durable = on_durable
        self.spool = spool
        self.validator = validator
        self.live_lane = live_lane
        self.metrics = metrics
        self.topic_root = topic_root
        self.limits = limits
        self.batch_max_rows = batch_max_rows
        self.batch_max_delay_s = batch_max_delay_s
        self.max_pending = max_pending
        self.write_timeout_s = write_timeout_s
        self.consumers = list(consumers)
        self.source: Source | None = None
        self._batch = Batch()
        self._full = asyncio.Event()
        self._nonempty = asyncio.Event()
        self._recover = asyncio.Event()
        self._spool_lock = asyncio.Lock()
        self._pending = 0
        self._paused = False
        self._last_reject_reply: dict[str, float] = {}
        self._dead_letter_budget = TokenBuckets(
            rate_per_s=dead_letters_per_min / 60.0, burst=max(1.0, dead_letters_per_min / 4)
        )
        self._spool_decoder = msgspec.msgpack.Decoder(SpoolRecord)
        self._spool_encoder = msgspec.msgpack.Encoder()
        self.spool_mode = spool.size > 0
        self.db_ok = False
        if self.spool_mode:
            self._recover.set()
        metrics.spool_bytes.set(spool.size)

    def bind(self, source: Source) -> None:
        self.source = source

    # -- intake (called by the source, on the event loop) -----------------------------------
    def submit(self, messages: Sequence[Message]) -> None:
        batch = self._batch
        if not batch.messages:
            batch.started_s = time.monotonic()
        kinds = batch.kinds
        for m in messages:
            batch.messages.append(m)
            if m.dup:
                batch.may_repeat = True
            kind = m.topic.rsplit("/", 1)[-1]
            if kind == "reply":
                continue  # our own downlink (MQTT 3.1.1 has no "no local"): acked, not stored
            kind = kind if kind in _KINDS else "other"
            kinds[kind] = kinds.get(kind, 0) + 1
            result = decode(
                m.topic, m.payload, m.received_ts, root=self.topic_root, limits=self.limits
            )
            if not isinstance(result, Rejection):
                verdict = self.validator.check(result, m.topic, m.received_ts)
                if isinstance(verdict, Rejection):
                    result = verdict
                else:
                    batch.readings.append(result)
                    if verdict:
                        self.metrics.duplicates.inc()
                        batch.may_repeat = True
                    if isinstance(result, SosPress):
                        batch.sos.append(result)
                    if not verdict:
                        if _is_urgent(result):
                            self._to_live_lane(result)
                        for consume in self.consumers:
                            consume(result)
                    continue
            batch.rejections.append(result)
            if self._dead_letter_budget.take(result.device_id or m.topic[:96], m.received_ts):
                batch.dead.append(
                    DeadLetter.make(
                        topic=m.topic,
                        payload=m.payload,
                        received_ts=m.received_ts,
                        reason=result.reason.value,
                        detail=result.detail,
                        device_id=result.device_id,
                        seq=result.seq,
                    )
                )
            else:
                self.metrics.dead_letters_suppressed.inc()
        self._pending += len(messages)
        self.metrics.pending.set(self._pending)
        self._nonempty.set()
        if len(batch.messages) >= self.batch_max_rows:
            self._full.set()
        if self._pending >= self.max_pending and not self._paused and self.source is not None:
            self._paused = True
            self.source.pause()
            self.metrics.paused.set(1)

    def _to_live_lane(self, r: SosPress | HomeEvent) -> None:
        try:
            self.live_lane.offer(r)
            self.metrics.live_lane.labels(kind=type(r).__name__).inc()
        except Exception:  # the live lane must never take the bridge down
            log.exception("live lane hand-over failed for %s", r.env.device_id)

    # -- flushing ---------------------------------------------------------------------------
    async def flush_loop(self) -> None:
        while True:
            await self._nonempty.wait()
            remaining = self._batch.started_s + self.batch_max_delay_s - time.monotonic()
            if remaining > 0 and len(self._batch.messages) < self.batch_max_rows:
                try:
                    async with asyncio.timeout(remaining):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch, self._batch = self._batch, Batch()
            self._full.clear()
            self._nonempty.clear()
            if batch.messages:
                await self._persist(batch)

    async def flush_now(self) -> None:
        """Persist whatever is in the current batch (shutdown, tests)."""
        batch, self._batch = self._batch, Batch()
        self._full.clear()
        self._nonempty.clear()
        if batch.messages:
            await self._persist(batch)

    async def _persist(self, batch: Batch) -> None:
        t0 = time.monotonic()
        where = await self._make_durable(batch)
        done_s = time.monotonic()
        # Durable: now (and only now) the broker may forget these messages.
        if self.source is not None:
            self.source.ack(batch.messages)
        n = len(batch.messages)
        self._pending -= n
        m = self.metrics
        m.pending.set(self._pending)
        if self._paused and self._pending <= self.max_pending // 2 and self.source is not None:
            self._paused = False
            self.source.resume()
            m.paused.set(0)
        m.commit_seconds.observe(done_s - t0)
        m.batch_rows.observe(n)
        for kind, count in batch.kinds.items():
            m.received.labels(kind=kind).inc(count)
        stored: dict[str, int] = {}
        for r in batch.readings:
            k = kind_of(r)
            stored[k] = stored.get(k, 0) + 1
        for kind, count in stored.items():
            m.stored.labels(kind=kind).inc(count)
        for rej in batch.rejections:
            m.rejected.labels(reason=rej.reason.value).inc()
        now = time.time()
        step = max(1, n // _LATENCY_SAMPLES_PER_BATCH)
        for msg in batch.messages[::step]:
            m.receive_to_durable_seconds.observe(max(0.0, now - msg.received_ts))
        for r in batch.readings[:: max(1, len(batch.readings) // _LATENCY_SAMPLES_PER_BATCH)]:
            m.lag_seconds.observe(max(0.0, r.env.received_ts - r.env.device_ts))
        log.debug("batch of %d durable in %s in %.1f ms", n, where, (done_s - t0) * 1000)
        self._reply(batch)
        if self.on_durable is not None:
            self.on_durable(batch.messages, now)

    async def _make_durable(self, batch: Batch) -> str:
        if not self.spool_mode:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await self.store.write(batch.readings, batch.dead, may_repeat=batch.may_repeat)
                self._set_db(True)
                return "database"
            except UNAVAILABLE as exc:
                log.error("database write failed (%s); spooling until it is back", exc)
                await self.store.discard()
                self._set_db(False)
                self.spool_mode = True
                self._recover.set()
            except psycopg.Error as exc:
                # The database is up but refused the data: find the culprits row by row.
                log.error("batch refused by the database (%s); isolating bad rows", exc)
                return await self._write_row_by_row(batch)
        async with self._spool_lock:
            await self.spool.append(
                self._spool_encoder.encode(SpoolRecord(batch.readings, batch.dead))
            )
        self.metrics.spooled.inc()
        self.metrics.spool_bytes.set(self.spool.size)
        return "spool"

    async def _write_row_by_row(self, batch: Batch) -> str:
        for r in batch.readings:
            try:
                await self.store.write([r], [])
            except UNAVAILABLE:
                raise
            except psycopg.Error as exc:
                rej = Rejection(
                    "",
                    Reason.STORAGE_REJECTED,
                    str(exc)[:300],
                    r.env.device_id,
                    r.env.seq,
                    r.env.received_ts,
                )
                batch.rejections.append(rej)
                batch.dead.append(
                    DeadLetter.make(
                        topic=f"{self.topic_root}/{r.env.device_id}/{kind_of(r)}",
                        payload=msgspec.json.encode(r),
                        received_ts=r.env.received_ts,
                        reason="storage_rejected",
                        detail=str(exc)[:300],
                        device_id=r.env.device_id,
                        seq=r.env.seq,
                    )
                )
        await self.store.write([], batch.dead)
        return "database (row by row)"

    def _set_db(self, ok: bool) -> None:
        self.db_ok = ok
        self.metrics.db_up.set(1 if ok else 0)

    # -- replies ----------------------------------------------------------------------------
    def _reply(self, batch: Batch) -> None:
        src = self.source
        if src is None:
            return
        root = self.topic_root
        for s in batch.sos:
            body = {"kind": "sos", "seq": s.env.seq, "status": "accepted", "action": s.action}
            src.reply(f"{root}/{s.env.device_id}/reply", msgspec.json.encode(body))
        now = time.monotonic()
        for rej in batch.rejections:
            dev = rej.device_id
            if dev is None or not rej.topic:
                continue
            # At most one rejection reply per device per second: a broken or hostile device
            # must not turn the server into an amplifier.
            if now - self._last_reject_reply.get(dev, -10.0) < 1.0:
                continue
            if len(self._last_reject_reply) > 100_000:
                self._last_reject_reply.clear()
            self._last_reject_reply[dev] = now
            body = {
                "seq": rej.seq,
                "status": "rejected",
                "reason": rej.reason.value,
                "detail": rej.detail,
            }
            src.reply(f"{root}/{dev}/reply", msgspec.json.encode(body))

    # -- recovery ---------------------------------------------------------------------------
    async def recovery_loop(self) -> None:
        """Replay the spool into the database whenever it holds something."""
        delay_s = 0.2
        while True:
            await self._recover.wait()
            try:
                await self._replay()
                delay_s = 0.2
            except UNAVAILABLE as exc:
                log.warning("replay: database still unavailable (%s)", exc)
                await self.store.discard()
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
                delay_s = min(delay_s * 2, 5.0)

    async def _replay(self) -> None:
        offset = 0
        while True:
            replayed = 0
            for next_offset, payload in self.spool.records(offset):
                record = self._spool_decoder.decode(payload)
                async with asyncio.timeout(self.write_timeout_s):
                    await self.store.write(record.readings, record.dead)
                offset = next_offset
                replayed += 1
                self.metrics.replayed.inc()
                self._set_db(True)
            if replayed:
                continue  # appends may have landed meanwhile; read on from where we are
            async with self._spool_lock:
                if next(iter(self.spool.records(offset)), None) is not None:
                    continue  # an append slipped in before we took the lock
                self.spool.truncate()
                self.spool_mode = False
                self._recover.clear()
                self.metrics.spool_bytes.set(0)
                log.info("spool drained; writing to the database directly again")
                return
