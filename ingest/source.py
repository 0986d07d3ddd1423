"""Where messages come from. The core sees only :class:`Message` and :class:`Source`.

A source delivers messages in arrival order and takes them back through :meth:`Source.ack`
once they are durable. The MQTT source is one implementation; a NATS JetStream source (the
planned scale-out path) would map ``ack`` to JetStream acks without touching the core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ingest.metrics import IngestMetrics
from ingest.mqtt import SUB_QOS1, SUB_QOS1_NEW_RETAINED, Inbound, MqttClient, Will

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
SYS_DROPPED_1MIN = "$SYS/broker/load/publish/dropped/1min"


class Message(Protocol):
    """A message with what the core needs; the source keeps its own ack handle inside."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def received_ts(self) -> float: ...
    @property
    def dup(self) -> bool:
        """The transport may have delivered this message before (e.g. after a reconnect)."""


class Source(Protocol):
    def ack(self, messages: Sequence[Message]) -> None:
        """Tell the transport these messages are durable, in the order given."""

    def pause(self) -> None:
        """Stop taking messages (backpressure); the transport keeps them."""

    def resume(self) -> None: ...

    def reply(self, topic: str, payload: bytes) -> bool:
        """Best-effort application message back to a device."""

    @property
    def connected(self) -> bool: ...

    async def run_loop(self) -> None: ...


class MqttSource:
    """MQTT 5 with a persistent session and held PUBACKs (see :mod:`ingest.mqtt`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        topic_root: str,
        on_messages: Callable[[Sequence[Message]], None],
        metrics: IngestMetrics,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 2000,
        drop_alarm_per_min: float = 0.0,
        watch_broker_drops: bool = True,
        version: int = 5,
    ) -> None:
        self.metrics = metrics
        self.drop_alarm_per_min = drop_alarm_per_min
        self._deliver = on_messages
        subs = [(f"{topic_root}/+/+", SUB_QOS1_NEW_RETAINED)]
        if watch_broker_drops:
            subs += [(SYS_DROPPED, SUB_QOS1), (SYS_DROPPED_1MIN, SUB_QOS1)]
        self._alarm_on = False
        self.client = MqttClient(
            host=host,
            port=port,
            client_id=client_id,
            subscriptions=subs,
            on_messages=self._on_messages,
            username=username,
            password=password,
            session_expiry_s=session_expiry_s,
            receive_maximum=receive_maximum,
            will=Will(f"carecall/server/{client_id}/status", b'{"state":"offline"}', 1, True),
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            version=version,
        )

    @property
    def connected(self) -> bool:
        return self.client.connected

    def _on_connected(self, session_present: bool) -> None:
        self.metrics.mqtt_connected.set(1)
        root = self.client.will.topic if self.client.will else None
        if root:
            self.client.publish(root, b'{"state":"online"}', qos=1, retain=True)

    def _on_disconnected(self) -> None:
        self.metrics.mqtt_connected.set(0)

    def _on_messages(self, batch: list[Inbound]) -> None:
        if any(m.topic.startswith("$SYS/") for m in batch):
            sys_msgs = [m for m in batch if m.topic.startswith("$SYS/")]
            for m in sys_msgs:
                self._broker_stat(m)
            self.ack(sys_msgs)
            batch = [m for m in batch if not m.topic.startswith("$SYS/")]
            if not batch:
                return
        self._deliver(batch)

    def _broker_stat(self, m: Inbound) -> None:
        try:
            value = float(m.payload.decode().strip())
        except (UnicodeDecodeError, ValueError):
            return
        if m.topic == SYS_DROPPED:
            self.metrics.broker_dropped.set(value)
        elif m.topic == SYS_DROPPED_1MIN:
            self.metrics.broker_dropped_1min.set(value)
            alarm = value > self.drop_alarm_per_min
            if alarm and not self._alarm_on:
                log.error(
                    "ALARM: the broker is dropping messages (%.1f/min): raise its queue limits"
                    " or add capacity; see docs/ingest.md",
                    value,
                )
            self._alarm_on = alarm
            self.metrics.broker_drop_alarm.set(1 if alarm else 0)

    def ack(self, messages: Sequence[Message]) -> None:
        link = -1
        ids: list[int] = []
        for m in messages:
            assert isinstance(m, Inbound)
            if m.qos == 0:
                continue
            if m.link != link:
                if ids:
                    self.client.ack(link, ids)
                link, ids = m.link, []
            ids.append(m.packet_id)
        if ids:
            self.client.ack(link, ids)

    def pause(self) -> None:
        self.client.pause_reading()

    def resume(self) -> None:
        self.client.resume_reading()

    def reply(self, topic: str, payload: bytes) -> bool:
        return self.client.publish(topic, payload, qos=1)

    async def run_loop(self) -> None:
        await self.client.run_loop()

    async def close(self) -> None:
        await self.client.disconnect()
