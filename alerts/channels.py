"""Notification channels behind one interface, each with its own queue, workers and timeout.

A :class:`Notice` is what the alert side wants someone to know. The :class:`Notifier` hands
every notice to each channel that accepts it through that channel's own bounded queue and
worker, and bounds every send with the channel's timeout: a gateway that hangs delays only
its own queue, never the WebSocket push or the webhook. A full queue or a failed send is
counted (``carecall_alert_channel_failed``) and logged, never silent.

Channels:

- :class:`WebSocketHub`: dispatcher consoles. Knows each session's principal and sends a notice
  only to sessions whose scope covers the incident's area. Per-session bounded queues, so a
  slow browser cannot hold up the others.
- :class:`WebhookChannel`: an HTTP POST of the notice as JSON, signed with HMAC-SHA256
  (``X-CareCall-Signature: t=<epoch>,v1=<hex>`` over ``"<epoch>.<body>"``), with an
  ``Idempotency-Key`` header, retried with capped, jittered exponential backoff.
- :class:`GatewayChannel`: an SMS/voice gateway in the shape most such APIs take (one POST per
  recipient: ``to``, ``channel``, ``text``, ``reference``, ``status_callback``, bearer key).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from alerts.errors import ChannelError
from alerts.metrics import AlertMetrics
from devices.auth import Principal

log = logging.getLogger(__name__)

# Notice kinds. ``incident_event`` comes from LISTEN/NOTIFY (every server sees it), the rest
# from the server that made the change.
INCIDENT_EVENT = "incident_event"
LIVE_ALARM = "live_alarm"  # urgent reading shown before (or without) storage
INCIDENT_OPENED = "incident_opened"
ESCALATED = "escalated"
PAGE_SUPERVISOR = "page_supervisor"
CALL_CONTACT = "call_contact"


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str
    key: str  # idempotency key: the same notice sent twice carries the same key
    area_path: str | None
    severity: str
    body: dict[str, Any]
    incident_id: int | None = None
    phones: tuple[str, ...] = ()  # for the gateway: whom to ring or text
    voice: bool = False

    def json(self) -> bytes:
        return json.dumps(
            {
                **self.body,
                "kind": self.kind,
                "key": self.key,
                "incident_id": self.incident_id,
                "severity": self.severity,
                "area_path": self.area_path,
            },
            separators=(",", ":"),
            default=str,
        ).encode()


class Channel(Protocol):
    name: str
    timeout_s: float

    def accepts(self, notice: Notice) -> bool: ...

    async def send(self, notice: Notice) -> None:
        """Deliver or raise ``ChannelError``; the notifier bounds it with ``timeout_s``."""
        ...


# -- WebSocket hub -----------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """One connected console."""

    principal: Principal
    queue: asyncio.Queue[Notice]
    lagging: bool = False  # a message was dropped: the console must re-read its queue
    # An incident nobody can place is shown only to the root of the area tree and to admins
    # (decided at connect time by the endpoint, from the registry cache).
    sees_unplaced: bool = False

    def covers(self, area_path: str | None) -> bool:
        if area_path is None:
            return self.sees_unplaced
        return self.principal.covers(area_path)


PushedCallback = Callable[[Notice, float], None]


class WebSocketHub:
    """Which console serves which subtree; pushes to the ones in scope, never to others."""

    name = "websocket"

    def __init__(
        self,
        *,
        metrics: AlertMetrics | None = None,
        session_queue_size: int = 1000,
        timeout_s: float = 1.0,
        on_pushed: PushedCallback | None = None,
    ) -> None:
        self._sessions: set[Session] = set()
        self._metrics = metrics
        self._queue_size = session_queue_size
        self.timeout_s = timeout_s
        self.on_pushed = on_pushed

    def accepts(self, notice: Notice) -> bool:
        return notice.kind in (INCIDENT_EVENT, LIVE_ALARM, ESCALATED)

    def __len__(self) -> int:
        return len(self._sessions)

    def connect(self, principal: Principal, *, sees_unplaced: bool = False) -> Session:
        session = Session(principal, asyncio.Queue(self._queue_size), sees_unplaced=sees_unplaced)
        self._sessions.add(session)
        if self._metrics:
            self._metrics.ws_sessions.set(len(self._sessions))
        return session

    def disconnect(self, session: Session) -> None:
        self._sessions.discard(session)
        if self._metrics:
            self._metrics.ws_sessions.set(len(self._sessions))

    def publish(self, notice: Notice) -> int:
        """Queue for every session in scope; returns how many. Never blocks."""
        n = 0
        for session in self._sessions:
            if not session.covers(notice.area_path):
                continue
            try:
                session.queue.put_nowait(notice)
                n += 1
            except asyncio.QueueFull:
                session.lagging = True
                if self._metrics:
                    self._metrics.channel_failed.labels(self.name, "session_full").inc()
        return n

    async def send(self, notice: Notice) -> None:
        self.publish(notice)

    def pushed(self, notice: Notice) -> None:
        """A session wrote ``notice`` to its socket (called by the WebSocket endpoint)."""
        if self.on_pushed is not None:
            self.on_pushed(notice, time.time())


# -- HTTP channels -----------------------------------------------------------------------


def sign(secret: bytes, body: bytes, at_s: int) -> str:
    """The signature header's value for ``body`` sent at ``at_s``."""
    mac = hmac.new(secret, str(at_s).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={at_s},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, now_s: float, tolerance_s: float) -> bool:
    """Check a signature header (constant-time), refusing stale timestamps (replays)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        at_s = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now_s - at_s) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, at_s).split("v1=", 1)[1], given)


@dataclass
class RetryPolicy:
    max_attempts: int = 4
    base_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    attempt_timeout_s: float = 3.0

    def backoff_s(self, attempt: int) -> float:
        # Full jitter over a capped exponential: retries from many servers do not align.
        cap_s = min(self.max_backoff_s, self.base_backoff_s * 2.0**attempt)
        return cap_s * random.uniform(0.5, 1.0)


_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


async def post_with_retries(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    retry: RetryPolicy,
    *,
    channel: str,
    secret: bytes | None,
) -> httpx.Response:
    last = "no attempt"
    for attempt in range(retry.max_attempts):
        h = dict(headers)
        if secret is not None:
            h["X-CareCall-Signature"] = sign(secret, body, int(time.time()))
        try:
            async with asyncio.timeout(retry.attempt_timeout_s):
                resp = await client.post(url, content=body, headers=h)
        except (TimeoutError, httpx.TransportError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if resp.status_code < 300:
                return resp
            last = f"HTTP {resp.status_code}"
            if resp.status_code not in _RETRY_STATUS:
                break  # the receiver refused it; repeating will not help
        if attempt + 1 < retry.max_attempts:
            await asyncio.sleep(retry.backoff_s(attempt))
    raise ChannelError(channel, last)


class WebhookChannel:
    """POST every notice (except raw NOTIFY fan-out) to a URL, signed and idempotent."""

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        name: str = "webhook",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self._secret = secret.encode()
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._client = client or httpx.AsyncClient()

    def accepts(self, notice: Notice) -> bool:
        return notice.kind != INCIDENT_EVENT

    async def send(self, notice: Notice) -> None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": notice.key}
        await post_with_retries(
            self._client,
            self.url,
            notice.json(),
            headers,
            self.retry,
            channel=self.name,
            secret=self._secret,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class GatewayChannel:
    """Voice calls and text messages through an SMS/voice gateway's HTTP API."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        callback_url: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        name: str = "gateway",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/messages"
        self._api_key = api_key
        self.callback_url = callback_url
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._client = client or httpx.AsyncClient()

    def accepts(self, notice: Notice) -> bool:
        return bool(notice.phones)

    async def send(self, notice: Notice) -> None:
        text = str(notice.body.get("text", f"CareCall {notice.kind} {notice.incident_id}"))
        for phone in notice.phones:
            body = json.dumps(
                {
                    "to": phone,
                    "channel": "voice" if notice.voice else "sms",
                    "text": text,
                    "reference": notice.key,
                    "status_callback": self.callback_url,
                },
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._api_key}",
                "Idempotency-Key": f"{notice.key}:{phone}",
            }
            await post_with_retries(
                self._client, self.url, body, headers, self.retry, channel=self.name, secret=None
            )

    async def aclose(self) -> None:
        await self._client.aclose()


