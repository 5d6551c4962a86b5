"""The ledger on its own: a hypothesis state machine against a reference model.

The machine plays every other actor of a run — downloaders that finish, fail, hand items
back or crash, a processor, the post-processor, the ticker — and feeds the ledger the
messages they would send, in any order hypothesis picks. A small reference model follows
each item (pending → leased → downloaded → processing → reporting → terminal) from what
the ledger *sends*, and checks after every step that the ledger never leases an item
twice, never exceeds a mailbox or ``download.per_host``, keeps every breaker in a valid
state, announces an outcome only after the commit that made it durable, and, once the
machine lets everything finish, ends every accepted item exactly once and announces every
record exactly once.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from messages import (
    HANDED_BACK,
    DownloadComplete,
    DownloadFailed,
    Enqueue,
    Grant,
    Outcome,
    PostProcessed,
    PostProcessFailed,
    ProcessingComplete,
    ProcessingFailed,
    RunFinished,
    WorkItem,
)
from messages.control import ProcessFiles, RecordOutcomes
from messages.types import ErrorKind
from runtime.core.hosts import host_of
from runtime.core.ledger import Ledger
from runtime.core.store import MemoryStore, SQLiteStore, open_store
from runtime.testing import FakeClock
from tests.helpers import make_config

HOSTS = ("a.test", "b.test", "c.test")
MAX_ATTEMPTS = 3
PER_HOST = 2
MAILBOX = 2
TERMINAL = ("completed", "failed", "skipped")
FAILURES: tuple[ErrorKind, ...] = (
    "http_5xx",
    "http_4xx",
    "rate_limited",
    HANDED_BACK,
    "connection",
)


@dataclass
class Model:
    """Where each item is, as far as the ledger's sends say."""

    state: dict[str, str] = field(default_factory=dict)  # id -> pending|leased|...|terminal
    holder: dict[str, str] = field(default_factory=dict)  # id -> worker holding it
    attempts: Counter[str] = field(default_factory=Counter)
    expected: dict[str, set[str | None]] = field(default_factory=dict)  # id -> allowed error kinds
    terminal: Counter[str] = field(default_factory=Counter)  # id -> live terminal records
    records: Counter[str] = field(default_factory=Counter)  # id -> records ever made
    announced: Counter[str] = field(default_factory=Counter)  # id -> Outcome events
    host_down: set[str] = field(default_factory=set)  # terminal ids last failed host_down


