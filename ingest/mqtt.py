"""A small MQTT 5 subscriber that holds PUBACKs until the application says a message is durable.

Why our own and not aiomqtt/paho/gmqtt (measured figures in docs/ingest.md):
- aiomqtt acks on receipt: it cannot hold an ack back.
- paho (``manual_ack``) and gmqtt (non-optimistic ack) can, but both hand messages over one at a
  time (gmqtt schedules a task per message), which caps a durable pipeline well below what the
  broker and PostgreSQL sustain on this machine.
- Here a whole socket read is parsed into a list of PUBLISHes and handed to the pipeline in one
  call; PUBACKs for a committed batch go out in one ``write``; reading pauses (TCP backpressure)
  while the pipeline is full. Each ack names the connection it belongs to: after a reconnect the
  broker re-sends unacked messages and stale packet ids must never be acked on the new link.

Only what CareCall needs is implemented: CONNECT (clean start off, session expiry, receive
maximum, credentials, will), SUBSCRIBE at QoS 1, inbound PUBLISH QoS 0/1, outbound PUBLISH QoS
0/1 (replies to devices), PUBACK, PINGREQ/PINGRESP, DISCONNECT. QoS 2 is refused on subscribe
(granted QoS is capped at 1 by the subscription options).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

log = logging.getLogger(__name__)

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PROP_SESSION_EXPIRY = 0x11
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAX_PACKET_SIZE = 0x27

# Largest remaining length we accept from the broker; bigger packets close the link.
MAX_PACKET_BYTES = 1 << 20


class MqttError(Exception):
    """A protocol-level failure talking to the broker."""


class ConnectRefusedError(MqttError):
    """The broker answered CONNACK with a failure reason code."""

    def __init__(self, reason_code: int) -> None:
        super().__init__(f"broker refused the connection: reason code 0x{reason_code:02x}")
        self.reason_code = reason_code


class Inbound(NamedTuple):
    """One PUBLISH received from the broker, with what is needed to ack it later.

    A NamedTuple rather than a frozen dataclass: it is built once per message on the hot
    path, and tuple construction is several times cheaper.
    """

    topic: str
    payload: bytes
    qos: int
    packet_id: int
    link: int  # which connection it arrived on; acks for an older link are dropped
    received_ts: float
    dup: bool
    retain: bool


@dataclass(frozen=True, slots=True)
class Will:
    """The last-will message the broker publishes when the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _bin(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + encode_varint(len(body)) + body


def encode_connect(
    *,
    client_id: str,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    version: int = 5,
) -> bytes:
    """CONNECT for MQTT 5 (``version=5``) or 3.1.1 (``version=4``, no properties)."""
    flags = 0
    if clean_start:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    props = (
        bytes([PROP_SESSION_EXPIRY])
        + struct.pack("!I", session_expiry_s)
        + bytes([PROP_RECEIVE_MAXIMUM])
        + struct.pack("!H", receive_maximum)
        + bytes([PROP_MAX_PACKET_SIZE])
        + struct.pack("!I", MAX_PACKET_BYTES)
    )
    body = bytearray(_str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive_s))
    if version == 5:
        body += encode_varint(len(props)) + props
    body += _str(client_id)
    if will is not None:
        body += (b"\x00" if version == 5 else b"") + _str(will.topic) + _bin(will.payload)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password.encode())
    return _packet(CONNECT, bytes(body))


# Subscription options: QoS 1, no local, and retain handling 1 (retained messages only when the
# subscription is new), so a resumed session is not flooded with retained copies again.
# "No local" (0x04): never receive our own publishes (replies to devices) back.
SUB_QOS1_NEW_RETAINED = 0x01 | 0x04 | 0x10
SUB_QOS1 = 0x01


