"""The SQLite store: idempotent ingest, duplicates, name clashes, group commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest

from messages import Outcome, Rejected, WorkItem
from runtime.core.hosts import host_of
from runtime.core.store import (
    PENDING_OF_SQL,
    Admission,
    IngestResult,
    MemoryStore,
    SQLiteStore,
    Store,
)


def ingest(store: Store, *args: Any) -> IngestResult:
    """A block of input through admission, into ``store``."""
    return Admission(store).ingest(*args)


def item(i: str, line: int, name: str | None = None, url: str | None = None) -> WorkItem:
    return WorkItem(id=i, url=url or f"http://h/{i}", name=name or i, line=line)


def test_reading_the_same_input_again_adds_nothing(tmp_path: Path) -> None:
    """A resumed run re-reads its input; ids from the same lines are not added twice."""
    store = SQLiteStore(tmp_path)
    first = ingest(store, [item("a", 1), item("b", 2)], [], [])
    again = ingest(store, [item("a", 1), item("b", 2)], [], [])
    assert (first.added, again.added, again.rejected) == (2, 0, ())
    assert store.counts() == {"pending": 2}


def test_a_second_entry_with_a_taken_id_is_a_duplicate(tmp_path: Path) -> None:
    """Duplicate ids end invalid_entry naming both lines."""
    store = SQLiteStore(tmp_path)
    result = ingest(store, [item("a", 1), item("a", 7, name="other")], [], [])
    assert result.added == 1
    (reject,) = result.rejected
    assert reject.error_kind == "invalid_entry"
    assert reject.error == "line 7: duplicate id 'a' (first seen on line 1)"


def test_a_block_the_indexes_object_to_is_taken_again_the_careful_way(tmp_path: Path) -> None:
    """New blocks are not looked up before they go in; a block holding a stored id or
    name is undone and checked entry by entry, and nothing of it is stored twice."""
    store = SQLiteStore(tmp_path)
    ingest(store, [item("a", 1), item("b", 2, name="f.bin")], [], [])
    mixed = [item("c", 3), item("a", 4, name="x"), item("d", 5, name="f.bin"), item("e", 6)]
    result = ingest(store, mixed, [Rejected(id="line:7", line=7, url="ftp://x", error="bad")], [])
    assert result.added == 2
    assert [r.error for r in result.rejected] == [
        "line 4: duplicate id 'a' (first seen on line 1)",
        "line 5: name 'f.bin' clashes with item 'b' (line 2), which has the same name",
        "bad",
    ]
    lines = [line for (line,) in store.db.execute("SELECT line FROM items ORDER BY seq")]
    assert lines == [1, 2, 3, 4, 5, 6, 7]  # input order, each line once
    fresh = ingest(store, [item("g", 8), item("g", 9, name="y")], [], [])  # new again
    assert fresh.added == 1
    assert [r.error for r in fresh.rejected] == ["line 9: duplicate id 'g' (first seen on line 8)"]
    assert store.counts() == {"pending": 5, "reporting": 4}


def test_a_given_name_that_clashes_is_rejected_a_derived_one_renamed(tmp_path: Path) -> None:
    """Two entries may not write the same file; derived names get a suffix instead."""
    store = SQLiteStore(tmp_path)
    ingest(store, [item("a", 1, name="f.bin")], [], [])
    result = ingest(store, [item("b", 2, name="f.bin"), item("c", 3, name="f.bin")], [], ["c"])
    assert result.added == 1
    assert [r.error for r in result.rejected] == [
        "line 2: name 'f.bin' clashes with item 'a' (line 1), which has the same name"
    ]
    names = dict(store.db.execute("SELECT id, name FROM items WHERE name IS NOT NULL"))
    assert names["c"] == "f-c.bin"


def test_pending_items_are_read_per_host_in_input_order(tmp_path: Path) -> None:
    """Each host's pending items come back in input order, from a position on, by lane."""
    store = SQLiteStore(tmp_path, large_threshold=100)
    urls = ["http://a/1", "http://b/1", "http://a/2", "http://A:80/3", "https://a/4"]
    ingest(store, [item(str(i), i + 1, url=u) for i, u in enumerate(urls)], [], [])
    assert store.pending_hosts() == ["a:443", "a:80", "b:80"]
    first = store.pending_of("a:80", False, 0, 2)
    assert [w.id for _, w in first] == ["0", "2"]
    rest = store.pending_of("a:80", False, first[-1][0], 2)
    assert [w.id for _, w in rest] == ["3"]
    assert store.pending_of("a:80", True, 0, 10) == []  # no large items
    store.record_outcome(Outcome(id="1", url=urls[1], name="1", path="", status="failed"))
    store.commit()
    assert store.pending_hosts() == ["a:443", "a:80"]


