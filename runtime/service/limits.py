"""ASGI middleware that keeps the service within its limits (``[service]``)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "Limits"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLargeError(Exception):
    pass


class Limits:
    """ASGI middleware: 429 beyond ``max_connections`` requests and streams at once,
    413 for a body over ``max_body`` bytes (by Content-Length or as it arrives)."""

    def __init__(self, app: ASGIApp, *, max_connections: int, max_body: int) -> None:
        self.app = app
        self.max_connections = max_connections
        self.max_body = max_body
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_connections:
            await self._refuse(scope, send, 429, "too many concurrent connections; retry later")
            return
        self.active += 1
        started = False

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if scope["type"] == "http":
                length = dict(scope["headers"]).get(b"content-length")
                if length is not None and (not length.isdigit() or int(length) > self.max_body):
                    await self._refuse(scope, send, 413, self._too_large())
                    return
                receive = self._counting(receive)
            await self.app(scope, receive, sending)
        except _TooLargeError:
            if not started:
                await self._refuse(scope, send, 413, self._too_large())
        finally:
            self.active -= 1

    def _too_large(self) -> str:
        return f"request body over {self.max_body} bytes (service.max_body_bytes)"

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLargeError
            return message

        return counted

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013, "reason": detail[:100]})
            return
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 429:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