class LedgerMachine(RuleBasedStateMachine):
    """See the module docstring."""

    PROCESSOR = "runtime.plugins:ChecksumProcessor"
    """The configured processor: one that runs (NullProcessor skips the stage)."""
    BACKEND = "sqlite"
    """The store the ledger writes (``state.backend``)."""
    KEEP = "all"
    """``output.keep``: which files the ledger has deleted once their outcome is committed."""
    BACKLOG = 0
    """``processing.backlog`` (0: the default)."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-"))
        self.skipped = self.PROCESSOR == "runtime.plugins:NullProcessor"
        self.config = make_config(
            self.tmp,
            processing={"processor": self.PROCESSOR, "backlog": self.BACKLOG},
            download={"workers": 2, "mailbox": MAILBOX, "per_host": PER_HOST},
            retry={"max_attempts": MAX_ATTEMPTS, "backoff_initial": 0.5},
            circuit={"window": 4, "min_requests": 2, "reset_timeout": 5.0, "give_up_after": 2},
            state={"backend": self.BACKEND},
            output={"keep": self.KEEP},
        )
        self.clock = FakeClock()
        self.store = open_store(self.config)
        self.durable_through = 0  # the store's done_seq at its last commit
        commit = self.store.commit

        def committed() -> None:
            commit()
            self.durable_through = self.store.done_seq

        self.store.commit = committed  # type: ignore[method-assign]
        self.reopened: set[str] = set()  # ids the ledger made pending again (Store.reopen)
        reopen = self.store.reopen

        def reopened(ids: Sequence[str]) -> None:
            reopen(ids)
            self.reopened.update(ids)

        self.store.reopen = reopened  # type: ignore[method-assign]
        self.ledger = Ledger(self.config, self.store, self.clock, random.Random(0))
        self.model = Model()
        self.downloaders: dict[str, list[WorkItem]] = {}
        self.processor: list[DownloadComplete] = []
        self.reports: list[Outcome] = []
        self.generation = 0
        self.next_id = 0
        self.summary: RunFinished | None = None
        self.steps = 0
        self.ids_of: dict[str, str] = {}  # a recorded file's path -> its item
        self.discarded: Counter[str] = Counter()  # paths the ledger had deleted
        self.to_discard: set[str] = set()  # paths whose outcome says they go

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- plumbing ---------------------------------------------------------------------

    def _attach_downloader(self) -> None:
        self.generation += 1
        name = f"downloader-{self.generation}"
        self.downloaders[name] = []
        self.ledger.attach(name, "downloader", MAILBOX)

    def _settle(self) -> None:
        """Let the ledger move work, then take its sends into the model."""
        self.steps += 1
        self.ledger.pump()
        effects = self.ledger.take()
        self._sync_reopened()
        m = self.model
        for worker, message in effects.sends:
            match message:
                case Grant(items=items):
                    held = self.downloaders[worker]
                    for item in items:
                        assert m.state.get(item.id) == "pending", (item.id, m.state.get(item.id))
                        m.attempts[item.id] += 1
                        assert item.attempts == m.attempts[item.id]
                        m.state[item.id] = "leased"
                        m.holder[item.id] = worker
                        held.append(item)
                    assert len(held) <= MAILBOX
                case ProcessFiles(files=files):
                    for done in files:
                        assert m.state[done.item.id] == "downloaded"
                        m.state[done.item.id] = "processing"
                        self.processor.append(done)
                case RecordOutcomes(outcomes=outcomes):
                    for outcome in outcomes:
                        assert m.state[outcome.id] in ("pending", "reporting"), outcome
                        if m.state[outcome.id] == "pending":  # failed without a request
                            assert outcome.error_kind == "host_down", outcome
                        else:
                            assert outcome.error_kind in m.expected[outcome.id], outcome
                        m.state[outcome.id] = "recording"
                        self.reports.append(outcome)
                case _:
                    raise AssertionError(f"unexpected send {message!r}")
        for event in effects.events:
            assert self.summary is None, "an event after RunFinished"
            if isinstance(event, Outcome):
                assert 0 < event.done_seq <= self.durable_through, "announced before its commit"
                assert self._committed(event.id) == (event.status, event.done_seq), event
                m.announced[event.id] += 1
                assert m.announced[event.id] <= m.records[event.id], "announced twice"
        for path in effects.discards:
            self.discarded[path] += 1
            assert self.discarded[path] == 1, f"{path} deleted twice"
            status, _ = self._committed(self.ids_of[path])
            assert status in self.ledger.discard, (path, status)  # committed, and not kept
        if effects.finished is not None:
            self.summary = effects.finished

    def _committed(self, item_id: str) -> tuple[str, int | None]:
        """An item's status and done_seq as committed (what a crash would leave; in
        memory, outcomes wait for the commit too)."""
        if isinstance(self.store, MemoryStore):
            row = self.store.rows[item_id]
            return row.status, row.done_seq
        assert isinstance(self.store, SQLiteStore)
        db = sqlite3.connect(f"file:{self.store.path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT status, done_seq FROM items WHERE id=?", (item_id,))
            status, done = row.fetchone()
        finally:
            db.close()
        return status, done

    def _sync_reopened(self) -> None:
        """Items failed ``host_down`` whose host came back are pending again: their
        record is superseded by the next one (the only way an item ends twice).

        Known from the ledger's calls of ``Store.reopen``, not by reading the store's
        rows: a recorded outcome waits there for the next commit, so a row read directly
        still says ``pending`` for an item that has just ended.
        """
        m = self.model
        for i in sorted(m.host_down & self.reopened):
            m.host_down.discard(i)
            m.terminal[i] -= 1
            m.state[i] = "pending"
        self.reopened.clear()

    def _take(self, worker: str, index: int) -> WorkItem:
        held = self.downloaders[worker]
        return held.pop(index % len(held))

    def _held(self) -> list[str]:
        return [w for w, held in self.downloaders.items() if held]

    # -- rules --------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        if not self.skipped:  # as the supervisor: no processor when the stage is skipped
            self.ledger.attach("processor-0", "processor")
        self.ledger.attach("post_processor", "post_processor")
        self._attach_downloader()
        self._attach_downloader()
        self._settle()

    @rule(hosts=st.lists(st.sampled_from(HOSTS), min_size=1, max_size=6))
    def enqueue(self, hosts: list[str]) -> None:
        if self.ledger.input_closed:
            return
        items = []
        for host in hosts:
            self.next_id += 1
            i = f"i{self.next_id}"
            items.append(WorkItem(id=i, url=f"http://{host}/{i}", name=i, line=self.next_id))
            self.model.state[i] = "pending"
        assert self.ledger.enqueue(Enqueue(items=tuple(items))) == len(items)
        self._settle()

    @precondition(lambda self: self._held())
    @rule(data=st.data(), reused=st.booleans())
    def download_ok(self, data: st.DataObject, reused: bool) -> None:
        worker = data.draw(st.sampled_from(self._held()))
        item = self._take(worker, data.draw(st.integers(0, MAILBOX)))
        self.model.state[item.id] = "downloaded"
        self.model.expected[item.id] = {"processing_error", "post_process_error"}
        self.ledger.downloaded(
            DownloadComplete(
                worker=worker, item=item, path=item.name, size=3, sha256="h", reused=reused
            )
        )
        self.ledger.demand(worker, 1)
        if self.skipped or (reused and self.config.output.if_exists == "skip"):
            self.model.state[item.id] = "reporting"
            self.model.expected[item.id] = {None, "post_process_error"}
        self._settle()

    @precondition(lambda self: self._held())
    @rule(
        data=st.data(),
        kind=st.sampled_from(FAILURES),
    )
    def download_fails(self, data: st.DataObject, kind: ErrorKind) -> None:
        worker = data.draw(st.sampled_from(self._held()))
        item = self._take(worker, data.draw(st.integers(0, MAILBOX)))
        m = self.model
        handed_back = kind == HANDED_BACK
        permanent = kind == "http_4xx"
        if handed_back:
            m.attempts[item.id] -= 1
            m.state[item.id] = "pending"
        elif permanent or m.attempts[item.id] >= MAX_ATTEMPTS:
            m.state[item.id] = "reporting"
            m.expected[item.id] = {kind, "post_process_error"}
        else:
            m.state[item.id] = "pending"
        self.ledger.download_failed(
            DownloadFailed(
                worker=worker,
                item=item,
                error_kind=kind,
                error=kind,
                permanent=permanent,
                counts_attempt=not handed_back,
                retry_after=3.0 if kind == "rate_limited" else None,
            )
        )
        self.ledger.demand(worker, 1)
        self._settle()

    @precondition(lambda self: self._held())
    @rule(data=st.data(), began=st.booleans())
    def downloader_crashes(self, data: st.DataObject, began: bool) -> None:
        worker = data.draw(st.sampled_from(self._held()))
        held = self.downloaders.pop(worker)
        m = self.model
        if began:  # its first item's transfer was running: that attempt counts
            self.ledger.started_transfer(held[0].id)
        for n, item in enumerate(held):
            if n == 0 and began and m.attempts[item.id] >= MAX_ATTEMPTS:
                m.state[item.id] = "reporting"
                m.expected[item.id] = {"worker_crash", "post_process_error"}
                continue
            if not (n == 0 and began):
                m.attempts[item.id] -= 1
            m.state[item.id] = "pending"
        self.ledger.worker_lost(worker, "boom")
        self._attach_downloader()
        self._settle()

    @precondition(lambda self: self.processor)
    @rule(data=st.data(), ok=st.booleans())
    def processed(self, data: st.DataObject, ok: bool) -> None:
        done = self.processor.pop(data.draw(st.integers(0, len(self.processor) - 1)))
        i = done.item.id
        self.model.state[i] = "reporting"
        self.model.expected[i] = (
            {"processing_error", "post_process_error"}
            if not ok
            else {
                "post_process_error",
                None,
            }
        )
        message: ProcessingComplete | ProcessingFailed = (
            ProcessingComplete(worker="processor-0", item_id=i)
            if ok
            else ProcessingFailed(worker="processor-0", item_id=i, error="bad")
        )
        self.ledger.processed(message)
        self._settle()

    def _record(self, outcome: Outcome, ok: bool) -> None:
        status = outcome.status if ok else "failed"
        if outcome.path:
            self.ids_of[outcome.path] = outcome.id
            if status in self.ledger.discard:
                self.to_discard.add(outcome.path)
        elif self.ledger.discard_parts and status == "failed":  # its partial file
            part = os.path.join(self.config.output.dir, outcome.name + ".part")
            self.ids_of[part] = outcome.id
            self.to_discard.add(part)
        m = self.model
        m.state[outcome.id] = "terminal"
        m.terminal[outcome.id] += 1
        m.records[outcome.id] += 1
        if ok:
            if outcome.error_kind == "host_down":
                m.host_down.add(outcome.id)
            self.ledger.recorded(PostProcessed(item_id=outcome.id, status=outcome.status))
        else:
            self.ledger.recorded(PostProcessFailed(item_id=outcome.id, error="disk full"))

    @precondition(lambda self: self.reports)
    @rule(data=st.data(), ok=st.booleans())
    def recorded(self, data: st.DataObject, ok: bool) -> None:
        outcome = self.reports.pop(data.draw(st.integers(0, len(self.reports) - 1)))
        self._record(outcome, ok)
        self._settle()
        if self.model.state[outcome.id] == "terminal":
            assert self.model.terminal[outcome.id] == 1

    @rule(seconds=st.sampled_from([0.1, 1.0, 6.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.ledger.commit()
        self._settle()

    @rule()
    def close_input(self) -> None:
        self.ledger.close_input()
        self._settle()

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def hosts_are_consistent(self) -> None:
        leased = Counter(host_of(item.url) for held in self.downloaders.values() for item in held)
        for key, host in self.ledger.scheduler.hosts.items():
            assert host.active == leased[key], (key, host.active, leased[key])
            assert 0 <= host.active <= PER_HOST
            assert host.breaker.state in ("closed", "open", "half_open", "down")
        assert set(self.ledger.leases) == {
            item.id for held in self.downloaders.values() for item in held
        }

    @invariant()
    def nothing_ends_twice(self) -> None:
        assert all(n <= 1 for n in self.model.terminal.values())

    @invariant()
    def counts_add_up(self) -> None:
        s = self.ledger.stats
        open_items = sum(1 for v in self.model.state.values() if v != "terminal")
        if self.summary is None:
            assert self.ledger.open_items == open_items
        assert s["completed"] + s["failed"] + s["skipped"] + self.ledger.open_items == len(
            self.model.state
        )

    # -- the end: let everything finish -------------------------------------------------

    @precondition(lambda self: self.steps >= 30 and self.summary is None)
    @rule()
    def finish_everything(self) -> None:
        """Every downloader succeeds from now on; every item must end exactly once."""
        self.ledger.close_input()
        self._settle()
        for _ in range(10_000):
            if self.summary is not None:
                break
            if worker := next(iter(self._held()), None):
                item = self._take(worker, 0)
                self.model.state[item.id] = "reporting" if self.skipped else "downloaded"
                self.model.expected[item.id] = {None if self.skipped else "post_process_error"}
                self.ledger.downloaded(
                    DownloadComplete(worker=worker, item=item, path=item.name, size=3, sha256="h")
                )
                self.ledger.demand(worker, 1)
            elif self.processor:
                done = self.processor.pop()
                self.model.state[done.item.id] = "reporting"
                self.model.expected[done.item.id] = {None}
                self.ledger.processed(
                    ProcessingComplete(worker="processor-0", item_id=done.item.id)
                )
            elif self.reports:
                self._record(self.reports.pop(0), ok=True)
            else:
                self.clock.advance(6.0)
                self.ledger.commit()
            self._settle()
        assert self.summary is not None, "the run never finished"
        assert self.summary.pending == 0
        ended = {i for i, v in self.model.state.items() if v == "terminal"}
        assert ended == set(self.model.state), set(self.model.state) - ended
        assert all(self.model.terminal[i] == 1 for i in self.model.state)
        assert self.model.announced == self.model.records  # every record, once, committed
        assert set(self.discarded) == self.to_discard  # every file that goes, once committed
        counts = self.store.counts()
        assert sum(counts.get(s, 0) for s in TERMINAL) == len(self.model.state)


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ledger_against_the_model = LedgerMachine.TestCase


class SkippingLedgerMachine(LedgerMachine):
    """The same machine with the default processor: the processing stage is skipped, each
    downloaded file goes straight to the post-processor."""

    PROCESSOR = "runtime.plugins:NullProcessor"


SkippingLedgerMachine.TestCase.settings = LedgerMachine.TestCase.settings
test_ledger_against_the_model_without_processing = SkippingLedgerMachine.TestCase


class MemoryLedgerMachine(LedgerMachine):
    """The same machine on the in-memory store: the ledger cannot tell the stores apart."""

    BACKEND = "memory"


MemoryLedgerMachine.TestCase.settings = LedgerMachine.TestCase.settings
test_ledger_against_the_model_in_memory = MemoryLedgerMachine.TestCase


class DiscardingLedgerMachine(LedgerMachine):
    """The same machine with ``output.keep = "none"``: each file is deleted once, only
    after the commit that made its outcome durable."""

    KEEP = "none"
    BACKLOG = 3  # (so the files not yet deleted stop granting now and then)


DiscardingLedgerMachine.TestCase.settings = LedgerMachine.TestCase.settings
test_ledger_against_the_model_deleting_files = DiscardingLedgerMachine.TestCase


def test_a_host_down_outcome_reopened_before_its_commit_is_never_announced(
    tmp_path: Path,
) -> None:
    """An item failed ``host_down`` whose host came back while the failure was being
    recorded is pending again before any commit: its failure is never announced (it
    was never durable), and the state holds it as pending."""
    config = make_config(tmp_path)
    store = SQLiteStore(Path(config.state.dir))
    ledger = Ledger(config, store, FakeClock(), random.Random(0))
    item = WorkItem(id="a", url="http://a.test/a", name="a", line=1)
    ledger.enqueue(Enqueue(items=(item,)))
    ledger.attach("post-processor", "post_processor")
    down = Outcome(id="a", url=item.url, name="a", path="", status="failed",
                   error_kind="host_down", error="a.test:80 is down")  # fmt: skip
    ledger.unsent_reports.append(down)
    ledger.pump()  # to the post-processor
    assert [type(m).__name__ for _, m in ledger.take().sends] == ["RecordOutcomes"]
    ledger.recorded(PostProcessed(item_id="a", status="failed"))  # a.test is not down (now)
    ledger.commit()
    announced = [e for e in ledger.take().events if isinstance(e, Outcome)]
    assert announced == []
    assert store.counts() == {"pending": 1}
    store.close()


def test_a_run_reopens_only_its_own_host_down_failures(tmp_path: Path) -> None:
    """Each ledger begins a run of its own: items an earlier run failed ``host_down``
    stay failed when their host turns out to be up in this one (``--retry-failed``
    brings them back), only this run's are reopened."""
    config = make_config(tmp_path)
    item = WorkItem(id="a", url="http://a.test/a", name="a", line=1)
    down = Outcome(id="a", url=item.url, name="a", path="", status="failed",
                   error_kind="host_down", error="a.test:80 is down")  # fmt: skip
    store = SQLiteStore(Path(config.state.dir))
    Ledger(config, store, FakeClock(), random.Random(0)).enqueue(Enqueue(items=(item,)))
    store.record_outcome(down)
    assert store.failed_host_down_this_run() == [("a", item.url)]
    store.close()
    again = SQLiteStore(Path(config.state.dir))
    Ledger(config, again, FakeClock(), random.Random(0))
    assert again.failed_host_down_this_run() == []
    assert again.counts() == {"failed": 1}
    again.close()


