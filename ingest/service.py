"""The composition root: opens every connection and background loop, hands them out, closes them.

``run_ingest(settings)`` is an async context manager yielding a :class:`Runtime`. Everything
it starts is owned by one ``AsyncExitStack`` and a set of named tasks; leaving the context
flushes the current batch, stops the loops and disconnects cleanly. A loop that dies with an
error sets ``runtime.failed`` so ``carecall serve`` exits non-zero (and a supervisor restarts
it) rather than limping on half-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from alerts.live import LiveLane
from devices.directory import DeviceDirectory
from devices.readings import Reading
from ingest.decode import Limits
from ingest.embedded import (
    embedded_broker,
    ensure_database,
    start_embedded_postgres,
    tcp_answers,
)
from ingest.metrics import IngestMetrics
from ingest.migrate import StorageMode, migrate
from ingest.pipeline import Bridge
from ingest.settings import Settings
from ingest.source import Message, MqttSource
from ingest.spool import Spool
from ingest.storage import layout_for
from ingest.store import Store
from ingest.validate import Validator

log = logging.getLogger(__name__)

# Which part of the server this process runs (docs/ingest.md, "Two processes"):
# "all": everything in one process (tests, demo, small sites);
# "front": HTTP, consoles, urgent lane and incidents; no bridge (it sees no readings);
# "worker": the bridge and the rule engine (a child of the front, no public HTTP).
Role = Literal["all", "front", "worker"]


class DiscardLane(LiveLane):
    """The worker's live lane: the front's urgent lane shows alarms at once and the worker's
    rule runner raises their incidents, so what the bridge hands over here is not needed."""

    def offer(self, item: Any) -> bool:
        return True


@dataclass
class Runtime:
    """What the HTTP layer and tests may reach; built only by :func:`run_ingest`."""

    settings: Settings
    conninfo: str
    mqtt_host: str
    mqtt_port: int
    metrics: IngestMetrics
    # The bridge and its MQTT session; None in the front (role "front").
    bridge: Bridge | None
    source: MqttSource | None
    directory: DeviceDirectory
    # The device and sequence checks (the bridge's own when there is one).
    validator: Validator
    live_lane: LiveLane
    pool: AsyncConnectionPool[Any]
    storage_mode: StorageMode | None = None
    role: Role = "all"
    # The front's handle on its ingest worker (ingest.worker.WorkerLink); None otherwise.
    worker: Any = None
    schema_ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    embedded: list[str] = field(default_factory=list)
    started_ts: float = field(default_factory=time.time)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Feature services by name, for their routers (e.g. ``services["alerts"]``).
    services: dict[str, Any] = field(default_factory=dict)

    def add_consumer(self, consume: Callable[[Reading], None]) -> None:
        """Receive every new valid reading, in arrival order, on the event loop. Keep it
        cheap (hand heavy work to a queue and a task of your own): it runs on the hot path."""
        if self.bridge is None:
            raise RuntimeError("the front sees no readings: its ingest worker runs the consumers")
        self.bridge.consumers.append(consume)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a feature's background loop; it is cancelled when the runtime closes and a
        crash of it fails the server (``failed`` is set)."""
        return _spawn(self.tasks, self, coro, name)


