"""The job routes: submit a batch, list the jobs, read one, cancel, pause, resume and
delete it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool

from runtime.service.api_common import (
    AUTH,
    MAX_CURSOR,
    Api,
    check_callback,
    full,
    links,
    require_json,
    summary,
)
from runtime.service.models import (
    InvalidItem,
    JobCreated,
    JobList,
    JobOut,
    JobRequest,
    JobStatus,
    JobSummary,
    errors,
)

__all__ = ["router"]

router = APIRouter(tags=["jobs"], dependencies=AUTH)

CONTROLS = {
    "cancel": "Stop the job for good (its unfinished items stay unfinished).",
    "pause": "Stop the job's downloads until resumed; answers once none is in flight.",
    "resume": "Put a paused job back in the queue.",
}
"""The control actions (``POST /v1/jobs/{job_id}/<verb>``), each with its description."""


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobCreated,
    dependencies=[Depends(require_json)],
    responses=errors(400, 409, 413, 415, 422),
)
async def submit(
    batch: JobRequest,
    response: Response,
    api: Api,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobCreated:
    """Queue a batch; answers at once with the job's id and links."""
    service, manager = api.service, api.manager
    if len(batch.items) > service.max_items:
        raise HTTPException(
            413,
            f"{len(batch.items)} items; at most {service.max_items} per job (service.max_items)",
        )
    if batch.callback_url is not None and service.webhook_secret:
        # (Without a secret the manager refuses any callback: no need to resolve it.)
        await run_in_threadpool(check_callback, manager.guard, batch.callback_url, api.resolver)
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


@router.get("/v1/jobs", response_model=JobList, responses=errors(422))
async def list_jobs(
    api: Api,
    status: JobStatus | None = None,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobList:
    """Jobs in submission order, a page at a time."""
    jobs = await run_in_threadpool(api.manager.store.page, status, cursor, limit)
    page = [JobSummary(**summary(api.manager, j)) for j in jobs]
    return JobList(jobs=page, next_cursor=jobs[-1].number if len(jobs) == limit else None)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=errors(404))
async def get_job(job_id: str, api: Api) -> JobOut:
    """A job's status, progress, failures by kind, hosts and webhook deliveries."""
    manager = api.manager
    return await run_in_threadpool(lambda: full(manager, manager.get(job_id)))


def _control(verb: str) -> Callable[[str, Api], Awaitable[JobOut]]:
    """The route of one control action: ``JobManager.<verb>``, answered with the job."""

    async def control(job_id: str, api: Api) -> JobOut:
        manager = api.manager
        action = getattr(manager, verb)
        return await run_in_threadpool(lambda: full(manager, action(job_id)))

    control.__doc__ = CONTROLS[verb]
    return control


for _verb in CONTROLS:
    router.add_api_route(
        f"/v1/jobs/{{job_id}}/{_verb}",
        _control(_verb),
        methods=["POST"],
        response_model=JobOut,
        responses=errors(404, 409),
        name=f"{_verb}_job",
        summary=f"{_verb.capitalize()} a job",
    )


@router.delete("/v1/jobs/{job_id}", status_code=204, responses=errors(404, 409))
async def delete_job(job_id: str, api: Api) -> Response:
    """Remove a job that is not running: its files, state and events."""
    await run_in_threadpool(api.manager.delete, job_id)
    return Response(status_code=204)
