"""Open WebSockets follow their user's access: closed when the user is retired or changed.

A WebSocket is authenticated once, when it opens (``?token=``). :class:`WebSocketAccessGuard`
wraps the application (``ingest.http`` installs it) and watches every open WebSocket whose token
was good: when the staff copy (``devices.staff``) says the user is retired, their token version
moved (password changed), or their role or scope changed, the socket is closed with code 1008
(the console then asks ``/auth/me`` and either reconnects, with the new scope, or shows the
login). The check runs on every change of the copy, which follows ``NOTIFY carecall_staff``
within milliseconds, and every ``recheck_s`` besides. A token expiring does not close a socket
that is already open: the console keeps its token fresh for its next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from devices.auth import (
    AuthConfig,
    AuthError,
    Principal,
    TokenClaims,
    admit_cached,
    decode_token,
)

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

CLOSE_CODE = 1008  # policy violation, as for a token refused at connect
CLOSE_REASON = "access changed"


def _query_token(scope: MutableMapping[str, Any]) -> str:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token") or [""]
    return str(values[0])


class WebSocketAccessGuard:
    """ASGI middleware; HTTP requests pass straight through."""

    def __init__(self, app: ASGIApp, *, config: AuthConfig, recheck_s: float = 5.0) -> None:
        self.app = app
        self.config = config
        self.recheck_s = recheck_s

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        staff = self.config.staff
        if scope["type"] != "websocket" or staff is None:
            await self.app(scope, receive, send)
            return
        try:
            claims = decode_token(_query_token(scope), self.config)
            admitted = admit_cached(claims, staff)
        except AuthError:
            # Not ours to refuse: the endpoint does, with its own answer.
            await self.app(scope, receive, send)
            return
        await _GuardedSocket(self, claims, admitted).run(scope, receive, send)


class _GuardedSocket:
    def __init__(
        self, guard: WebSocketAccessGuard, claims: TokenClaims, admitted: Principal
    ) -> None:
        self.guard = guard
        self.claims = claims
        self.admitted = admitted
        self.revoked = asyncio.Event()
        self.accepted = False
        self.closed = False
        self._pending: asyncio.Task[Message] | None = None

    async def run(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        watcher = asyncio.create_task(self._watch(), name="devices.sessions.ws_watch")
        try:
            await self.guard.app(scope, self.receive, self.send)
        finally:
            watcher.cancel()
            if self._pending is not None:
                self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def send(self, message: Message) -> None:
        if self.closed:
            return  # we closed it: what the endpoint still writes goes nowhere
        if message["type"] == "websocket.accept":
            self.accepted = True
        elif message["type"] == "websocket.close":
            self.closed = True
        await self._send(message)
        if self.accepted and self.revoked.is_set():
            await self._close()  # withdrawn while the endpoint was still opening it

    async def receive(self) -> Message:
        """The client's next message, or a disconnect as soon as access is withdrawn."""
        if self.revoked.is_set():
            return {"type": "websocket.disconnect", "code": CLOSE_CODE}
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._receive())
        stop = asyncio.ensure_future(self.revoked.wait())
        try:
            await asyncio.wait({self._pending, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if self._pending.done():
            pending, self._pending = self._pending, None
            return pending.result()
        return {"type": "websocket.disconnect", "code": CLOSE_CODE}

    def _still_allowed(self) -> bool:
        try:
            now = admit_cached(self.claims, self.guard.config.staff)
        except AuthError:
            return False
        # A new role or scope means new rights: the session is re-opened with them.
        return bool(now == self.admitted)

    async def _watch(self) -> None:
        staff = self.guard.config.staff
        assert staff is not None
        while self._still_allowed():
            await staff.wait_changed(self.guard.recheck_s)
        log.info("closing the WebSocket of %s: access changed", self.claims.principal.username)
        self.revoked.set()
        if self.accepted:
            await self._close()

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # The client may be gone already; the server's own error for that varies by backend.
        with contextlib.suppress(Exception):
            await self._send(
                {"type": "websocket.close", "code": CLOSE_CODE, "reason": CLOSE_REASON}
            )
