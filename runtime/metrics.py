"""``run --metrics-port N``: Prometheus metrics on 127.0.0.1, fed by the run's events."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from messages import HostStatus, RunProgress

__all__ = ["Metrics"]

_BREAKER = {"closed": 0, "half_open": 1, "open": 2, "down": 3}


class Metrics:
    """A registry of gauges set from ``RunProgress`` and ``HostStatus`` events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.items = Gauge("conveyor_items", "Items by status", ["status"], registry=r)
        self.queue = Gauge("conveyor_queue_depth", "Items in flight by stage", ["stage"],
                           registry=r)  # fmt: skip
        self.bytes = Gauge("conveyor_downloaded_bytes", "Bytes downloaded in this run",
                           registry=r)  # fmt: skip
        self.retries = Gauge("conveyor_retries", "Retries scheduled in this run", registry=r)
        self.breaker = Gauge(
            "conveyor_host_breaker_state",
            "Circuit breaker per host: 0 closed, 1 half-open, 2 open, 3 down",
            ["host"],
            registry=r,
        )
        self.host_active = Gauge("conveyor_host_active", "Downloads in progress per host",
                                 ["host"], registry=r)  # fmt: skip
        self.host_failures = Gauge("conveyor_host_failures", "Failed attempts per host",
                                   ["host"], registry=r)  # fmt: skip
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __call__(self, message: Any) -> None:
        """Event sink."""
        match message:
            case RunProgress():
                for status in ("completed", "failed", "skipped", "pending"):
                    self.items.labels(status).set(getattr(message, status))
                self.queue.labels("downloading").set(message.downloading)
                self.queue.labels("processing").set(message.processing)
                self.bytes.set(message.bytes)
                self.retries.set(message.retries)
            case HostStatus(host=host):
                self.breaker.labels(host).set(_BREAKER.get(message.breaker, 0))
                self.host_active.labels(host).set(message.active)
                self.host_failures.labels(host).set(message.failures)

    def serve(self, port: int) -> None:
        """Serve ``/metrics`` on 127.0.0.1:``port`` until ``stop()``."""
        self._server, self._thread = start_http_server(port, addr="127.0.0.1",
                                                       registry=self.registry)  # fmt: skip

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
