"""Device connections: one paho MQTT 5 client per device, QoS 1, with its own credentials,
a persistent session, a retained last will and a subscription to its reply topic.

One client per device (not one multiplexed connection) because that is what the broker's ACL
and the last will are per: a multiplexed client could neither publish under every device's
credentials nor die as one device. Each paho client runs its own network thread; a few
hundred devices per simulator process is comfortable (run several processes beyond that).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from simulator.wearable import WILL_PAYLOAD

log = logging.getLogger(__name__)


class PublisherError(Exception):
    """A device could not connect or publish."""

    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(f"{device_id}: {reason}")
        self.device_id = device_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str = "127.0.0.1"
    port: int = 1883

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        host, _, port = text.rpartition(":")
        if not host:
            return cls(text, 1883)
        return cls(host, int(port))


ReplyHandler = Callable[[str, dict[str, object]], None]


class DeviceLink:
    """One device's MQTT connection."""

    def __init__(
        self,
        device_id: str,
        broker: BrokerAddress,
        *,
        topic_root: str = "carecall/v1",
        password: str | None = None,
        on_reply: ReplyHandler | None = None,
        session_expiry_s: int = 3600,
        client_id_suffix: str = "",
    ) -> None:
        self.device_id = device_id
        self.broker = broker
        self.base = f"{topic_root}/{device_id}"
        self.on_reply = on_reply
        self.session_expiry_s = session_expiry_s
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._infos: list[paho.MQTTMessageInfo] = []
        self.published = 0
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id + client_id_suffix,
            protocol=paho.MQTTv5,
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        if password is not None:
            self.client.username_pw_set(device_id, password)
        self.client.will_set(f"{self.base}/status", WILL_PAYLOAD, qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *_a: self._connected.clear()

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("device %s refused by the broker: %s", self.device_id, rc)
            return
        client.subscribe(f"{self.base}/reply", qos=1)
        self._connected.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and self.on_reply is not None:
            self.on_reply(self.device_id, body)

    # -- device side ----------------------------------------------------------------------
    def connect(self, timeout_s: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        try:
            self.client.connect(
                self.broker.host, self.broker.port, keepalive=30, clean_start=False,
                properties=props,
            )  # fmt: skip
        except OSError as exc:
            raise PublisherError(self.device_id, f"cannot reach the broker: {exc}") from exc
        self.client.loop_start()
        if not (self._connected.wait(timeout_s) and self._subscribed.wait(timeout_s)):
            self.client.loop_stop()
            raise PublisherError(self.device_id, "no CONNACK/SUBACK (credentials? ACL?)")

    def publish(self, kind: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(f"{self.base}/{kind}", payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PublisherError(self.device_id, f"publish failed: {info.rc}")
        with self._lock:
            self.published += 1
            self._infos.append(info)
            if len(self._infos) > 1000:
                self._infos = [i for i in self._infos if not i.is_published()]

    def publish_raw(self, topic: str, payload: bytes) -> None:
        """Publish on any topic (spoofing tests: the broker's ACL should refuse it)."""
        with self._lock:
            self._infos.append(self.client.publish(topic, payload, qos=1))

    def unacked(self) -> int:
        with self._lock:
            self._infos = [i for i in self._infos if not i.is_published()]
            return len(self._infos)

    def flush(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.unacked() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.unacked() == 0

    def drop(self) -> None:
        """Die without a DISCONNECT (battery pulled, out of range): the broker publishes the
        last will once it notices the dead socket."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._connected.clear()

    def close(self) -> None:
        if self._connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()
