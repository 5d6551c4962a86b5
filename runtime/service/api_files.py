"""The file route: a job's completed file, with ``Range`` requests and an ``ETag``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from runtime.service.api_common import AUTH, Api
from runtime.service.models import errors

__all__ = ["router"]

router = APIRouter(tags=["jobs"], dependencies=AUTH)


@router.get(
    "/v1/jobs/{job_id}/files/{name:path}",
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
async def get_file(job_id: str, name: str, api: Api) -> FileResponse:
    """A completed file, with ``Range`` requests and an ``ETag`` (its sha256)."""
    manager = api.manager
    path, sha = await run_in_threadpool(lambda: manager.completed_file(manager.get(job_id), name))
    headers = {"etag": f'"{sha}"'} if sha else None
    return FileResponse(path, media_type="application/octet-stream", headers=headers)
