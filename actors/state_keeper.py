"""The StateKeeper: the one owner of a run's mutable state.

Every item's status, leases, counters and the store belong to this actor; the others send
it events and it decides. It answers downloaders' demand with grants (never more than the
demand, so no downloader ever holds more than its mailbox), routes downloaded files to the
least-loaded processor, hands every terminal outcome to the post-processor, and commits to
the store once per tick (group commit) and at the end.

Flow of one item::

    pending ─grant─▶ leased ─DownloadComplete─▶ processing ─ProcessingComplete─▶ reporting
       ▲               │                                                            │
       └─retry─────────┘ DownloadFailed (transient, attempts left)    PostProcessed ▼
                                                                      completed | failed | skipped
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import random
import sqlite3
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

from actors.control import tell
from messages import (
    HANDED_BACK,
    Cancel,
    Demand,
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    Enqueue,
    Grant,
    HostStatus,
    Outcome,
    PostProcessed,
    PostProcessFailed,
    ProcessingComplete,
    ProcessingFailed,
    ProgressUpdate,
    ResumeInfo,
    RunFinished,
    RunProgress,
    WorkItem,
)
from messages.control import (
    Attach,
    Batch,
    GetStats,
    InputClosed,
    ProcessFiles,
    RecordOutcomes,
    Tick,
    WorkerLost,
)
from messages.types import ErrorKind, Lane, Status
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.errors import ConveyorError
from runtime.core.logs import get_logger
from runtime.core.retry import RetryPolicy
from runtime.core.scheduler import Scheduler, host_of
from runtime.core.store import SQLiteStore

__all__ = ["EventSink", "StateKeeper"]

log = get_logger("state_keeper")

PROCESS_BATCH = 32
"""Most files handed to one processor in one message."""
REPORT_BATCH = 512
"""Most outcomes handed to the post-processor in one message."""
REPORT_QUEUE = 4 * REPORT_BATCH
"""Most outcomes waiting for the post-processor in memory; rejected input entries and
items of down hosts wait in the store (or unread) beyond it."""

EventSink = Callable[[Any], None]
"""Receives every message the StateKeeper sees, for progress displays and the API."""


@dataclasses.dataclass(slots=True)
class _Worker:
    kind: str
    ref: pykka.ActorRef[Any]
    credit: int = 0
    lane: Lane = "small"
    held: set[str] = dataclasses.field(default_factory=set)


class StateKeeper(pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(
        self,
        *,
        config: Config,
        supervisor: pykka.ActorRef[Any],
        clock: Clock,
        on_event: EventSink | None = None,
        rng: random.Random,
    ) -> None:
        super().__init__()
        self.config = config
        self.supervisor = supervisor
        self.clock = clock
        self._sink = on_event or (lambda _m: None)
        self.workers: dict[str, _Worker] = {}
        self.post_processor: str | None = None
        self.policy = RetryPolicy(config.retry, rng)
        self.leases: dict[str, tuple[str, WorkItem]] = {}
        self.started: set[str] = set()  # leased items whose transfer began
        self.processing: dict[str, tuple[str, DownloadComplete]] = {}
        self.to_process: deque[DownloadComplete] = deque()  # downloaded, no processor yet
        self.reporting: dict[str, Outcome] = {}
        self.unsent_reports: deque[Outcome] = deque()
        self.rejects_waiting = 0  # rejected entries stored but not yet in unsent_reports
        self.granting = True
        self.input_closed = False
        self.finished = False
        self.end_reason = "done"
        self.run_started = clock.now()
        self.stats: dict[str, int] = {
            "accepted": 0,
            "completed": 0,
            "failed": 0,
            "skipped": 0,
            "bytes": 0,
            "retries": 0,
            "max_leased": 0,
        }
        self.open_items = 0
        self.backlog_limit = config.processing.backlog or 4 * config.processing.workers
        self.store: SQLiteStore | None = self._open_store()
        self.scheduler = Scheduler(config, self.store.next_pending)
        self.scheduler.load_stats(self.store.load_hosts())

    # -- life cycle ---------------------------------------------------------------------

    def _open_store(self) -> SQLiteStore:
        """Open the store and pick up where an earlier run stopped.

        Runs in ``__init__``, in the starting thread, so a state directory that cannot be
        opened is an error for whoever starts the run (a failing ``on_start`` would stop
        the actor silently).
        """
        state_dir = Path(self.config.state.dir)
        try:
            store = SQLiteStore(state_dir)
            store.set_meta(run_state="running", pid=os.getpid(), started_at=self.clock.wall())
            store.commit()
            counts = store.counts()
            self.open_items = store.open_count()
            self.rejects_waiting = store.count_rejects()
        except (OSError, sqlite3.Error) as exc:
            raise ConveyorError(f"cannot open the state in {state_dir}: {exc}") from exc
        self.stats["accepted"] = sum(counts.values())
        for status in ("completed", "failed", "skipped"):
            self.stats[status] = counts.get(status, 0)
        log.info("state opened", path=str(store.path), **counts)
        return store

    def _emit(self, message: Any) -> None:
        """Pass an event to the sink, unless the run already finished.

        ``RunFinished`` is the last event of a run, always: a tick or a late result that
        arrives after it (the ticker and aborted transfers run on their own threads) may
        still be committed, but is not announced.
        """
        if not self.finished:
            self._sink(message)

    def on_stop(self) -> None:
        """Commit whatever is left."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message, or a ``Batch`` of them; the only place state changes.

        Actors send related messages together (a result, new demand and the next item's
        start; a batch of processed files) so one wake-up of this thread handles them all.
        """
        if isinstance(message, Batch):
            for one in message.messages:
                self._handle(one)
            self._pump()
            return None
        result, pump = self._handle(message)
        if pump:
            self._pump()
        return result

    def _handle(self, message: Any) -> tuple[Any, bool]:
        """Apply one message; return the answer and whether to move work forward."""
        match message:
            case Demand(worker=worker, n=n):
                if worker in self.workers:
                    self.workers[worker].credit += n
            case DownloadStarted(item_id=item_id):
                self.started.add(item_id)
                self._emit(message)
                return None, False
            case ProgressUpdate():
                self._emit(message)
                return None, False
            case ResumeInfo():
                self._resume_info(message)
                return None, False
            case DownloadComplete():
                self._downloaded(message)
            case DownloadFailed():
                self._download_failed(message)
            case ProcessingComplete() | ProcessingFailed():
                self._processed(message)
            case PostProcessed() | PostProcessFailed():
                self._recorded(message)
            case Enqueue():
                return self._enqueue(message), False
            case InputClosed():
                self.input_closed = True
            case Attach():
                self._attach(message)
            case WorkerLost(worker=worker, error=error):
                self._worker_lost(worker, error)
            case Tick():
                self._commit()
            case Cancel(reason=reason, abort=abort):
                self._cancel(reason, abort)
            case GetStats():
                return self._stats(), False
            case _:
                log.warning("unexpected message", message=repr(message))
                return None, False
        return None, True

    def _pump(self) -> None:
        """Move work forward after any event, then check whether the run is over."""
        self._dispatch()
        self._fail_given_up()
        self._feed_processors()
        self._load_rejects()
        self._send_reports()
        self._check_finished()

    # -- ingest -------------------------------------------------------------------------

    def _enqueue(self, batch: Enqueue) -> int:
        assert self.store is not None
        result = self.store.ingest(batch.items, batch.rejected, batch.derived_name_ids)
        new = result.added + len(result.rejected)
        self.stats["accepted"] += new
        self.open_items += new
        if result.added:
            self.scheduler.input_grew()
        self.rejects_waiting += len(result.rejected)  # reported from the store, in blocks
        self._pump()
        return result.added

    # -- dispatch -----------------------------------------------------------------------

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
        while hungry and len(self.processing) < self.backlog_limit:
            held, order, worker, slot = heapq.heappop(hungry)
            if slot.lane in dry:
                continue
            item = self.scheduler.next_for(slot.lane, now)
            if item is None:
                dry.add(slot.lane)
                continue
            self.scheduler.dispatched(item)
            batch = batches.setdefault(worker, [])
            batch.append(dataclasses.replace(item, attempts=item.attempts + 1))
            if len(batch) < slot.credit:
                heapq.heappush(hungry, (held + 1, order, worker, slot))
        for worker, batch in batches.items():
            slot = self.workers[worker]
            slot.credit -= len(batch)
            for item in batch:
                self.leases[item.id] = (worker, item)
                slot.held.add(item.id)
            self.stats["max_leased"] = max(self.stats["max_leased"], len(slot.held))
            tell(slot.ref, Grant(worker=worker, items=tuple(batch)))

    def _fail_given_up(self) -> None:
        """Fail, without a request, the items of hosts whose probes kept failing.

        Only as many as the report queue has room for: a dead host with a million items
        is failed block by block at the post-processor's pace, not read into memory.
        """
        room = REPORT_QUEUE - len(self.unsent_reports)
        if room <= 0:
            return
        for item in self.scheduler.take_given_up(room):
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

    def _release(self, worker: str, item_id: str) -> WorkItem | None:
        lease = self.leases.pop(item_id, None)
        self.started.discard(item_id)
        if lease is None or lease[0] != worker:
            log.warning(
                "result for an item not leased to the sender", worker=worker, item_id=item_id
            )
            if lease is not None:
                self.leases[item_id] = lease
            return None
        slot = self.workers.get(worker)
        if slot is not None:
            slot.held.discard(item_id)
        return lease[1]

    def _downloaded(self, done: DownloadComplete) -> None:
        if self._release(done.worker, done.item.id) is None:
            return
        self._emit(done)
        if self.scheduler.succeeded(done.item, done.size, done.reused):
            self._revive(host_of(done.item.url))
        if not done.reused:
            self.stats["bytes"] += done.size
        if done.reused and self.config.output.if_exists == "skip":
            self._report(
                _outcome(
                    done.item, status="skipped", path=done.path, size=done.size, sha256=done.sha256
                )
            )
            return
        self.processing[done.item.id] = ("", done)
        self.to_process.append(done)

    def _download_failed(self, failed: DownloadFailed) -> None:
        item = self._release(failed.worker, failed.item.id)
        if item is None:
            return
        if failed.error_kind != HANDED_BACK:  # not an attempt, and not news
            self._emit(failed)
        if not failed.counts_attempt:  # cancelled, handed back, or moved to the large lane
            self.scheduler.released(item, failed.size)
            self.scheduler.requeue(dataclasses.replace(item, attempts=item.attempts - 1))
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
            self._report(
                _outcome(
                    item,
                    status="failed",
                    error_kind=decision.error_kind or failed.error_kind,
                    error=decision.error or failed.error,
                )
            )
            return
        assert self.store is not None
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

    def _resume_info(self, info: ResumeInfo) -> None:
        lease = self.leases.get(info.item_id)
        if lease is None or lease[0] != info.worker:
            return
        self.leases[info.item_id] = (
            lease[0],
            dataclasses.replace(lease[1], validator=info.validator),
        )
        assert self.store is not None
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
            tell(slot.ref, ProcessFiles(files=batch))

    def _processed(self, message: ProcessingComplete | ProcessingFailed) -> None:
        entry = self.processing.pop(message.item_id, None)
        if entry is None:
            log.warning("processing result for an unknown item", item_id=message.item_id)
            return
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
                error_kind="processing_error",
                error=message.error,
            )
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        self.unsent_reports.append(outcome)

    def _load_rejects(self) -> None:
        """Bring the next block of stored rejected entries to the report queue."""
        if not self.rejects_waiting or len(self.unsent_reports) >= REPORT_BATCH:
            return
        assert self.store is not None
        block = self.store.next_rejects(REPORT_BATCH)
        self.unsent_reports.extend(block)
        self.rejects_waiting = self.rejects_waiting - len(block) if block else 0

    def _send_reports(self) -> None:
        """Send waiting outcomes to the post-processor, one batch at a time."""
        pp = self.workers.get(self.post_processor) if self.post_processor else None
        if pp is None or pp.held or not self.unsent_reports:
            return
        n = min(len(self.unsent_reports), REPORT_BATCH)
        batch = tuple(self.unsent_reports.popleft() for _ in range(n))
        for outcome in batch:
            self.reporting[outcome.id] = outcome
            pp.held.add(outcome.id)
        tell(pp.ref, RecordOutcomes(outcomes=batch))

    def _recorded(self, message: PostProcessed | PostProcessFailed) -> None:
        outcome = self.reporting.pop(message.item_id, None)
        if outcome is None:
            log.warning("post-processing result for an unknown item", item_id=message.item_id)
            return
        if self.post_processor in self.workers:
            self.workers[self.post_processor].held.discard(message.item_id)
        if isinstance(message, PostProcessFailed):
            outcome = dataclasses.replace(
                outcome, status="failed", error_kind="post_process_error", error=message.error
            )
        assert self.store is not None
        self.store.record_outcome(outcome)
        self.stats[outcome.status] += 1
        self.open_items -= 1
        self._emit(outcome)
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
        assert self.store is not None
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
        assert self.store is not None
        self.store.reopen(ids)
        for item in self.store.items_by_id(ids):
            self.scheduler.requeue(item)
        self.stats["failed"] -= len(ids)
        self.open_items += len(ids)

    # -- children -----------------------------------------------------------------------

    def _attach(self, attach: Attach) -> None:
        self.workers[attach.worker] = _Worker(
            kind=attach.kind, ref=attach.ref, credit=attach.credit, lane=attach.lane
        )
        if attach.kind == "post_processor":
            self.post_processor = attach.worker

    def _worker_lost(self, worker: str, error: str) -> None:
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
                self._lease_lost(item_id, error)
            elif slot.kind == "processor":
                _, done = self.processing[item_id]
                self.processing[item_id] = ("", done)
                self.to_process.appendleft(done)
            elif slot.kind == "post_processor":
                self.unsent_reports.appendleft(self.reporting.pop(item_id))
        if slot.kind == "post_processor":
            self.post_processor = None

    def _lease_lost(self, item_id: str, error: str) -> None:
        _, item = self.leases.pop(item_id)
        self.scheduler.released(item)
        if item_id not in self.started:  # still queued: the crash was not its attempt
            self.scheduler.requeue(dataclasses.replace(item, attempts=item.attempts - 1))
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

    # -- the end --------------------------------------------------------------------------

    def _cancel(self, reason: str, abort: bool) -> None:
        self.granting = False
        if self.end_reason == "done":  # the first reason is the one to report
            self.end_reason = reason
        if abort:
            self._finish()

    def _busy(self) -> bool:
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
        drained = not self._busy()
        stopped = not self.granting
        all_done = self.input_closed and self.open_items == 0
        if drained and (stopped or all_done):
            self._finish()

    def _commit(self) -> None:
        if self.store is not None:
            hosts = self.scheduler.take_dirty()
            self.store.save_hosts(hosts)
            self.store.set_meta(last_commit_at=self.clock.wall())  # wall time, for `status`
            self.store.commit()
            self._progress_events(hosts)

    def _progress_events(self, hosts: dict[str, dict[str, Any]]) -> None:
        """Tell displays where the run stands (once per commit, so at a bounded rate)."""
        now = self.clock.now()
        for key, st in sorted(hosts.items()):
            not_before = self.scheduler.hosts[key].not_before
            cooldown = max(0.0, not_before - now)
            self._emit(
                HostStatus(
                    host=key,
                    active=st["active"],
                    attempts=st["attempts"],
                    successes=st["successes"],
                    failures=sum(st["failures"].values()),
                    retries=st["retries"],
                    bytes=st["bytes"],
                    breaker=st["breaker"],
                    times_opened=st["times_opened"],
                    cooldown=cooldown,
                    cooldown_reason=st["cooldown_reason"] if cooldown else "",
                    window=st["window"],
                    window_failures=st["window_failures"],
                    breaker_reason=st["breaker_reason"],
                )
            )
        self._emit(
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
                elapsed=now - self.run_started,
            )
        )

    def _stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self.stats)
        stats.update(
            pending=self.open_items,
            leased=len(self.leases),
            processing=len(self.processing),
            reporting=len(self.reporting),
            hosts=self.scheduler.host_stats(),
        )
        return stats

    def _finish(self) -> None:
        if self.finished:
            return
        if self.store is not None:
            self.store.set_meta(
                run_state="finished", reason=self.end_reason, finished_at=self.clock.wall()
            )
        self._commit()  # with the last progress events
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
        )
        log.info(
            "run finished",
            **{f.name: getattr(summary, f.name) for f in dataclasses.fields(summary)},
        )
        self._sink(summary)  # the last event of the run: _emit drops everything after it
        tell(self.supervisor, summary)


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
) -> Outcome:
    return Outcome(
        id=item.id,
        url=item.url,
        name=item.name,
        path=path,
        status=status,
        size=size,
        sha256=sha256,
        error_kind=error_kind,
        error=error,
        attempts=item.attempts,
        result=result or {},
    )