async def resolve_database(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[str, bool]:
    """(conninfo, embedded?) following the rules in README: configured > local > embedded."""
    if settings.database_url:
        # A configured server that answers but lacks the database: create it, as for the
        # default one. A server that does not answer is left to the retry loops.
        await ensure_database(settings.database_url, timeout_s=settings.db_connect_timeout_s)
        return settings.database_url, False
    default = settings.default_database_url
    if await ensure_database(default, timeout_s=settings.db_connect_timeout_s):
        log.info("database: using the local server (%s)", default.split("@")[-1])
        return default, False
    server, conninfo = await asyncio.to_thread(
        start_embedded_postgres, settings.embedded_dir / "postgres"
    )
    stack.callback(server.cleanup)
    log.warning(
        "database: nothing answers on %s and CARECALL_DATABASE_URL is not set: started an"
        " EMBEDDED PostgreSQL in %s (no TimescaleDB; native partitions)",
        default.split("@")[-1],
        settings.embedded_dir / "postgres",
    )
    return conninfo, True


async def resolve_broker(
    settings: Settings, stack: contextlib.AsyncExitStack
) -> tuple[str, int, int, bool]:
    """(host, port, protocol version, embedded?)."""
    if settings.mqtt_host:
        return settings.mqtt_host, settings.mqtt_port, 5, False
    if tcp_answers("127.0.0.1", settings.mqtt_port):
        log.info("broker: using the local broker on 127.0.0.1:%d", settings.mqtt_port)
        return "127.0.0.1", settings.mqtt_port, 5, False
    port = settings.mqtt_port
    await stack.enter_async_context(embedded_broker(port))
    return "127.0.0.1", port, 4, True  # amqtt speaks MQTT 3.1.1


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], *, timeout_s: float = 10.0) -> None:
    """Cancel ``tasks`` and wait for them, but never forever: shutdown must finish even if a
    loop is stuck in code that does not honour cancellation (it is named in the log)."""
    for t in reversed(tasks):
        t.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
    for t in stuck:
        log.error("task %s did not stop within %.0f s of being cancelled", t.get_name(), timeout_s)


def _spawn(
    tasks: list[asyncio.Task[None]],
    rt: Runtime,
    coro: Coroutine[Any, Any, None],
    name: str,
) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)

    def _done(t: asyncio.Task[None]) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.critical("background loop %s died: %r", name, exc, exc_info=exc)
            rt.failed.set()

    task.add_done_callback(_done)
    tasks.append(task)
    return task


async def maintenance_loop(rt: Runtime, store: Store | None, *, interval_s: float = 60.0) -> None:
    """Migrate (until the database is reachable), then keep partitions and rollups current."""
    s = rt.settings
    delay_s = 1.0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                rt.conninfo, autocommit=True, connect_timeout=int(s.db_connect_timeout_s)
            ) as conn:
                if not rt.schema_ready.is_set():
                    rt.storage_mode, applied = await migrate(conn, prefer=s.storage)
                    if applied:
                        log.info("applied %d migrations", len(applied))
                if rt.role != "worker":  # the front keeps partitions; one process is enough
                    layout = layout_for(
                        rt.storage_mode or "native",
                        retention_days=s.retention_days,
                        ahead_days=s.partitions_ahead_days,
                        compress_after_days=s.compress_after_days,
                    )
                    await layout.maintain(conn)
                if not rt.schema_ready.is_set():
                    rt.schema_ready.set()
                    if store is not None:
                        store.ready = True
                    await rt.directory.load(conn)
                if rt.bridge is not None and not rt.bridge.spool_mode:
                    rt.bridge.db_ok = True
                    rt.metrics.db_up.set(1)
                delay_s = 1.0
            await asyncio.sleep(interval_s)
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("maintenance: database unavailable (%s); retrying", exc)
            await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, 30.0)


