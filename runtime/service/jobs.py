"""Jobs: a queue of batches, each run by its own ``Pipeline`` with its own directory.

``JobManager`` owns the running pipelines. A job is stored before anything else happens
(``queued``); at most ``service.max_running_jobs`` run at once, in submission order. A
job's directory ``<data_dir>/jobs/<id>/`` holds its input (``input.ndjson``), its files
(``files/``) and its pipeline state (``state/``), so a job that was running when the
service died resumes where it stopped when the service starts again. (What the API reads
of a job is ``JobQueries``'s, in ``runtime.service.jobqueries``: the manager is one.)

Events: the pipeline's sink (``JobEvents``, in ``runtime.service.jobevents``) only
buffers, on the StateKeeper's thread; a flusher thread here numbers them into the job
store every ``FLUSH_INTERVAL`` and tells the listeners (the HTTP streams).

Exactly one item event per item, whatever crashes: the pipeline announces an outcome
only after the commit that makes it durable, and each stored batch of item events
remembers (in the same transaction) the ``done_seq`` of its last outcome. Before a job's
pipeline starts, the outcomes its state committed after that mark — announced by a
pipeline that died before they were stored — are stored as item events first.

Status: ``queued → running → completed | failed``; ``cancelled`` from any non-terminal
status; ``paused`` from ``queued`` or ``running`` (the pipeline is stopped at once, its
transfers' ``.part`` files kept for a Range resume) and back to ``queued`` by ``resume``.
``completed`` means every item reached its end (some may have failed: see the counts);
``failed`` means the job itself could not go on (a broken state, a plugin that will not
load).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from messages import Rejected
from runtime.core.clock import Clock, SystemClock
from runtime.core.config import Config, ServiceDownloadConfig
from runtime.core.errors import ConveyorError
from runtime.core.inputs import parse_entry
from runtime.core.logs import get_logger
from runtime.core.netguard import SERVICE_SETTING, NetworkGuard
from runtime.pipeline import Pipeline, RunSummary
from runtime.service.jobevents import ITEM_FIELDS, JobEvents, summary_of
from runtime.service.jobqueries import JobError, JobQueries, without_line
from runtime.service.jobstore import TERMINAL, Delivery, Job, JobStore
from runtime.service.webhooks import Deliverer

__all__ = ["FLUSH_INTERVAL", "JobError", "JobEvents", "JobManager", "Submitted"]

log = get_logger("service.jobs")

FLUSH_INTERVAL = 0.1
"""Seconds between two writes of buffered events."""
STOP_WAIT = 60.0
"""Seconds ``pause``/``cancel`` wait for a pipeline to stop."""
INVALID_SHOWN = 100
"""Bad items listed in a submit answer (all are counted)."""
CATCH_UP_BLOCK = 1000
"""Committed outcomes read at a time when a job catches up on its item events."""


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` did."""

    job: Job
    new: bool
    invalid: list[dict[str, Any]]


@dataclasses.dataclass
class _Runner:
    job_id: str
    events: JobEvents
    pipeline: Pipeline | None = None  # set once started
    intent: str | None = None  # "pause", "cancel" or "shutdown" once asked to stop
    flushing: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    stopped: threading.Event = dataclasses.field(default_factory=threading.Event)


def default_running_jobs() -> int:
    """``service.max_running_jobs = 0``: one per CPU, at least 2."""
    return max(2, os.cpu_count() or 1)


