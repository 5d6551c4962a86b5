"""Property: any mix of outcomes through the real actors ends with one terminal record each."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import tempfile
from pathlib import Path

import pykka
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.state_keeper import StateKeeper
from messages import RunFinished
from messages.control import GetStats, InputClosed, Tick
from runtime import Pipeline
from runtime.cli import check_input
from runtime.core.config import Config
from runtime.core.store import MemoryStore, Store, open_store
from runtime.testing import Crash, FakeClock, Ok, ScriptedTransport, Status, Step, capture_logs
from tests.helpers import make_config, read_manifest

MAX_ATTEMPTS = 3
BACKENDS = ["sqlite", "memory"]
STEPS = {
    "ok": Ok(b"payload"),
    "transient": Status(503),
    "permanent": Status(404),
    "crash": Crash("injected crash"),
}


def expected(script: list[str], boom: bool) -> tuple[str, str | None, int]:
    """Reference model: (status, error_kind, requests) for one item's script."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        step = script[min(attempt - 1, len(script) - 1)]
        if step == "ok":
            return ("failed", "processing_error", attempt) if boom else ("completed", None, attempt)
        if step == "permanent":
            return "failed", "http_4xx", attempt
        if attempt == MAX_ATTEMPTS:
            return "failed", "http_5xx" if step == "transient" else "worker_crash", attempt
    raise AssertionError("unreachable")


item_strategy = st.tuples(
    st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=4), st.booleans()
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(item_strategy, min_size=1, max_size=12),
    workers=st.integers(1, 4),
    mailbox=st.integers(1, 3),
    processors=st.integers(1, 3),
    backend=st.sampled_from(BACKENDS),
)
def test_every_item_ends_exactly_once(
    items: list[tuple[list[str], bool]], workers: int, mailbox: int, processors: int, backend: str
) -> None:
    """Terminal records are unique and complete, match the model, and mailboxes hold —
    with either store."""
    names = [f"{'boom' if boom else 'item'}-{i}" for i, (_, boom) in enumerate(items)]
    script: dict[str, list[Step]] = {
        f"http://h.test/{name}": [STEPS[s] for s in steps]
        for name, (steps, _) in zip(names, items, strict=True)
    }
    transport = ScriptedTransport(script)
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(
            Path(tmp),
            download={"workers": workers, "mailbox": mailbox},
            retry={"max_attempts": MAX_ATTEMPTS},
            processing={"workers": processors, "processor": "tests.plugins:FailingProcessor"},
            supervisor={"max_restarts": 1000},
            circuit={"give_up_after": 0},  # the model counts attempts; keep probing
            state={"backend": backend},
        )
        store = open_store(config)
        with (
            capture_logs() as logs,
            Pipeline(config, transport_factory=transport, store=lambda: store) as pipeline,
        ):
            pipeline.submit([{"url": u, "id": n} for n, u in zip(names, script, strict=True)])
            summary = pipeline.wait(15)
        f = summary.finished
        assert f.accepted == len(items)
        assert f.completed + f.failed + f.skipped == f.accepted
        assert summary.stats["max_leased"] <= mailbox
        records = read_manifest(config.manifest_path)
        assert sorted(r["id"] for r in records) == sorted(names)
        stored = _statuses(config, store)
        for record, (name, (steps, boom)), url in zip(
            sorted(records, key=lambda r: int(r["id"].split("-")[1])),
            zip(names, items, strict=True),
            script,
            strict=True,
        ):
            status, kind, requests = expected(steps, boom)
            assert (record["status"], record["error_kind"]) == (status, kind), (name, steps)
            assert stored[name] == status
            assert transport.requests[url] == requests
    protocol_errors = [e for e in logs if "ProtocolError" in str(e.get("error", ""))]
    assert protocol_errors == []
    assert pykka.ActorRegistry.get_all() == []


def _statuses(config: Config, store: Store) -> dict[str, str]:
    """Each stored item's status, after the run (which closed the store)."""
    if isinstance(store, MemoryStore):
        return {i: row.status for i, row in store.rows.items()}
    db = sqlite3.connect(Path(config.state.dir) / "state.sqlite3")
    try:
        return dict(db.execute("SELECT id, status FROM items").fetchall())
    finally:
        db.close()


class _Inbox(pykka.ThreadingActor):
    """Stands in for the supervisor: takes whatever it is told."""

    def on_receive(self, message: object) -> None:
        return None


