"""The ledger: every item's life cycle, as plain state (no actors, no threads).

The StateKeeper actor owns one ``Ledger`` and feeds it every event of a run; the ledger
decides what happens next — which items go to which downloader, which files to which
processor, which outcomes to the post-processor, what to write to the store — and
returns those decisions as ``Effects`` for the actor to carry out. Being pure, it is
tested on its own against a reference model (``tests/test_ledger.py``).

Flow of one item::

    pending ─grant─▶ leased ─downloaded─▶ processing ─processed─▶ reporting
       ▲               │                                            │
       └─retry─────────┘ failed (transient, attempts left)  recorded ▼
                                                      completed | failed | skipped
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import random
from collections import deque
from typing import Any

from messages import (
    HANDED_BACK,
    DownloadComplete,
    DownloadFailed,
    Enqueue,
    Grant,
    HostStatus,
    Outcome,
    PostProcessed,
    PostProcessFailed,
    ProcessingComplete,
    ProcessingFailed,
    ResumeInfo,
    RunFinished,
    RunProgress,
    WorkItem,
    evolve,
)
from messages.control import ProcessFiles, RecordOutcomes
from messages.types import ErrorKind, Lane, Status
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.hosts import host_of, host_record
from runtime.core.inputs import fields_of
from runtime.core.logs import get_logger
from runtime.core.retry import RetryPolicy
from runtime.core.scheduler import Scheduler
from runtime.core.store import Admission, Store

__all__ = ["PROCESS_BATCH", "REPORT_BATCH", "REPORT_QUEUE", "Effects", "Ledger"]

log = get_logger("ledger")

PROCESS_BATCH = 32
"""Most files handed to one processor in one message."""
REPORT_BATCH = 512
"""Most outcomes handed to the post-processor in one message."""
REPORT_QUEUE = 4 * REPORT_BATCH
"""Most outcomes waiting for the post-processor in memory; rejected input entries and
items of down hosts wait in the store (or unread) beyond it."""
NO_CEILING = 1 << 62
"""(dispatch) No limit on transfers beyond the downloaders' credit."""
DISCARD_BATCH = 64
"""Files (``output.keep``) waiting to be deleted that make the ledger commit at once
rather than at the next tick (as does a backlog of files that stops granting)."""
DISPATCH_REPORTS = 2 * REPORT_QUEUE
"""Outcomes waiting for the post-processor beyond which no new item is granted (the
post-processor's backpressure on downloads)."""


@dataclasses.dataclass(slots=True)
class Effects:
    """What the owner of a ledger must do after feeding it events."""

    sends: list[tuple[str, Any]]
    """Messages to workers, by worker name, in order."""
    events: list[Any]
    """Messages for the event sink (displays, the API), in order."""
    finished: RunFinished | None
    """The run's summary, once: the run is over."""
    discards: list[str] = dataclasses.field(default_factory=list)
    """Files to delete (``output.keep``): their outcomes are committed. Deleted before
    the ``sends`` go out, so the files a grant brings never meet them on disk."""


@dataclasses.dataclass(slots=True)
class _Worker:
    kind: str
    credit: int = 0
    lane: Lane = "small"
    node: str = ""
    held: set[str] = dataclasses.field(default_factory=set)


