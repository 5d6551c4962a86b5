"""The SQLite store: one file (WAL) that makes a run resumable; its schema and migrations.

Only the StateKeeper writes it, from its own thread. The input is streamed in (keyed on
the item id, so re-reading the same input adds nothing), pending items are read back per
host in ``seq`` order, and every change goes into one open transaction that the
StateKeeper commits every ``state.persist_interval`` seconds (group commit) and at
shutdown. Leases are *not* written: after a crash an unfinished item simply is still
``pending``, which is exactly what a resumed run should see. See ``protocol`` for the
contract.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from messages import Outcome, Rejected, WorkItem
from runtime.core.config import DownloadConfig
from runtime.core.hosts import host_of
from runtime.core.store.protocol import NewItem, StoreError, TakenError, rejected_outcome
from runtime.core.store.view import STATE_FILE

__all__ = ["PENDING_OF_SQL", "SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    line INTEGER NOT NULL,
    url TEXT NOT NULL,
    name TEXT,
    sha256 TEXT,
    size INTEGER,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    error TEXT,
    path TEXT,
    final_size INTEGER,
    final_sha256 TEXT,
    validator TEXT,
    reject_name TEXT,
    run_no INTEGER,
    host TEXT,
    large INTEGER NOT NULL DEFAULT 0,
    done_seq INTEGER,
    fields BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS items_name ON items(name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_status ON items(status, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY, stats TEXT NOT NULL);
"""
CACHE_KIB = 16 * 1024
"""SQLite's page cache: ingest looks ids and names up in the indexes of the whole state."""
_VARS = 500  # parameters per IN (...) query, well below SQLite's limit


def _chunks(seq: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(seq), _VARS):
        yield seq[i : i + _VARS]


_ITEM_COLUMNS = "id, url, name, sha256, size, line, attempts, validator, fields"
"""The columns a ``WorkItem`` is read back from, in ``_work_item``'s order."""


PENDING_OF_SQL = (
    f"SELECT seq, {_ITEM_COLUMNS} FROM items "  # noqa: S608 - constants only
    "WHERE status='pending' AND host=? AND large=? AND seq > ? ORDER BY seq LIMIT ?"
)
"""The next block of one host's pending items in one lane (index ``items_queue``)."""


def _work_item(row: Sequence[Any]) -> WorkItem:
    """A stored item, as it is dispatched (the ``_ITEM_COLUMNS`` of one row)."""
    i, u, n, h, size, line, attempts, validator, fields = row
    return WorkItem(
        id=i,
        url=u,
        name=n,
        sha256=h,
        size=size,
        line=line,
        attempts=attempts,
        validator=validator,
        fields=fields or b"",
    )


