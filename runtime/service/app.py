"""The HTTP API of the job service (FastAPI): jobs, their items, files and events.

Handlers never wait on a pipeline on the event loop: whatever touches the job store, a
job's state or a pipeline runs in the thread pool (``run_in_threadpool``). Event streams
(SSE and WebSocket) read the job store from a sequence number on, and sleep on an
``asyncio.Event`` the manager's flusher sets (``Hub``), so a reconnecting client gets
exactly the events after the last one it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, get_args
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Security, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.websockets import WebSocketDisconnect

from runtime import __version__
from runtime.core.config import Config
from runtime.core.logs import get_logger
from runtime.core.netguard import BlockedAddressError, Lookup, NetworkGuard, check_host
from runtime.service.jobs import JobError, JobManager
from runtime.service.jobstore import TERMINAL, Job
from runtime.service.limits import ASGIApp, Limits
from runtime.service.models import (
    ErrorOut,
    FileLink,
    Health,
    InvalidItem,
    ItemOut,
    ItemPage,
    ItemStatus,
    JobCreated,
    JobList,
    JobOut,
    JobRequest,
    JobStatus,
    JobSummary,
    Links,
    Progress,
    ResultOut,
    WebhookOut,
    errors,
)
from runtime.service.resolver import Resolver

__all__ = ["Hub", "create_app"]

KEEPALIVE = 15.0
"""Seconds of silence after which an event stream sends a keep-alive."""
PAGE = 500
"""Events read from the store at a time."""
MAX_CURSOR = 2**62
"""Largest cursor or sequence number a client may pass (SQLite integers are 64-bit)."""
STATUSES: tuple[str, ...] = get_args(JobStatus)
RESOLVE_TIMEOUT = 5.0
"""Seconds a submit waits for its ``callback_url``'s host to resolve."""
CALLBACK_REFUSED = (
    "callback_url refused: its host does not resolve to an address the service may reach "
    "(service.allow_networks)"
)
"""The one answer to every refused callback: which names exist and what they resolve to
stays on the server (in its log)."""
BEARER = HTTPBearer(
    auto_error=False,  # a missing or malformed header gets the same 401 as a wrong token
    scheme_name="bearer",
    description="the service's token (`service.token`, or CONVEYOR_SERVICE_TOKEN)",
)
"""The token, as the schema's security scheme (checked by ``create_app``'s dependency)."""

log = get_logger("service.api")


# -- wake-ups from the manager's threads ---------------------------------------------


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


# -- the application ---------------------------------------------------------------


