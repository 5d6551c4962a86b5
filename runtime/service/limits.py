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


class _GoneError(Exception):
    """The client left before its request body was complete."""


class Limits:
    """ASGI middleware: 429 beyond ``max_connections`` requests and streams at once,
    413 for a body over ``max_body`` bytes (by Content-Length or as it arrives).

    A request's body is read here, whole, before the app sees the request, so a body
    sent without a Content-Length (``Transfer-Encoding: chunked``) gets the same 413 as
    one that announces its length: an error raised while the app reads the body would
    be the app's to answer (FastAPI makes it a 400).
    """

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
                receive = await self._read_body(receive)
            await self.app(scope, receive, sending)
        except _TooLargeError:
            if not started:
                await self._refuse(scope, send, 413, self._too_large())
        except _GoneError:
            pass  # nobody to answer
        finally:
            self.active -= 1

    def _too_large(self) -> str:
        return f"request body over {self.max_body} bytes (service.max_body_bytes)"

    async def _read_body(self, receive: Receive) -> Receive:
        """Read the whole body (at most ``max_body`` bytes); return a ``receive`` that
        hands it over in one message, then passes on what ``receive`` gives (a streaming
        response listens there for the client's disconnect).

        Raises:
            _TooLargeError: the body goes beyond ``max_body`` (the rest is not read).
            _GoneError: the client disconnected first.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _GoneError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: list[MutableMapping[str, Any]] = [
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replay() -> MutableMapping[str, Any]:
            return whole.pop() if whole else await receive()

        return replay

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