class JobManager(JobQueries):
    """Queue, run, stop and forget jobs; see the module docstring."""

    def __init__(self, config: Config, store: JobStore, clock: Clock | None = None) -> None:
        super().__init__(store, Path(config.service.data_dir))
        self.config = config
        self.clock = clock or SystemClock()
        self.service = config.service
        self.max_running = self.service.max_running_jobs or default_running_jobs()
        self.guard = NetworkGuard(self.service.allow_networks, SERVICE_SETTING)
        self.listeners: list[Callable[[str], None]] = []
        self.runners: dict[str, _Runner] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="job-events", daemon=True)
        self.deliverer = Deliverer(
            store,
            self.service.webhook_secret,
            self.guard,
            timeout=self.service.webhook_timeout,
            backoff=self.service.webhook_backoff,
            on_attempt=self._webhook_attempt,
            clock=self.clock,
        )

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Resume what the last service left: running jobs, pending webhook deliveries."""
        (self.data_dir / "jobs").mkdir(parents=True, exist_ok=True)
        for job in self._all("running"):
            self.store.update(job.id, status="queued")  # back in line, in submission order
            self._emit(job.id, "status", {"status": "queued", "previous": "running",
                                          "resumed": True})  # fmt: skip
        self._flusher.start()
        self.deliverer.resume()
        self._schedule()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop every pipeline (their jobs stay ``running``: they resume at the next start)."""
        self._stopping.set()
        with self._lock:
            runners = list(self.runners.values())
            for runner in runners:
                runner.intent = runner.intent or "shutdown"
                if runner.pipeline is not None:
                    runner.pipeline.stop(grace=grace, reason="service stopping")
        for runner in runners:
            runner.stopped.wait(grace + 30)
        self.deliverer.stop()
        self._flusher.join(5)

    # -- requests ---------------------------------------------------------------------

    def submit(
        self,
        items: Sequence[Any],
        *,
        callback_url: str | None = None,
        options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """Validate, store and queue a batch.

        Raises:
            JobError: a bad option (422), a reused idempotency key (409), no webhook
                secret for a callback (422).
        """
        options = dict(options or {})
        self._check_options(options)
        if callback_url and not self.service.webhook_secret:
            raise JobError("callback_url needs service.webhook_secret on the server", 422)
        lines: list[bytes] = []
        invalid: list[dict[str, Any]] = []
        invalid_count = 0
        first_seen: dict[str, int] = {}  # item id -> line of its first entry
        for index, entry in enumerate(items):
            parsed, _ = parse_entry(entry, index + 1)
            reason = parsed.error if isinstance(parsed, Rejected) else None
            if not isinstance(parsed, Rejected):
                if parsed.id in first_seen:  # (the pipeline rejects it the same way)
                    first = first_seen[parsed.id]
                    reason = f"duplicate id {parsed.id!r} (first seen on line {first})"
                first_seen.setdefault(parsed.id, index + 1)
            if reason is not None:
                invalid_count += 1
                if len(invalid) < INVALID_SHOWN:
                    invalid.append({"index": index, "error": without_line(reason)})
            lines.append(json.dumps(entry).encode())
        body = b"\n".join(lines) + b"\n"
        digest = hashlib.sha256(
            body + json.dumps([callback_url, options], sort_keys=True).encode()
        ).hexdigest()
        job = Job(
            id=secrets.token_hex(8),
            number=0,
            status="queued",
            total=len(lines),
            invalid=invalid_count,
            created_at=self.clock.wall(),
            callback_url=callback_url,
            options=options,
        )
        folder = self.job_dir(job.id)
        folder.mkdir(parents=True)
        (folder / "input.ndjson").write_bytes(body)
        try:
            stored, new = self.store.create(
                job, (idempotency_key, digest) if idempotency_key else None
            )
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            raise JobError("this Idempotency-Key was used for a different request", 409) from None
        if not new:
            shutil.rmtree(folder, ignore_errors=True)
            return Submitted(stored, False, invalid)
        self._emit(stored.id, "status", {"status": "queued"})
        self._schedule()
        return Submitted(stored, True, invalid)

    def cancel(self, job_id: str) -> Job:
        """Stop a job for good; its pending items stay pending."""
        return self._stop(job_id, "cancel")

    def pause(self, job_id: str) -> Job:
        """Stop a job until ``resume``; returns once no request of it is in flight."""
        return self._stop(job_id, "pause")

    def resume(self, job_id: str) -> Job:
        """Put a paused job back in the queue."""
        with self._lock:
            job = self.get(job_id)
            if job.status != "paused":
                raise JobError(f"job {job_id} is {job.status}, not paused")
            self._set_status(job, "queued")
        self._schedule()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job's files, state and events (not while it runs)."""
        with self._lock:
            job = self.get(job_id)
            if job.status == "running" or job_id in self.runners:
                raise JobError(f"job {job_id} is running: cancel or pause it first")
            self.store.delete(job_id)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def running(self) -> int:
        """Pipelines running now."""
        with self._lock:
            return len(self.runners)

    def progress(self, job: Job) -> dict[str, Any]:
        """The job's counts: live while it runs, as last stored otherwise."""
        with self._lock:
            runner = self.runners.get(job.id)
        live = runner.events.progress if runner is not None else {}
        if live:
            return {k: v for k, v in live.items() if k != "run"}
        return super().progress(job)

    def live_progress(self) -> dict[str, dict[str, Any]]:
        """The latest progress of each running job that reported one, by job id (what
        the metrics show of each running job)."""
        with self._lock:
            runners = list(self.runners.items())
        latest = ((job_id, runner.events.progress) for job_id, runner in runners)
        return {job_id: progress for job_id, progress in latest if progress}

    # -- internals --------------------------------------------------------------------

    def _all(self, status: str) -> list[Job]:
        found: list[Job] = []
        after = 0
        while page := self.store.page(status, after, 1000):
            found += page
            after = page[-1].number
        return found

    def _check_options(self, options: dict[str, Any]) -> None:
        processor = options.get("processor")
        if processor is not None:
            allowed = {self.config.processing.processor, *self.service.processors}
            if processor not in allowed:
                raise JobError(
                    f"options.processor must be one of {sorted(allowed)} "
                    "(service.processors lists the choices)",
                    422,
                )

    def _emit(self, job_id: str, kind: str, data: dict[str, Any], notify: bool = True) -> None:
        self.store.append_events(
            job_id, [(kind, self.clock.wall(), data)], self.service.events_kept
        )
        if notify:
            self._notify(job_id)

    def _notify(self, job_id: str) -> None:
        for listener in self.listeners:
            listener(job_id)

    def _set_status(self, job: Job, status: str, **fields: Any) -> None:
        now = self.clock.wall()
        if status == "running" and job.started_at is None:
            fields.setdefault("started_at", now)  # the first start; a resume keeps it
        if status in TERMINAL:
            fields.setdefault("finished_at", now)
        # The event first: a stream that sees the new status has its event to send.
        event = {"status": status, "previous": job.status}
        if "error" in fields:
            event["error"] = fields["error"]
        self._emit(job.id, "status", event, notify=False)
        self.store.update(job.id, status=status, **fields)
        self._notify(job.id)
        if status in TERMINAL and job.callback_url:
            self._queue_webhook(self.get(job.id))

    def _stop(self, job_id: str, intent: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status in TERMINAL or (intent == "pause" and job.status == "paused"):
                raise JobError(f"job {job_id} is already {job.status}")
            runner = self.runners.get(job_id)
            if runner is None:
                self._set_status(job, "cancelled" if intent == "cancel" else "paused")
                return self.get(job_id)
            runner.intent = intent
            if runner.pipeline is not None:
                runner.pipeline.stop(grace=0, reason=f"job {intent}")
        if not runner.stopped.wait(STOP_WAIT):
            raise JobError(f"job {job_id} did not stop within {STOP_WAIT:.0f} s", 503)
        return self.get(job_id)

    def _schedule(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            free = self.max_running - len(self.runners)
            if free <= 0:
                return
            for job in self.store.page("queued", 0, free):
                events = JobEvents(job, self.service.progress_interval, self.clock)
                runner = _Runner(job.id, events)
                self.runners[job.id] = runner
                self._set_status(job, "running")
                threading.Thread(
                    target=self._run, args=(runner,), name=f"job-{job.id}", daemon=True
                ).start()

    def job_config(self, job: Job) -> Config:
        """The config one job's pipeline runs with: the service's, in the job's folder,
        the network guard on, the job's options applied."""
        c = self.config
        folder = self.job_dir(job.id)
        o = job.options
        download = dataclasses.replace(
            ServiceDownloadConfig.of(c.download),  # its guard names service.allow_networks
            block_private_networks=True,
            allow_networks=self.service.allow_networks,
            per_host=o.get("per_host", c.download.per_host),
            max_size=o.get("max_size", c.download.max_size),
        )
        return dataclasses.replace(
            c,
            input=dataclasses.replace(c.input, path=str(folder / "input.ndjson"), format="ndjson"),
            output=dataclasses.replace(c.output, dir=str(folder / "files")),
            state=dataclasses.replace(c.state, dir=str(folder / "state")),
            download=download,
            retry=dataclasses.replace(
                c.retry, max_attempts=o.get("max_attempts", c.retry.max_attempts)
            ),
            processing=dataclasses.replace(
                c.processing, processor=o.get("processor", c.processing.processor), manifest=""
            ),
        )

    def _run(self, runner: _Runner) -> None:
        job = self.get(runner.job_id)
        summary: RunSummary | None = None
        error: str | None = None
        try:
            self._catch_up(job)
            pipeline = Pipeline(self.job_config(job), on_event=runner.events)
            pipeline.start()
            with self._lock:  # from now on, pause/cancel/shutdown stop it themselves
                runner.pipeline = pipeline
                intent = runner.intent
            if intent is not None:  # asked while it was starting
                pipeline.stop(grace=0 if intent != "shutdown" else None, reason=f"job {intent}")
            summary = pipeline.wait()
        except ConveyorError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a job must end, whatever went wrong
            log.error("job runner failed", job=job.id, error=repr(exc))
            error = f"internal error: {exc!r}"
        finally:
            self._ended(runner, summary, error)

    def _catch_up(self, job: Job) -> None:
        """Store the item events of outcomes the job's state committed but a pipeline
        that died (``kill -9``) did not get to store, in the order they were recorded."""
        announced = self.store.announced(job.id)
        with self._view(job) as view:
            while view is not None and (block := view.outcomes_after(announced, CATCH_UP_BLOCK)):
                now = self.clock.wall()
                events = [("item", now, {k: r[k] for k in ITEM_FIELDS}) for r in block]
                announced = block[-1]["done_seq"]
                self.store.append_events(job.id, events, self.service.events_kept, announced)
                log.info("item events caught up", job=job.id, events=len(events))
        self._notify(job.id)

    def _ended(self, runner: _Runner, summary: RunSummary | None, error: str | None) -> None:
        self._flush(runner, final=True)
        job = self.get(runner.job_id)
        with contextlib.suppress(ConveyorError):  # (a state that cannot be read: no events)
            self._catch_up(job)  # outcomes recorded after the run's last announcement
        with self._lock:
            job = self.get(runner.job_id)
            counts = dict(job.summary)
            if summary is not None:
                f = summary.finished
                counts = {
                    "completed": f.completed,
                    "failed": f.failed,
                    "skipped": f.skipped,
                    "accepted": f.accepted,
                    "pending": f.pending,
                    "bytes": f.completed_bytes,
                    "retries": summary.stats.get("retries", 0),
                }
                if summary.error is not None:
                    error = summary.error
            counts.update(self._stored_counts(job))  # as committed: the state has the last word
            self.store.update(job.id, summary=counts)
            job = self.get(job.id)
            if runner.intent == "shutdown":
                pass  # stays "running": the next start resumes it
            elif runner.intent == "cancel":
                self._set_status(job, "cancelled")
            elif runner.intent == "pause":
                self._set_status(job, "paused")
            elif error is not None:
                self._set_status(job, "failed", error=error)
            elif (
                summary is not None
                and summary.finished.pending == 0
                and (summary.finished.reason == "done")
            ):
                self._set_status(job, "completed")
            else:
                reason = summary.finished.reason if summary is not None else "unknown"
                self._set_status(job, "failed", error=f"the run ended early: {reason}")
            del self.runners[runner.job_id]
            runner.stopped.set()
        self._schedule()

    def _flush(self, runner: _Runner, final: bool = False) -> None:
        with runner.flushing:  # taken and stored in one step: events keep their order
            events, announced = runner.events.take(final)
            if events:
                try:
                    self.store.append_events(
                        runner.job_id, events, self.service.events_kept, announced or None
                    )
                except BaseException:
                    runner.events.put_back(events, announced)
                    raise
                progress = [data for kind, _, data in events if kind == "progress"]
                if progress:  # the job's stored counts follow its progress (after a kill too)
                    self.store.update(runner.job_id, summary=summary_of(progress[-1]))
        if events:
            self._notify(runner.job_id)

    def _flush_loop(self) -> None:
        while not self._stopping.wait(FLUSH_INTERVAL):
            with self._lock:
                runners = list(self.runners.values())
            for runner in runners:
                try:
                    self._flush(runner)
                except Exception as exc:  # noqa: BLE001 - keep flushing the other jobs
                    log.error("storing events failed", job=runner.job_id, error=repr(exc))

    def _queue_webhook(self, job: Job) -> None:
        assert job.callback_url is not None
        body = json.dumps(self.summary(job), sort_keys=True).encode()
        delivery = Delivery(
            id=secrets.token_hex(16),
            job_id=job.id,
            url=job.callback_url,
            body=body,
            status="pending",
            created_at=self.clock.wall(),
        )
        self.store.add_delivery(delivery)
        self.deliverer.start(delivery)

    def _webhook_attempt(self, delivery: Delivery, record: dict[str, Any]) -> None:
        if self.store.get(delivery.job_id) is not None:  # (not for a deleted job)
            self._emit(delivery.job_id, "webhook", {"delivery_id": delivery.id, **record})