def test_download_concurrency_is_a_ceiling_whatever_the_mailboxes_add_up_to(
    tmp_path: Path,
) -> None:
    """With curl, ``download.concurrency = 10`` and ``mailbox = 3`` make 4 downloaders
    (12 slots): never more than 10 items are leased to them at once."""
    config = make_config(
        tmp_path,
        download={"engine": "curl", "concurrency": 10, "mailbox": 3, "per_host": 0, "workers": 0},
    )
    assert (config.download.workers, config.download.mailbox) == (4, 3)
    store = SQLiteStore(Path(config.state.dir))
    ledger = Ledger(config, store, FakeClock(), random.Random(0))
    for i in range(config.download.workers):
        ledger.attach(f"downloader-{i}", "downloader", config.download.mailbox)
    items = [WorkItem(id=f"i{n}", url=f"http://h{n % 3}.test/{n}", name=f"i{n}") for n in range(30)]
    ledger.enqueue(Enqueue(items=tuple(items)))
    ledger.pump()
    assert len(ledger.leases) == 10
    worker, item = next(iter(ledger.leases.values()))
    ledger.downloaded(
        DownloadComplete(worker=worker, item=item, path=item.name, size=1, sha256="h")
    )
    ledger.demand(worker, 1)
    ledger.pump()
    assert len(ledger.leases) == 10  # one ended, one more granted: still at the ceiling
    store.close()


