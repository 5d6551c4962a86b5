"""The event routes: a job's events as Server-Sent Events and over a WebSocket, and the
``Hub`` that wakes them.

Streams read the job store from a sequence number on, and sleep on an ``asyncio.Event``
the manager's flusher sets (through ``Hub.notify``, from its thread), so a reconnecting
client gets exactly the events after the last one it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from runtime.service.api_common import AUTH, MAX_CURSOR, Api, ApiState
from runtime.service.jobstore import TERMINAL
from runtime.service.models import errors

__all__ = ["Hub", "router"]

KEEPALIVE = 15.0
"""Seconds of silence after which an event stream sends a keep-alive."""
PAGE = 500
"""Events read from the store at a time."""

# (No router-wide token check: the WebSocket checks its handshake's header itself.)
router = APIRouter(tags=["events"])


class Hub:
    """Wakes the streams of a job when its events were stored (thread-safe ``notify``)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.closing = False
        """Set when the server stops: every stream ends (a client reconnects later)."""

    def close(self) -> None:
        """End every stream soon (thread-safe; from the signal handler)."""
        self.closing = True
        self._call_soon(self._wake_all)

    def _wake_all(self) -> None:
        for waiters in self.waiters.values():
            for waiter in waiters:
                waiter.set()

    def notify(self, job_id: str) -> None:
        """Called from any thread."""
        self._call_soon(self._wake, job_id)

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the event loop (from any thread), if it still runs."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(callback, *args)

    def _wake(self, job_id: str) -> None:
        for waiter in self.waiters.get(job_id, ()):
            waiter.set()

    def subscribe(self, job_id: str) -> asyncio.Event:
        """A waiter set whenever the job has new events."""
        waiter = asyncio.Event()
        self.waiters.setdefault(job_id, set()).add(waiter)
        return waiter

    def unsubscribe(self, job_id: str, waiter: asyncio.Event) -> None:
        """Forget a waiter."""
        waiters = self.waiters.get(job_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self.waiters[job_id]


def _webhooks_pending(api: ApiState, job_id: str) -> bool:
    return any(d.status == "pending" for d in api.manager.store.deliveries(job_id))


async def follow(api: ApiState, job_id: str, after: int) -> AsyncIterator[dict[str, Any] | None]:
    """The job's events after ``after`` until it ended and its webhooks were settled
    (None: a keep-alive is due)."""
    hub, store = api.hub, api.manager.store
    waiter = hub.subscribe(job_id)
    try:
        while not hub.closing:
            waiter.clear()
            events, first = await run_in_threadpool(store.events_after, job_id, after, PAGE)
            if first and after + 1 < first:
                yield {
                    "type": "reset",
                    "seq": None,
                    "first_seq": first,
                    "detail": f"events before {first} are no longer kept; "
                    f"re-read GET /v1/jobs/{job_id}",
                }
                after = first - 1
                continue
            for event in events:
                after = event.seq
                yield event.as_dict(job_id)
            if events:
                continue
            job = await run_in_threadpool(store.get, job_id)
            if job is None or (
                job.status in TERMINAL
                and not await run_in_threadpool(_webhooks_pending, api, job_id)
            ):
                # Its status event was stored before the status: send what came since.
                late, _ = await run_in_threadpool(store.events_after, job_id, after, PAGE)
                if not late:
                    return
                continue
            try:
                await asyncio.wait_for(waiter.wait(), KEEPALIVE)
            except TimeoutError:
                yield None
    finally:
        hub.unsubscribe(job_id, waiter)


@router.get(
    "/v1/jobs/{job_id}/events",
    dependencies=AUTH,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events; each `id` is the event's seq",
        },
        **errors(404, 422),
    },
    response_class=StreamingResponse,
)
async def events(
    job_id: str,
    api: Api,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
) -> StreamingResponse:
    """The job's events as SSE, from after ``Last-Event-ID`` (or ``after``); the
    stream ends when the job has ended, its webhook deliveries are settled and every
    event was sent."""
    await run_in_threadpool(api.manager.get, job_id)
    start = after or 0
    if last_event_id is not None:
        text = last_event_id.strip()
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_CURSOR:
            raise HTTPException(422, "Last-Event-ID must be an event's seq (an integer)")
        start = int(text)

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async for event in follow(api, job_id, start):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            head = f"id: {event['seq']}\n" if event["seq"] is not None else ""
            yield f"{head}event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.websocket("/v1/jobs/{job_id}/ws")
async def websocket(socket: WebSocket, job_id: str, api: Api, after: int = 0) -> None:
    """The same events as JSON text messages; closes when the job has ended."""
    if not api.authorized(socket.headers.get("authorization")):
        await socket.close(code=1008, reason="missing or wrong bearer token")
        return
    if await run_in_threadpool(api.manager.store.get, job_id) is None:
        await socket.close(code=1008, reason=f"no job {job_id!r}")
        return
    await socket.accept()
    try:
        async for event in follow(api, job_id, max(0, min(after, MAX_CURSOR))):
            if event is None:
                await socket.send_text(json.dumps({"type": "keep-alive"}))
            else:
                await socket.send_text(json.dumps(event))
        if api.hub.closing:
            await socket.close(code=1001, reason="the service is stopping")
        else:
            await socket.close(code=1000, reason="the job has ended")
    except WebSocketDisconnect:
        return