def encode_subscribe(packet_id: int, filters: Sequence[tuple[str, int]], version: int = 5) -> bytes:
    body = bytearray(struct.pack("!H", packet_id) + (b"\x00" if version == 5 else b""))
    for f, options in filters:
        # MQTT 3.1.1 reserves every option bit but the QoS.
        body += _str(f) + bytes([options if version == 5 else options & 0x03])
    return _packet(SUBSCRIBE, bytes(body))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    version: int = 5,
) -> bytes:
    header = PUBLISH | (qos << 1) | (1 if retain else 0)
    body = _str(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    return _packet(header, body + (b"\x00" if version == 5 else b"") + payload)


def encode_pubacks(packet_ids: Sequence[int]) -> bytes:
    """PUBACKs for many packet ids in one buffer, in the given (arrival) order."""
    pack = struct.Struct("!BBH").pack
    return b"".join([pack(PUBACK, 2, pid) for pid in packet_ids])


def _read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Decode a variable byte integer at ``pos``; None if the buffer ends inside it."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MqttError("malformed variable byte integer")


def split_packets(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Cut complete packets off the front of ``buf``: [(first byte, body)], bytes consumed."""
    packets: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while pos + 2 <= end:
        parsed = _read_varint(buf, pos + 1)
        if parsed is None:
            break
        length, body_at = parsed
        if length > MAX_PACKET_BYTES:
            raise MqttError(f"packet of {length} bytes exceeds the {MAX_PACKET_BYTES} limit")
        if body_at + length > end:
            break
        packets.append((buf[pos], bytes(buf[body_at : body_at + length])))
        pos = body_at + length
    return packets, pos


class _Link(asyncio.Protocol):
    """One TCP connection: parses frames and forwards them to the owning client."""

    def __init__(self, client: MqttClient, link: int) -> None:
        self.client = client
        self.link = link
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.connack: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.last_in_s = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_in_s = time.monotonic()
        if self.buf:
            self.buf += data
            data = bytes(self.buf)
        try:
            publishes, others, used = self._parse(data)
        except (MqttError, IndexError, UnicodeDecodeError) as exc:
            log.error("mqtt: closing link after a malformed packet: %s", exc)
            assert self.transport is not None
            self.transport.close()
            return
        # Keep only the incomplete tail for the next read.
        self.buf = bytearray(data[used:]) if used < len(data) else bytearray()
        if others:
            self.client._on_packets(self, others)
        if publishes:
            self.client.on_messages(publishes)

    def _parse(self, data: bytes) -> tuple[list[Inbound], list[tuple[int, bytes]], int]:
        """Cut complete packets off ``data``: PUBLISHes parsed in place (the hot path, one
        pass, no intermediate copies), everything else as (first byte, body)."""
        publishes: list[Inbound] = []
        others: list[tuple[int, bytes]] = []
        v5 = self.client.version == 5
        topics = self.client._topic_cache
        now = time.time()
        link = self.link
        pos = 0
        end = len(data)
        while pos + 2 <= end:
            first = data[pos]
            length = data[pos + 1]
            body = pos + 2
            if length & 0x80:
                parsed = _read_varint(data, pos + 1)
                if parsed is None:
                    break
                length, body = parsed
                if length > MAX_PACKET_BYTES:
                    raise MqttError(f"packet of {length} bytes exceeds the limit")
            stop = body + length
            if stop > end:
                break
            if first & 0xF0 == PUBLISH:
                tlen = (data[body] << 8) | data[body + 1]
                raw_topic = data[body + 2 : body + 2 + tlen]
                topic = topics.get(raw_topic)
                if topic is None:
                    topic = raw_topic.decode("utf-8")
                    if len(topics) > 100_000:
                        topics.clear()
                    topics[raw_topic] = topic
                p = body + 2 + tlen
                qos = (first >> 1) & 0x03
                pid = 0
                if qos:
                    pid = (data[p] << 8) | data[p + 1]
                    p += 2
                if v5:
                    plen = data[p]
                    if plen & 0x80:
                        parsed = _read_varint(data, p)
                        if parsed is None:
                            raise MqttError("truncated PUBLISH properties")
                        plen, p = parsed
                        p += plen
                    else:
                        p += 1 + plen
                if p > stop:
                    raise MqttError("PUBLISH header runs past its packet")
                publishes.append(
                    Inbound(
                        topic,
                        data[p:stop],
                        qos,
                        pid,
                        link,
                        now,
                        bool(first & 0x08),
                        bool(first & 0x01),
                    )
                )
            else:
                others.append((first, data[body:stop]))
            pos = stop
        return publishes, others, pos

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.connack.done():
            self.connack.set_exception(MqttError(f"connection lost before CONNACK: {exc}"))


class MqttClient:
    """A reconnecting MQTT 5 client with a persistent session and held acknowledgements.

    ``on_messages`` receives each socket read's PUBLISHes as one list, on the event loop. The
    application later calls :meth:`ack` with those messages once they are durable.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        on_messages: Callable[[list[Inbound]], None],
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int = 1000,
        clean_start: bool = False,
        will: Will | None = None,
        on_connected: Callable[[bool], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        version: int = 5,
    ) -> None:
        if version not in (4, 5):
            raise ValueError("MQTT protocol version must be 4 (3.1.1) or 5")
        self.version = version
        self.host = host
        self.port = port
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_messages = on_messages
        self.username = username
        self.password = password
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.clean_start = clean_start
        self.will = will
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._link: _Link | None = None
        self._link_no = 0
        self._connected = asyncio.Event()
        self._next_out_id = 0
        self._paused = False
        self._topic_cache: dict[bytes, str] = {}
        self.connects = 0
        self.last_error: str | None = None

    # -- state ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    # -- outbound ---------------------------------------------------------------------------
    def ack(self, link: int, packet_ids: Sequence[int]) -> bool:
        """Send PUBACKs (in the order given) if ``link`` is still the live connection."""
        lk = self._link
        if lk is None or lk.link != link or lk.transport is None or lk.transport.is_closing():
            return False
        if packet_ids:
            lk.transport.write(encode_pubacks(packet_ids))
        return True

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Fire a message at the broker; False if there is no live connection right now."""
        lk = self._link
        if not self.connected or lk is None or lk.transport is None:
            return False
        packet_id = 0
        if qos:
            # Outbound ids only need to differ from our other unacked outbound publishes;
            # the broker's PUBACKs for them carry no information we act on.
            self._next_out_id = self._next_out_id % 65535 + 1
            packet_id = self._next_out_id
        lk.transport.write(
            encode_publish(
                topic, payload, qos=qos, packet_id=packet_id, retain=retain, version=self.version
            )
        )
        return True

    def pause_reading(self) -> None:
        """Stop reading the socket: the broker keeps the messages (backpressure)."""
        lk = self._link
        if not self._paused and lk is not None and lk.transport is not None:
            lk.transport.pause_reading()
            self._paused = True

    def resume_reading(self) -> None:
        lk = self._link
        if self._paused and lk is not None and lk.transport is not None:
            lk.transport.resume_reading()
        self._paused = False

    # -- inbound ----------------------------------------------------------------------------
    def _on_packets(self, lk: _Link, packets: list[tuple[int, bytes]]) -> None:
        for first, body in packets:
            kind = first & 0xF0
            if kind == CONNACK:
                if not lk.connack.done():
                    session_present = bool(body[0] & 0x01) if body else False
                    reason = body[1] if len(body) > 1 else 0x80
                    lk.connack.set_result((session_present, reason))
            elif kind in (PUBACK, SUBACK, PINGRESP):
                pass  # nothing to act on: replies are best effort, subscribe is checked below
            elif kind == DISCONNECT:
                reason = body[0] if body else 0
                log.warning("mqtt: broker sent DISCONNECT reason 0x%02x", reason)
            else:
                log.debug("mqtt: ignoring packet type 0x%02x", kind)

    # -- connection loop --------------------------------------------------------------------
    async def run_loop(self) -> None:
        """Connect, stay connected, reconnect with capped jittered backoff; until cancelled."""
        delay_s = self.backoff_initial_s
        loop = asyncio.get_running_loop()
        while True:
            self._link_no += 1
            link_no = self._link_no
            try:
                _, lk = await asyncio.wait_for(
                    loop.create_connection(
                        functools.partial(_Link, self, link_no), self.host, self.port
                    ),
                    timeout=10,
                )
                assert isinstance(lk, _Link)
                await self._handshake(lk)
            except (OSError, MqttError, TimeoutError) as exc:
                self.last_error = str(exc)
                log.warning(
                    "mqtt: cannot connect to %s:%s (%s); retrying in %.1f s",
                    self.host,
                    self.port,
                    exc,
                    delay_s,
                )
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
                delay_s = min(delay_s * 2, self.backoff_max_s)
                continue
            delay_s = self.backoff_initial_s
            self.last_error = None
            try:
                await self._keepalive(lk)
            finally:
                self._connected.clear()
                self._link = None
                self._paused = False
                if lk.transport is not None:
                    lk.transport.close()
                if self.on_disconnected is not None:
                    self.on_disconnected()
            log.warning("mqtt: connection to %s:%s lost; reconnecting", self.host, self.port)

    async def _handshake(self, lk: _Link) -> None:
        assert lk.transport is not None
        lk.transport.write(
            encode_connect(
                client_id=self.client_id,
                keepalive_s=self.keepalive_s,
                clean_start=self.clean_start,
                session_expiry_s=self.session_expiry_s,
                receive_maximum=self.receive_maximum,
                username=self.username,
                password=self.password,
                will=self.will,
                version=self.version,
            )
        )
        try:
            session_present, reason = await asyncio.wait_for(lk.connack, timeout=10)
        except BaseException:
            lk.transport.close()
            raise
        if reason != 0:
            lk.transport.close()
            raise ConnectRefusedError(reason)
        self._link = lk
        if self.subscriptions:
            # Re-subscribing on a resumed session is harmless and covers a broker that lost it.
            lk.transport.write(encode_subscribe(1, self.subscriptions, self.version))
        self.connects += 1
        self._connected.set()
        log.info(
            "mqtt: connected to %s:%s as %s (session present: %s)",
            self.host,
            self.port,
            self.client_id,
            session_present,
        )
        if self.on_connected is not None:
            self.on_connected(session_present)

    async def _keepalive(self, lk: _Link) -> None:
        ping = bytes([PINGREQ, 0])
        interval_s = max(1.0, self.keepalive_s / 2)
        while not lk.closed.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lk.closed), timeout=interval_s)
            if lk.closed.done():
                return
            if time.monotonic() - lk.last_in_s > self.keepalive_s * 1.5 and not self._paused:
                log.warning("mqtt: no traffic from the broker for %.0f s", self.keepalive_s * 1.5)
                return
            assert lk.transport is not None
            lk.transport.write(ping)

    async def disconnect(self) -> None:
        """Send a normal DISCONNECT (the will is not published) if connected."""
        lk = self._link
        if lk is not None and lk.transport is not None and not lk.transport.is_closing():
            lk.transport.write(bytes([DISCONNECT, 0]))
            lk.transport.close()
