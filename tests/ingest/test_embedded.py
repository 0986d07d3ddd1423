"""`carecall serve` with nothing configured and nothing answering: embedded PostgreSQL and
embedded broker, and a message still goes all the way into the database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.services import REPO, free_port, wait_port


def _get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_embedded_defaults_start_and_store(tmp_path: Path) -> None:
    http_port, mqtt_port, dead_pg = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARECALL_")}
    env.update(
        {
            "CARECALL_DEFAULT_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead_pg}/carecall",
            "CARECALL_MQTT_PORT": str(mqtt_port),
            "CARECALL_HTTP_PORT": str(http_port),
            "CARECALL_EMBEDDED_DIR": str(tmp_path / "embedded"),
            "CARECALL_SPOOL_DIR": str(tmp_path / "spool"),
            "LC_ALL": "C.UTF-8",
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(http_port, timeout_s=60)
        deadline = time.monotonic() + 30
        status, body = _get(f"http://127.0.0.1:{http_port}/readyz")
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
            status, body = _get(f"http://127.0.0.1:{http_port}/readyz")
        assert status == 200, body
        assert sorted(body["embedded"]) == ["mqtt", "postgres"]
        text = log.read_text(errors="replace")
        assert "EMBEDDED PostgreSQL" in text and "EMBEDDED MQTT broker" in text
        assert "durability needs Mosquitto" in text

        socket_dir = tmp_path / "embedded" / "postgres"
        url = f"postgresql://postgres@/carecall?host={socket_dir.resolve()}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO devices (device_id) VALUES ('emb-1')")
        time.sleep(1.5)  # the bridge's device directory reloads on NOTIFY
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="emb-dev", protocol=paho.MQTTv311
        )
        client.connect("127.0.0.1", mqtt_port)
        client.loop_start()
        info = client.publish(
            "carecall/v1/emb-1/vitals",
            json.dumps({"ts": time.time(), "seq": 1, "hr_bpm": 70}),
            qos=1,
        )
        info.wait_for_publish(timeout=10)
        client.loop_stop()
        client.disconnect()
        deadline = time.monotonic() + 15
        count = 0
        while time.monotonic() < deadline and count == 0:
            with psycopg.connect(url) as conn:
                count = conn.execute("SELECT count(*) FROM vitals").fetchone()[0]  # type: ignore[index]
            time.sleep(0.2)
        assert count == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