class Ledger:
    """See the module docstring."""

    def __init__(self, config: Config, store: Store, clock: Clock, rng: random.Random) -> None:
        self.config = config
        self.clock = clock
        self.store = store
        self.admission = Admission(store)
        self.policy = RetryPolicy(config.retry, rng)
        self.workers: dict[str, _Worker] = {}
        self.post_processor: str | None = None
        self.leases: dict[str, tuple[str, WorkItem]] = {}
        self.adopted: set[str] = set()  # (cluster) recorded from a node: never granted again
        self.abandoned: dict[str, str] = {}  # item -> worker: leases given up as the run ended
        self.started: set[str] = set()  # leased items whose transfer began
        self.processing: dict[str, tuple[str, DownloadComplete]] = {}
        self.to_process: deque[DownloadComplete] = deque()  # downloaded, no processor yet
        self.reporting: dict[str, Outcome] = {}
        self.unsent_reports: deque[Outcome] = deque()
        self.granting = True
        self.input_closed = False
        self.finished = False
        self.end_reason = "done"
        self.run_started = clock.now()
        self._sends: list[tuple[str, Any]] = []
        self._events: list[Any] = []
        self._recorded: list[Outcome] = []  # announced once committed (durable before visible)
        # output.keep: which terminal statuses lose their file once committed
        keep = config.output.keep
        self.discard = {"all": (), "failed": ("completed",), "none": ("completed", "failed")}[keep]
        self.discard_parts = keep == "none"
        self._reported_files = 0  # outcomes with a file, waiting for the post-processor
        self._uncommitted: list[str] = []  # files of recorded outcomes, deleted after commit
        self._discards: list[str] = []  # committed: to delete (an effect)
        self._pending_mark = self._discard_mark = 0  # done_seq of the newest in each list
        self._discarded_through = self._mark_saved = 0  # handed out (so deleted), and saved
        self._summary: RunFinished | None = None
        store.begin_run()  # outcomes remember the run that recorded them
        store.set_meta(run_state="running", started_at=clock.wall())
        counts = store.counts()
        self.open_items = store.open_count()
        self.rejects_waiting = store.count_rejects()  # stored, not yet in unsent_reports
        self.stats: dict[str, int] = {
            "accepted": sum(counts.values()),
            "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0),
            "skipped": counts.get("skipped", 0),
            "bytes": 0,
            "completed_bytes": store.completed_bytes(),
            "retries": 0,
            "max_leased": 0,
        }
        self.backlog_limit = (
            config.processing.backlog or 2 * PROCESS_BATCH * config.processing.workers
        )
        self.scheduler = Scheduler(config, store)
        self.scheduler.load_stats(store.load_hosts())
        log.info("state opened", **counts)

    # -- the owner's side ---------------------------------------------------------------

    def take(self) -> Effects:
        """The effects of everything fed in since the last call."""
        effects = Effects(self._sends, self._events, self._summary, self._discards)
        self._sends, self._events, self._summary = [], [], None
        if self._discards:
            self._discards = []
            self._discarded_through = self._discard_mark
        return effects

    def emit(self, message: Any) -> None:
        """Pass an event on, unless the run already finished.

        ``RunFinished`` is the last event of a run, always: a tick or a late result that
        arrives after it may still be committed, but is not announced.
        """
        if not self.finished:
            self._events.append(message)

    def pump(self) -> None:
        """Move work forward after any event, then check whether the run is over."""
        if self._uncommitted and (
            len(self._uncommitted) >= DISCARD_BATCH or self._files_waiting() >= self.backlog_limit
        ):
            self.commit()  # files to delete wait for a commit: the next tick may be too late
        self._dispatch()
        self._fail_given_up()
        self._feed_processors()
        self._load_rejects()
        self._send_reports()
        self._check_finished()

    # -- workers ------------------------------------------------------------------------

    def attach(
        self, worker: str, kind: str, credit: int = 0, lane: Lane = "small", node: str = ""
    ) -> None:
        """A worker is running and may be sent work (on cluster ``node``, if any)."""
        self.workers[worker] = _Worker(kind=kind, credit=credit, lane=lane, node=node)
        if kind == "post_processor":
            self.post_processor = worker

    def demand(self, worker: str, n: int) -> None:
        """A downloader may take ``n`` more items."""
        if worker in self.workers:
            self.workers[worker].credit += n

    def worker_lost(self, worker: str, error: str, node: str = "") -> None:
        """A worker crashed (with cluster ``node``, if any): give what it held to others."""
        slot = self.workers.pop(worker, None)
        if slot is None:
            return
        log.warning(
            "worker lost; re-dispatching its items",
            worker=worker,
            items=len(slot.held),
            error=error,
        )
        for item_id in sorted(slot.held):
            if slot.kind == "downloader":
                self._lease_lost(item_id, error, node)
            elif slot.kind == "processor":
                _, done = self.processing[item_id]
                self.processing[item_id] = ("", done)
                self.to_process.appendleft(done)
            elif slot.kind == "post_processor":
                self.unsent_reports.appendleft(self.reporting.pop(item_id))
        if slot.kind == "post_processor":
            self.post_processor = None

    def _lease_lost(self, item_id: str, error: str, node: str = "") -> None:
        _, item = self.leases.pop(item_id)
        self.scheduler.released(item)
        if node:  # a lost node: every item it held was delivered (a poison item kills it
            self.started.discard(item_id)  # before it can say it started)
            if item.attempts >= self.config.cluster.max_deliveries:
                self._report(
                    _outcome(
                        item,
                        status="failed",
                        error_kind="node_lost",
                        error=f"the node holding it was lost on each of its {item.attempts} "
                        f"deliveries (cluster.max_deliveries): {error}",
                    )
                )
            else:
                self.scheduler.requeue(item)
            return
        if item_id not in self.started:  # still queued: the crash was not its attempt
            self.scheduler.requeue(evolve(item, attempts=item.attempts - 1))
            return
        self.started.discard(item_id)
        if item.attempts >= self.config.retry.max_attempts:
            self._report(
                _outcome(
                    item,
                    status="failed",
                    error_kind="worker_crash",
                    error=f"downloader crashed: {error}",
                )
            )
        else:
            self.scheduler.requeue(item)

    # -- ingest -------------------------------------------------------------------------

    def enqueue(self, batch: Enqueue) -> int:
        """Store a block of input; return how many new items are pending."""
        result = self.admission.ingest(batch.items, batch.rejected, batch.derived_name_ids)
        new = result.added + len(result.rejected)
        self.stats["accepted"] += new
        self.open_items += new
        if result.added:
            self.scheduler.input_grew(result.hosts, result.large_hosts)
        self.rejects_waiting += len(result.rejected)  # reported from the store, in blocks
        return result.added

    def close_input(self) -> None:
        """No more input will come."""
        self.input_closed = True
        s = self.stats
        log.info("input read", accepted=s["accepted"], open=self.open_items,
                 ended=s["completed"] + s["failed"] + s["skipped"])  # fmt: skip

    # -- dispatch -----------------------------------------------------------------------

    def grant(self, lane: Lane, now: float) -> WorkItem | None:
        """Lease the next item a downloader of ``lane`` may take now (attempt counted)."""
        item = self.scheduler.next_for(lane, now)
        while item is not None and item.id in self.adopted:  # (its file is already done)
            item = self.scheduler.next_for(lane, now)
        if item is None:
            return None
        self.scheduler.dispatched(item)
        return evolve(item, attempts=item.attempts + 1)

    def _dispatch(self) -> None:
        """Answer demand, one item at a time to the downloader holding the fewest.

        An idle downloader is served before a busy one gets an item to queue behind its
        running transfer, so nothing waits behind a transfer that is not its own while
        another downloader could take it (a busy one still prefetches when there is
        more work than idle downloaders).
        """
        if not self.granting:
            return
        hungry = [
            (len(s.held), i, w, s)
            for i, (w, s) in enumerate(self.workers.items())
            if s.kind == "downloader" and s.credit
        ]
        heapq.heapify(hungry)
        batches: dict[str, list[WorkItem]] = {}
        dry: set[str] = set()  # lanes with nothing to give now
        now = self.clock.now()
        # With curl, every item a downloader holds is a transfer: download.concurrency
        # is the ceiling, whatever workers x mailbox came to. (With requests, a
        # downloader transfers one item and holds the next: workers is the ceiling.)
        d = self.config.download
        small = (
            s
            for s in self.workers.values()
            if s.kind == "downloader" and s.lane == "small" and not s.node
        )
        room = d.concurrency - sum(len(s.held) for s in small) if d.engine == "curl" else NO_CEILING
        while (
            hungry
            and len(self.processing) < self.backlog_limit
            and len(self.unsent_reports) < DISPATCH_REPORTS
            and (not self.discard or self._files_waiting() < self.backlog_limit)
        ):
            held, order, worker, slot = heapq.heappop(hungry)
            if slot.lane in dry:
                continue
            local = slot.lane == "small" and not slot.node  # (a node has its own ceiling)
            if local and room <= 0:
                continue  # (this machine's transfers are at download.concurrency)
            item = self.grant(slot.lane, now)
            if item is None:
                dry.add(slot.lane)
                continue
            if local:
                room -= 1
            batch = batches.setdefault(worker, [])
            batch.append(item)
            if len(batch) < slot.credit:
                heapq.heappush(hungry, (held + 1, order, worker, slot))
        for worker, batch in batches.items():
            slot = self.workers[worker]
            slot.credit -= len(batch)
            for item in batch:
                self.leases[item.id] = (worker, item)
                slot.held.add(item.id)
            self.stats["max_leased"] = max(self.stats["max_leased"], len(slot.held))
            self._sends.append((worker, Grant(worker=worker, items=tuple(batch))))

    def _fail_given_up(self) -> None:
        """Fail, without a request, the items of hosts whose probes kept failing.

        Only as many as the report queue has room for: a dead host with a million items
        is failed block by block at the post-processor's pace, not read into memory.
        """
        room = REPORT_QUEUE - len(self.unsent_reports)
        if room <= 0:
            return
        for item in self.scheduler.take_given_up(room):
            if item.id in self.adopted:
                continue
            key = host_of(item.url)
            breaker = self.scheduler.hosts[key].breaker
            self._report(
                _outcome(
                    item,
                    status="failed",
                    error_kind="host_down",
                    error=f"{key} is down: {breaker.probe_failures} probes in a row failed "
                    f"(circuit.give_up_after); no request was sent for this item",
                )
            )

    # -- downloads ----------------------------------------------------------------------

    def _files_waiting(self) -> int:
        """Downloaded files not yet deleted (``output.keep``): granting stops at the
        backlog, so disk holds at most the transfers and the backlog. (Outcomes without a
        file — rejected entries, failed downloads — do not count.)"""
        return len(self.processing) + self._reported_files + len(self._uncommitted)

    def started_transfer(self, item_id: str) -> None:
        """A leased item's transfer began (a crash from now on costs it an attempt)."""
        if item_id in self.leases:
            self.started.add(item_id)

    def _release(self, worker: str, item_id: str) -> WorkItem | None:
        lease = self.leases.get(item_id)
        if lease is None and self.finished:
            return None  # a late result: its lease was given up when the run ended
        if lease is None or lease[0] != worker:
            log.warning(
                "result for an item not leased to the sender", worker=worker, item_id=item_id
            )
            return None
        del self.leases[item_id]
        self.started.discard(item_id)
        slot = self.workers.get(worker)
        if slot is not None:
            slot.held.discard(item_id)
        return lease[1]

    def downloaded(self, done: DownloadComplete) -> None:
        """A leased item is on disk."""
        if self._release(done.worker, done.item.id) is None:
            return
        self.emit(done)
        if self.scheduler.succeeded(done.item, done.size, done.reused):
            self._revive(host_of(done.item.url))
        if not done.reused:
            self.stats["bytes"] += done.size
        kept = done.reused and self.config.output.if_exists == "skip"
        if kept or self.config.processing.skipped:  # no processing: straight to the record
            status: Status = "skipped" if kept else "completed"
            slot = self.workers.get(done.worker)
            outcome = _outcome(
                done.item, status=status, path=done.path, size=done.size, sha256=done.sha256,
                node=slot.node if slot is not None else "",  # (cluster: the file is there)
            )  # fmt: skip
            self._report(outcome)
            return
        self.processing[done.item.id] = ("", done)
        self.to_process.append(done)

    def adopt(self, done: DownloadComplete, node: str) -> bool:
        """(cluster) A file a node downloaded under a lease from before this coordinator
        started: recorded as if granted now, when its item is still pending and nobody
        holds it; its queued copy is skipped when the scheduler comes to it. Returns
        whether it was adopted."""
        i = done.item.id
        if i in self.leases or i in self.processing or i in self.reporting or i in self.adopted:
            return False
        if self.store.statuses_of([i]).get(i) != "pending" or not self.config.processing.skipped:
            return False
        self.adopted.add(i)
        self.emit(done)
        self.stats["bytes"] += done.size
        self._report(_outcome(done.item, status="completed", path=done.path, size=done.size,
                              sha256=done.sha256, node=node))  # fmt: skip
        return True

    def download_failed(self, failed: DownloadFailed) -> None:
        """A leased item's attempt failed, or the item came back unstarted."""
        item = self._release(failed.worker, failed.item.id)
        if item is None:
            return
        if failed.error_kind != HANDED_BACK:  # not an attempt, and not news
            self.emit(failed)
        if not failed.counts_attempt:  # cancelled, handed back, or moved to the large lane
            self.scheduler.released(item, failed.size)
            self.scheduler.requeue(evolve(item, attempts=item.attempts - 1))
            return
        now = self.clock.now()
        decision = self.policy.decide(item.attempts, failed.permanent, failed.retry_after)
        paused = self.scheduler.failed(
            item,
            failed.error_kind,
            failed.retry_after,
            now,
            decision.retry,
            self.clock.wall(),
            failed.scope,
        )
        if paused:
            key = host_of(item.url)
            log.warning(
                "host paused",
                host=key,
                seconds=round(paused, 3),
                reason=self.scheduler.hosts[key].cooldown_reason,
                item_id=item.id,
            )
        if not decision.retry:
            slot = self.workers.get(failed.worker)
            self._report(
                _outcome(
                    item,
                    status="failed",
                    error_kind=decision.error_kind or failed.error_kind,
                    error=decision.error or failed.error,
                    node=slot.node if slot is not None else "",  # (cluster: its .part is there)
                )
            )
            return
        self.store.record_attempt(item.id, item.attempts, failed.error_kind, failed.error)
        self.stats["retries"] += 1
        log.info(
            "retry scheduled",
            item_id=item.id,
            error_kind=failed.error_kind,
            attempt=item.attempts,
            delay=round(decision.delay, 3),
        )
        self.scheduler.requeue(item, now + decision.delay if decision.delay > 0 else 0.0)

    def resume_info(self, info: ResumeInfo) -> None:
        """Remember how to resume a leased item's partial file."""
        lease = self.leases.get(info.item_id)
        if lease is None and self.abandoned.get(info.item_id) == info.worker:
            # Its transfer was stopped as the run ended: the item stays pending, and the
            # next run resumes its .part with this validator.
            self.store.record_validator(info.item_id, info.validator)
            return
        if lease is None or lease[0] != info.worker:
            return
        self.leases[info.item_id] = (
            lease[0],
            evolve(lease[1], validator=info.validator),
        )
        self.store.record_validator(info.item_id, info.validator)

    # -- processing and reporting ---------------------------------------------------------

    def _feed_processors(self) -> None:
        """Hand waiting files to idle processors, in batches split evenly among them.

        A processor gets its next batch only after answering the last one, so batches
        grow with the load and shrink to single files when the pipeline is quiet.
        """
        if not self.to_process:
            return
        idle = [(w, s) for w, s in self.workers.items() if s.kind == "processor" and not s.held]
        for i, (worker, slot) in enumerate(idle):
            share = -(-len(self.to_process) // (len(idle) - i))  # ceil
            batch = tuple(self.to_process.popleft() for _ in range(min(share, PROCESS_BATCH)))
            if not batch:
                return
            for done in batch:
                self.processing[done.item.id] = (worker, done)
                slot.held.add(done.item.id)
            self._sends.append((worker, ProcessFiles(files=batch)))

    def processed(self, message: ProcessingComplete | ProcessingFailed) -> None:
        """A processor finished a file."""
        entry = self.processing.get(message.item_id)
        if entry is None or entry[0] != message.worker:  # unknown, or given to another
            log.warning("processing result for an unknown item", item_id=message.item_id)
            return
        del self.processing[message.item_id]
        worker, done = entry
        if worker in self.workers:
            self.workers[worker].held.discard(message.item_id)
        if isinstance(message, ProcessingComplete):
            outcome = _outcome(
                done.item,
                status="completed",
                path=done.path,
                size=done.size,
                sha256=done.sha256,
                result=message.result,
            )
        else:
            outcome = _outcome(
                done.item,
                status="failed",
                path=done.path,
                size=done.size,
                sha256=done.sha256,
                error_kind=message.error_kind,
                error=message.error,
            )
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        if outcome.path:
            self._reported_files += 1
        self.unsent_reports.append(outcome)

    def _load_rejects(self) -> None:
        """Bring the next block of stored rejected entries to the report queue."""
        if not self.rejects_waiting or len(self.unsent_reports) >= REPORT_BATCH:
            return
        block = self.store.next_rejects(REPORT_BATCH)
        self.unsent_reports.extend(block)
        self.rejects_waiting = self.rejects_waiting - len(block) if block else 0

    def _send_reports(self) -> None:
        """Send waiting outcomes to the post-processor, one batch at a time."""
        pp = self.workers.get(self.post_processor) if self.post_processor else None
        if pp is None or pp.held or not self.unsent_reports or self.finished:
            return  # (after the end, outcomes wait in the store for the next run)
        n = min(len(self.unsent_reports), REPORT_BATCH)
        batch = tuple(self.unsent_reports.popleft() for _ in range(n))
        for outcome in batch:
            self.reporting[outcome.id] = outcome
            pp.held.add(outcome.id)
        assert self.post_processor is not None
        self._sends.append((self.post_processor, RecordOutcomes(outcomes=batch)))

    def recorded(self, message: PostProcessed | PostProcessFailed) -> None:
        """The post-processor recorded an outcome: the item is terminal."""
        outcome = self.reporting.pop(message.item_id, None)
        if outcome is None:
            log.warning("post-processing result for an unknown item", item_id=message.item_id)
            return
        if self.post_processor in self.workers:
            self.workers[self.post_processor].held.discard(message.item_id)
        if outcome.path:
            self._reported_files -= 1
        if isinstance(message, PostProcessFailed) and outcome.status == "failed":
            # Already failed: it keeps its kind (retry-failed --kind finds it), and says
            # the post-processor failed too.
            outcome = evolve(
                outcome, error=f"{outcome.error}; the post-processor failed: {message.error}"
            )
        elif isinstance(message, PostProcessFailed):
            outcome = evolve(
                outcome, status="failed", error_kind="post_process_error", error=message.error
            )
        if outcome.status in self.discard and outcome.path:
            # Stored as not kept (recheck leaves it alone); deleted once committed.
            seq = self.store.record_outcome(evolve(outcome, path=""))
            self._uncommitted.append(outcome.path)
            self._pending_mark = seq
        else:
            seq = self.store.record_outcome(outcome)
            if self.discard_parts and outcome.status == "failed" and outcome.name:
                # (a failed transfer's partial file, kept for a resume that will not come)
                self._uncommitted.append(
                    os.path.join(self.config.output.dir, outcome.name + ".part")
                )
                self._pending_mark = seq
        outcome = evolve(outcome, done_seq=seq)
        self.stats[outcome.status] += 1
        if outcome.status == "completed":
            self.stats["completed_bytes"] += outcome.size or 0
        self.open_items -= 1
        self._recorded.append(outcome)
        if outcome.error_kind == "host_down" and host_of(outcome.url) not in self.scheduler.down:
            self._reopen([outcome.id])  # its host came back while this was being recorded

    # -- a host that was down is up again ------------------------------------------------

    def _revive(self, key: str) -> None:
        """Put back to pending every item this run failed ``host_down`` for ``key``.

        A late success proved the host serves files after all: items not yet reported
        simply go back to dispatch; items already recorded are reopened (the manifest's
        ``host_down`` line is superseded by the item's next outcome).
        """
        keep: deque[Outcome] = deque()
        waiting: list[str] = []
        for outcome in self.unsent_reports:
            if outcome.error_kind == "host_down" and host_of(outcome.url) == key:
                waiting.append(outcome.id)
            else:
                keep.append(outcome)
        self.unsent_reports = keep
        for item in self.store.items_by_id(waiting):
            self.scheduler.requeue(item)
        recorded = [i for i, u in self.store.failed_host_down_this_run() if host_of(u) == key]
        self._reopen(recorded)
        log.warning(
            "host is up again; its host_down items are pending again",
            host=key,
            items=len(waiting) + len(recorded),
        )

    def _reopen(self, ids: list[str]) -> None:
        """Make recorded ``host_down`` items pending again and dispatch them."""
        if not ids:
            return
        self.store.reopen(ids)
        reopened = set(ids)
        # Not yet announced: never announce them (they are pending again, not terminal).
        # Announced ones get a second, superseding event when they end again.
        self._recorded = [o for o in self._recorded if o.id not in reopened]
        for item in self.store.items_by_id(ids):
            self.scheduler.requeue(item)
        self.stats["failed"] -= len(ids)
        self.open_items += len(ids)

    # -- the end --------------------------------------------------------------------------

    def cancel(self, reason: str, abort: bool) -> None:
        """Stop granting (the first reason is the one reported); end now if ``abort``."""
        self.granting = False
        if self.end_reason == "done":
            self.end_reason = reason
        if abort:
            self.finish()

    def busy(self) -> bool:
        """Whether any item is between pending and terminal."""
        return bool(
            self.leases
            or self.processing
            or self.reporting
            or self.unsent_reports
            or self.rejects_waiting
        )

    def _check_finished(self) -> None:
        if self.finished:
            return
        drained = not self.busy()
        stopped = not self.granting
        all_done = self.input_closed and self.open_items == 0
        if drained and (stopped or all_done):
            self.finish()

    def commit(self) -> None:
        """Write everything to the store (the group commit), then announce the outcomes it
        made durable and tell where the run stands.

        Outcomes are announced only here, after the commit: a crash may delay an
        announcement (a sink catches up from the store's ``done_seq``), but never makes
        one that the resumed run would repeat.
        """
        hosts = self.scheduler.take_dirty(self.clock.now())
        self.store.save_hosts({h.host: host_record(h) for h in hosts})
        self.store.set_meta(last_commit_at=self.clock.wall())  # wall time, for `status`
        if self._discarded_through > self._mark_saved:  # (a restart sweeps what follows)
            self._mark_saved = self._discarded_through
            self.store.set_meta(discarded_through=self._mark_saved)
        self.store.commit()
        if self._uncommitted:
            self._discards += self._uncommitted
            self._uncommitted = []
            self._discard_mark = self._pending_mark
        recorded, self._recorded = self._recorded, []
        for outcome in recorded:
            self.emit(outcome)
        self._progress_events(hosts)

    def _progress_events(self, hosts: list[HostStatus]) -> None:
        """Tell displays where the run stands (once per commit, so at a bounded rate)."""
        for status in hosts:
            self.emit(status)
        self.emit(
            RunProgress(
                accepted=self.stats["accepted"],
                completed=self.stats["completed"],
                failed=self.stats["failed"],
                skipped=self.stats["skipped"],
                pending=self.open_items,
                downloading=len(self.leases),
                processing=len(self.processing),
                bytes=self.stats["bytes"],
                retries=self.stats["retries"],
                elapsed=self.clock.now() - self.run_started,
                completed_bytes=self.stats["completed_bytes"],
            )
        )

    def snapshot(self) -> dict[str, Any]:
        """Counters and per-host statistics, as plain data."""
        stats: dict[str, Any] = dict(self.stats)
        stats.update(
            pending=self.open_items,
            leased=len(self.leases),
            processing=len(self.processing),
            reporting=len(self.reporting),
            hosts=self.scheduler.host_stats(self.clock.now()),
        )
        return stats

    def finish(self) -> None:
        """End the run: final commit, then the summary (the last event)."""
        if self.finished:
            return
        self._give_up_leases()
        self.store.set_meta(
            run_state="finished", reason=self.end_reason, finished_at=self.clock.wall()
        )
        self.commit()  # with the last progress events
        self.finished = True
        summary = RunFinished(
            accepted=self.stats["accepted"],
            completed=self.stats["completed"],
            failed=self.stats["failed"],
            skipped=self.stats["skipped"],
            pending=self.open_items,
            bytes=self.stats["bytes"],
            elapsed=self.clock.now() - self.run_started,
            reason=self.end_reason,
            completed_bytes=self.stats["completed_bytes"],
        )
        log.info(
            "run finished",
            **{f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)},
        )
        self._events.append(summary)  # the last event of the run: emit drops the rest
        self._summary = summary

    def _give_up_leases(self) -> None:
        """The run ends with items still leased (a stop without grace): they stay pending
        in the store, and their hosts no longer count them as active."""
        for worker, item in self.leases.values():
            self.scheduler.released(item)
            self.abandoned[item.id] = worker
        for slot in self.workers.values():
            if slot.kind == "downloader":
                slot.held.clear()
        self.leases.clear()
        self.started.clear()


def _outcome(
    item: WorkItem,
    *,
    status: Status,
    path: str = "",
    size: int | None = None,
    sha256: str | None = None,
    error_kind: ErrorKind | None = None,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    node: str = "",
) -> Outcome:
    return Outcome(
        id=item.id,
        url=item.url,
        name=item.name,
        fields=fields_of(item),
        path=path,
        status=status,
        size=size,
        sha256=sha256,
        error_kind=error_kind,
        error=error,
        attempts=item.attempts,
        result=result or {},
        node=node,
    )
