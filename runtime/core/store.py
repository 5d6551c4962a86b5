"""The state store: one SQLite file (WAL) that makes a run resumable.

Only the StateKeeper writes it, from its own thread. The input is streamed in (keyed on
the item id, so re-reading the same input adds nothing), pending items are read back in
``seq`` order through a cursor, and every change goes into one open transaction that the
StateKeeper commits every ``state.persist_interval`` seconds (group commit) and at
shutdown. Leases are *not* written: after a crash an unfinished item simply is still
``pending``, which is exactly what a resumed run should see.

Statuses: ``pending`` → (in memory: leased, processing) → ``completed`` | ``failed`` |
``skipped``. ``reporting`` marks a rejected input entry whose manifest line may not be
written yet; a resumed run reports it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from messages import Outcome, Rejected, WorkItem
from runtime.core.config import DownloadConfig
from runtime.core.errors import ConveyorError
from runtime.core.inputs import MAX_FILE_NAME_BYTES, derive_name
from runtime.core.scheduler import PendingSource, host_of

__all__ = [
    "TERMINAL",
    "IngestResult",
    "SQLiteStore",
    "SQLiteView",
    "Store",
    "StoreView",
    "open_view",
]

TERMINAL = ("completed", "failed", "skipped")
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
    done_seq INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS items_name ON items(name) WHERE name IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_status ON items(status, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY, stats TEXT NOT NULL);
"""
CACHE_KIB = 16 * 1024
"""SQLite's page cache: ingest looks ids and names up in the indexes of the whole state."""
_VARS = 500  # parameters per IN (...) query, well below SQLite's limit
_MAX_RENAMES = 100  # a derived name still clashing after this many suffixes is rejected


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ``ingest`` call added."""

    added: int
    """New items now pending."""
    rejected: tuple[Outcome, ...]
    """New terminal ``invalid_entry`` outcomes to report."""
    hosts: frozenset[str] = frozenset()
    """The hosts (``host:port``) of the new items."""
    large_hosts: frozenset[str] = frozenset()
    """The hosts of the new items that go to the large-file lane."""


class Store(PendingSource, Protocol):
    """What the ledger needs from durable state; ``SQLiteStore`` is the implementation.

    Writes go into one open transaction that ``commit`` makes durable (the group
    commit); reads see the store's own uncommitted writes.
    """

    def ingest(
        self, items: Sequence[WorkItem], rejected: Sequence[Rejected], derived: Iterable[str]
    ) -> IngestResult:
        """Record a block of input (new items pending, bad ones terminal rejects)."""
        ...

    def items_by_id(self, ids: Sequence[str]) -> list[WorkItem]:
        """Stored items, as they would be dispatched."""
        ...

    def begin_run(self) -> int:
        """Number a new run (outcomes remember which run recorded them); return it."""
        ...

    def count_rejects(self) -> int:
        """Rejected entries whose report may not have been written yet."""
        ...

    def next_rejects(self, limit: int) -> list[Outcome]:
        """The next block of rejected entries to report."""
        ...

    def counts(self) -> dict[str, int]:
        """Items per stored status."""
        ...

    def open_count(self) -> int:
        """Items not yet terminal."""
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

    def completed_bytes(self) -> int:
        """Bytes in the files of completed items, as stored."""
        ...

    def reopen(self, ids: Sequence[str]) -> None:
        """Terminal items are pending again."""
        ...

    def failed_host_down_this_run(self) -> list[tuple[str, str]]:
        """``(id, url)`` of the items this run recorded as failed ``host_down``."""
        ...

    def load_hosts(self) -> dict[str, dict[str, Any]]:
        """Per-host statistics of earlier runs."""
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


def _chunks(seq: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(seq), _VARS):
        yield seq[i : i + _VARS]


def _rename(name: str, item_id: str, attempt: int) -> str:
    """Give a derived name that clashes a suffix from the item id (within the length limit)."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    suffix = f"-{item_id[:12]}" + (f"-{attempt}" if attempt else "")
    tail = f"{suffix}.{ext}" if ext else suffix
    room = MAX_FILE_NAME_BYTES - len(tail.encode("utf-8"))
    stem = stem.encode("utf-8")[: max(room, 1)].decode("utf-8", "ignore")
    return f"{folder}{slash}{stem}{tail}"


