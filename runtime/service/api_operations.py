"""The operations routes: liveness (``/healthz``), Prometheus metrics (``/metrics``), the
dashboard (``/``) and the API's documentation page (``/docs``)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from typing import get_args

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from runtime import __version__
from runtime.service.api_common import Api
from runtime.service.jobs import JobManager
from runtime.service.models import ErrorOut, Health, JobStatus

__all__ = ["STATIC", "metrics_registry", "metrics_router", "router"]

STATUSES: tuple[str, ...] = get_args(JobStatus)
STATIC = resources.files("runtime.service") / "static"
"""The dashboard's and the docs page's files (served under ``/static``)."""

router = APIRouter(tags=["operations"])
"""The routes open to all."""
metrics_router = APIRouter(tags=["operations"])
"""``/metrics``: ``create_app`` adds the token check unless ``service.public_metrics``."""


@router.get("/healthz", response_model=Health)
async def healthz(api: Api) -> Health:
    """Liveness: no token needed."""
    return Health(status="ok", version=__version__, running_jobs=api.manager.running())


@metrics_router.get(
    "/metrics",
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"model": ErrorOut},
        429: {"model": ErrorOut},
    },
    response_class=Response,
)
async def metrics(api: Api) -> Response:
    """Prometheus metrics: jobs by status, the queue, webhooks, each running job."""
    body = await run_in_threadpool(generate_latest, api.registry)
    return Response(body, media_type="text/plain; version=0.0.4")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(
        (STATIC / "index.html").read_text("utf-8"), headers={"Cache-Control": "no-store"}
    )


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs() -> HTMLResponse:
    """The API's operations, rendered from /openapi.json by a page that needs nothing
    from elsewhere (no token: it describes the API, not its data)."""
    return HTMLResponse(
        (STATIC / "docs.html").read_text("utf-8"), headers={"Cache-Control": "no-store"}
    )


def metrics_registry(manager: JobManager) -> CollectorRegistry:
    """A registry of the metrics of ``manager``'s jobs, computed at scrape time."""
    registry = CollectorRegistry()
    registry.register(_Collector(manager))
    return registry


class _Collector:
    """Prometheus metrics computed at scrape time."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
