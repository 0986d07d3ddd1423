"""An append-only, fsynced, checksummed local spool: durability while the database is away.

Record layout: ``u32 length | u32 crc32 | payload`` (big endian). A record is acknowledged
only after ``fsync`` returns. A torn tail (crash mid-write) fails its length or checksum and is
cut off at open: its messages were never acked, so the broker delivers them again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!II")
MAX_RECORD_BYTES = 256 * 1024 * 1024


class SpoolError(Exception):
    """The spool cannot be written: durability is gone, so the bridge must stop acking."""


class Spool:
    """One file; appends from the flush loop, reads by the replay loop, truncated when drained."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = self._recover()

    def _recover(self) -> int:
        """Cut a torn tail; return the size of the valid part."""
        valid = 0
        for offset, payload in self._scan(0):
            valid = offset + _HEADER.size + len(payload)
        end = os.fstat(self._fd).st_size
        if valid != end:
            log.warning("spool %s: cutting %d bytes of torn tail", self.path, end - valid)
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        return valid

    def _scan(self, offset: int) -> Iterator[tuple[int, bytes]]:
        end = os.fstat(self._fd).st_size
        while offset + _HEADER.size <= end:
            header = os.pread(self._fd, _HEADER.size, offset)
            length, crc = _HEADER.unpack(header)
            if length > MAX_RECORD_BYTES or offset + _HEADER.size + length > end:
                return
            payload = os.pread(self._fd, length, offset + _HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                return
            yield offset, payload
            offset += _HEADER.size + length

    def records(self, offset: int = 0) -> Iterator[tuple[int, bytes]]:
        """(offset of the next record, payload) for each complete record from ``offset``."""
        for at, payload in self._scan(offset):
            yield at + _HEADER.size + len(payload), payload

    def append_sync(self, payload: bytes) -> None:
        data = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise SpoolError(f"short write to {self.path}: {written} of {len(data)} bytes")
            os.fsync(self._fd)
        except OSError as exc:
            raise SpoolError(f"cannot append to spool {self.path}: {exc}") from exc
        self.size += len(data)

    async def append(self, payload: bytes) -> None:
        """Write and fsync off the event loop, so SOS handling never waits on the disk."""
        await asyncio.to_thread(self.append_sync, payload)

    def truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.size = 0

    def close(self) -> None:
        os.close(self._fd)
