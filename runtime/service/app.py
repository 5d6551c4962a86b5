"""The HTTP API of the job service (FastAPI): ``create_app`` puts its routers together.

One router per resource, each in its own module: ``api_jobs`` (submit, list, read,
cancel, pause, resume, delete), ``api_items`` (a job's items and result), ``api_files``
(its completed files), ``api_events`` (SSE, WebSocket, and the ``Hub`` that wakes them)
and ``api_operations`` (health, metrics, dashboard, docs); what they share — the state
every route depends on, the token check — is in ``api_common``.

Handlers never wait on a pipeline on the event loop: whatever touches the job store, a
job's state or a pipeline runs in the thread pool (``run_in_threadpool``).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from runtime import __version__
from runtime.core.config import Config
from runtime.service import api_events, api_files, api_items, api_jobs, api_operations
from runtime.service.api_common import AUTH, CALLBACK_REFUSED, RESOLVE_TIMEOUT, ApiState
from runtime.service.api_common import check_callback as _check_callback
from runtime.service.api_events import Hub
from runtime.service.jobs import JobError, JobManager
from runtime.service.limits import ASGIApp, Limits
from runtime.service.resolver import Resolver

__all__ = ["CALLBACK_REFUSED", "Hub", "_check_callback", "create_app", "wrap_limits"]
"""(The callback check and its answer, now ``api_common``'s, are still importable from
here under their earlier names.)"""


def create_app(manager: JobManager, config: Config, hub: Hub | None = None) -> FastAPI:
    """The FastAPI application over ``manager``."""
    service = config.service
    hub = hub or Hub()
    manager.listeners.append(hub.notify)
    app = FastAPI(
        title="conveyor job service",
        version=__version__,
        description="Submit batches of downloads, follow them live, fetch the files. "
        "Every operation needs `Authorization: Bearer <token>` except `/healthz` (and "
        "`/metrics` with `service.public_metrics`); this description and `/docs` are open.",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: see /docs
        redoc_url=None,
    )
    app.state.api = ApiState(
        manager=manager,
        service=service,
        hub=hub,
        resolver=Resolver(RESOLVE_TIMEOUT),
        registry=api_operations.metrics_registry(manager),
    )

    @app.on_event("startup")
    async def _bind_loop() -> None:
        hub.loop = asyncio.get_running_loop()

    app.add_exception_handler(JobError, _job_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    for module in (api_jobs, api_items, api_files, api_events, api_operations):
        app.include_router(module.router)
    metrics_auth = [] if service.public_metrics else AUTH
    app.include_router(api_operations.metrics_router, dependencies=metrics_auth)
    app.mount("/static", StaticFiles(directory=str(api_operations.STATIC)), name="static")
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
