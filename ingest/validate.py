"""Checks that need memory: is the device registered, has this sequence number been used?"""

from __future__ import annotations

import collections

from devices.directory import DeviceDirectory
from devices.readings import Reading
from ingest.decode import Reason, Rejection


class Validator:
    """Applied after :func:`ingest.decode.decode`, before a reading enters a batch.

    Sequence numbers: the same (device, seq) with the same device time is the same reading
    arriving again (broker redelivery, device retry): it is marked a duplicate and stored once
    by the idempotent insert. The same (device, seq) with a *different* time is a replay or a
    device bug and is refused. Memory is a bounded FIFO of recent (device, seq) pairs.
    """

    def __init__(self, directory: DeviceDirectory, *, memory: int = 200_000) -> None:
        self.directory = directory
        self.memory = memory
        self._seen: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()

    def check(self, r: Reading, topic: str, received_ts: float) -> Rejection | bool:
        """A rejection, or whether the reading is a duplicate (True) or new (False)."""
        env = r.env
        if self.directory.is_active(env.device_id) is False:
            return Rejection(
                topic,
                Reason.UNKNOWN_DEVICE,
                f"device {env.device_id!r} is not registered or not active",
                env.device_id,
                env.seq,
                received_ts,
            )
        key = (env.device_id, env.seq)
        seen_ts = self._seen.get(key)
        if seen_ts is not None:
            if seen_ts == env.device_ts:
                return True
            return Rejection(
                topic,
                Reason.REPLAYED_SEQ,
                f"seq {env.seq} was already used with ts {seen_ts:.3f}",
                env.device_id,
                env.seq,
                received_ts,
            )
        if len(self._seen) >= self.memory:
            # O(1): a plain dict's "first key" skips every slot deleted before it (measured:
            # 8.5 us per message at 200k entries, 39 % of the bridge's time at 20k msg/s).
            self._seen.popitem(last=False)
        self._seen[key] = env.device_ts
        return False
