"""What a state store is: the ``Store`` the ledger writes, the ``StoreView`` readers see.

A store keeps every item of a run — pending, or terminal with its outcome — and what the
run learnt about its hosts. It decides nothing: which entries are admitted is
``runtime.core.store.admission``'s, which files are still good is
``runtime.core.store.recheck``'s, what happens next is the ledger's. Two stores implement
it: ``SQLiteStore`` (durable, resumable: the default) and ``MemoryStore`` (nothing kept).

Writes go into one open transaction that ``commit`` makes durable (the group commit);
reads see the store's own uncommitted writes, except outcomes, which ``record_outcome``
buffers until the next ``commit`` (or a read that needs them: ``completed_bytes``,
``failed_host_down_this_run``, ``reopen``).

Statuses: ``pending`` → (in memory: leased, processing) → ``completed`` | ``failed`` |
``skipped``. ``reporting`` marks a rejected input entry whose manifest line may not be
written yet; a resumed run reports it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from messages import Outcome, Rejected, WorkItem
from runtime.core.errors import ConveyorError
from runtime.core.scheduler import PendingSource

__all__ = [
    "TERMINAL",
    "IngestResult",
    "NewItem",
    "Store",
    "StoreError",
    "StoreView",
    "TakenError",
    "rejected_outcome",
]

TERMINAL = ("completed", "failed", "skipped")
"""The statuses an item ends in."""


class NewItem(NamedTuple):
    """An admitted input entry, as ``Store.add`` stores it (pending)."""

    id: str
    line: int
    url: str
    name: str
    sha256: str | None
    size: int | None
    host: str
    """``host:port`` (``runtime.core.scheduler.host_of``): the queue it waits in."""
    large: bool
    """Whether it waits in the large-file lane."""
    fields: bytes | None
    """The entry's other keys, encoded (``WorkItem.fields``); None when it has none."""


def rejected_outcome(reject: Rejected) -> Outcome:
    """The terminal outcome of a rejected input entry, as it is reported."""
    return Outcome(
        id=reject.id,
        url=reject.url,
        name=reject.name,
        path="",
        status="failed",
        error_kind="invalid_entry",
        error=reject.error,
    )


class StoreError(ConveyorError):
    """A store cannot be opened or written (the message says which and why)."""


class TakenError(Exception):
    """``Store.add(..., checked=False)`` found an id or a name already stored; nothing of
    the block was added."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one block of input added."""

    added: int
    """New items now pending."""
    rejected: tuple[Outcome, ...]
    """New terminal ``invalid_entry`` outcomes to report."""
    hosts: frozenset[str] = frozenset()
    """The hosts (``host:port``) of the new items."""
    large_hosts: frozenset[str] = frozenset()
    """The hosts of the new items that go to the large-file lane."""


