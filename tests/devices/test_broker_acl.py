"""Broker credentials and ACL against a real Mosquitto started with the generated files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.broker_acl import (
    BrokerFiles,
    build_broker_files,
    mosquitto_hash,
    mosquitto_verify,
    render_acl,
    write_broker_files,
)
from tests.fixtures.services import Mosquitto


class Client:
    """A paho MQTT 5 client logging in with a username and password."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"c-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connected = threading.Event()
        self.reason: Any = None
        self.received: list[tuple[str, bytes]] = []

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.reason = reason
            self.connected.set()

        self.client.on_connect = on_connect
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    @property
    def accepted(self) -> bool:
        return not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(pwfile), "dev-1", "s3cret-pass"], check=True
    )
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$")
    assert mosquitto_verify("s3cret-pass", theirs)
    assert not mosquitto_verify("wrong", theirs)
    # Same salt, same password: our generator writes exactly what mosquitto_passwd wrote.
    _, _, iterations, salt_b64, _ = theirs.split("$")
    import base64  # noqa: PLC0415

    ours = mosquitto_hash(
        "s3cret-pass", salt=base64.b64decode(salt_b64), iterations=int(iterations)
    )
    assert ours == theirs


def test_acl_text() -> None:
    acl = render_acl(topic_root="carecall/v1", bridge_username="carecall-ingest")
    assert "pattern write carecall/v1/%u/+" in acl
    assert "pattern read carecall/v1/%u/reply" in acl
    assert "user carecall-ingest\ntopic read carecall/v1/+/+\ntopic read $SYS/#" in acl


def _files(conninfo: str, root: str, uid: str) -> BrokerFiles:
    async def build() -> BrokerFiles:
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            return await build_broker_files(
                conn,
                topic_root=root,
                bridge_username=f"bridge-{uid}",
                bridge_password="bridge-pass-123",
            )

    return asyncio.run(build())


def test_devices_are_pinned_to_their_own_topics(
    migrated_db: str, sync_db: psycopg.Connection[Any], uid: str, tmp_path: Path
) -> None:
    root = f"t{uid}/carecall/v1"
    d1, d2, d3, retired = f"d1-{uid}", f"d2-{uid}", f"d3-{uid}", f"old-{uid}"
    pw = {d: f"pw-{d}-0123456789" for d in (d1, d2, d3, retired)}
    for d in (d1, d2, retired):
        sync_db.execute(
            "INSERT INTO devices (device_id, mqtt_password_hash) VALUES (%s, %s)",
            (d, mosquitto_hash(pw[d])),
        )
    sync_db.execute("UPDATE devices SET retired_at = now() WHERE device_id = %s", (retired,))
    files = _files(migrated_db, root, uid)
    assert retired not in files.passwords and d1 in files.passwords
    conf_dir = tmp_path / "conf"
    write_broker_files(files, conf_dir)
    assert (conf_dir / "passwords").stat().st_mode & 0o777 == 0o600
    broker = Mosquitto(
        tmp_path / "broker",
        extra=(
            "allow_anonymous false\n"
            f"password_file {conf_dir / 'passwords'}\n"
            f"acl_file {conf_dir / 'acl'}\n"
        ),
    )
    broker.start()
    clients: list[Client] = []
    try:
        assert not Client(broker.port, None, None).accepted  # anonymous
        assert not Client(broker.port, d1, "wrong password").accepted
        assert not Client(broker.port, retired, pw[retired]).accepted
        bridge = Client(broker.port, f"bridge-{uid}", "bridge-pass-123")
        dev1 = Client(broker.port, d1, pw[d1])
        dev2 = Client(broker.port, d2, pw[d2])
        clients += [bridge, dev1, dev2]
        assert bridge.accepted and dev1.accepted and dev2.accepted
        bridge.subscribe(f"{root}/+/+")
        dev2.subscribe(f"{root}/{d1}/reply")  # someone else's replies: never delivered
        dev2.subscribe(f"{root}/{d2}/reply")
        dev1.subscribe(f"{root}/{d1}/reply")
        dev2.subscribe(f"{root}/+/vitals")  # other devices' readings: never delivered

        dev1.publish(f"{root}/{d2}/sos", b"spoofed")  # under another device's id
        dev1.publish(f"{root}/{d1}/vitals", b"genuine")
        bridge.publish(f"{root}/{d1}/reply", b"for d1")
        bridge.publish(f"{root}/{d2}/reply", b"for d2")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            bridge.received and dev1.received and dev2.received
        ):
            time.sleep(0.05)
        time.sleep(0.3)  # a refused message would have arrived by now
        readings = [m for m in bridge.received if not m[0].endswith("/reply")]
        assert readings == [(f"{root}/{d1}/vitals", b"genuine")]
        assert dev1.received == [(f"{root}/{d1}/reply", b"for d1")]
        assert dev2.received == [(f"{root}/{d2}/reply", b"for d2")]

        # Provision a third device, regenerate, SIGHUP: it can log in without a restart.
        assert not Client(broker.port, d3, pw[d3]).accepted
        sync_db.execute(
            "INSERT INTO devices (device_id, mqtt_password_hash) VALUES (%s, %s)",
            (d3, mosquitto_hash(pw[d3])),
        )
        pidfile = tmp_path / "mosquitto.pid"
        assert broker.proc is not None
        pidfile.write_text(f"{broker.proc.pid}\n")
        env = {
            **os.environ,
            "CARECALL_MQTT_USERNAME": f"bridge-{uid}",
            "CARECALL_MQTT_PASSWORD": "bridge-pass-123",
        }
        done = subprocess.run(
            [sys.executable, "-m", "ingest", "broker-config", "--out", str(conf_dir),
             "--database-url", migrated_db, "--topic-root", root,
             "--reload", "--pidfile", str(pidfile)],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "sent SIGHUP" in done.stdout
        time.sleep(0.5)
        dev3 = Client(broker.port, d3, pw[d3])
        clients.append(dev3)
        assert dev3.accepted
    finally:
        for c in clients:
            c.close()
        broker.stop()


@pytest.mark.parametrize("device_id", ["has:colon"])
def test_unusable_usernames_are_left_out(device_id: str) -> None:
    from devices.broker_acl import usable_as_broker_username  # noqa: PLC0415

    assert not usable_as_broker_username(device_id)
    assert usable_as_broker_username("watch-0001.a_b")