# -- the notifier --------------------------------------------------------------------------


@dataclass
class _Lane:
    channel: Channel
    queue: asyncio.Queue[Notice]
    sem: asyncio.Semaphore
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)


class Notifier:
    """Fans notices out to channels; see the module docstring."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        metrics: AlertMetrics,
        queue_size: int = 10_000,
        concurrency: int = 8,
    ) -> None:
        self._metrics = metrics
        self._lanes = [
            _Lane(c, asyncio.Queue(queue_size), asyncio.Semaphore(concurrency)) for c in channels
        ]

    @property
    def channels(self) -> list[Channel]:
        return [lane.channel for lane in self._lanes]

    def publish(self, notice: Notice) -> None:
        for lane in self._lanes:
            if not lane.channel.accepts(notice):
                continue
            try:
                lane.queue.put_nowait(notice)
            except asyncio.QueueFull:
                self._metrics.channel_failed.labels(lane.channel.name, "queue_full").inc()
                log.error("channel %s queue full: dropped %s", lane.channel.name, notice.key)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run one worker per channel for the duration of the block."""
        tasks = [
            asyncio.create_task(
                self._lane_loop(lane), name=f"alerts.channels.{lane.channel.name}_loop"
            )
            for lane in self._lanes
        ]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            in_flight = [t for lane in self._lanes for t in lane.in_flight]
            for t in in_flight:
                t.cancel()
            await asyncio.gather(*tasks, *in_flight, return_exceptions=True)

    async def _lane_loop(self, lane: _Lane) -> None:
        while True:
            notice = await lane.queue.get()
            await lane.sem.acquire()
            task = asyncio.create_task(
                self._send_one(lane, notice), name=f"alerts.channels.{lane.channel.name}.send"
            )
            lane.in_flight.add(task)
            task.add_done_callback(lane.in_flight.discard)

    async def _send_one(self, lane: _Lane, notice: Notice) -> None:
        ch = lane.channel
        try:
            async with asyncio.timeout(ch.timeout_s):
                await ch.send(notice)
        except TimeoutError:
            self._metrics.channel_failed.labels(ch.name, "timeout").inc()
            log.error("channel %s timed out after %.1f s on %s", ch.name, ch.timeout_s, notice.key)
        except ChannelError as exc:
            self._metrics.channel_failed.labels(ch.name, "error").inc()
            log.error("channel %s gave up on %s: %s", ch.name, notice.key, exc.reason)
        except Exception:
            self._metrics.channel_failed.labels(ch.name, "bug").inc()
            log.exception("channel %s failed on %s", ch.name, notice.key)
        else:
            self._metrics.channel_sent.labels(ch.name).inc()
        finally:
            lane.sem.release()
