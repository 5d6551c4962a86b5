"""The service's durable state: jobs, their events, idempotency keys, webhook deliveries.

``JobStore`` is the interface the service uses; ``SQLiteJobStore`` keeps it in one SQLite
file (WAL) in ``service.data_dir``, so jobs, event sequence numbers and pending webhook
deliveries survive a restart — a ``kill -9`` included. (A Redis implementation for
several machines can stand behind the same interface later.) Every method is safe to call
from any thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ACTIVE", "TERMINAL", "Delivery", "Event", "Job", "JobStore", "SQLiteJobStore"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})
"""Statuses a job does not leave."""
ACTIVE = frozenset({"queued", "running"})
"""Statuses of a job that is waiting for or using the downloaders."""


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored."""

    id: str
    number: int
    """Submission order."""
    status: str
    total: int
    invalid: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    callback_url: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    """Counts when the job last stopped (``completed``, ``failed``, …, ``bytes``)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a job: its sequence number, type, wall time and fields."""

    seq: int
    type: str
    ts: float
    data: dict[str, Any]

    def as_dict(self, job_id: str) -> dict[str, Any]:
        """The event as clients see it."""
        return {"seq": self.seq, "type": self.type, "ts": self.ts, "job_id": job_id, **self.data}


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery: one summary to POST to one url, until it is accepted."""

    id: str
    job_id: str
    url: str
    body: bytes
    status: str
    """``pending``, ``delivered`` or ``failed`` (given up)."""
    created_at: float
    attempts: list[dict[str, Any]] = field(default_factory=list)


class JobStore(Protocol):
    """What the service keeps durably."""

    def create(self, job: Job, idempotency: tuple[str, str] | None) -> tuple[Job, bool]:
        """Store a new job, unless ``(key, body digest)`` names an earlier one.

        Returns:
            The job and whether it is new.

        Raises:
            KeyError: the key was used before with another body.
        """
        ...

    def get(self, job_id: str) -> Job | None:
        """One job."""
        ...

    def page(self, status: str | None, after: int, limit: int) -> list[Job]:
        """Jobs after submission number ``after``, oldest first."""
        ...

    def update(self, job_id: str, **fields: Any) -> None:
        """Change stored fields of a job."""
        ...

    def delete(self, job_id: str) -> None:
        """Forget a job, its events and its deliveries."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        ...

    def append_events(
        self,
        job_id: str,
        events: Sequence[tuple[str, float, dict[str, Any]]],
        keep: int,
        announced: int | None = None,
    ) -> int:
        """Number and store events; keep the newest ``keep``. Returns the last seq.

        ``announced``: the ``done_seq`` of the job pipeline's last outcome among these
        events, remembered in the same transaction (see ``announced``).
        """
        ...

    def announced(self, job_id: str) -> int:
        """The highest ``done_seq`` of the job's outcomes stored as events (0: none)."""
        ...

    def events_after(self, job_id: str, seq: int, limit: int) -> tuple[list[Event], int]:
        """Events after ``seq``, and the oldest seq still kept (0: none kept yet)."""
        ...

    def add_delivery(self, delivery: Delivery) -> None:
        """Store a webhook delivery to make."""
        ...

    def pending_deliveries(self) -> list[Delivery]:
        """Deliveries not yet delivered nor given up."""
        ...

    def record_attempt(self, delivery_id: str, attempt: dict[str, Any], status: str) -> None:
        """Record one delivery attempt and the delivery's status after it."""
        ...

    def deliveries(self, job_id: str) -> list[Delivery]:
        """A job's deliveries with their attempts."""
        ...

    def close(self) -> None:
        """Let go of the store."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    total INTEGER NOT NULL,
    invalid INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    callback_url TEXT,
    options TEXT NOT NULL,
    error TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    body_digest TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, number);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_seq (
    job_id TEXT PRIMARY KEY,
    last INTEGER NOT NULL,
    announced INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]'
);
"""

_JOB_COLUMNS = (
    "id",
    "number",
    "status",
    "total",
    "invalid",
    "created_at",
    "started_at",
    "finished_at",
    "callback_url",
    "options",
    "error",
    "summary",
)
_UPDATABLE = frozenset(_JOB_COLUMNS) - {"id", "number"}


def _job(row: Sequence[Any]) -> Job:
    values = dict(zip(_JOB_COLUMNS, row, strict=True))
    values["options"] = json.loads(values["options"])
    values["summary"] = json.loads(values["summary"])
    return Job(**values)


def _delivery(row: Sequence[Any]) -> Delivery:
    id_, job_id, url, body, status, created_at, attempts = row
    return Delivery(
        id=id_,
        job_id=job_id,
        url=url,
        body=bytes(body),
        status=status,
        created_at=created_at,
        attempts=json.loads(attempts),
    )


