"""The live lane: urgent readings go to the alert side before (and regardless of) storage.

An SOS must reach a dispatcher even while the database is down, so the bridge hands SOS
presses and smoke/gas alarms here as soon as they are validated. Consumers (the incident
service, tests) read them with :meth:`LiveLane.get`.
"""

from __future__ import annotations

import asyncio
import logging

from devices.readings import HomeEvent, SosPress

log = logging.getLogger(__name__)

Urgent = SosPress | HomeEvent


class LiveLane:
    """A bounded in-process queue; an overflow is logged loudly and counted, never silent."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._queue: asyncio.Queue[Urgent] = asyncio.Queue(maxsize=maxsize)
        self.overflows = 0

    def offer(self, item: Urgent) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflows += 1
            # The reading is still stored and will be picked up from the database.
            log.error("live lane full: %s from %s waits for storage", item, item.env.device_id)
            return False
        return True

    async def get(self) -> Urgent:
        return await self._queue.get()

    def qsize(self) -> int:
        return self._queue.qsize()
