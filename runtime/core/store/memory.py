"""A store that keeps nothing between runs (``state.backend = "memory"``).

It answers exactly as ``SQLiteStore`` does — the same statuses, orders and positions,
outcomes buffered until the next commit — so the ledger cannot tell them apart; the tests
of the ledger and of whole pipelines run on both. It holds every item in memory (a few
hundred bytes each), so it suits throw-away runs and tests, not a million-item batch.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from messages import Outcome, Rejected, WorkItem
from runtime.core.config import DownloadConfig
from runtime.core.store.protocol import TERMINAL, NewItem, TakenError, rejected_outcome

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Row:
    """One item, as a row of the SQLite store's ``items`` table."""

    seq: int
    id: str
    line: int
    url: str
    status: str
    name: str | None = None
    sha256: str | None = None
    size: int | None = None
    attempts: int = 0
    error_kind: str | None = None
    error: str | None = None
    path: str | None = None
    final_size: int | None = None
    final_sha256: str | None = None
    validator: str | None = None
    reject_name: str | None = None
    run_no: int | None = None
    host: str | None = None
    large: bool = False
    done_seq: int | None = None
    fields: bytes | None = None

    def work_item(self) -> WorkItem:
        return WorkItem(
            id=self.id,
            url=self.url,
            name=self.name or "",  # admitted items have one
            sha256=self.sha256,
            size=self.size,
            line=self.line,
            attempts=self.attempts,
            validator=self.validator,
            fields=self.fields or b"",
        )