def test_a_tick_after_the_run_finished_announces_nothing(tmp_path: Path) -> None:
    """A Tick that reaches the StateKeeper after RunFinished commits but emits no event."""
    events: list[object] = []
    config = make_config(tmp_path)
    keeper = StateKeeper.start(
        config=config,
        supervisor=_Inbox.start(),
        clock=FakeClock(),
        on_event=events.append,
        rng=random.Random(0),
        store_factory=lambda: open_store(config),
    )
    keeper.tell(InputClosed())
    keeper.ask(GetStats())  # a barrier: InputClosed was handled
    assert isinstance(events[-1], RunFinished)
    seen = len(events)
    keeper.tell(Tick())
    keeper.ask(GetStats())
    assert len(events) == seen


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.sampled_from(["ok", "transient"]), min_size=0, max_size=10),
    jumps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=20),
    workers=st.integers(1, 3),
    backend=st.sampled_from(BACKENDS),
)
def test_run_finished_is_always_the_last_event(
    steps: list[str], jumps: list[float], workers: int, backend: str
) -> None:
    """Fake time jumps at random moments (on events, so ticks land anywhere, also around
    the end): whatever the timing, exactly one RunFinished ends the events."""
    clock = FakeClock()
    events: list[object] = []
    moves = itertools.cycle(jumps)

    def on_event(message: object) -> None:
        events.append(message)
        clock.advance(next(moves))  # wakes the ticker: a Tick at an arbitrary point

    script: dict[str, list[Step]] = {
        f"http://h.test/{i}": [STEPS[s], Ok(b"x")] for i, s in enumerate(steps)
    }
    with tempfile.TemporaryDirectory() as tmp:
        # Fake time moves only on events: a breaker that opened would wait for a clock
        # nobody moves, so it must not open here (the property is about the event order).
        config = make_config(
            Path(tmp),
            download={"workers": workers},
            circuit={"failure_threshold": 1000},
            state={"backend": backend},
        )
        pipeline = Pipeline(
            config, transport_factory=ScriptedTransport(script), clock=clock, on_event=on_event
        )
        with pipeline:
            pipeline.submit([{"url": u, "id": str(i)} for i, u in enumerate(script)])
            summary = pipeline.wait(15)
        for _ in range(3):  # the ticker may still be running: give it chances to misbehave
            clock.advance(1.0)
    assert summary.finished.completed == len(steps)
    finished = [i for i, e in enumerate(events) if isinstance(e, RunFinished)]
    assert finished == [len(events) - 1]


_ENTRY = st.one_of(
    st.just("{not json"),
    st.fixed_dictionaries(
        {
            "url": st.sampled_from(
                [
                    "http://sim.test/p",
                    "http://sim.test/q",
                    "http://sim.test/r/s",
                    "ftp://sim.test/t",
                ]
            )
        },
        optional={
            "id": st.sampled_from(["a", "b", "c", 7]),
            "name": st.sampled_from(["n1", "n2", "n1/x", "n2/y/z", "x", "../up", "s"]),
        },
    ),
)


def _write_input(path: Path, entries: list[object]) -> None:
    with path.open("w") as fh:
        for entry in entries:
            fh.write((entry if isinstance(entry, str) else json.dumps(entry)) + "\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(_ENTRY, min_size=1, max_size=12))
def test_validate_rejects_exactly_the_lines_a_run_fails_as_invalid(entries: list[object]) -> None:
    """One rule for duplicates and clashes: ``validate``'s bad lines are the run's
    ``invalid_entry`` items, whatever the input."""
    with tempfile.TemporaryDirectory() as tmp:
        _write_input(Path(tmp) / "in.ndjson", entries)
        config = make_config(Path(tmp), input={"path": str(Path(tmp) / "in.ndjson")})
        total, bad = check_input(config)
        with Pipeline(config, simulate=True) as pipeline:
            summary = pipeline.wait(15)
        invalid = {
            int(r["id"].removeprefix("line:"))
            for r in read_manifest(config.manifest_path)
            if r["error_kind"] == "invalid_entry"
        }
    assert total == summary.finished.accepted == len(entries)
    assert {line for line, _ in bad} == invalid
    assert len(bad) == len(invalid)


def test_validate_and_run_agree_on_an_entry_rejected_for_its_name(tmp_path: Path) -> None:
    """The case that found it: a rejected entry's id is not taken, so line 3 is fine."""
    entries: list[object] = [
        {"id": "a", "name": "n1", "url": "http://sim.test/1"},
        {"id": "b", "name": "n1", "url": "http://sim.test/2"},
        {"id": "b", "name": "n3", "url": "http://sim.test/3"},
    ]
    _write_input(tmp_path / "in.ndjson", entries)
    config = make_config(tmp_path, input={"path": str(tmp_path / "in.ndjson")})
    assert [line for line, _ in check_input(config)[1]] == [2]
    with Pipeline(config, simulate=True) as pipeline:
        assert pipeline.wait(15).finished.failed == 1