_ITEM_COLUMNS = "id, url, name, sha256, size, line, attempts, validator"
"""The columns a ``WorkItem`` is read back from, in ``_work_item``'s order."""


PENDING_OF_SQL = (
    f"SELECT seq, {_ITEM_COLUMNS} FROM items "  # noqa: S608 - constants only
    "WHERE status='pending' AND host=? AND large=? AND seq > ? ORDER BY seq LIMIT ?"
)
"""The next block of one host's pending items in one lane (index ``items_queue``)."""


def _work_item(row: Sequence[Any]) -> WorkItem:
    """A stored item, as it is dispatched (the ``_ITEM_COLUMNS`` of one row)."""
    i, u, n, h, size, line, attempts, validator = row
    return WorkItem(
        id=i, url=u, name=n, sha256=h, size=size, line=line, attempts=attempts, validator=validator
    )


def _inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` resolves (symlinks included) to ``root`` or below it."""
    real, real_root = os.path.realpath(folder), os.path.realpath(root)
    return real == real_root or real.startswith(real_root + os.sep)


def _file_matches(path: Path, size: int | None, sha256: str | None, full: bool) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (and ``sha256`` when ``full``)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return False
    if not full or sha256 is None:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256


class SQLiteStore:
    """Durable item state in ``<state.dir>/state.sqlite3``."""

    def __init__(
        self, state_dir: Path, *, scratch: bool = False, large_threshold: int | None = None
    ) -> None:
        """Open (or create) the store in ``state_dir``.

        ``scratch``: a throw-away store (``validate``'s), written without a journal.
        ``large_threshold``: ``download.large_threshold`` of the run, which sorts pending
        items into the two lanes (None: keep the state's).
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.sqlite3"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA journal_mode={'OFF' if scratch else 'WAL'}")
        self.db.execute(f"PRAGMA synchronous={'OFF' if scratch else 'NORMAL'}")
        self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(items)")}
        for column, kind in (
            ("reject_name", "TEXT"),
            ("run_no", "INTEGER"),
            ("host", "TEXT"),
            ("large", "INTEGER NOT NULL DEFAULT 0"),
            ("done_seq", "INTEGER"),
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
        self._optimistic = True  # see ingest
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

    # -- ingest -------------------------------------------------------------------------

    def ingest(
        self, items: Sequence[WorkItem], rejected: Sequence[Rejected], derived: Iterable[str]
    ) -> IngestResult:
        """Record a batch of input: new items become pending, bad ones terminal rejects.

        An id already stored from the same input line (or, for submitted entries, with the
        same url) is the same entry read again and adds nothing; an id stored from another
        line is a duplicate. A name another item holds is a clash: rejected when the entry
        gave it, made unique when derived.
        """
        derived_ids = set(derived)
        if self._optimistic and items:
            # Most blocks of a long input are new: their ids and names are not looked up
            # but left to the unique indexes, and a block they object to (a resumed run
            # reading its input again, a duplicate, a clash) is undone and taken again
            # the careful way, which stays on until a block turns out new again.
            self._write("SAVEPOINT ingest")
            try:
                result = self._ingest(items, rejected, derived_ids, {}, {})
            except sqlite3.IntegrityError:
                self.db.execute("ROLLBACK TO ingest")
                self._optimistic = False
            else:
                return result
            finally:
                self.db.execute("RELEASE ingest")
        known = self._existing_ids([i.id for i in items])
        taken = self._taken_names([i.name for i in items])
        self._optimistic = not known and not taken
        return self._ingest(items, rejected, derived_ids, known, taken)

    def _ingest(
        self,
        items: Sequence[WorkItem],
        rejected: Sequence[Rejected],
        derived_ids: set[str],
        known: dict[str, tuple[int, str]],
        taken: dict[str, tuple[str, int]],
    ) -> IngestResult:
        """``ingest`` with what the store holds of the block's ids (``known``) and names
        (``taken``) looked up already; an id or name not given raises IntegrityError."""
        id_counts = Counter(i.id for i in items)
        # What the names' checks need from the store, in one statement each per block
        # (not two queries per entry): stored files where a name needs a directory, and
        # stored files below a name.
        parents = {
            "/".join(parts[:k])
            for parts in (i.name.split("/") for i in items)
            for k in range(1, len(parts))
        }
        files_at = self._taken_names(sorted(parents)) if parents else {}
        below = self._stored_below([i.name for i in items]) if self._has_dirs else {}
        rows: list[tuple[Any, ...]] = []
        rejects = list(rejected)
        batch_dirs: set[str] = set()  # directories implied by this batch's accepted names
        hosts: set[str] = set()
        large_hosts: set[str] = set()
        for item in items:
            prior = known.get(item.id)
            if prior is not None:
                if prior[0] == item.line and (item.line > 0 or prior[1] == item.url):
                    continue  # the same entry read again (a resumed run)
                where = f"line {prior[0]}" if prior[0] else "an earlier submission"
                rejects.append(self._dup(item, f"duplicate id {item.id!r} (first seen on {where})"))
                continue
            name = item.name
            # Derived names are known by id; when two entries of the batch share an id, the
            # one that *gave* its name is not derived, whatever the other line did.
            is_derived = item.id in derived_ids and (
                id_counts[item.id] == 1 or name == derive_name(item.url, item.id)
            )
            attempt = 0
            while (
                clash := self._clash(
                    name, taken, batch_dirs, files_at, below, renamed=name != item.name
                )
            ) is not None:
                if not is_derived or attempt >= _MAX_RENAMES:
                    rejects.append(self._dup(item, f"name {item.name!r} clashes with {clash}"))
                    name = ""
                    break
                name = _rename(item.name, item.id, attempt)
                attempt += 1
            if not name:
                continue
            known[item.id] = (item.line, item.url)
            taken[name] = (item.id, item.line)
            if "/" in name:
                self._has_dirs = True
                parts = name.split("/")
                batch_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            key = host_of(item.url)
            hosts.add(key)
            large = item.size is not None and item.size > self.large_threshold
            if large:
                large_hosts.add(key)
            rows.append((item.id, item.line, item.url, name, item.sha256, item.size, key, large))
        return IngestResult(
            added=len(rows),
            rejected=tuple(self._insert_in_order(rows, rejects)),
            hosts=frozenset(hosts),
            large_hosts=frozenset(large_hosts),
        )

    def _insert_in_order(
        self, rows: list[tuple[Any, ...]], rejects: list[Rejected]
    ) -> list[Outcome]:
        """Store accepted rows and rejected entries interleaved by input line, so that
        positions (``seq``) follow the input, rejected lines included; runs of accepted
        rows go in one statement. Returns the outcomes of the rejects new to the store."""
        if not rejects:
            self._insert_items(rows)
            return []
        rejects.sort(key=lambda r: r.line)  # stable: submitted entries (line 0) keep order
        outcomes: list[Outcome] = []
        start = 0
        for reject in rejects:
            end = start
            while end < len(rows) and rows[end][1] < reject.line:
                end += 1
            self._insert_items(rows[start:end])
            start = end
            outcomes += self._store_rejects([reject])
        self._insert_items(rows[start:])
        return outcomes

    def _insert_items(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._write(
                "INSERT INTO items (id, line, url, name, sha256, size, host, large, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                rows,
                many=True,
            )

    def _dup(self, item: WorkItem, reason: str) -> Rejected:
        prefix = f"line {item.line}: " if item.line else ""
        key = f"line:{item.line}" if item.line else f"submit:{item.id}:{item.url}"
        return Rejected(id=key, line=item.line, url=item.url, name=item.name, error=prefix + reason)

    def _store_rejects(self, rejects: Sequence[Rejected]) -> list[Outcome]:
        outcomes = []
        for r in rejects:
            cur = self._write(
                "INSERT OR IGNORE INTO items "
                "(id, line, url, status, error_kind, error, reject_name) "
                "VALUES (?, ?, ?, 'reporting', 'invalid_entry', ?, ?)",
                (r.id, r.line, r.url, r.error, r.name or None),
            )
            if cur.rowcount:
                outcomes.append(
                    Outcome(
                        id=r.id,
                        url=r.url,
                        name=r.name,
                        path="",
                        status="failed",
                        error_kind="invalid_entry",
                        error=r.error,
                    )
                )
        return outcomes

    def _existing_ids(self, ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        return {i: (line, url) for i, line, url in self._lookup("id", "line, url", ids)}

    def _taken_names(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
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

    def _holder(self, name: str) -> tuple[str, int] | None:
        row = self.db.execute("SELECT id, line FROM items WHERE name = ?", (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def _who(holder: tuple[str, int]) -> str:
        item_id, line = holder
        return f"item {item_id!r} (line {line})" if line else f"item {item_id!r}"

    def _stored_below(self, names: Sequence[str]) -> dict[str, tuple[str, int]]:
        """For each of ``names`` that stored items use as a directory: one of them."""
        found: dict[str, tuple[str, int]] = {}
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

    def _clash(
        self,
        name: str,
        taken: dict[str, tuple[str, int]],
        batch_dirs: set[str],
        files_at: dict[str, tuple[str, int]],
        below: dict[str, tuple[str, int]],
        *,
        renamed: bool,
    ) -> str | None:
        """What ``name`` collides with: another file of that name, a file where it needs a
        directory (``a`` for ``a/b``), or files below it (``a/b`` for ``a``); else None.

        ``taken``: names of stored files looked up for the block, and those it accepted;
        ``files_at``: stored files named like a directory of the block's names; ``below``:
        the block's names that stored items use as directories. A ``renamed`` name (a
        derived name made unique) was not looked up, so the store is asked directly.
        """
        if name in taken:
            return f"{self._who(taken[name])}, which has the same name"
        if renamed and (holder := self._holder(name)) is not None:
            return f"{self._who(holder)}, which has the same name"
        if name in batch_dirs:
            return "a directory of another item's path"
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            holder = taken.get(parent) or files_at.get(parent)
            if holder is not None:
                return f"{self._who(holder)}, whose file {parent!r} is where a directory is needed"
        if self._has_dirs:
            child = self._stored_below([name]).get(name) if renamed else below.get(name)
            if child is not None:
                return f"{self._who(child)}, stored below it as a directory"
        return None

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

    def recheck(self, out_dir: Path, full: bool = False) -> tuple[int, list[str]]:
        """Put completed/skipped items whose file is gone or changed back to pending.

        A file must exist under ``out_dir`` with the recorded size (and, when ``full``,
        the recorded sha256); a changed one is removed. Committed before returning.

        Returns:
            How many files were checked, and the ids put back to pending.
        """
        rows = self.db.execute(
            "SELECT id, name, final_size, final_sha256 FROM items "
            "WHERE status IN ('completed', 'skipped') AND name IS NOT NULL ORDER BY seq"
        ).fetchall()
        bad = []
        for item_id, name, size, sha in rows:
            path = out_dir / name
            if not _file_matches(path, size, sha, full):
                bad.append(item_id)
                # A changed file would be taken as already in place: remove it, so the
                # item is downloaded again (a directory in its place is left alone).
                if _inside(path.parent, out_dir):  # never touch a file outside the output
                    with contextlib.suppress(IsADirectoryError, FileNotFoundError):
                        path.unlink()
        self._write(
            "UPDATE items SET status='pending', attempts=0, error_kind=NULL, error=NULL, "
            "path=NULL, final_size=NULL, final_sha256=NULL, done_seq=NULL WHERE id=?",
            [(i,) for i in bad],
            many=True,
        )
        self.commit()
        return len(rows), bad

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


# -- the read side --------------------------------------------------------------------


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
    "final_size, final_sha256, line"
)
"""The columns of an item record, in ``_record``'s order (fixed text: no user input)."""


def _record(row: Sequence[Any]) -> dict[str, Any]:
    keys = ("seq", "id", "url", "name", "status", "attempts", "error_kind", "error",
            "size", "sha256", "line")  # fmt: skip
    return dict(zip(keys, row, strict=True))


@contextlib.contextmanager
def open_view(state_dir: Path) -> Iterator[StoreView]:
    """A read-only view of the state in ``state_dir``.

    Raises:
        ConveyorError: there is no readable conveyor state there.
    """
    path = Path(state_dir) / "state.sqlite3"
    if not path.is_file():
        raise ConveyorError(f"no conveyor state in {state_dir} (no state.sqlite3 there)")
    try:
        view = SQLiteView(path)
        try:
            yield view
        finally:
            view.close()
    except (sqlite3.Error, ValueError) as exc:
        raise ConveyorError(f"cannot read the state {path}: {exc}") from exc
