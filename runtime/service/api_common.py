"""What the routes of the job service's API share.

``create_app`` leaves one ``ApiState`` on ``app.state.api``; a route takes it as a
dependency (``api: Api``). Beside it: the token check (``AUTH``, and ``ApiState.valid``
for the WebSocket, which checks its handshake itself), a job's ``links``, its ``summary``
and ``full`` record as the API shows them, and the checks of a submitted batch (sent as
JSON; a ``callback_url`` whose host the service may reach).
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CollectorRegistry
from starlette.requests import HTTPConnection

from runtime.core.config import ServiceConfig
from runtime.core.logs import get_logger
from runtime.core.netguard import BlockedAddressError, Lookup, NetworkGuard, check_host
from runtime.service.jobs import JobManager
from runtime.service.jobstore import Job
from runtime.service.models import JobOut, Links, WebhookOut
from runtime.service.resolver import Resolver

if TYPE_CHECKING:
    from runtime.service.api_events import Hub

__all__ = [
    "AUTH",
    "BEARER",
    "CALLBACK_REFUSED",
    "MAX_CURSOR",
    "RESOLVE_TIMEOUT",
    "Api",
    "ApiState",
    "check_callback",
    "full",
    "links",
    "require_json",
    "require_token",
    "summary",
]

MAX_CURSOR = 2**62
"""Largest cursor or sequence number a client may pass (SQLite integers are 64-bit)."""
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
"""The token, as the schema's security scheme (checked by ``require_token``)."""

log = get_logger("service.api")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ApiState:
    """What every route of one application works with (``app.state.api``)."""

    manager: JobManager
    """The jobs."""
    service: ServiceConfig
    """``[service]``: the token, the limits of a batch."""
    hub: Hub
    """Wakes the event streams when a job's events were stored."""
    resolver: Resolver
    """Resolves a submitted ``callback_url``'s host, within ``RESOLVE_TIMEOUT``."""
    registry: CollectorRegistry
    """The Prometheus metrics ``/metrics`` serves."""

    def valid(self, given: str | None) -> bool:
        """Whether ``given`` is the token (compared in constant time); any is without one."""
        token = self.service.token.encode()
        return not token or (given is not None and hmac.compare_digest(given.encode(), token))

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token as a bearer token."""
        scheme, given = get_authorization_scheme_param(header)
        return self.valid(given if scheme.lower() == "bearer" else None)


def api_state(connection: HTTPConnection) -> ApiState:
    """The application's ``ApiState`` (a dependency of HTTP and WebSocket routes)."""
    state: ApiState = connection.app.state.api
    return state


Api = Annotated[ApiState, Depends(api_state)]
"""A route's parameter for the application's ``ApiState``."""


def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    api: Api,
) -> None:
    """Refuse (401) a request without the service's token."""
    if not api.valid(credentials.credentials if credentials is not None else None):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


AUTH = [Depends(require_token)]
"""The dependencies of a route that needs the token."""


def require_json(request: Request) -> None:
    """Refuse a body that is not sent as JSON (415), rather than failing to validate it."""
    given = request.headers.get("content-type", "")
    kind, _, subtype = given.partition(";")[0].strip().lower().partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        got = f"got {given!r}" if given else "no Content-Type was sent"
        raise HTTPException(
            415, f"send the batch as JSON, with Content-Type: application/json ({got})"
        )


def links(job_id: str) -> Links:
    """Where a job's resources are."""
    base = f"/v1/jobs/{job_id}"
    return Links(
        self=base,
        events=f"{base}/events",
        ws=f"{base}/ws",
        result=f"{base}/result",
        items=f"{base}/items",
    )


def summary(manager: JobManager, job: Job) -> dict[str, Any]:
    """A job as the job list shows it (the fields of ``JobSummary``)."""
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


def full(manager: JobManager, job: Job) -> JobOut:
    """A job with its options, failures by kind, hosts and webhook deliveries (reads the
    job's state: call it in the thread pool)."""
    details = manager.details(job)
    webhooks = [
        WebhookOut(delivery_id=d.id, url=d.url, status=d.status, attempts=d.attempts)
        for d in manager.store.deliveries(job.id)
    ]
    return JobOut(
        **summary(manager, job),
        callback_url=job.callback_url,
        options=job.options,
        errors=details["errors"],
        hosts=details["hosts"],
        webhooks=webhooks,
    )


def check_callback(guard: NetworkGuard, url: str, lookup: Lookup) -> None:
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
