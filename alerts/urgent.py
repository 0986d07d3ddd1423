"""The urgent lane: a second, small MQTT subscription for SOS presses and home alarms only.

The bridge's subscription carries every reading, and it is acknowledged only once a batch is
durable; when telemetry outruns storage, the broker queues the backlog for that session and an
SOS waits behind it (measured: seconds at saturation, see docs/alerts.md). The broker keeps a
separate queue per subscription, so a second client subscribed only to ``+/sos`` and
``+/event`` sees an SOS as soon as it is published, whatever the backlog. It only *shows* the
alarm sooner: it feeds the live lane (acks on receipt, clean session, nothing stored); the
bridge still stores, acknowledges and replies as before, and the engine drops the second
sighting by its source key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aiomqtt

from alerts.live import Urgent

log = logging.getLogger(__name__)

# Turns (topic, payload, receive time) into an urgent reading, or None: the server's own
# decoder and device check, handed in by the composition root.
Decode = Callable[[str, bytes, float], Urgent | None]


async def urgent_loop(
    *,
    host: str,
    port: int,
    topic_root: str,
    client_id: str,
    decode: Decode,
    offer: Callable[[Urgent], object],
    username: str | None = None,
    password: str | None = None,
    mqtt_v5: bool = True,
) -> None:
    """Subscribe and hand every urgent reading to ``offer``; reconnect with jittered backoff."""
    delay_s = 0.5
    while True:
        try:
            async with aiomqtt.Client(
                host,
                port,
                identifier=client_id,
                username=username,
                password=password,
                protocol=aiomqtt.ProtocolVersion.V5 if mqtt_v5 else aiomqtt.ProtocolVersion.V311,
            ) as client:
                await client.subscribe(f"{topic_root}/+/sos", qos=1)
                await client.subscribe(f"{topic_root}/+/event", qos=1)
                delay_s = 0.5
                async for message in client.messages:
                    # Raw bytes: aiomqtt decodes nothing for us.
                    payload = message.payload
                    assert isinstance(payload, bytes | bytearray)
                    item = decode(message.topic.value, bytes(payload), time.time())
                    if item is not None:
                        offer(item)
        except aiomqtt.MqttError as exc:
            log.warning("urgent lane: broker unavailable (%s); retrying", exc)
            await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, 10.0)