def test_a_state_from_before_hosts_were_stored_gets_them(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    ingest(store, [item("x", 1)], [], [])
    store.db.execute("DROP INDEX items_queue")
    store.db.execute("ALTER TABLE items DROP COLUMN host")
    store.db.execute("ALTER TABLE items DROP COLUMN large")
    store.close()
    store = SQLiteStore(tmp_path)
    assert [w.id for _, w in store.pending_of(host_of(item("x", 1).url), False, 0, 5)] == ["x"]


def test_changes_are_visible_to_others_only_after_commit(tmp_path: Path) -> None:
    """Group commit: a reader sees nothing until commit()."""
    store = SQLiteStore(tmp_path)
    ingest(store, [item("a", 1)], [], [])
    reader = sqlite3.connect(tmp_path / "state.sqlite3")
    assert reader.execute("SELECT count(*) FROM items").fetchone() == (0,)
    store.commit()
    assert reader.execute("SELECT count(*) FROM items").fetchone() == (1,)
    store.record_outcome(Outcome(id="a", url="u", name="a", path="/p", status="completed"))
    assert reader.execute("SELECT status FROM items").fetchone() == ("pending",)
    store.close()
    assert reader.execute("SELECT status FROM items").fetchone() == ("completed",)


def test_unreported_rejections_are_recovered(tmp_path: Path) -> None:
    """A rejection whose manifest line may be missing is reported again after a crash."""
    store = SQLiteStore(tmp_path)
    ingest(store, [], [Rejected(id="line:4", line=4, url="ftp://x", error="line 4: bad")], [])
    store.close()
    reopened = SQLiteStore(tmp_path)
    assert reopened.count_rejects() == 1
    (outcome,) = reopened.next_rejects(10)
    assert (outcome.id, outcome.status, outcome.error) == ("line:4", "failed", "line 4: bad")
    assert reopened.next_rejects(10) == []  # handed out once
    assert reopened.open_count() == 1


def test_rejects_are_handed_out_in_blocks_in_input_order(tmp_path: Path) -> None:
    """The StateKeeper takes stored rejections a block at a time, names included."""
    store = SQLiteStore(tmp_path)
    rejects = [Rejected(id=f"line:{n}", line=n, url="", name=f"n{n}", error="bad")
               for n in range(1, 8)]  # fmt: skip
    ingest(store, [], rejects, [])
    first, second, third = store.next_rejects(3), store.next_rejects(3), store.next_rejects(3)
    assert [o.id for o in first + second + third] == [f"line:{n}" for n in range(1, 8)]
    assert [len(first), len(second), len(third)] == [3, 3, 1]
    assert first[0].name == "n1"


def test_a_file_and_a_directory_of_the_same_name_clash(tmp_path: Path) -> None:
    """``a`` and ``a/b`` cannot both exist: the later entry is rejected, in one batch or
    across batches and in either order; a derived name is renamed instead."""
    store = SQLiteStore(tmp_path)
    one = ingest(store, [item("f", 1, name="a"), item("g", 2, name="a/b")], [], [])
    assert one.added == 1
    assert one.rejected[0].error.startswith("line 2: name 'a/b' clashes with item 'f' (line 1)")
    two = ingest(store, [item("h", 3, name="x/y/z"), item("i", 4, name="x/y")], [], [])
    assert two.added == 1
    assert "line 4: name 'x/y' clashes with a directory" in two.rejected[0].error
    three = ingest(store, [item("j", 5, name="x"), item("k", 6, name="a/c/d")], [], [])
    assert three.added == 0
    assert "stored below it as a directory" in three.rejected[0].error
    assert "whose file 'a' is where a directory is needed" in three.rejected[1].error
    store.commit()

    again = SQLiteStore(tmp_path)  # a resumed run knows the stored directories too
    derived = ingest(again, [item("m", 7, name="x")], [], ["m"])
    assert derived.added == 1
    stored = dict(again.db.execute("SELECT id, name FROM items WHERE id='m'").fetchall())
    assert stored["m"] != "x"
    assert stored["m"].startswith("x-")
    again.close()


def test_an_entry_sharing_an_id_with_a_derived_one_keeps_its_given_name(tmp_path: Path) -> None:
    """Line 2 gives a name that clashes; line 3 has the same id and a derived name. Line
    2 is rejected (its name was given, not derived) — it used to be renamed forever."""
    from runtime.core.inputs import parse_entry

    entries = [
        {"url": "http://h/r/s", "id": "c", "name": "n1"},
        {"url": "http://h/q", "id": "a", "name": "n1/x"},
        {"url": "http://h/r/s", "id": "a"},
    ]
    parsed = [parse_entry(e, line) for line, e in enumerate(entries, start=1)]
    items = [p for p, _ in parsed]
    derived = [p.id for p, was_derived in parsed if was_derived]
    result = ingest(SQLiteStore(tmp_path), items, [], derived)  # type: ignore[arg-type]
    assert result.added == 2
    (reject,) = result.rejected
    assert reject.id == "line:2"
    assert "whose file 'n1' is where a directory is needed" in (reject.error or "")


def test_items_change_lanes_when_the_large_threshold_changes(tmp_path: Path) -> None:
    """Known sizes sort pending items into the lanes; another threshold sorts them again."""
    store = SQLiteStore(tmp_path, large_threshold=100)
    ingest(store,
        [WorkItem(id=i, url=f"http://h/{i}", name=i, line=n, size=s)
         for n, (i, s) in enumerate((("s", 50), ("m", 500), ("u", None)), 1)],
        [],
        [],
    )  # fmt: skip
    store.close()

    def lanes(threshold: int | None) -> tuple[list[str], list[str]]:
        st = SQLiteStore(tmp_path, large_threshold=threshold)
        try:
            return tuple(  # type: ignore[return-value]
                [w.id for _, w in st.pending_of("h:80", large, 0, 10)] for large in (False, True)
            )
        finally:
            st.close()

    assert lanes(100) == (["s", "u"], ["m"])
    assert lanes(10) == (["u"], ["s", "m"])
    assert lanes(None) == (["u"], ["s", "m"])  # the state keeps the last one


def test_pending_work_of_a_host_is_found_through_the_index_in_both_lanes(
    tmp_path: Path,
) -> None:
    """Reading a host's next block never scans its other items (a scan per block made a
    1M-item run ten times slower while a lane had nothing to give)."""
    store = SQLiteStore(tmp_path)
    for large in (0, 1):
        plan = " ".join(
            str(row[-1])
            for row in store.db.execute(
                "EXPLAIN QUERY PLAN " + PENDING_OF_SQL, ("h:80", large, 0, 10)
            )
        )
        assert "items_queue (status=? AND host=? AND large=? AND seq>?)" in plan, plan


def test_rejected_entries_keep_their_place_in_input_order(tmp_path: Path) -> None:
    """Bad lines (from the reader or found at ingest) are stored where they stood in the
    input, so a listing in stored order is the input's order."""
    store = SQLiteStore(tmp_path)
    bad = Rejected(id="line:3", line=3, url="ftp://x", name="", error="line 3: not http")
    ingest(
        store,
        [item("a", 1), item("b", 2), item("d", 4), item("d", 5, name="dup"), item("f", 6)],
        [bad],
        [],
    )
    lines = [row[0] for row in store.db.execute("SELECT line FROM items ORDER BY seq")]
    assert lines == [1, 2, 3, 4, 5, 6]


def test_outcomes_are_numbered_in_the_order_they_are_recorded(tmp_path: Path) -> None:
    """``record_outcome`` gives each terminal record the next ``done_seq``, which goes on
    after a reopen of the store; a sink reads what came after the number it last stored."""
    from runtime.core.store import SQLiteView

    store = SQLiteStore(tmp_path)
    ingest(store, [item("a", 1), item("b", 2), item("c", 3)], [], [])
    outcome = Outcome(id="b", url="http://h/b", name="b", path="", status="completed", size=5)
    assert store.record_outcome(outcome) == 1
    store.commit()
    store.close()
    store = SQLiteStore(tmp_path)
    assert store.record_outcome(Outcome(id="a", url="", name="a", path="", status="failed")) == 2
    store.commit()
    assert store.completed_bytes() == 5
    view = SQLiteView(tmp_path / "state.sqlite3")
    assert [(r["id"], r["done_seq"]) for r in view.outcomes_after(0, 10)] == [("b", 1), ("a", 2)]
    assert [r["id"] for r in view.outcomes_after(1, 10)] == ["a"]
    view.close()
    store.close()


def test_a_done_seq_is_never_given_twice_even_after_its_item_reopened(tmp_path: Path) -> None:
    """The highest number given is kept with the commit: an item reopened (its number
    cleared) does not let a later outcome, after a restart, take that number again — a
    sink that stored it would skip the new outcome."""
    store = SQLiteStore(tmp_path)
    ingest(store, [item("a", 1), item("b", 2), item("c", 3)], [], [])
    store.record_outcome(Outcome(id="a", url="", name="a", path="", status="failed"))
    assert store.record_outcome(Outcome(id="b", url="", name="b", path="", status="failed")) == 2
    store.commit()
    store.reopen(["b"])
    store.commit()
    store.close()
    store = SQLiteStore(tmp_path)
    assert store.record_outcome(Outcome(id="c", url="", name="c", path="", status="failed")) == 3
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_an_items_fields_come_back_with_it(tmp_path: Path, backend: str) -> None:
    """The entry's other keys are stored with the item and dispatched with it."""
    store = SQLiteStore(tmp_path) if backend == "sqlite" else MemoryStore()
    blob = msgpack.packb({"speaker": "ada"})
    with_fields = WorkItem(id="a", url="http://h/a", name="a", line=1, fields=blob)
    ingest(store, [with_fields, item("b", 2, url="http://h/b")], [], [])
    (_, a), (_, b) = store.pending_of(host_of("http://h/a"), False, 0, 10)
    assert (a.fields, b.fields) == (blob, b"")
    assert store.items_by_id(["a"])[0].fields == blob
