"""Two processes: the server's front and its ingest worker (docs/ingest.md, "Two processes").

When telemetry saturates the bridge, everything that shares its event loop waits: at 20k
vitals/s on two cores an SOS took seconds to reach a console although the urgent lane had
it at once. With ``CARECALL_INGEST_WORKER=true`` the server runs as two processes:

* the **front** (this process; :func:`run_server`) serves HTTP and the consoles' WebSockets,
  subscribes the urgent lane (SOS, smoke, gas) and pushes live alarms, writes their incidents,
  pushes every incident event it hears by ``LISTEN``, stamps deliveries and escalates;
* the **worker** (a child, ``carecall serve --role worker``) owns the bridge's MQTT session,
  storage, the spool, presence and the rule engine; it writes the incidents its rules detect.

The front starts the worker, restarts it when it exits (with backoff; the broker keeps the
session and its unacknowledged messages, so nothing is lost), and stops it on the way out
(SIGTERM: the worker flushes and acknowledges what it holds). The worker leaves when its
parent disappears. The worker serves ``/metrics`` and ``/readyz`` on 127.0.0.1 only; the
front merges them into its own (:class:`MergedRegistry`), so one scrape and one dashboard
still see the whole server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ingest.embedded import tcp_answers
from ingest.metrics import IngestMetrics
from ingest.service import Runtime, run_ingest
from ingest.settings import Settings

log = logging.getLogger(__name__)

# Families the worker owns outright: the front has no bridge, its ingest figures stay at zero.
WORKER_OWNED_PREFIXES = ("carecall_ingest_", "carecall_broker_")
PARENT_ENV = "CARECALL_WORKER_PARENT_PID"


def settings_for_worker(settings: Settings, *, conninfo: str, host: str, port: int) -> str:
    """The worker's settings as JSON (sent on its stdin, never written to disk): the front's
    own, with the database and broker it resolved."""
    data: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        data[name] = value
    data |= {
        "database_url": conninfo,
        "mqtt_host": host,
        "mqtt_port": port,
        "ingest_worker": False,
    }
    return json.dumps(data, default=str)


class MergedRegistry(CollectorRegistry):
    """The front's registry, with the worker's last scrape merged in at collection.

    Families the worker owns (``carecall_ingest_*``, ``carecall_broker_*``) come from the
    worker alone; a family both processes keep (the alert metrics) is summed sample by sample,
    which is right for counters, histograms and the gauges kept here (queue depths, sessions).
    """

    def __init__(self) -> None:
        super().__init__()
        self.remote: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        remote = {m.name: m for m in self.remote if not m.name.endswith("_created")}
        for family in super().collect():
            other = remote.pop(family.name, None)
            if other is None:
                yield family
            elif family.name.startswith(WORKER_OWNED_PREFIXES):
                yield other
            else:
                yield _summed(family, other)
        yield from remote.values()


def _summed(a: Metric, b: Metric) -> Metric:
    out = Metric(a.name, a.documentation, a.type, a.unit)
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for s in [*a.samples, *b.samples]:
        key = (s.name, tuple(sorted(s.labels.items())))
        totals[key] = totals.get(key, 0.0) + s.value
    for (name, labels), value in totals.items():
        out.add_sample(name, dict(labels), value)
    return out


@dataclass
class WorkerLink:
    """The front's view of its worker: the process, its last readiness and its metrics."""

    socket: Path  # the worker's HTTP (/metrics, /readyz), in a directory only the server owns
    registry: MergedRegistry
    pid: int | None = None
    starts: int = 0
    # The last exit codes (bounded: a worker failing for weeks must not grow a list).
    exits: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=20))
    status: dict[str, Any] | None = None
    status_ts: float = 0.0
    ready: bool = False
    stale_after_s: float = 5.0

    def summary(self) -> dict[str, Any]:
        fresh = time.time() - self.status_ts < self.stale_after_s
        return {
            "pid": self.pid,
            "socket": str(self.socket),
            "starts": self.starts,
            "restarts": max(0, self.starts - 1),
            "last_exit_codes": list(self.exits)[-5:],
            "reachable": fresh,
            "ready": self.ready and fresh,
            "status": self.status,
        }


