"""The read side of the SQLite store: ``status``, the report and the service look at a
state through ``open_view`` (read-only; WAL readers never block the writer)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

from runtime.core.errors import ConveyorError
from runtime.core.store.protocol import StoreView

__all__ = ["NoStateError", "SQLiteView", "open_view", "state_exists", "state_file"]

STATE_FILE = "state.sqlite3"
"""The state's file in ``state.dir``."""


def state_file(state_dir: Path) -> Path:
    """The file of the SQLite state in ``state_dir``."""
    return Path(state_dir) / STATE_FILE


def state_exists(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a conveyor state (perhaps still being created)."""
    return state_file(state_dir).is_file()


class NoStateError(ConveyorError):
    """There is no conveyor state to read (yet): no ``state.sqlite3``, or a run that is
    starting has created the file but not its tables."""


_TABLES = ("hosts", "items", "meta")


def _ready(db: sqlite3.Connection) -> bool:
    marks = ",".join("?" * len(_TABLES))
    row = db.execute(
        f"SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ({marks})",  # noqa: S608 - ?s only
        _TABLES,
    ).fetchone()
    return int(row[0]) == len(_TABLES)


class SQLiteView:
    """``StoreView`` of a SQLite state, opened read-only (WAL readers never block the
    writer, so a live run can be looked at without disturbing it)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)

    def meta(self) -> dict[str, Any]:
        """See ``StoreView``."""
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    def counts(self) -> dict[str, int]:
        """See ``StoreView``."""
        return dict(self.db.execute("SELECT status, count(*) FROM items GROUP BY status"))

    def failures_by_kind(self) -> list[tuple[str, int, str]]:
        """See ``StoreView``."""
        return self.db.execute(
            "SELECT COALESCE(error_kind, 'unknown'), count(*), min(url) FROM items "
            "WHERE status='failed' GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()

    def hosts(self) -> dict[str, dict[str, Any]]:
        """See ``StoreView``."""
        return {h: json.loads(s) for h, s in self.db.execute("SELECT host, stats FROM hosts")}

    def items(self, status: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """See ``StoreView``."""
        where = "seq > ?" + (" AND status = ?" if status else "")
        args: tuple[Any, ...] = (after, status, limit) if status else (after, limit)
        cursor = self.db.execute(
            f"SELECT {_RECORD} FROM items WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608
            args,
        )
        return [_record(row) for row in cursor]

    def item_named(self, name: str) -> dict[str, Any] | None:
        """See ``StoreView``."""
        row = self.db.execute(f"SELECT {_RECORD} FROM items WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return _record(row) if row else None

    def outcomes_after(self, done_seq: int, limit: int) -> list[dict[str, Any]]:
        """See ``StoreView``."""
        cursor = self.db.execute(
            f"SELECT {_RECORD}, done_seq, COALESCE(path, '') FROM items "  # noqa: S608
            "WHERE done_seq > ? ORDER BY done_seq LIMIT ?",
            (done_seq, limit),
        )
        return [{**_record(row[:-2]), "done_seq": row[-2], "path": row[-1]} for row in cursor]

    def completed_bytes(self) -> int:
        """See ``StoreView``."""
        row = self.db.execute(
            "SELECT COALESCE(sum(final_size), 0) FROM items WHERE status='completed'"
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """See ``StoreView``."""
        self.db.close()


_RECORD = (
    "seq, id, url, COALESCE(name, reject_name), status, attempts, error_kind, error, "
    "final_size, final_sha256, line, fields"
)
"""The columns of an item record, in ``_record``'s order (fixed text: no user input)."""


def _record(row: Sequence[Any]) -> dict[str, Any]:
    keys = ("seq", "id", "url", "name", "status", "attempts", "error_kind", "error",
            "size", "sha256", "line", "fields")  # fmt: skip
    record = dict(zip(keys, row, strict=True))
    record["fields"] = msgpack.unpackb(record["fields"]) if record["fields"] else {}
    return record


@contextlib.contextmanager
def open_view(state_dir: Path) -> Iterator[StoreView]:
    """A read-only view of the state in ``state_dir``.

    Raises:
        NoStateError: there is no state there, or its run is creating it right now.
        ConveyorError: the state cannot be read.
    """
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        raise NoStateError(f"no conveyor state in {state_dir} (no state.sqlite3 there)")
    try:
        view = SQLiteView(path)
        try:
            if not _ready(view.db):
                raise NoStateError(f"the state in {state_dir} is being created; try again")
            yield view
        finally:
            view.close()
    except (sqlite3.Error, ValueError) as exc:
        raise ConveyorError(f"cannot read the state {path}: {exc}") from exc
