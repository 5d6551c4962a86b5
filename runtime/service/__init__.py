"""The job service, ``python -m runtime serve``: batches submitted over HTTP, followed
live (SSE, WebSocket, polling), cancelled, paused and resumed, with signed webhooks and
a small dashboard. Each job runs a ``runtime.Pipeline`` of its own."""

from __future__ import annotations

from runtime.service.jobs import JobManager
from runtime.service.jobstore import JobStore, SQLiteJobStore
from runtime.service.server import serve
from runtime.service.webhooks import sign, verify_signature

__all__ = ["JobManager", "JobStore", "SQLiteJobStore", "serve", "sign", "verify_signature"]
