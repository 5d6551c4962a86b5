"""A running job's event sink, ``JobEvents``: what its pipeline reports, as job events.

The pipeline calls the sink on the StateKeeper's thread, so it only buffers; the job
manager's flusher (``runtime.service.jobs``) drains it with ``take`` and numbers the
events into the job store. Item events (one per terminal item) are all kept; progress
events are coalesced to one per ``interval`` (``service.progress_interval``), each with
the hosts whose statistics changed since the last one.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from messages import OUTCOME_FIELDS, HostStatus, Outcome, RunFinished, RunProgress
from runtime.core.clock import Clock, SystemClock
from runtime.service.jobstore import Job

__all__ = ["ITEM_FIELDS", "JobEvents", "summary_of"]

ITEM_FIELDS = tuple(f for f in OUTCOME_FIELDS if f not in ("path", "result", "node", "done_seq"))
"""The fields of an ``item`` event: the outcome's, but where the file is on the server
(``/files`` serves it), the processor's result (``/result``) and the state's numbering."""


class JobEvents:
    """A running job's event sink: buffers on the StateKeeper's thread, ``take`` drains."""

    def __init__(self, job: Job, interval: float, clock: Clock | None = None) -> None:
        self.total = job.total
        self.interval = interval
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._items: list[tuple[str, float, dict[str, Any]]] = []
        self._announced = 0  # the highest done_seq among the buffered item events
        self._unstored: list[tuple[str, float, dict[str, Any]]] = []
        self._run: RunProgress | None = None
        self._hosts: dict[str, HostStatus] = {}
        self._changed_hosts: set[str] = set()
        self._last_progress: float | None = None  # none yet: the first one is due at once
        self._done_at_start: int | None = None
        self.finished: RunFinished | None = None
        self.progress: dict[str, Any] = {}
        """The latest progress (what ``GET /v1/jobs/{id}`` shows while it runs)."""

    def __call__(self, message: Any) -> None:
        """Pipeline sink (the StateKeeper's thread): keep it quick."""
        match message:
            case Outcome():
                data = {key: getattr(message, key) for key in ITEM_FIELDS}
                with self._lock:
                    self._items.append(("item", self.clock.wall(), data))
                    self._announced = max(self._announced, message.done_seq)
            case RunProgress():
                with self._lock:
                    self._run = message
            case HostStatus():
                with self._lock:
                    self._hosts[message.host] = message
                    self._changed_hosts.add(message.host)
            case RunFinished():
                with self._lock:
                    self.finished = message

    def take(self, final: bool = False) -> tuple[list[tuple[str, float, dict[str, Any]]], int]:
        """Events to store now — the item events, and a progress event when one is due —
        and the highest ``done_seq`` of their outcomes (0: none)."""
        now = self.clock.now()
        with self._lock:
            events, self._items = self._items, []
            if self._unstored:  # a failed write's events go first
                events, self._unstored = self._unstored + events, []
            announced, self._announced = self._announced, 0
            last = self._last_progress
            due = final or last is None or now - last >= self.interval
            if self._run is not None and due:
                self._last_progress = now
                progress = self._progress(self._run)
                hosts = [dataclasses.asdict(self._hosts[h]) for h in sorted(self._changed_hosts)]
                self._changed_hosts.clear()
                self._run = None
                events.append(("progress", self.clock.wall(), {**progress, "hosts": hosts}))
        return events, announced

    def put_back(self, events: list[tuple[str, float, dict[str, Any]]], announced: int) -> None:
        """Events ``take`` gave out that could not be stored: the next ``take`` has them
        first (an item event is never dropped, nor its done_seq mark passed over)."""
        with self._lock:
            self._unstored = events + self._unstored
            self._announced = max(self._announced, announced)

    def _progress(self, run: RunProgress) -> dict[str, Any]:
        done = run.completed + run.failed + run.skipped
        if self._done_at_start is None:
            self._done_at_start = done
        rate = (done - self._done_at_start) / run.elapsed if run.elapsed > 0 else 0.0
        left = max(0, self.total - done)
        self.progress = {
            "completed": run.completed,
            "failed": run.failed,
            "skipped": run.skipped,
            "total": self.total,
            "percent": round(100.0 * done / self.total, 2) if self.total else 100.0,
            "bytes": run.completed_bytes,
            "bytes_per_s": round(run.bytes / run.elapsed) if run.elapsed > 0 else 0,
            "eta_s": round(left / rate, 1) if rate > 0 else None,
            "downloading": run.downloading,
            "retries": run.retries,
            "run": dataclasses.asdict(run),
        }
        return self.progress


def summary_of(progress: dict[str, Any]) -> dict[str, Any]:
    """A job's stored counts, from one of its progress events."""
    run = progress.get("run", {})
    return {
        "completed": progress["completed"],
        "failed": progress["failed"],
        "skipped": progress["skipped"],
        "accepted": run.get("accepted", 0),
        "pending": run.get("pending", 0),
        "bytes": progress["bytes"],
        "retries": progress["retries"],
    }
