"""The documents of the job service's API (pydantic models: the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ErrorOut",
    "FileLink",
    "Health",
    "InvalidItem",
    "ItemOut",
    "ItemPage",
    "ItemStatus",
    "JobCreated",
    "JobList",
    "JobOptions",
    "JobOut",
    "JobRequest",
    "JobStatus",
    "JobSummary",
    "Links",
    "Progress",
    "ResultOut",
    "WebhookOut",
    "errors",
]

JobStatus = Literal["queued", "running", "paused", "completed", "failed", "cancelled"]
ItemStatus = Literal["pending", "reporting", "completed", "failed", "skipped"]


class ErrorOut(BaseModel):
    """Every error answer."""

    detail: Any


class JobOptions(BaseModel):
    """The part of a job's configuration a client may choose."""

    model_config = ConfigDict(extra="forbid")
    processor: str | None = Field(None, description="one of the server's allowed processors")
    per_host: int | None = Field(None, ge=0, le=1000, description="concurrent downloads per host")
    max_attempts: int | None = Field(None, ge=1, le=100, description="attempts per item")
    max_size: int | None = Field(None, ge=0, description="largest file accepted, in bytes")


class JobRequest(BaseModel):
    """A batch: ``items`` are ``{"url", "id"?, "name"?, "sha256"?, "size"?}``."""

    model_config = ConfigDict(extra="forbid")
    items: list[dict[str, Any]] = Field(min_length=1)
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="an http(s) url the job's summary is POSTed to when it ends; its host "
        "must resolve to an address the service may reach (service.allow_networks)",
    )
    options: JobOptions = Field(default_factory=lambda: JobOptions.model_validate({}))

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError as exc:
            raise ValueError(f"callback_url is not a valid url ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("callback_url must be an http(s) url with a host")
        return url


class Progress(BaseModel):
    """Where a job stands."""

    completed: int
    failed: int
    skipped: int
    total: int
    percent: float
    bytes: int
    bytes_per_s: int
    eta_s: float | None
    downloading: int = 0
    retries: int = 0


class Links(BaseModel):
    """Where to go next."""

    self: str
    events: str
    ws: str
    result: str
    items: str


class InvalidItem(BaseModel):
    """An item that will end failed ``invalid_entry``."""

    index: int
    error: str


class JobCreated(BaseModel):
    """The answer to a submitted batch."""

    job_id: str
    status: str
    total: int
    invalid: int
    invalid_items: list[InvalidItem]
    links: Links


class JobSummary(BaseModel):
    """A job in a list."""

    job_id: str
    status: str
    total: int
    invalid: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    progress: Progress
    links: Links


class WebhookOut(BaseModel):
    """One webhook delivery and its attempts."""

    delivery_id: str
    url: str
    status: str
    attempts: list[dict[str, Any]]


class JobOut(JobSummary):
    """One job in full."""

    callback_url: str | None
    options: dict[str, Any]
    errors: dict[str, int]
    hosts: dict[str, dict[str, Any]]
    webhooks: list[WebhookOut]


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[JobSummary]
    next_cursor: int | None


class ItemOut(BaseModel):
    """One item's record."""

    seq: int
    """Position in the job's state (the paging cursor)."""
    index: int | None
    """Position of the item in the submitted ``items`` (0-based), as submit reports it."""
    id: str
    url: str
    name: str | None
    status: str
    attempts: int
    error_kind: str | None
    error: str | None
    size: int | None
    sha256: str | None
    fields: dict[str, Any] = {}
    """The entry's other keys (beyond ``url``, ``id``, ``name``, ``sha256``, ``size``), as
    submitted."""


class ItemPage(BaseModel):
    """A page of items."""

    items: list[ItemOut]
    next_cursor: int | None


class FileLink(BaseModel):
    """A completed file."""

    id: str
    name: str
    size: int | None
    sha256: str | None
    href: str


class ResultOut(BaseModel):
    """A job's summary and its files, paged."""

    job_id: str
    status: str
    progress: Progress
    files: list[FileLink]
    next_cursor: int | None


class Health(BaseModel):
    """``/healthz``."""

    status: str
    version: str
    running_jobs: int


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses (401 and 429 are always possible)."""
    described = {
        400: "the body is not JSON",
        401: "missing or wrong bearer token",
        404: "no such job (or file)",
        409: "the job's status does not allow this",
        413: "too large",
        415: "the body is not sent as Content-Type: application/json",
        422: "not a valid request",
        429: "too many concurrent connections",
    }
    return {c: {"model": ErrorOut, "description": described[c]} for c in (401, 429, *codes)}
