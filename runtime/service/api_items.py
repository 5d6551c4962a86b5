"""The item routes: a job's per-item records, and its result (a link per completed
file), each a page at a time."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from runtime.service.api_common import AUTH, MAX_CURSOR, Api
from runtime.service.jobstore import Job
from runtime.service.models import (
    FileLink,
    ItemOut,
    ItemPage,
    ItemStatus,
    Progress,
    ResultOut,
    errors,
)

__all__ = ["router"]

router = APIRouter(tags=["jobs"], dependencies=AUTH)


@router.get("/v1/jobs/{job_id}/items", response_model=ItemPage, responses=errors(404, 422))
async def get_items(
    job_id: str,
    api: Api,
    status: ItemStatus | None = None,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ItemPage:
    """The per-item records, in input order, a page at a time."""
    manager = api.manager

    def read() -> list[dict[str, Any]]:
        return manager.items(manager.get(job_id), status, cursor, limit)

    rows = await run_in_threadpool(read)
    return ItemPage(
        items=[ItemOut(**r) for r in rows],
        next_cursor=rows[-1]["seq"] if len(rows) == limit else None,
    )


@router.get("/v1/jobs/{job_id}/result", response_model=ResultOut, responses=errors(404, 422))
async def get_result(
    job_id: str,
    api: Api,
    cursor: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> ResultOut:
    """The job's summary and a link per completed file."""
    manager = api.manager

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