class SQLiteStore:
    """Durable item state in ``<state.dir>/state.sqlite3``."""

    def __init__(
        self, state_dir: Path, *, scratch: bool = False, large_threshold: int | None = None
    ) -> None:
        """Open (or create) the store in ``state_dir``.

        ``scratch``: a throw-away store (``validate``'s), written without a journal.
        ``large_threshold``: ``download.large_threshold`` of the run, which sorts pending
        items into the two lanes (None: keep the state's).

        Raises:
            StoreError: it cannot be opened (not a directory, not a conveyor state, …).
        """
        try:
            self._open(state_dir, scratch, large_threshold)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state in {state_dir}: {exc}") from exc

    def _open(self, state_dir: Path, scratch: bool, large_threshold: int | None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / STATE_FILE
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA journal_mode={'OFF' if scratch else 'WAL'}")
        self.db.execute(f"PRAGMA synchronous={'OFF' if scratch else 'NORMAL'}")
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.db.executescript(f"BEGIN;{_SCHEMA}COMMIT;")  # readers see all of it or none
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(items)")}
        for column, kind in (
            ("reject_name", "TEXT"),
            ("run_no", "INTEGER"),
            ("host", "TEXT"),
            ("large", "INTEGER NOT NULL DEFAULT 0"),
            ("done_seq", "INTEGER"),
            ("fields", "BLOB"),
        ):
            if column not in columns:  # a state written by an earlier version
                self.db.execute(f"ALTER TABLE items ADD COLUMN {column} {kind}")
        if "host" not in columns:
            self._fill_hosts()
        # Pending work is read per host and lane, in input order.
        self.db.execute("DROP INDEX IF EXISTS items_host")  # without the lane: a dev version
        self.db.execute("CREATE INDEX IF NOT EXISTS items_queue ON items(status, host, large, seq)")
        # Terminal outcomes in the order they were recorded, for sinks that catch up.
        self.db.execute(
            "CREATE INDEX IF NOT EXISTS items_done ON items(done_seq) WHERE done_seq IS NOT NULL"
        )
        # The highest done_seq ever given, kept in meta with each commit: a reopened item's
        # number is never given again (a sink that stored it must not skip the next one).
        row = self.db.execute("SELECT value FROM meta WHERE key='done_seq'").fetchone()
        self.done_seq = max(
            json.loads(row[0]) if row else 0,
            int(self.db.execute("SELECT COALESCE(max(done_seq), 0) FROM items").fetchone()[0]),
        )
        self._done_saved = self.done_seq
        self.large_threshold = self._lanes(large_threshold, sized="large" not in columns)
        self.run_no = 0
        self._reject_cursor = 0
        self._in_tx = False
        self._outcomes: list[tuple[Any, ...]] = []
        # Whether any stored name has a directory part: only then can a new name collide
        # with a stored file used as a directory (``a`` vs ``a/b``), which costs a query.
        self._has_dirs = (
            self.db.execute("SELECT 1 FROM items WHERE instr(name, '/') > 0 LIMIT 1").fetchone()
            is not None
        )

    def _lanes(self, threshold: int | None, *, sized: bool) -> int:
        """The size over which a pending item waits in the large lane; when it differs
        from the one the state was written with (or the state has no lanes yet), sort
        the pending items again."""
        row = self.db.execute("SELECT value FROM meta WHERE key='large_threshold'").fetchone()
        stored = json.loads(row[0]) if row else None
        current = threshold if threshold is not None else stored
        if current is None:
            current = DownloadConfig().large_threshold
        if current != stored or sized:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE items SET large = (size IS NOT NULL AND size > ?) WHERE status='pending'",
                (current,),
            )
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('large_threshold', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (json.dumps(current),),
            )
            self.db.execute("COMMIT")
        return int(current)

    def _fill_hosts(self) -> None:
        """Give the items of a state written by an earlier version their host."""
        rows = self.db.execute("SELECT seq, url FROM items WHERE host IS NULL").fetchall()
        self.db.execute("BEGIN")
        self.db.executemany(
            "UPDATE items SET host=? WHERE seq=?", [(host_of(u), seq) for seq, u in rows]
        )
        self.db.execute("COMMIT")

    # -- transactions -------------------------------------------------------------------

    def _write(
        self, sql: str, params: Sequence[Any] | Iterable[Sequence[Any]] = (), *, many: bool = False
    ) -> sqlite3.Cursor:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True
        if many:
            return self.db.executemany(sql, params)
        return self.db.execute(sql, params)  # type: ignore[arg-type]

    def commit(self) -> None:
        """Commit everything written since the last commit (the group commit)."""
        self._flush_outcomes()
        if self.done_seq != self._done_saved:
            self.set_meta(done_seq=self.done_seq)
            self._done_saved = self.done_seq
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        """Commit and close."""
        self.commit()
        self.db.close()

    # -- start of a run -----------------------------------------------------------------

    def begin_run(self) -> int:
        """Number this run (outcomes remember which run recorded them); return it."""
        row = self.db.execute("SELECT value FROM meta WHERE key='run_no'").fetchone()
        self.run_no = (json.loads(row[0]) if row else 0) + 1
        self.set_meta(run_no=self.run_no)
        return self.run_no

    def count_rejects(self) -> int:
        """Rejected entries whose report may not have been written yet."""
        row = self.db.execute("SELECT count(*) FROM items WHERE status='reporting'").fetchone()
        return int(row[0])

    def next_rejects(self, limit: int) -> list[Outcome]:
        """The next ``limit`` rejected entries to report, in input order.

        Rejected entries wait here rather than in memory, so an input full of bad lines
        never piles up outcomes faster than the post-processor takes them.
        """
        rows = self.db.execute(
            "SELECT seq, id, url, COALESCE(reject_name, ''), error FROM items "
            "WHERE status='reporting' AND seq > ? ORDER BY seq LIMIT ?",
            (self._reject_cursor, limit),
        ).fetchall()
        if rows:
            self._reject_cursor = rows[-1][0]
        return [
            Outcome(
                id=i, url=u, name=n, path="", status="failed", error_kind="invalid_entry", error=e
            )
            for _, i, u, n, e in rows
        ]

    def counts(self) -> dict[str, int]:
        """Return the number of items per stored status."""
        rows = self.db.execute("SELECT status, count(*) FROM items GROUP BY status").fetchall()
        return dict(rows)

    def open_count(self) -> int:
        """Items not yet terminal."""
        row = self.db.execute(
            "SELECT count(*) FROM items WHERE status NOT IN ('completed','failed','skipped')"
        ).fetchone()
        return int(row[0])

    # -- admission's questions, and its answer -------------------------------------------

    def known_ids(self, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """See ``Store``."""
        return {i: (line, url) for i, line, url in self._lookup("id", "line, url", ids)}

    def held_names(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """See ``Store``."""
        return {n: (i, line) for n, i, line in self._lookup("name", "id, line", names)}

    def _lookup(self, key: str, columns: str, values: Sequence[str]) -> list[Any]:
        """``key, columns`` of the items whose ``key`` is one of ``values`` (chunked)."""
        rows: list[Any] = []
        for chunk in _chunks(values):
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(
                f"SELECT {key}, {columns} FROM items WHERE {key} IN ({marks})",  # noqa: S608 - constants and ?s
                chunk,
            ).fetchall()
        return rows

    def names_below(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """See ``Store``. (Only once a stored name has a directory part can a name have
        anything below it, so until then this costs no query.)"""
        found: dict[str, tuple[str, int]] = {}
        if not self._has_dirs:
            return found
        for chunk in _chunks(names):
            values = ",".join("(?)" for _ in chunk)
            rows = self.db.execute(
                f"WITH v(n) AS (VALUES {values}) "  # noqa: S608 - constants and ?s
                "SELECT v.n, i.id, i.line FROM v JOIN items i ON i.seq = ("
                " SELECT seq FROM items WHERE name > v.n || '/' AND name < v.n || '0' LIMIT 1)",
                chunk,  # '0' follows '/': every 'name/...'
            )
            found.update((n, (i, line)) for n, i, line in rows)
        return found

    def add(self, entries: Sequence[NewItem | Rejected], *, checked: bool) -> list[Outcome]:
        """See ``Store``: runs of admitted items go in with one statement; an unchecked
        block is undone (a savepoint) when the unique indexes object to it."""
        if checked:
            return self._add(entries)
        self._write("SAVEPOINT admit")
        try:
            return self._add(entries)
        except sqlite3.IntegrityError as exc:
            self.db.execute("ROLLBACK TO admit")
            raise TakenError(str(exc)) from exc
        finally:
            self.db.execute("RELEASE admit")

    def _add(self, entries: Sequence[NewItem | Rejected]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        run: list[NewItem] = []
        for entry in entries:
            if isinstance(entry, NewItem):
                run.append(entry)
                continue
            self._insert_items(run)
            run = []
            cur = self._write(
                "INSERT OR IGNORE INTO items "
                "(id, line, url, status, error_kind, error, reject_name) "
                "VALUES (?, ?, ?, 'reporting', 'invalid_entry', ?, ?)",
                (entry.id, entry.line, entry.url, entry.error, entry.name or None),
            )
            if cur.rowcount:
                outcomes.append(rejected_outcome(entry))
        self._insert_items(run)
        return outcomes

    def _insert_items(self, rows: list[NewItem]) -> None:
        if rows:
            self._write(
                "INSERT INTO items (id, line, url, name, sha256, size, host, large, fields, "
                "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                rows,
                many=True,
            )
            if not self._has_dirs and any("/" in row.name for row in rows):
                self._has_dirs = True

    # -- dispatch -----------------------------------------------------------------------

    def pending_hosts(self) -> list[str]:
        """Every host that has pending items (one index seek per host)."""
        rows = self.db.execute(
            "WITH RECURSIVE h(x) AS ("
            " SELECT (SELECT min(host) FROM items WHERE status='pending')"
            " UNION ALL"
            " SELECT (SELECT min(host) FROM items WHERE status='pending' AND host > x)"
            " FROM h WHERE x IS NOT NULL"
            ") SELECT x FROM h WHERE x IS NOT NULL"
        ).fetchall()
        return [row[0] for row in rows]

    def pending_of(
        self, host: str, large: bool, after: int, limit: int
    ) -> list[tuple[int, WorkItem]]:
        """Up to ``limit`` pending items of ``host`` in the large lane (or the small one)
        after position ``after``, in input order, with their positions."""
        rows = self.db.execute(PENDING_OF_SQL, (host, large, after, limit)).fetchall()
        return [(row[0], _work_item(row[1:])) for row in rows]

    # -- status changes -----------------------------------------------------------------

    def record_attempt(self, item_id: str, attempts: int, error_kind: str, error: str) -> None:
        """Remember a failed attempt of an item that stays pending."""
        self._write(
            "UPDATE items SET attempts=?, error_kind=?, error=? WHERE id=?",
            (attempts, error_kind, error, item_id),
        )

    def record_validator(self, item_id: str, validator: str | None) -> None:
        """Remember how to resume an item's partial file."""
        self._write("UPDATE items SET validator=? WHERE id=?", (validator, item_id))

    def save_hosts(self, hosts: dict[str, dict[str, Any]]) -> None:
        """Store per-host statistics (JSON per host)."""
        self._write(
            "INSERT INTO hosts (host, stats) VALUES (?, ?) "
            "ON CONFLICT(host) DO UPDATE SET stats=excluded.stats",
            [(host, json.dumps(stats, sort_keys=True)) for host, stats in hosts.items()],
            many=True,
        )

    def set_meta(self, **values: Any) -> None:
        """Record facts about the run (``run_state``, ``pid``, times) for ``status``."""
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
            many=True,
        )

    def retry_failed(self, kind: str | None = None) -> int:
        """Put failed items (all, or of one error kind) back to pending; return how many.

        Rejected input entries (``invalid_entry``) stay failed: the input must change.
        """
        sql = (
            "UPDATE items SET status='pending', attempts=0, error_kind=NULL, error=NULL, "
            "done_seq=NULL WHERE status='failed' AND COALESCE(error_kind, '') != 'invalid_entry'"
        )
        params: tuple[str, ...] = ()
        if kind is not None:
            sql += " AND error_kind = ?"
            params = (kind,)
        count = self._write(sql, params).rowcount
        self.commit()
        return int(count)

    def kept_files(self) -> list[tuple[str, str, int | None, str | None]]:
        """See ``Store``."""
        self._flush_outcomes()
        return self.db.execute(
            "SELECT id, name, final_size, final_sha256 FROM items "
            "WHERE status IN ('completed', 'skipped') AND name IS NOT NULL "
            "AND path IS NOT NULL ORDER BY seq"
        ).fetchall()

    def unkept_since_sweep(self, statuses: Sequence[str]) -> tuple[list[str], int]:
        """See ``Store``."""
        self._flush_outcomes()
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            "SELECT name FROM items WHERE done_seq > ? AND path IS NULL "  # noqa: S608
            f"AND name IS NOT NULL AND +status IN ({marks}) ORDER BY done_seq",  # (by done_seq)
            (self.get_meta("discarded_through") or 0, *statuses),
        )
        return [name for (name,) in rows], self.done_seq

    def statuses_of(self, ids: Sequence[str]) -> dict[str, str]:
        """See ``Store``."""
        self._flush_outcomes()
        found: dict[str, str] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT id, status FROM items WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            found.update(rows)
        return found

    def get_meta(self, key: str) -> Any:
        """See ``Store``."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def requeue(self, ids: Sequence[str]) -> None:
        """See ``Store``."""
        self._flush_outcomes()
        self._write(
            "UPDATE items SET status='pending', attempts=0, error_kind=NULL, error=NULL, "
            "path=NULL, final_size=NULL, final_sha256=NULL, done_seq=NULL WHERE id=?",
            [(i,) for i in ids],
            many=True,
        )

    def failed_host_down_this_run(self) -> list[tuple[str, str]]:
        """``(id, url)`` of the items this run recorded as failed ``host_down``."""
        self._flush_outcomes()
        return self.db.execute(
            "SELECT id, url FROM items WHERE status='failed' AND error_kind='host_down' "
            "AND run_no=?",
            (self.run_no,),
        ).fetchall()

    def reopen(self, ids: Sequence[str]) -> None:
        """Make terminal items pending again (their host turned out to be up)."""
        self._flush_outcomes()
        self._write(
            "UPDATE items SET status='pending', error_kind=NULL, error=NULL, done_seq=NULL "
            "WHERE id=?",
            [(i,) for i in ids],
            many=True,
        )

    def items_by_id(self, ids: Sequence[str]) -> list[WorkItem]:
        """The stored items with these ids (as they would be dispatched)."""
        found: list[WorkItem] = []
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE id IN ({marks}) ORDER BY seq",  # noqa: S608
                chunk,
            ).fetchall()
            found += [_work_item(row) for row in rows]
        return found

    def load_hosts(self) -> dict[str, dict[str, Any]]:
        """Per-host statistics of earlier runs on this state."""
        return {h: json.loads(s) for h, s in self.db.execute("SELECT host, stats FROM hosts")}

    def record_outcome(self, outcome: Outcome) -> int:
        """Make an item terminal (written with the next commit, in one batch); return its
        ``done_seq``."""
        self.done_seq += 1
        self._outcomes.append(
            (
                outcome.status,
                outcome.attempts,
                outcome.error_kind,
                outcome.error,
                outcome.path or None,
                outcome.size,
                outcome.sha256,
                self.run_no,
                self.done_seq,
                outcome.id,
            )
        )
        return self.done_seq

    def completed_bytes(self) -> int:
        """Bytes in the files of completed items, as stored."""
        self._flush_outcomes()
        row = self.db.execute(
            "SELECT COALESCE(sum(final_size), 0) FROM items WHERE status='completed'"
        ).fetchone()
        return int(row[0])

    def _flush_outcomes(self) -> None:
        if self._outcomes:
            rows, self._outcomes = self._outcomes, []
            self._write(
                "UPDATE items SET status=?, attempts=?, error_kind=?, error=?, path=?, "
                "final_size=?, final_sha256=?, run_no=?, done_seq=? WHERE id=?",
                rows,
                many=True,
            )