@contextlib.asynccontextmanager
async def run_ingest(
    settings: Settings,
    *,
    metrics: IngestMetrics | None = None,
    consumers: tuple[Callable[[Reading], None], ...] = (),
    on_durable: Callable[[Sequence[Message], float], None] | None = None,
    wait_schema_s: float = 30.0,
    features: Sequence[Callable[[Runtime], AbstractAsyncContextManager[None]]] = (),
    role: Role = "all",
) -> AsyncIterator[Runtime]:
    async with contextlib.AsyncExitStack() as stack:
        conninfo, db_embedded = await resolve_database(settings, stack)
        host, port, version, broker_embedded = await resolve_broker(settings, stack)
        metrics = metrics or IngestMetrics()
        directory = DeviceDirectory(snapshot_path=settings.spool_dir / "devices.json")
        live_lane = DiscardLane() if role == "worker" else LiveLane()
        validator = Validator(directory)
        store: Store | None = None
        bridge: Bridge | None = None
        source: MqttSource | None = None
        if role != "front":
            store = Store(conninfo=conninfo, connect_timeout_s=settings.db_connect_timeout_s)
            store.ready = False
            stack.push_async_callback(store.close)
            spool = Spool(settings.spool_dir / "ingest.spool")
            stack.callback(spool.close)
            bridge = Bridge(
                store=store,
                spool=spool,
                validator=validator,
                live_lane=live_lane,
                metrics=metrics,
                topic_root=settings.topic_root,
                limits=Limits(
                    max_payload_bytes=settings.max_payload_bytes,
                    max_future_skew_s=settings.max_future_skew_s,
                    max_age_s=settings.max_age_s,
                ),
                batch_max_rows=settings.batch_max_rows,
                batch_max_delay_s=settings.batch_max_delay_ms / 1000,
                max_pending=settings.max_pending_messages,
                dead_letters_per_min=settings.dead_letters_per_device_per_min,
                write_timeout_s=settings.db_write_timeout_s,
                consumers=consumers,
                on_durable=on_durable,
            )
            source = MqttSource(
                host=host,
                port=port,
                client_id=settings.mqtt_client_id,
                topic_root=settings.topic_root,
                on_messages=bridge.submit,
                metrics=metrics,
                username=settings.mqtt_username,
                password=(
                    settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
                ),
                session_expiry_s=settings.mqtt_session_expiry_s,
                receive_maximum=settings.mqtt_receive_maximum,
                drop_alarm_per_min=settings.broker_drop_alarm_per_min,
                version=version,
                watch_broker_drops=not broker_embedded,
            )
            bridge.bind(source)
        # Connections for the API and feature services (the bridge's writer has its own).
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=settings.db_pool_size,
            open=False,
            kwargs={"autocommit": True},
            name="carecall-api",
        )
        await pool.open(wait=False)
        stack.push_async_callback(pool.close)
        rt = Runtime(
            settings=settings,
            conninfo=conninfo,
            mqtt_host=host,
            mqtt_port=port,
            metrics=metrics,
            bridge=bridge,
            source=source,
            directory=directory,
            validator=validator,
            live_lane=live_lane,
            pool=pool,
            role=role,
        )
        if db_embedded:
            rt.embedded.append("postgres")
        if broker_embedded:
            rt.embedded.append("mqtt")

        tasks = rt.tasks
        _spawn(tasks, rt, maintenance_loop(rt, store), "ingest.storage.maintenance_loop")
        # Storage must be migrated before the first write; wait a while, but never forever:
        # with the database away the bridge still runs (spooling) and migrates later.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_schema_s):
                await rt.schema_ready.wait()
        if not rt.schema_ready.is_set():
            log.error("database not reachable at start-up: spooling until it is")
        _spawn(tasks, rt, directory.watch_loop(conninfo), "devices.directory.watch_loop")
        if bridge is not None:
            _spawn(tasks, rt, bridge.flush_loop(), "ingest.pipeline.flush_loop")
            _spawn(tasks, rt, bridge.recovery_loop(), "ingest.pipeline.recovery_loop")
        feature_stack = contextlib.AsyncExitStack()
        try:
            # Features (alerts, registry, ...) register their consumers before messages flow.
            for run in features:
                await feature_stack.enter_async_context(run(rt))
            if source is not None:
                _spawn(tasks, rt, source.run_loop(), "ingest.source.run_loop")
            yield rt
        finally:
            # Stop taking messages, make what we hold durable (and ack it), then close.
            if source is not None and bridge is not None:
                source.pause()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(settings.db_write_timeout_s + 1):
                        await bridge.flush_now()
            await feature_stack.aclose()
            await stop_tasks(tasks)
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.close()