def test_a_file_a_node_finished_under_a_lost_lease_is_adopted_once(tmp_path: Path) -> None:
    """(cluster) A DownloadComplete for a lease this ledger never gave is recorded when
    its item is still pending and nobody holds it — and the item's queued copy is then
    never granted; a leased, a terminal or an already adopted item is left alone."""
    config = make_config(tmp_path, download={"per_host": 0, "workers": 1, "mailbox": 1})
    store = SQLiteStore(Path(config.state.dir))
    ledger = Ledger(config, store, FakeClock(), random.Random(0))
    ledger.attach("post", "post_processor")
    items = [WorkItem(id=f"i{n}", url=f"http://h{n}.test/{n}", name=f"i{n}") for n in range(4)]
    ledger.enqueue(Enqueue(items=tuple(items)))

    def done(item: WorkItem) -> DownloadComplete:
        return DownloadComplete(worker="gone/downloader-0", item=item, path=f"/n/{item.name}",
                                size=3, sha256="h")  # fmt: skip

    assert ledger.adopt(done(items[0]), "n1-aaa") is True
    assert ledger.adopt(done(items[0]), "n1-aaa") is False  # (once)
    ledger.attach("d", "downloader", credit=10, node="n2-bbb")
    ledger.pump()
    granted = [item.id for item in (lease[1] for lease in ledger.leases.values())]
    assert sorted(granted) == ["i1", "i2", "i3"]  # never i0 again
    assert ledger.adopt(done(items[1]), "n1-aaa") is False  # leased to another now
    effects = ledger.take()
    (report,) = [m for _, m in effects.sends if isinstance(m, RecordOutcomes)]
    (outcome,) = report.outcomes
    assert (outcome.id, outcome.status, outcome.node) == ("i0", "completed", "n1-aaa")
    ledger.recorded(PostProcessed(item_id="i0", status="completed"))
    ledger.commit()
    ledger.adopted.clear()  # (as if another run: the store alone says it is done)
    assert ledger.adopt(done(items[0]), "n1-aaa") is False  # terminal now
    store.close()
