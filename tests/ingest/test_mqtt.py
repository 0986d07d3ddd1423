from __future__ import annotations

import pytest

from ingest.mqtt import (
    PUBLISH,
    MqttError,
    encode_pubacks,
    encode_publish,
    encode_varint,
    parse_publish,
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
def test_publish_round_trip(version: int, qos: int) -> None:
    pkt = encode_publish(
        "carecall/v1/dev/sos", b'{"seq":1}', qos=qos, packet_id=513, retain=True, version=version
    )
    packets, used = split_packets(bytearray(pkt))
    assert used == len(pkt) and len(packets) == 1
    first, body = packets[0]
    assert first & 0xF0 == PUBLISH
    topic, payload, q, pid, dup, retain = parse_publish(first, body, version)
    assert (topic, payload, q, pid if qos else 0, dup, retain) == (
        "carecall/v1/dev/sos",
        b'{"seq":1}',
        qos,
        513 if qos else 0,
        False,
        True,
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