class SQLiteJobStore:
    """``JobStore`` in ``<data_dir>/service.sqlite3``."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            data_dir / "service.sqlite3", check_same_thread=False, isolation_level=None
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(event_seq)")}
        if "announced" not in columns:  # a store written by an earlier version
            self.db.execute("ALTER TABLE event_seq ADD COLUMN announced INTEGER NOT NULL DEFAULT 0")
        self.lock = threading.Lock()

    def _select(self, where: str, args: Iterable[Any]) -> list[Job]:
        columns = ", ".join(_JOB_COLUMNS)
        sql = f"SELECT {columns} FROM jobs {where}"  # noqa: S608 - fixed text, args bound
        with self.lock:
            return [_job(row) for row in self.db.execute(sql, tuple(args))]

    def create(self, job: Job, idempotency: tuple[str, str] | None) -> tuple[Job, bool]:
        """See ``JobStore``."""
        key, digest = idempotency or (None, None)
        with self.lock:
            row = None
            if key is not None:
                row = self.db.execute(
                    "SELECT id, body_digest FROM jobs WHERE idempotency_key = ?", (key,)
                ).fetchone()
            if row is not None and row[1] != digest:
                raise KeyError(key)
            if row is None:
                self.db.execute(
                    "INSERT INTO jobs (id, status, total, invalid, created_at, callback_url, "
                    "options, idempotency_key, body_digest) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        job.id,
                        job.status,
                        job.total,
                        job.invalid,
                        job.created_at,
                        job.callback_url,
                        json.dumps(job.options),
                        key,
                        digest,
                    ),
                )
        stored = self.get(job.id if row is None else row[0])
        assert stored is not None
        return stored, row is None

    def get(self, job_id: str) -> Job | None:
        """See ``JobStore``."""
        found = self._select("WHERE id = ?", (job_id,))
        return found[0] if found else None

    def page(self, status: str | None, after: int, limit: int) -> list[Job]:
        """See ``JobStore``."""
        if status:
            return self._select(
                "WHERE status = ? AND number > ? ORDER BY number LIMIT ?", (status, after, limit)
            )
        return self._select("WHERE number > ? ORDER BY number LIMIT ?", (after, limit))

    def update(self, job_id: str, **fields: Any) -> None:
        """See ``JobStore``."""
        unknown = fields.keys() - _UPDATABLE
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        values = [json.dumps(v) if k in ("options", "summary") else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.lock:
            self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values, job_id))  # noqa: S608

    def delete(self, job_id: str) -> None:
        """See ``JobStore``."""
        with self.lock:
            self.db.execute("BEGIN")
            for table, column in (
                ("jobs", "id"),
                ("events", "job_id"),
                ("event_seq", "job_id"),
                ("deliveries", "job_id"),
            ):
                self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))  # noqa: S608
            self.db.execute("COMMIT")

    def counts(self) -> dict[str, int]:
        """See ``JobStore``."""
        with self.lock:
            return dict(self.db.execute("SELECT status, count(*) FROM jobs GROUP BY status"))

    def append_events(
        self,
        job_id: str,
        events: Sequence[tuple[str, float, dict[str, Any]]],
        keep: int,
        announced: int | None = None,
    ) -> int:
        """See ``JobStore``. Numbers continue after the highest ever given, even when
        older events were trimmed: a sequence number is never used twice."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute(
                    "SELECT last, announced FROM event_seq WHERE job_id = ?", (job_id,)
                ).fetchone()
                last, done = row if row else (0, 0)
                rows = []
                for kind, ts, data in events:
                    last += 1
                    rows.append((job_id, last, kind, ts, json.dumps(data)))
                self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?)", rows)
                self.db.execute(
                    "INSERT INTO event_seq (job_id, last, announced) VALUES (?, ?, ?) "
                    "ON CONFLICT(job_id) DO UPDATE SET last = excluded.last, "
                    "announced = excluded.announced",
                    (job_id, last, max(done, announced or 0)),
                )
                self.db.execute(
                    "DELETE FROM events WHERE job_id = ? AND seq <= ?", (job_id, last - keep)
                )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return last

    def announced(self, job_id: str) -> int:
        """See ``JobStore``."""
        with self.lock:
            row = self.db.execute(
                "SELECT announced FROM event_seq WHERE job_id = ?", (job_id,)
            ).fetchone()
        return int(row[0]) if row else 0

    def events_after(self, job_id: str, seq: int, limit: int) -> tuple[list[Event], int]:
        """See ``JobStore``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT seq, type, ts, data FROM events WHERE job_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (job_id, seq, limit),
            ).fetchall()
            first = self.db.execute(
                "SELECT min(seq) FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
        events = [Event(seq=s, type=t, ts=ts, data=json.loads(d)) for s, t, ts, d in rows]
        return events, first or 0

    def add_delivery(self, delivery: Delivery) -> None:
        """See ``JobStore``."""
        with self.lock:
            self.db.execute(
                "INSERT INTO deliveries VALUES (?,?,?,?,?,?,?)",
                (
                    delivery.id,
                    delivery.job_id,
                    delivery.url,
                    delivery.body,
                    delivery.status,
                    delivery.created_at,
                    json.dumps(delivery.attempts),
                ),
            )

    def pending_deliveries(self) -> list[Delivery]:
        """See ``JobStore``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM deliveries WHERE status = 'pending' ORDER BY created_at"
            ).fetchall()
        return [_delivery(r) for r in rows]

    def record_attempt(self, delivery_id: str, attempt: dict[str, Any], status: str) -> None:
        """See ``JobStore``."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT attempts FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
            if row is not None:
                attempts = [*json.loads(row[0]), attempt]
                self.db.execute(
                    "UPDATE deliveries SET attempts = ?, status = ? WHERE id = ?",
                    (json.dumps(attempts), status, delivery_id),
                )
            self.db.execute("COMMIT")

    def deliveries(self, job_id: str) -> list[Delivery]:
        """See ``JobStore``."""
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM deliveries WHERE job_id = ? ORDER BY created_at", (job_id,)
            ).fetchall()
        return [_delivery(r) for r in rows]

    def close(self) -> None:
        """See ``JobStore``."""
        with self.lock:
            self.db.close()
