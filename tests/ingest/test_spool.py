from __future__ import annotations

import os
from pathlib import Path

from ingest.spool import Spool


def test_append_read_truncate(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.spool")
    for i in range(5):
        sp.append_sync(f"record-{i}".encode() * (i + 1))
    got = [p for _, p in sp.records()]
    assert got == [f"record-{i}".encode() * (i + 1) for i in range(5)]
    # Reading on from an offset gives the rest.
    offsets = [o for o, _ in sp.records()]
    assert [p for _, p in sp.records(offsets[2])] == got[3:]
    sp.truncate()
    assert list(sp.records()) == [] and sp.size == 0
    sp.close()


def test_torn_tail_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    sp = Spool(path)
    sp.append_sync(b"complete-1")
    sp.append_sync(b"complete-2")
    good = sp.size
    sp.close()
    with path.open("ab") as f:  # a crash in the middle of the third append
        f.write(b"\x00\x00\x00\x40\x12\x34")
    sp2 = Spool(path)
    assert [p for _, p in sp2.records()] == [b"complete-1", b"complete-2"]
    assert sp2.size == good == os.path.getsize(path)
    sp2.append_sync(b"after")
    assert [p for _, p in sp2.records()][-1] == b"after"
    sp2.close()


def test_corrupt_record_stops_the_scan(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    sp = Spool(path)
    sp.append_sync(b"one")
    sp.append_sync(b"two")
    sp.close()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last payload: its checksum no longer matches
    path.write_bytes(bytes(data))
    sp2 = Spool(path)
    assert [p for _, p in sp2.records()] == [b"one"]
    sp2.close()