def create_app(manager: JobManager, config: Config, hub: Hub | None = None) -> FastAPI:
    """The FastAPI application over ``manager``."""
    service = config.service
    hub = hub or Hub()
    manager.listeners.append(hub.notify)
    token = service.token.encode()
    resolver = Resolver(RESOLVE_TIMEOUT)

    def valid(given: str | None) -> bool:
        """Whether ``given`` is the token (compared in constant time); any is without one."""
        return not token or (given is not None and hmac.compare_digest(given.encode(), token))

    def authorized(header: str | None) -> bool:
        scheme, given = get_authorization_scheme_param(header)
        return valid(given if scheme.lower() == "bearer" else None)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        if not valid(credentials.credentials if credentials is not None else None):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(
        title="conveyor job service",
        version=__version__,
        description="Submit batches of downloads, follow them live, fetch the files. "
        "Every operation needs `Authorization: Bearer <token>` except `/healthz` (and "
        "`/metrics` with `service.public_metrics`); this description and `/docs` are open.",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: see /docs below
        redoc_url=None,
    )

    @app.on_event("startup")
    async def _bind_loop() -> None:
        hub.loop = asyncio.get_running_loop()

    app.add_exception_handler(JobError, _job_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    auth = [Depends(require_token)]

    def links(job_id: str) -> Links:
        base = f"/v1/jobs/{job_id}"
        return Links(
            self=base,
            events=f"{base}/events",
            ws=f"{base}/ws",
            result=f"{base}/result",
            items=f"{base}/items",
        )

    def summary(job: Job) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "status": job.status,
            "total": job.total,
            "invalid": job.invalid,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "error": job.error,
            "progress": manager.progress(job),
            "links": links(job.id),
        }

    def full(job: Job) -> JobOut:
        details = manager.details(job)
        webhooks = [
            WebhookOut(delivery_id=d.id, url=d.url, status=d.status, attempts=d.attempts)
            for d in manager.store.deliveries(job.id)
        ]
        return JobOut(
            **summary(job),
            callback_url=job.callback_url,
            options=job.options,
            errors=details["errors"],
            hosts=details["hosts"],
            webhooks=webhooks,
        )

    # -- jobs -------------------------------------------------------------------------

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobCreated,
        dependencies=[*auth, Depends(_require_json)],
        responses=errors(400, 409, 413, 415, 422),
        tags=["jobs"],
    )
    async def submit(
        batch: JobRequest,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JobCreated:
        """Queue a batch; answers at once with the job's id and links."""
        if len(batch.items) > service.max_items:
            raise HTTPException(
                413,
                f"{len(batch.items)} items; at most {service.max_items} "
                "per job (service.max_items)",
            )
        if batch.callback_url is not None and service.webhook_secret:
            # (Without a secret the manager refuses any callback: no need to resolve it.)
            await run_in_threadpool(_check_callback, manager.guard, batch.callback_url, resolver)
        done = await run_in_threadpool(
            manager.submit,
            batch.items,
            callback_url=batch.callback_url,
            options=batch.options.model_dump(exclude_none=True),
            idempotency_key=idempotency_key,
        )
        if not done.new:
            response.headers["Idempotent-Replayed"] = "true"
        return JobCreated(
            job_id=done.job.id,
            status=done.job.status,
            total=done.job.total,
            invalid=done.job.invalid,
            links=links(done.job.id),
            invalid_items=[InvalidItem(**i) for i in done.invalid],
        )

    @app.get(
        "/v1/jobs", response_model=JobList, dependencies=auth, responses=errors(422), tags=["jobs"]
    )
    async def list_jobs(
        status: JobStatus | None = None,
        cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JobList:
        """Jobs in submission order, a page at a time."""
        jobs = await run_in_threadpool(manager.store.page, status, cursor, limit)
        page = [JobSummary(**summary(j)) for j in jobs]
        return JobList(jobs=page, next_cursor=jobs[-1].number if len(jobs) == limit else None)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        dependencies=auth,
        responses=errors(404),
        tags=["jobs"],
    )
    async def get_job(job_id: str) -> JobOut:
        """A job's status, progress, failures by kind, hosts and webhook deliveries."""
        return await run_in_threadpool(lambda: full(manager.get(job_id)))

    @app.get(
        "/v1/jobs/{job_id}/items",
        response_model=ItemPage,
        dependencies=auth,
        responses=errors(404, 422),
        tags=["jobs"],
    )
    async def get_items(
        job_id: str,
        status: ItemStatus | None = None,
        cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> ItemPage:
        """The per-item records, in input order, a page at a time."""

        def read() -> list[dict[str, Any]]:
            return manager.items(manager.get(job_id), status, cursor, limit)

        rows = await run_in_threadpool(read)
        return ItemPage(
            items=[ItemOut(**r) for r in rows],
            next_cursor=rows[-1]["seq"] if len(rows) == limit else None,
        )

    @app.get(
        "/v1/jobs/{job_id}/result",
        response_model=ResultOut,
        dependencies=auth,
        responses=errors(404, 422),
        tags=["jobs"],
    )
    async def get_result(
        job_id: str,
        cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> ResultOut:
        """The job's summary and a link per completed file."""

        def read() -> tuple[Job, list[dict[str, Any]]]:
            job = manager.get(job_id)
            return job, manager.items(job, "completed", cursor, limit)

        job, rows = await run_in_threadpool(read)
        files = [
            FileLink(
                id=r["id"],
                name=r["name"],
                size=r["size"],
                sha256=r["sha256"],
                href=f"/v1/jobs/{job_id}/files/{quote(r['name'])}",
            )
            for r in rows
            if r["name"]
        ]
        return ResultOut(
            job_id=job.id,
            status=job.status,
            progress=Progress(**manager.progress(job)),
            files=files,
            next_cursor=rows[-1]["seq"] if len(rows) == limit else None,
        )

    @app.get(
        "/v1/jobs/{job_id}/files/{name:path}",
        dependencies=auth,
        tags=["jobs"],
        responses={
            200: {
                "content": {"application/octet-stream": {}},
                "description": "the file (Range and ETag supported)",
            },
            **errors(404),
            416: {"description": "the range is not satisfiable", "content": {"text/plain": {}}},
            400: {"description": "a malformed Range header", "content": {"text/plain": {}}},
        },
        response_class=FileResponse,
    )
    async def get_file(job_id: str, name: str) -> FileResponse:
        """A completed file, with ``Range`` requests and an ``ETag`` (its sha256)."""

        path, sha = await run_in_threadpool(
            lambda: manager.completed_file(manager.get(job_id), name)
        )
        headers = {"etag": f'"{sha}"'} if sha else None
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    for verb in ("cancel", "pause", "resume"):
        app.add_api_route(
            f"/v1/jobs/{{job_id}}/{verb}",
            _control(manager, verb, full),
            methods=["POST"],
            response_model=JobOut,
            dependencies=auth,
            responses=errors(404, 409),
            tags=["jobs"],
            name=f"{verb}_job",
            summary=f"{verb.capitalize()} a job",
        )

    @app.delete(
        "/v1/jobs/{job_id}",
        status_code=204,
        dependencies=auth,
        responses=errors(404, 409),
        tags=["jobs"],
    )
    async def delete_job(job_id: str) -> Response:
        """Remove a job that is not running: its files, state and events."""
        await run_in_threadpool(manager.delete, job_id)
        return Response(status_code=204)

    # -- events -----------------------------------------------------------------------

    def webhooks_pending(job_id: str) -> bool:
        return any(d.status == "pending" for d in manager.store.deliveries(job_id))

    async def follow(job_id: str, after: int) -> AsyncIterator[dict[str, Any] | None]:
        """The job's events after ``after`` until it ended and its webhooks were settled
        (None: a keep-alive is due)."""
        waiter = hub.subscribe(job_id)
        try:
            while not hub.closing:
                waiter.clear()
                events, first = await run_in_threadpool(
                    manager.store.events_after, job_id, after, PAGE
                )
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
                job = await run_in_threadpool(manager.store.get, job_id)
                if job is None or (
                    job.status in TERMINAL and not await run_in_threadpool(webhooks_pending, job_id)
                ):
                    # Its status event was stored before the status: send what came since.
                    late, _ = await run_in_threadpool(
                        manager.store.events_after, job_id, after, PAGE
                    )
                    if not late:
                        return
                    continue
                try:
                    await asyncio.wait_for(waiter.wait(), KEEPALIVE)
                except TimeoutError:
                    yield None
        finally:
            hub.unsubscribe(job_id, waiter)

    @app.get(
        "/v1/jobs/{job_id}/events",
        dependencies=auth,
        tags=["events"],
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
        last_event_id: Annotated[str | None, Header()] = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
    ) -> StreamingResponse:
        """The job's events as SSE, from after ``Last-Event-ID`` (or ``after``); the
        stream ends when the job has ended, its webhook deliveries are settled and every
        event was sent."""
        await run_in_threadpool(manager.get, job_id)
        start = after or 0
        if last_event_id is not None:
            text = last_event_id.strip()
            if not (text.isascii() and text.isdigit()) or int(text) > MAX_CURSOR:
                raise HTTPException(422, "Last-Event-ID must be an event's seq (an integer)")
            start = int(text)

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            async for event in follow(job_id, start):
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

    @app.websocket("/v1/jobs/{job_id}/ws")
    async def websocket(socket: WebSocket, job_id: str, after: int = 0) -> None:
        """The same events as JSON text messages; closes when the job has ended."""
        if not authorized(socket.headers.get("authorization")):
            await socket.close(code=1008, reason="missing or wrong bearer token")
            return
        if await run_in_threadpool(manager.store.get, job_id) is None:
            await socket.close(code=1008, reason=f"no job {job_id!r}")
            return
        await socket.accept()
        try:
            async for event in follow(job_id, max(0, min(after, MAX_CURSOR))):
                if event is None:
                    await socket.send_text(json.dumps({"type": "keep-alive"}))
                else:
                    await socket.send_text(json.dumps(event))
            if hub.closing:
                await socket.close(code=1001, reason="the service is stopping")
            else:
                await socket.close(code=1000, reason="the job has ended")
        except WebSocketDisconnect:
            return

    # -- operations -------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Liveness: no token needed."""
        return Health(status="ok", version=__version__, running_jobs=manager.running())

    registry = CollectorRegistry()
    registry.register(_Collector(manager))
    metrics_auth = [] if service.public_metrics else auth

    @app.get(
        "/metrics",
        dependencies=metrics_auth,
        tags=["operations"],
        responses={
            200: {"content": {"text/plain": {}}},
            401: {"model": ErrorOut},
            429: {"model": ErrorOut},
        },
        response_class=Response,
    )
    async def metrics() -> Response:
        """Prometheus metrics: jobs by status, the queue, webhooks, each running job."""
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type="text/plain; version=0.0.4")

    static = resources.files("runtime.service") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(
            (static / "index.html").read_text("utf-8"), headers={"Cache-Control": "no-store"}
        )

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        """The API's operations, rendered from /openapi.json by a page that needs nothing
        from elsewhere (no token: it describes the API, not its data)."""
        return HTMLResponse(
            (static / "docs.html").read_text("utf-8"), headers={"Cache-Control": "no-store"}
        )

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app  # the limits wrap it in serve(): see ``wrap_limits``


def wrap_limits(app: FastAPI, config: Config) -> ASGIApp:
    """``app`` behind the connection and body limits of ``[service]``."""
    s = config.service
    return Limits(app, max_connections=s.max_connections, max_body=s.max_body_bytes)


async def _job_error(request: Request, exc: JobError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422, in ASCII JSON: a string that is not valid Unicode (a lone surrogate
    escaped in the request's JSON) is echoed back escaped instead of failing the answer."""
    body = json.dumps({"detail": jsonable_encoder(exc.errors())})
    return Response(body, status_code=422, media_type="application/json")


def _require_json(request: Request) -> None:
    """Refuse a body that is not sent as JSON (415), rather than failing to validate it."""
    given = request.headers.get("content-type", "")
    kind, _, subtype = given.partition(";")[0].strip().lower().partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        got = f"got {given!r}" if given else "no Content-Type was sent"
        raise HTTPException(
            415, f"send the batch as JSON, with Content-Type: application/json ({got})"
        )


def _check_callback(guard: NetworkGuard, url: str, lookup: Lookup) -> None:
    """Refuse (422, naming ``callback_url``) a callback whose host the network guard
    would refuse at delivery, or that does not resolve (in time: ``lookup`` bounds it).
    (Each delivery is checked again when it connects.)

    Every refusal gets the same answer, ``CALLBACK_REFUSED``: naming the address a host
    resolved to, or telling a name that does not resolve from one that resolves to a
    private address, would let a client map the service's internal names. The reason
    is logged.
    """
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    try:
        check_host(guard, parts.hostname or "", parts.port or default, lookup)
    except BlockedAddressError as exc:
        reason = str(exc)
    except (OSError, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = f"its host {parts.hostname} does not resolve ({detail})"
    else:
        return
    log.warning("callback_url refused", url=url, reason=reason)
    raise RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", "callback_url"),
                "msg": CALLBACK_REFUSED,
                "input": url,
            }
        ]
    )


def _control(
    manager: JobManager, verb: str, full: Callable[[Job], Any]
) -> Callable[[str], Awaitable[Any]]:
    action = getattr(manager, verb)

    async def control(job_id: str) -> Any:
        def act() -> Any:
            return full(action(job_id))

        return await run_in_threadpool(act)

    control.__doc__ = {
        "cancel": "Stop the job for good (its unfinished items stay unfinished).",
        "pause": "Stop the job's downloads until resumed; answers once none is in flight.",
        "resume": "Put a paused job back in the queue.",
    }[verb]
    return control


class _Collector:
    """Prometheus metrics computed at scrape time."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def collect(self) -> Any:
        m = self.manager
        jobs = GaugeMetricFamily("conveyor_jobs", "Jobs by status", labels=["status"])
        counts = m.store.counts()
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "conveyor_jobs_queue_depth", "Jobs waiting to run", value=counts.get("queued", 0)
        )
        yield GaugeMetricFamily("conveyor_jobs_running", "Pipelines running", value=m.running())
        hooks = GaugeMetricFamily(
            "conveyor_webhook_deliveries",
            "Webhook delivery attempts since the service started, by result "
            "(given_up: deliveries abandoned after their last attempt)",
            labels=["result"],
        )
        for result, n in m.deliverer.results.items():
            hooks.add_metric([result], n)
        yield hooks
        items = GaugeMetricFamily(
            "conveyor_job_items",
            "Items of a running job that ended, by status (all its runs)",
            labels=["job", "status"],
        )
        size = GaugeMetricFamily(
            "conveyor_job_bytes",
            "Bytes in the completed files of a running job (all its runs), as committed",
            labels=["job"],
        )
        active = GaugeMetricFamily(
            "conveyor_job_downloading", "Items a running job is downloading", labels=["job"]
        )
        for job_id, p in m.live_progress().items():
            for status in ("completed", "failed", "skipped"):
                items.add_metric([job_id, status], p[status])
            size.add_metric([job_id], p["bytes"])
            active.add_metric([job_id], p["downloading"])
        yield items
        yield size
        yield active
