"""Reading a job: its record, its stored counts, and what its pipeline's state holds.

``JobQueries`` answers the read requests of the API — a job's progress as last stored,
its failures by kind and hosts, its item records, its completed files — from the job
store and from a read-only view of the job's state (``<data_dir>/jobs/<id>/state``).
``JobManager`` (``runtime.service.jobs``) is a ``JobQueries`` that also runs the jobs
(and shows a running job's live progress). Items are shown as the service's clients know
them: by ``index`` in the submitted list, not by a line of the job's input file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtime.core.errors import ConveyorError
from runtime.core.store import TERMINAL as ITEM_TERMINAL
from runtime.core.store import NoStateError, StoreView, open_view
from runtime.service.jobstore import Job, JobStore

__all__ = ["JobError", "JobQueries", "without_line"]


class JobError(Exception):
    """A request the job's state does not allow; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


_LINE = re.compile(r"\b(on )?line (\d+)\b")


def without_line(error: str) -> str:
    """A reason as the service's clients know their items — by ``index`` in the submitted
    list, not by a line of the job's input file: no ``line N:`` prefix, and ``line N``
    inside (``first seen on line 4``) becomes ``index N-1`` (``first seen at index 3``)."""
    head, sep, rest = error.partition(": ")
    if sep and head.startswith("line ") and head[5:].isdigit():
        error = rest
    return _LINE.sub(
        lambda m: ("at " if m.group(1) else "") + f"index {int(m.group(2)) - 1}", error
    )


def _by_index(record: dict[str, Any]) -> dict[str, Any]:
    """An item record as the API shows it: ``index`` (0-based) instead of ``line``."""
    line = record.pop("line", 0) or 0
    record["index"] = line - 1 if line > 0 else None
    if record.get("error"):
        record["error"] = without_line(record["error"])
    return record


class JobQueries:
    """The read side of the jobs in ``store`` whose folders are under ``data_dir``."""

    def __init__(self, store: JobStore, data_dir: Path) -> None:
        self.store = store
        self.data_dir = data_dir

    def get(self, job_id: str) -> Job:
        """A job; ``JobError`` (404) when there is none."""
        job = self.store.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r}", 404)
        return job

    def job_dir(self, job_id: str) -> Path:
        """``<data_dir>/jobs/<id>``."""
        return self.data_dir / "jobs" / job_id

    def progress(self, job: Job) -> dict[str, Any]:
        """The job's counts as last stored (``JobManager`` shows a running job's live
        counts instead)."""
        s = job.summary
        done = s.get("completed", 0) + s.get("failed", 0) + s.get("skipped", 0)
        return {
            "completed": s.get("completed", 0),
            "failed": s.get("failed", 0),
            "skipped": s.get("skipped", 0),
            "total": job.total,
            "percent": round(100.0 * done / job.total, 2) if job.total else 100.0,
            "bytes": s.get("bytes", 0),
            "bytes_per_s": self._average_rate(job),
            "eta_s": 0 if job.status == "completed" else None,  # (none left, or unknown)
            "downloading": 0,
            "retries": s.get("retries", 0),
        }

    @staticmethod
    def _average_rate(job: Job) -> int:
        """Bytes per second from the job's first start to its end (0 while unknown)."""
        if job.started_at is None or job.finished_at is None:
            return 0
        seconds = job.finished_at - job.started_at
        return round(job.summary.get("bytes", 0) / seconds) if seconds > 0 else 0

    @contextlib.contextmanager
    def _view(self, job: Job) -> Iterator[StoreView | None]:
        """A read-only view of the job's state; None before its pipeline first ran."""
        with contextlib.ExitStack() as stack:
            try:
                view: StoreView | None = stack.enter_context(
                    open_view(self.job_dir(job.id) / "state")
                )
            except NoStateError:  # not run yet, or starting (the file comes before its tables)
                view = None
            yield view

    def details(self, job: Job) -> dict[str, Any]:
        """Failures by kind and per-host statistics, read from the job's state."""
        try:
            with self._view(job) as view:
                if view is None:
                    return {"errors": {}, "hosts": {}}
                errors = {kind: n for kind, n, _ in view.failures_by_kind()}
                return {"errors": errors, "hosts": view.hosts()}
        except ConveyorError:
            return {"errors": {}, "hosts": {}}

    def items(self, job: Job, status: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """A page of the job's item records (empty before the job first ran), in input
        order, each with its ``index`` in the submitted ``items``."""
        with self._view(job) as view:
            rows = [] if view is None else view.items(status, after, limit)
        return [_by_index(row) for row in rows]

    def completed_file(self, job: Job, name: str) -> tuple[Path, str | None]:
        """The path and sha256 of a completed item's file; ``JobError`` (404) otherwise.

        Only names the job's state records as completed are served, and only when the
        resolved path is a regular file inside the job's ``files`` directory.
        """
        missing = JobError(f"no completed file {name!r} in job {job.id}", 404)
        if "\x00" in name:
            raise missing
        with self._view(job) as view:
            record = None if view is None else view.item_named(name)
        if record is None or record["status"] not in ("completed", "skipped"):
            raise missing
        root = (self.job_dir(job.id) / "files").resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise missing
        return path, record["sha256"]

    def _stored_counts(self, job: Job) -> dict[str, int]:
        """The job's counts and completed bytes as its state committed them ({} before its
        pipeline first ran)."""
        with self._view(job) as view:
            if view is None:
                return {}
            counts = view.counts()
            return {
                "completed": counts.get("completed", 0),
                "failed": counts.get("failed", 0),
                "skipped": counts.get("skipped", 0),
                "accepted": sum(counts.values()),
                "pending": sum(n for s, n in counts.items() if s not in ITEM_TERMINAL),
                "bytes": view.completed_bytes(),
            }

    def summary(self, job: Job) -> dict[str, Any]:
        """What a webhook carries and ``/result`` starts with."""
        return {
            "job_id": job.id,
            "status": job.status,
            "total": job.total,
            "invalid": job.invalid,
            "progress": self.progress(job),
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "error": job.error,
        }