async def _poll(link: WorkerLink, *, interval_s: float = 1.0) -> None:
    """Read the worker's /readyz and /metrics every ``interval_s``."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one request a second is not news
    client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(link.socket)),
        base_url="http://worker",
        timeout=2.0,
    )
    async with client:
        while True:
            try:
                r = await client.get("/readyz")
                link.status = r.json()
                link.ready = r.status_code == 200
                m = await client.get("/metrics")
                link.registry.remote = list(text_string_to_metric_families(m.text))
                link.status_ts = time.time()
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                link.ready = False  # down, starting, or answering nonsense: not ready
            await asyncio.sleep(interval_s)


def _worker_command(socket: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ingest.cli",
        "serve",
        "--role",
        "worker",
        "--socket",
        str(socket),
    ]


async def _supervise(
    link: WorkerLink,
    config_json: str,
    procs: list[asyncio.subprocess.Process],
    *,
    max_backoff_s: float = 10.0,
) -> None:
    """Run the worker; start it again whenever it exits."""
    backoff_s = 0.5
    env = os.environ | {PARENT_ENV: str(os.getpid())}
    while True:
        # Its own session: a terminal's Ctrl-C reaches the front only, which then stops the
        # worker in order (flush, acknowledge) after its own HTTP side.
        try:
            proc = await asyncio.create_subprocess_exec(
                *_worker_command(link.socket),
                stdin=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:  # out of processes or memory: keep trying, loudly
            log.error("ingest worker cannot be started (%s); retrying in %.1f s", exc, backoff_s)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, max_backoff_s)
            continue
        procs[:] = [proc]
        link.pid = proc.pid
        link.starts += 1
        started = time.monotonic()
        assert proc.stdin is not None
        proc.stdin.write(config_json.encode())
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        log.info("ingest worker started (pid %d)", proc.pid)
        rc = await proc.wait()
        link.exits.append(rc)
        link.ready = False
        if time.monotonic() - started > 30:
            backoff_s = 0.5
        log.error(
            "ingest worker (pid %d) exited with %d; restarting in %.1f s", proc.pid, rc, backoff_s
        )
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, max_backoff_s)


async def _stop(link: WorkerLink, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout_s):
            await proc.wait()
    except TimeoutError:
        log.error("ingest worker did not stop within %.0f s of SIGTERM: killing it", timeout_s)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    link.exits.append(proc.returncode if proc.returncode is not None else 0)
    link.ready = False


@contextlib.asynccontextmanager
async def run_server(
    settings: Settings,
    *,
    features: Sequence[Callable[[Runtime], AbstractAsyncContextManager[None]]] = (),
    wait_ready_s: float = 30.0,
) -> AsyncIterator[Runtime]:
    """The whole server: one process, or the front with its worker when
    ``settings.ingest_worker`` is set (and nothing embedded: the demo stays in one process)."""
    split = settings.ingest_worker
    if split and not settings.mqtt_host and not tcp_answers("127.0.0.1", settings.mqtt_port):
        # The embedded broker lives in this process and speaks MQTT 3.1.1 only: a demo.
        log.warning("ingest worker: not used with the embedded broker; one process")
        split = False
    if not split:
        async with run_ingest(settings, features=features) as rt:
            yield rt
        return
    registry = MergedRegistry()
    async with run_ingest(
        settings, features=features, role="front", metrics=IngestMetrics(registry)
    ) as rt:
        # A private directory for the worker's socket: no port to collide with, and nobody
        # else on the machine can talk to it.
        sockets = Path(tempfile.mkdtemp(prefix="carecall-"))
        link = WorkerLink(socket=sockets / "worker.sock", registry=registry)
        rt.worker = link
        # Exported by the front itself (not carecall_ingest_*: those come from the worker).
        Gauge(
            "carecall_worker_up", "1 while the ingest worker answers ready", registry=registry
        ).set_function(lambda: float(link.ready))
        Gauge(
            "carecall_worker_restarts",
            "Times the ingest worker was started again after it exited",
            registry=registry,
        ).set_function(lambda: float(max(0, link.starts - 1)))
        config_json = settings_for_worker(
            settings, conninfo=rt.conninfo, host=rt.mqtt_host, port=rt.mqtt_port
        )
        procs: list[asyncio.subprocess.Process] = []
        # Spawned by the runtime: if either loop dies, the server fails (and is restarted).
        supervisor = rt.spawn(_supervise(link, config_json, procs), "ingest.worker.supervise")
        poller = rt.spawn(_poll(link), "ingest.worker.poll")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_ready_s):
                    while not link.ready:  # noqa: ASYNC110 - polled over HTTP anyway
                        await asyncio.sleep(0.1)
            if not link.ready:
                log.error("ingest worker not ready after %.0f s (see its log)", wait_ready_s)
            yield rt
        finally:
            supervisor.cancel()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            for proc in procs:
                await _stop(link, proc, settings.db_write_timeout_s + 10)
            shutil.rmtree(sockets, ignore_errors=True)


async def watch_parent(parent_pid: int, *, interval_s: float = 0.5) -> None:
    """Return when the front that started this worker is gone (re-parented)."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event tells us
        await asyncio.sleep(interval_s)
    log.error("ingest worker: the server (pid %d) is gone; stopping", parent_pid)
