"""Kill -9 the bridge mid-stream and restart it: every message is stored exactly once.

Runs against a private Mosquitto configured with the shipped limits (deploy/mosquitto), since
the stock limits drop messages queued for a dead subscriber (see docs/ingest.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.services import (
    REPO,
    Mosquitto,
    Publisher,
    free_port,
    register_devices,
)
from tests.ingest.helpers import vitals


def start_bridge(
    db_url: str, uid: str, broker_port: int, spool: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "CARECALL_ENVIRONMENT": "test",
            "CARECALL_DATABASE_URL": db_url,
            "CARECALL_MQTT_HOST": "127.0.0.1",
            "CARECALL_MQTT_PORT": str(broker_port),
            "CARECALL_TOPIC_ROOT": f"t{uid}/carecall/v1",
            "CARECALL_MQTT_CLIENT_ID": f"ingest-{uid}",
            "CARECALL_SPOOL_DIR": str(spool),
            "CARECALL_HTTP_PORT": str(free_port()),
            # The bridge in the killed process itself (tests/ingest/test_worker.py kills a
            # worker under its server).
            "CARECALL_INGEST_WORKER": "false",
        }
    )
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ingest", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def counts(db_url: str, uid: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM vitals WHERE device_id LIKE %s",
            (uid + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_until(pred, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_and_doubles_nothing(
    migrated_db: str, uid: str, tmp_path: Path, broker: Mosquitto
) -> None:
    devs = [f"{uid}-{i}" for i in range(20)]
    register_devices(migrated_db, devs)
    root = f"t{uid}/carecall/v1"
    n_per_device = 1000
    total = n_per_device * len(devs)
    log = tmp_path / "bridge.log"
    bridge = start_bridge(migrated_db, uid, broker.port, tmp_path / "spool", log)
    try:
        # Wait until the bridge's persistent session exists, so messages queue for it.
        wait_until(lambda: "connected to" in log.read_text(errors="replace"), 30)
        pub = Publisher(port=broker.port)
        msgs = [
            (f"{root}/{d}/vitals", vitals(s, ts=time.time() - 10))
            for s in range(n_per_device)
            for d in devs
        ]
        sender = threading.Thread(target=pub.publish_many, args=(msgs,), kwargs={"timeout_s": 120})
        sender.start()
        wait_until(lambda: counts(migrated_db, uid)[0] >= total // 5, 60)
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(timeout=10)
        stored_at_kill = counts(migrated_db, uid)[0]
        assert stored_at_kill < total, "the stream finished before the kill; make it longer"
        sender.join(timeout=120)
        pub.close()
        bridge = start_bridge(migrated_db, uid, broker.port, tmp_path / "spool", log)
        wait_until(lambda: counts(migrated_db, uid)[0] >= total, 90)
        time.sleep(1.0)  # anything still arriving would be a duplicate
        assert counts(migrated_db, uid) == (total, total)
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(timeout=15)
        except subprocess.TimeoutExpired:
            bridge.kill()
    assert "Traceback" not in log.read_text(errors="replace")
