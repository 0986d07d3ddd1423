"""The server as two processes (ingest/worker.py): the front and its ingest worker.

Real PostgreSQL and a private Mosquitto with the shipped limits (a worker killed mid-stream
must find its session's backlog still queued). The front runs in the test's process; the
worker is the real child process ``carecall serve`` starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from ingest.features import FEATURES
from ingest.http import create_app
from ingest.service import Runtime
from ingest.settings import Settings
from ingest.worker import MergedRegistry, run_server
from tests.alerts.server import next_message
from tests.alerts.world import SECRET, build_world
from tests.fixtures.server import serving
from tests.fixtures.services import REPO, Mosquitto, Publisher, eventually, free_port
from tests.ingest.helpers import bridge_settings, payload, vitals


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[Runtime, str]]:
    async with serving(settings, FEATURES) as (rt, port):
        yield rt, f"127.0.0.1:{port}"


async def _count(db: psycopg.AsyncConnection[Any], device: str) -> tuple[int, int]:
    cur = await db.execute(
        "SELECT count(*), count(DISTINCT seq) FROM vitals WHERE device_id = %s", (device,)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _sample(text: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


async def test_front_and_worker(
    migrated_db: str, db: psycopg.AsyncConnection[Any], uid: str, spool_dir: Path, broker: Mosquitto
) -> None:
    w = await build_world(db, uid)
    settings = bridge_settings(
        migrated_db,
        uid,
        spool_dir,
        port=broker.port,
        secret_key=SECRET,
        ingest_worker=True,
        alerts_tick_interval_s=1.0,
        presence_check_interval_s=0.5,  # the front mirrors presence every 1.5 s
    )
    root = settings.topic_root
    dev = w.devices["r1"]
    pub = Publisher(port=broker.port)
    try:
        async with serve(settings) as (rt, host):
            link = rt.worker
            assert link is not None and link.ready, "the worker did not come up"
            first_pid = link.pid
            assert first_pid != os.getpid() and _alive(first_pid)

            # An SOS: shown by the front (urgent lane), stored and detected by the worker;
            # both write its incident through the same upsert: one incident, one detection.
            ws = await connect(f"ws://{host}/api/v1/ws?token={w.token('disp_ca')}")
            assert json.loads(await ws.recv())["type"] == "hello"
            press = payload(seq=1, lat=38.04, lon=114.51)
            await asyncio.to_thread(pub.publish_many, [(f"{root}/{dev}/sos", press)])
            live = await next_message(ws, "live_alarm")
            assert live["device_id"] == dev
            opened = await next_message(ws, "incident_event", action="opened")
            await asyncio.sleep(1.0)
            cur = await db.execute(
                "SELECT incident_id, detections FROM incidents WHERE resident_id = %s",
                (w.residents["r1"],),
            )
            assert await cur.fetchall() == [(opened["incident_id"], 1)]
            await ws.close()

            # Readings go through the worker; its figures show on the front's /metrics.
            batch = [
                (f"{root}/{dev}/vitals", vitals(seq)) for seq in range(2, 302)
            ]  # 1 was the SOS
            await asyncio.to_thread(pub.publish_many, batch)
            await eventually(lambda: _stored_all(db, dev, 300), timeout_s=20)
            async with httpx.AsyncClient(base_url=f"http://{host}") as http:
                await asyncio.sleep(1.5)  # the front reads the worker once a second
                text = (await http.get("/metrics")).text
                assert _sample(text, "carecall_ingest_messages_stored_total") >= 301
                assert _sample(text, "carecall_ingest_mqtt_connected") == 1
                assert _sample(text, "carecall_worker_up") == 1
                assert _sample(text, "carecall_worker_restarts") == 0
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                body = ready.json()
                assert body["broker"]["connected"] is True
                assert body["ingest_worker"]["ready"] is True

                # The dashboard in the front: the worker's throughput, presence from the
                # database (the worker keeps the live tracker).
                async def summary_shows_the_worker() -> bool:
                    r = await http.get("/api/v1/ops/summary", headers=w.headers("sup"))
                    sup = r.json()
                    return (
                        sup["devices"]["online"] >= 1
                        and sum(p["received_per_s"].get("vitals", 0) for p in sup["history"]) > 0
                        and sup["history"][-1]["db_up"] == 1
                    )

                # The worker's figures reach the front within a second, its sampler within two.
                await eventually(summary_shows_the_worker, timeout_s=10, interval_s=0.5)

            # kill -9 the worker mid-stream: the front starts another one, the broker keeps
            # the session's backlog, and every message is stored exactly once.
            stream = [(f"{root}/{dev}/vitals", vitals(seq)) for seq in range(1000, 4000)]
            sender = threading.Thread(target=pub.publish_many, args=(stream,))
            sender.start()
            await asyncio.sleep(0.3)
            os.kill(first_pid, signal.SIGKILL)
            await asyncio.to_thread(sender.join)
            await eventually(lambda: link.starts == 2 and link.ready, timeout_s=30)
            assert -signal.SIGKILL in link.exits
            await eventually(lambda: _stored_all(db, dev, 3300), timeout_s=60)
            n, distinct = await _count(db, dev)
            assert (n, distinct) == (3300, 3300)
            second_pid = link.pid
            assert second_pid is not None and second_pid != first_pid
        # Leaving the server stops its worker (in order: it flushed and disconnected).
        await eventually(lambda: not _alive(second_pid), timeout_s=5)
        assert link.exits[-1] in (0, -signal.SIGTERM)
    finally:
        pub.close()


async def _stored_all(db: psycopg.AsyncConnection[Any], device: str, n: int) -> bool:
    return await _count(db, device) == (n, n)


def test_worker_leaves_when_its_server_is_killed(
    migrated_db: str, uid: str, tmp_path: Path, broker: Mosquitto
) -> None:
    """kill -9 of the front must not leave an orphan worker holding the bridge's session."""
    http_port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "CARECALL_ENVIRONMENT": "test",
            "CARECALL_DATABASE_URL": migrated_db,
            "CARECALL_MQTT_HOST": "127.0.0.1",
            "CARECALL_MQTT_PORT": str(broker.port),
            "CARECALL_TOPIC_ROOT": f"t{uid}/carecall/v1",
            "CARECALL_MQTT_CLIENT_ID": f"ingest-{uid}",
            "CARECALL_SPOOL_DIR": str(tmp_path / "spool"),
            "CARECALL_HTTP_PORT": str(http_port),
            "CARECALL_INGEST_WORKER": "true",
        }
    )
    log = tmp_path / "server.log"
    with log.open("ab") as out:
        front = subprocess.Popen(
            [sys.executable, "-m", "ingest", "serve"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 40
        worker_pid = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0)
                info = r.json().get("ingest_worker", {})
                if r.status_code == 200 and info.get("pid"):
                    worker_pid = int(info["pid"])
                    break
            time.sleep(0.2)
        assert worker_pid is not None, log.read_text()[-3000:]
        assert _alive(worker_pid)
        front.kill()
        front.wait(10)
        deadline = time.monotonic() + 15
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker_pid), "the worker outlived its server"
        assert "is gone; stopping" in log.read_text()
        # Its server could not clean up after itself: the worker removed the socket directory.
        assert not Path(info["socket"]).parent.exists()
    finally:
        if front.poll() is None:
            front.kill()