class MemoryStore:
    """See the module docstring and ``runtime.core.store.protocol.Store``."""

    def __init__(self, *, large_threshold: int | None = None) -> None:
        self.large_threshold = (
            large_threshold if large_threshold is not None else DownloadConfig().large_threshold
        )
        self.rows: dict[str, _Row] = {}  # by id
        self.by_seq: dict[int, _Row] = {}
        self.names: dict[str, str] = {}  # name -> id
        self.sorted_names: list[str] = []  # for what lies below a name
        self.queues: dict[tuple[str, bool], list[int]] = {}  # (host, large) -> seqs, sorted
        self.hosts: dict[str, str] = {}  # host -> its statistics as JSON
        self.meta: dict[str, str] = {}  # key -> JSON
        self.seq = 0
        self.done_seq = 0
        self.run_no = 0
        self._reject_cursor = 0
        self._outcomes: list[tuple[Outcome, int, int]] = []  # (outcome, run, done_seq)

    # -- admission's questions, and its answer -------------------------------------------

    def known_ids(self, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """See ``Store``."""
        return {i: (r.line, r.url) for i in ids if (r := self.rows.get(i)) is not None}

    def held_names(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """See ``Store``."""
        found = {}
        for name in names:
            holder = self.names.get(name)
            if holder is not None:
                found[name] = (holder, self.rows[holder].line)
        return found

    def names_below(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """See ``Store``: the first stored name after ``name/`` in sort order."""
        found = {}
        for name in names:
            prefix = name + "/"
            i = bisect.bisect_right(self.sorted_names, prefix)
            if i < len(self.sorted_names) and self.sorted_names[i].startswith(prefix):
                row = self.rows[self.names[self.sorted_names[i]]]
                found[name] = (row.id, row.line)
        return found

    def add(self, entries: Sequence[NewItem | Rejected], *, checked: bool) -> list[Outcome]:
        """See ``Store``."""
        if not checked:
            new = [e for e in entries if isinstance(e, NewItem)]
            taken = {e.id for e in new} & self.rows.keys() or {e.name for e in new} & (
                self.names.keys()
            )
            twice = len({e.id for e in new}) < len(new) or len({e.name for e in new}) < len(new)
            if taken or twice:
                raise TakenError(f"taken: {sorted(taken)[:3]}")
        outcomes = []
        for entry in entries:
            if isinstance(entry, NewItem):
                if entry.id in self.rows or entry.name in self.names:
                    raise ValueError(f"{entry.id!r} or {entry.name!r} is stored already")
                self._insert(_Row(seq=0, status="pending", **entry._asdict()))
            elif entry.id not in self.rows:  # INSERT OR IGNORE
                self._insert(
                    _Row(
                        seq=0,
                        id=entry.id,
                        line=entry.line,
                        url=entry.url,
                        status="reporting",
                        error_kind="invalid_entry",
                        error=entry.error,
                        reject_name=entry.name or None,
                    )
                )
                outcomes.append(rejected_outcome(entry))
        return outcomes

    def _insert(self, row: _Row) -> None:
        self.seq += 1
        row.seq = self.seq
        self.rows[row.id] = row
        self.by_seq[row.seq] = row
        if row.name is not None:
            self.names[row.name] = row.id
            bisect.insort(self.sorted_names, row.name)
        if row.status == "pending":
            self._enqueue(row)

    def _enqueue(self, row: _Row) -> None:
        if row.host is None:
            return  # a rejected entry put back by retry: never dispatched, as in SQLite
        queue = self.queues.setdefault((row.host, row.large), [])
        i = bisect.bisect_left(queue, row.seq)
        if i == len(queue) or queue[i] != row.seq:
            queue.insert(i, row.seq)

    # -- dispatch -----------------------------------------------------------------------

    def pending_hosts(self) -> list[str]:
        """See ``PendingSource``."""
        return sorted(
            {
                host
                for (host, _), queue in self.queues.items()
                if any(self.by_seq[s].status == "pending" for s in queue)
            }
        )

    def pending_of(
        self, host: str, large: bool, after: int, limit: int
    ) -> list[tuple[int, WorkItem]]:
        """See ``PendingSource``."""
        queue = self.queues.get((host, large), [])
        found: list[tuple[int, WorkItem]] = []
        i = bisect.bisect_right(queue, after)
        while i < len(queue) and len(found) < limit:
            row = self.by_seq[queue[i]]
            if row.status == "pending" and row.host == host and row.large == large:
                found.append((row.seq, row.work_item()))
                i += 1
            else:
                del queue[i]  # no longer pending here: forget it
        return found

    # -- reading ------------------------------------------------------------------------

    def items_by_id(self, ids: Sequence[str]) -> list[WorkItem]:
        """See ``Store``."""
        rows = sorted(
            (r for i in set(ids) if (r := self.rows.get(i)) is not None), key=lambda r: r.seq
        )
        return [r.work_item() for r in rows]

    def count_rejects(self) -> int:
        """See ``Store``."""
        return sum(1 for r in self.rows.values() if r.status == "reporting")

    def next_rejects(self, limit: int) -> list[Outcome]:
        """See ``Store``."""
        rows = sorted(
            (r for r in self.rows.values()
             if r.status == "reporting" and r.seq > self._reject_cursor),
            key=lambda r: r.seq,
        )[:limit]  # fmt: skip
        if rows:
            self._reject_cursor = rows[-1].seq
        return [
            Outcome(
                id=r.id,
                url=r.url,
                name=r.reject_name or "",
                path="",
                status="failed",
                error_kind="invalid_entry",
                error=r.error,
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """See ``Store``."""
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def open_count(self) -> int:
        """See ``Store``."""
        return sum(1 for r in self.rows.values() if r.status not in TERMINAL)

    def completed_bytes(self) -> int:
        """See ``Store``."""
        self._flush_outcomes()
        return sum(r.final_size or 0 for r in self.rows.values() if r.status == "completed")

    def kept_files(self) -> list[tuple[str, str, int | None, str | None]]:
        """See ``Store``."""
        self._flush_outcomes()
        return [
            (r.id, r.name, r.final_size, r.final_sha256)
            for r in sorted(self.rows.values(), key=lambda r: r.seq)
            if r.status in ("completed", "skipped") and r.name is not None and r.path is not None
        ]

    def unkept_since_sweep(self, statuses: Sequence[str]) -> tuple[list[str], int]:
        """See ``Store``."""
        self._flush_outcomes()
        mark = self.get_meta("discarded_through") or 0
        rows = [
            r
            for r in self.rows.values()
            if r.done_seq is not None
            and r.done_seq > mark
            and r.path is None
            and r.name is not None
            and r.status in statuses
        ]
        rows.sort(key=lambda r: r.done_seq or 0)
        return [r.name for r in rows if r.name is not None], self.done_seq

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]:
        """See ``Store``."""
        self._flush_outcomes()
        return {i: row.status for i in ids if (row := self.rows.get(i)) is not None}

    def get_meta(self, key: str) -> Any:
        """See ``Store``."""
        value = self.meta.get(key)
        return None if value is None else json.loads(value)

    def failed_host_down_this_run(self) -> list[tuple[str, str]]:
        """See ``Store``."""
        self._flush_outcomes()
        return [
            (r.id, r.url)
            for r in sorted(self.rows.values(), key=lambda r: r.seq)
            if r.status == "failed" and r.error_kind == "host_down" and r.run_no == self.run_no
        ]

    def load_hosts(self) -> dict[str, dict[str, Any]]:
        """See ``Store``."""
        return {h: json.loads(s) for h, s in self.hosts.items()}

    # -- status changes -----------------------------------------------------------------

    def begin_run(self) -> int:
        """See ``Store``."""
        self.run_no = json.loads(self.meta.get("run_no", "0")) + 1
        self.set_meta(run_no=self.run_no)
        return self.run_no

    def record_attempt(self, item_id: str, attempts: int, error_kind: str, error: str) -> None:
        """See ``Store``."""
        if (row := self.rows.get(item_id)) is not None:
            row.attempts, row.error_kind, row.error = attempts, error_kind, error

    def record_validator(self, item_id: str, validator: str | None) -> None:
        """See ``Store``."""
        if (row := self.rows.get(item_id)) is not None:
            row.validator = validator

    def record_outcome(self, outcome: Outcome) -> int:
        """See ``Store``: written with the next commit, like SQLite's."""
        self.done_seq += 1
        self._outcomes.append((outcome, self.run_no, self.done_seq))
        return self.done_seq

    def _flush_outcomes(self) -> None:
        outcomes, self._outcomes = self._outcomes, []
        for o, run_no, done_seq in outcomes:
            row = self.rows.get(o.id)
            if row is None:
                continue
            row.status, row.attempts, row.error_kind, row.error = (
                o.status,
                o.attempts,
                o.error_kind,
                o.error,
            )
            row.path, row.final_size, row.final_sha256 = o.path or None, o.size, o.sha256
            row.run_no, row.done_seq = run_no, done_seq

    def _pending_again(self, rows: Sequence[_Row]) -> None:
        for row in rows:
            row.status, row.error_kind, row.error, row.done_seq = "pending", None, None, None
            self._enqueue(row)

    def reopen(self, ids: Sequence[str]) -> None:
        """See ``Store``."""
        self._flush_outcomes()
        self._pending_again([r for i in ids if (r := self.rows.get(i)) is not None])

    def requeue(self, ids: Sequence[str]) -> None:
        """See ``Store``."""
        self._flush_outcomes()
        rows = [r for i in ids if (r := self.rows.get(i)) is not None]
        for row in rows:
            row.attempts, row.path, row.final_size, row.final_sha256 = 0, None, None, None
        self._pending_again(rows)

    def retry_failed(self, kind: str | None = None) -> int:
        """See ``Store``."""
        self._flush_outcomes()
        rows = [
            r
            for r in self.rows.values()
            if r.status == "failed"
            and (r.error_kind or "") != "invalid_entry"
            and (kind is None or r.error_kind == kind)
        ]
        for row in rows:
            row.attempts = 0
        self._pending_again(rows)
        return len(rows)

    def save_hosts(self, hosts: dict[str, dict[str, Any]]) -> None:
        """See ``Store``."""
        self.hosts.update((h, json.dumps(s, sort_keys=True)) for h, s in hosts.items())

    def set_meta(self, **values: Any) -> None:
        """See ``Store``."""
        self.meta.update((k, json.dumps(v)) for k, v in values.items())

    def commit(self) -> None:
        """See ``Store``."""
        self._flush_outcomes()

    def close(self) -> None:
        """See ``Store``."""
        self.commit()
