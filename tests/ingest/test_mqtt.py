from __future__ import annotations

import asyncio

import pytest

from ingest.mqtt import (
    PUBLISH,
    MqttClient,
    MqttError,
    _Link,
    encode_pubacks,
    encode_publish,
    encode_varint,
    split_packets,
)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_varint_round_trip(n: int) -> None:
    raw = bytearray(b"\x30" + encode_varint(n))
    if n < 200_000:
        raw += b"x" * n
        packets, used = split_packets(raw)
        assert used == len(raw) and packets[0][1] == b"x" * n
    else:
        with pytest.raises(MqttError):
            split_packets(raw + b"x" * 10)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1])
async def test_publish_round_trip(version: int, qos: int) -> None:
    """What we encode, the live link's parser reads back (the one PUBLISH parser we have)."""
    pkt = encode_publish(
        "carecall/v1/dev/sos", b'{"seq":1}', qos=qos, packet_id=513, retain=True, version=version
    )
    packets, used = split_packets(bytearray(pkt))
    assert used == len(pkt) and len(packets) == 1 and packets[0][0] & 0xF0 == PUBLISH
    client = MqttClient(
        host="h",
        port=1,
        client_id="c",
        subscriptions=[],
        on_messages=lambda _m: None,
        version=version,
    )
    publishes, others, used = _Link(client, 3)._parse(pkt)
    assert used == len(pkt) and others == []
    m = publishes[0]
    assert (m.topic, m.payload, m.qos, m.packet_id, m.dup, m.retain, m.link) == (
        "carecall/v1/dev/sos",
        b'{"seq":1}',
        qos,
        513 if qos else 0,
        False,
        True,
        3,
    )


def test_partial_packets_wait_for_more_bytes() -> None:
    a = encode_publish("t/a", b"1" * 300, qos=1, packet_id=1)
    b = encode_publish("t/b", b"2", qos=1, packet_id=2)
    stream = bytearray(a + b)
    packets, used = split_packets(stream[: len(a) + 3])
    assert len(packets) == 1 and used == len(a)
    packets, used = split_packets(stream[used:])
    assert len(packets) == 1 and used == len(b)


def test_pubacks_keep_order() -> None:
    raw = encode_pubacks([5, 3, 65535])
    assert raw == b"\x40\x02\x00\x05\x40\x02\x00\x03\x40\x02\xff\xff"


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written = b""

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 100_000])
async def test_stream_parser_any_split(version: int, chunk: int) -> None:
    got: list = []  # type: ignore[type-arg]
    client = MqttClient(
        host="h", port=1, client_id="c", subscriptions=[], on_messages=got.extend, version=version
    )
    link = _Link(client, 7)
    link.connection_made(_FakeTransport())  # type: ignore[arg-type]
    frames = [
        encode_publish(
            f"carecall/v1/d{i}/vitals",
            b"x" * (i * 37 % 300),
            qos=i % 2,
            packet_id=i + 1,
            version=version,
        )
        for i in range(60)
    ]
    frames.insert(5, b"\xd0\x00")  # a PINGRESP in between
    frames.append(
        encode_publish("t/" + "é" * 100, b"y" * 20_000, qos=1, packet_id=999, version=version)
    )  # multi-byte lengths
    stream = b"".join(frames)
    for i in range(0, len(stream), chunk):
        link.data_received(stream[i : i + chunk])
    assert len(got) == 61
    assert [m.topic for m in got[:3]] == [
        "carecall/v1/d0/vitals",
        "carecall/v1/d1/vitals",
        "carecall/v1/d2/vitals",
    ]
    assert all(m.link == 7 for m in got)
    assert got[3].payload == b"x" * (3 * 37 % 300) and got[3].qos == 1 and got[3].packet_id == 4
    assert got[-1].topic == "t/" + "é" * 100 and len(got[-1].payload) == 20_000
    assert not link.buf


async def test_stream_parser_closes_on_garbage() -> None:
    client = MqttClient(
        host="h", port=1, client_id="c", subscriptions=[], on_messages=lambda _m: None
    )
    link = _Link(client, 1)
    transport = _FakeTransport()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.data_received(b"\x32\x03\x00\x09ab")  # topic length runs past the packet
    assert transport.closed