def test_merged_registry_sums_shared_families_and_takes_worker_owned_ones() -> None:
    front = MergedRegistry()
    Counter("carecall_alert_incidents_opened", "x", ["kind"], registry=front).labels("sos").inc(2)
    Gauge("carecall_ingest_db_up", "x", registry=front).set(1)  # the front has no bridge
    Gauge("carecall_alert_ws_sessions", "x", registry=front).set(3)
    worker_text = (
        "# HELP carecall_alert_incidents_opened_total x\n"
        "# TYPE carecall_alert_incidents_opened_total counter\n"
        'carecall_alert_incidents_opened_total{kind="sos"} 5.0\n'
        'carecall_alert_incidents_opened_total{kind="fall"} 1.0\n'
        "# HELP carecall_alert_incidents_opened_created x\n"
        "# TYPE carecall_alert_incidents_opened_created gauge\n"
        'carecall_alert_incidents_opened_created{kind="sos"} 1.7e9\n'
        "# HELP carecall_ingest_db_up x\n"
        "# TYPE carecall_ingest_db_up gauge\n"
        "carecall_ingest_db_up 1.0\n"
        "# HELP carecall_ingest_messages_stored_total x\n"
        "# TYPE carecall_ingest_messages_stored_total counter\n"
        'carecall_ingest_messages_stored_total{kind="Vitals"} 42.0\n'
    )
    front.remote = list(text_string_to_metric_families(worker_text))
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    names: list[str] = []
    for family in front.collect():
        names.append(family.name)
        for s in family.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert len(names) == len(set(names)), "a family appears twice"
    assert got[("carecall_alert_incidents_opened_total", (("kind", "sos"),))] == 7.0
    assert got[("carecall_alert_incidents_opened_total", (("kind", "fall"),))] == 1.0
    assert got[("carecall_ingest_db_up", ())] == 1.0  # the worker's, not 1 + 1
    assert got[("carecall_alert_ws_sessions", ())] == 3.0
    assert got[("carecall_ingest_messages_stored_total", (("kind", "Vitals"),))] == 42.0
    # The front's own _created series stay; the worker's are left out (not summable).
    created = [k for k in got if k[0] == "carecall_alert_incidents_opened_created"]
    assert created and all(got[k] < 1.8e9 and got[k] != 1.7e9 for k in created)


async def test_a_worker_that_cannot_start_is_retried_and_reported(
    migrated_db: str, uid: str, spool_dir: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies at start (here: a command that exits 3 at once): the front keeps
    retrying with backoff and says so in /readyz (503, restarts and exit codes) instead of
    pretending to be ready."""
    monkeypatch.setattr(
        "ingest.worker._worker_command",
        lambda _socket: [sys.executable, "-c", "raise SystemExit(3)"],
    )
    settings = bridge_settings(
        migrated_db, uid, spool_dir, port=broker.port, secret_key=SECRET, ingest_worker=True
    )
    async with run_server(settings, wait_ready_s=2.0) as rt:
        link = rt.worker
        assert link is not None
        await eventually(lambda: link.starts >= 3, timeout_s=20)
        assert not link.ready
        app = create_app(rt, [])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "degraded"
        assert body["ingest_worker"]["restarts"] >= 2
        assert 3 in body["ingest_worker"]["last_exit_codes"]
        assert not rt.failed.is_set()  # the front itself is healthy and keeps trying
    # The worker's socket directory is gone with the server.
    assert not link.socket.parent.exists()