class Store(PendingSource, Protocol):
    """The durable state of a run, as the ledger, admission and the CLI use it."""

    large_threshold: int
    """Bytes over which an item of known size waits in the large-file lane."""

    # -- admission's questions, and its answer -------------------------------------------

    def known_ids(self, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``(line, url)`` of each of ``ids`` that is stored."""
        ...

    def held_names(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``(id, line)`` of the item holding each of ``names`` that is taken."""
        ...

    def names_below(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """For each of ``names`` that stored items use as a directory (``name/…``): the
        ``(id, line)`` of one of them."""
        ...

    def add(self, entries: Sequence[NewItem | Rejected], *, checked: bool) -> list[Outcome]:
        """Store a block of admitted items (pending) and rejected entries (``reporting``)
        in this order, which is the input's; return the outcomes of the rejects new to
        the store (one already stored, from an earlier read of the input, is not again).

        ``checked``: the block's ids and names were looked up and are free. When not, a
        taken one raises ``TakenError`` and nothing of the block is added.
        """
        ...

    # -- reading ------------------------------------------------------------------------

    def items_by_id(self, ids: Sequence[str]) -> list[WorkItem]:
        """Stored items, as they would be dispatched, in input order."""
        ...

    def count_rejects(self) -> int:
        """Rejected entries whose report may not have been written yet."""
        ...

    def next_rejects(self, limit: int) -> list[Outcome]:
        """The next block of rejected entries to report, in input order."""
        ...

    def counts(self) -> dict[str, int]:
        """Items per stored status."""
        ...

    def open_count(self) -> int:
        """Items not yet terminal."""
        ...

    def completed_bytes(self) -> int:
        """Bytes in the files of completed items, as stored."""
        ...

    def kept_files(self) -> list[tuple[str, str, int | None, str | None]]:
        """``(id, name, size, sha256)`` of every completed or skipped item with a file, in
        input order (what ``recheck`` looks at); not those recorded as not kept (their
        outcome's ``path`` was empty: ``output.keep``)."""
        ...

    def unkept_since_sweep(self, statuses: Sequence[str]) -> tuple[list[str], int]:
        """Names of the items of these statuses recorded without a file after the
        ``discarded_through`` mark of the meta (a ``done_seq``) — files a run meant to
        delete, which an interruption may have left in place — and the newest
        ``done_seq`` recorded."""
        ...

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]:
        """The status of each of these items (those that exist), outcomes recorded but
        not yet committed included."""
        ...

    def get_meta(self, key: str) -> Any:
        """A fact ``set_meta`` recorded (None if none)."""
        ...

    def failed_host_down_this_run(self) -> list[tuple[str, str]]:
        """``(id, url)`` of the items this run recorded as failed ``host_down``."""
        ...

    def load_hosts(self) -> dict[str, dict[str, Any]]:
        """Per-host statistics of earlier runs."""
        ...

    # -- status changes -----------------------------------------------------------------

    def begin_run(self) -> int:
        """Number a new run (outcomes remember which run recorded them); return it."""
        ...

    def record_attempt(self, item_id: str, attempts: int, error_kind: str, error: str) -> None:
        """A failed attempt of an item that stays pending."""
        ...

    def record_validator(self, item_id: str, validator: str | None) -> None:
        """How to resume an item's partial file."""
        ...

    def record_outcome(self, outcome: Outcome) -> int:
        """An item is terminal; return its ``done_seq`` (1, 2, …: the order outcomes are
        recorded in, never reused)."""
        ...

    def reopen(self, ids: Sequence[str]) -> None:
        """Terminal items are pending again (attempts kept: a host came back)."""
        ...

    def requeue(self, ids: Sequence[str]) -> None:
        """Terminal items are pending again as if new: attempts, errors and their file's
        record cleared (``recheck``)."""
        ...

    def retry_failed(self, kind: str | None = None) -> int:
        """Failed items (all, or of one error kind) are pending again with no attempts;
        rejected input entries (``invalid_entry``) stay failed. Committed; returns how
        many."""
        ...

    def save_hosts(self, hosts: dict[str, dict[str, Any]]) -> None:
        """Per-host statistics."""
        ...

    def set_meta(self, **values: Any) -> None:
        """Facts about the run, for ``status``."""
        ...

    def commit(self) -> None:
        """Make everything written so far durable."""
        ...

    def close(self) -> None:
        """Commit and let go of the store."""
        ...


class StoreView(Protocol):
    """What ``status`` and the run report read: a read-only look at a store."""

    def meta(self) -> dict[str, Any]:
        """Facts about the run (``run_state``, ``pid``, times, ``reason``)."""
        ...

    def counts(self) -> dict[str, int]:
        """Items per stored status."""
        ...

    def failures_by_kind(self) -> list[tuple[str, int, str]]:
        """``(error_kind, count, an example url)`` of failed items, most frequent first."""
        ...

    def hosts(self) -> dict[str, dict[str, Any]]:
        """Per-host statistics."""
        ...

    def items(self, status: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` item records after position ``after`` (each has its ``seq``),
        of one status or all, in input order."""
        ...

    def item_named(self, name: str) -> dict[str, Any] | None:
        """The record of the item whose file is ``name``, if any."""
        ...

    def outcomes_after(self, done_seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records of terminal items recorded after ``done_seq``, in the
        order they were recorded (each has its ``done_seq`` and ``path``)."""
        ...

    def completed_bytes(self) -> int:
        """Bytes in the files of completed items."""
        ...

    def close(self) -> None:
        """Let go of the store."""
        ...
