"""The Supervisor: starts the children, restarts crashed ones, ends the run.

Restart strategy is one-for-one: a crashed downloader, processor or post-processor is
replaced by a new actor under a new logical id (``downloader-3.2``: slot 3, second
generation), and the StateKeeper re-dispatches whatever the crashed one held. More than
``supervisor.max_restarts`` restarts within ``supervisor.restart_window`` seconds means
something is systematically wrong: the run ends with a ``SupervisionError``.

Shutdown: ``Shutdown`` stops granting and lets in-flight items finish; after
``supervisor.shutdown_grace`` seconds the cancel token aborts the transfers still running
and the StateKeeper commits and ends the run, leaving unfinished items pending.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors.child import ChildContext, report_crash
from actors.cluster import ClusterHub
from actors.control import tell
from actors.downloader import Downloader
from actors.post_processor import PostProcessor
from actors.processor import Processor, scratch_of
from actors.remote import DownloaderHost, RemoteProcessor
from actors.state_keeper import EventSink, StateKeeper
from messages import Cancel, ChildCrashed, RunFinished
from messages.control import (
    Attach,
    GetStats,
    GraceExpired,
    InputFailed,
    NodesSeen,
    ProcessLost,
    RunFailed,
    Shutdown,
    Start,
    Started,
    Tick,
    WorkerLost,
)
from messages.types import Lane
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.errors import ConfigError, ConveyorError, InputError, SupervisionError
from runtime.core.logs import get_logger
from runtime.core.pluginload import (
    check_plugins,
    load_post_processor,
    load_pre_processor,
    load_processor,
)
from runtime.core.plugins import PluginContext, failure
from runtime.core.store import Store
from runtime.core.streams import explained, join_hint, redacted
from runtime.core.transfer import RangeMemory

if TYPE_CHECKING:
    from runtime.core.transport import TransportFactory

__all__ = ["Supervisor"]

log = get_logger("supervisor")

FinishCallback = Callable[[RunFinished, RunFailed | None, dict[str, Any]], None]
"""Called once at the end with the summary, the error the run ended on (if any), stats."""


LARGE_MAILBOX = 1
"""Items a downloader of the large-file lane holds: one big transfer at a time each."""


class _SupervisedStateKeeper(StateKeeper):
    """The StateKeeper, reporting its own crash (it cannot be restarted mid-run)."""

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        report_crash(self.supervisor, "state_keeper", "state_keeper", 0, exception_value)


class Supervisor(pykka.ThreadingActor):
    """See the module docstring."""

    use_daemon_thread = True

    def __init__(
        self,
        *,
        config: Config,
        transport_factory: TransportFactory,
        clock: Clock,
        on_event: EventSink | None,
        on_finished: FinishCallback,
        rng: random.Random,
        store_factory: Callable[[], Store],
    ) -> None:
        super().__init__()
        self.config = config
        self.store_factory = store_factory
        self.transport_factory = transport_factory
        self.clock = clock
        self.on_event = on_event
        self.on_finished = on_finished
        self.rng = rng
        self.cancel = threading.Event()
        self.ranges = RangeMemory()  # hosts that cannot resume, for every downloader here
        self.stop_ticker = threading.Event()
        self.children: dict[str, pykka.ActorRef[Any]] = {}
        self.generation: dict[tuple[str, int], int] = {}
        self.restarts: deque[float] = deque()
        self.state_keeper: pykka.ActorRef[Any] | None = None
        self.failure: RunFailed | None = None  # the first error the run is ending on
        self.finished = False
        self.starting = True  # until every child started: a failure is the start's
        self.hub: ClusterHub | None = None  # cluster.redis: the nodes' end
        self.shutting_down = False
        self.hosts: list[DownloaderHost] = []  # download.processes worker processes
        self.remote: dict[str, tuple[int, int]] = {}  # downloader -> (host, slot)

    # -- start ----------------------------------------------------------------------------

    def _start(self) -> pykka.ActorRef[Any]:
        """Start everything; on failure stop what did start and re-raise for the asker."""
        try:
            return self._start_all()
        except BaseException:
            self.finished = True
            for ref in [*self.children.values(), self.state_keeper]:
                if ref is not None:
                    ref.stop(block=False)
            self._stop_hosts()
            self.actor_ref.stop(block=False)
            raise

    def _start_all(self) -> pykka.ActorRef[Any]:
        out = Path(self.config.output.dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConveyorError(
                f"cannot create the output directory {out} (output.dir): {_why(exc, out)}"
            ) from exc
        try:  # a read-only directory would cost every item its attempts: say so now
            with tempfile.TemporaryFile(dir=out, prefix=".conveyor-write-check-"):
                pass
        except OSError as exc:
            raise ConveyorError(
                f"cannot write to the output directory {out} (output.dir): {exc.strerror or exc}"
            ) from exc
        # Import every plugin and check its options first, so a bad spec fails before
        # anything runs (each is built by its actor, in the thread where it runs).
        check_plugins(self.config)
        self.state_keeper = _SupervisedStateKeeper.start(
            config=self.config,
            supervisor=self.actor_ref,
            clock=self.clock,
            on_event=self.on_event,
            rng=self.rng,
            store_factory=self.store_factory,
        )
        self._start_child("post_processor", 0)
        if not self.config.processing.skipped:
            for i in range(self.config.processing.workers):
                self._start_child("processor", i)
        d = self.config.download
        if d.processes:
            for what, obj in (("clock", self.clock),
                              ("transport factory", self.transport_factory)):  # fmt: skip
                try:
                    pickle.dumps(obj)
                except Exception as exc:  # any pickling failure means the same
                    raise ConveyorError(
                        f"download.processes needs a {what} that can be sent to a "
                        f"worker process (picklable): {exc}"
                    ) from exc
            self.hosts = [self._new_host(i) for i in range(d.processes)]
        if self.config.cluster.redis:
            self._start_hub()
        if not self.config.cluster.redis or self.config.cluster.local_downloads:
            for i in range(d.workers + d.large_workers):  # the large-file lane comes last
                self._start_child("downloader", i)
        self.starting = False
        threading.Thread(target=self._tick, name="conveyor-ticker", daemon=True).start()
        if self.config.supervisor.job_timeout:
            threading.Thread(
                target=self._job_deadline, name="conveyor-deadline", daemon=True
            ).start()
        return self.state_keeper

    def _start_hub(self) -> None:
        assert self.state_keeper is not None
        batch = batch_name(self.config)
        try:
            self.hub = ClusterHub(
                config=self.config, batch=batch, state_keeper=self.state_keeper, clock=self.clock
            )
        except ConveyorError:
            raise
        except Exception as exc:  # redis-py's errors: say where
            raise ConveyorError(
                f"cannot reach the cluster's Redis at {redacted(self.config.cluster.redis)} "
                f"(cluster.redis): {explained(exc, self.config.cluster.redis)}"
            ) from exc
        self.hub.start()
        log.info(f"cluster batch open: start nodes with {join_hint(batch)}", batch=batch)

    def _new_host(self, index: int) -> DownloaderHost:
        assert self.state_keeper is not None
        return DownloaderHost(
            index=index,
            config=self.config,
            transport_factory=self.transport_factory,
            clock=self.clock,
            state_keeper=self.state_keeper,
            supervisor=self.actor_ref,
        )

    def _stop_hosts(self) -> None:
        """Close every worker process's pipe, then wait for them (killing stragglers)."""
        for host in self.hosts:
            host.hang_up()
        for host in self.hosts:
            host.stop(timeout=2.0)

    def _start_child(self, kind: str, index: int) -> None:
        assert self.state_keeper is not None
        gen = self.generation.get((kind, index), 0) + 1
        self.generation[(kind, index)] = gen
        worker = f"{kind}-{index}.{gen}"
        child = ChildContext(
            worker=worker, index=index, supervisor=self.actor_ref, state_keeper=self.state_keeper
        )
        ref: Any
        credit = 0
        lane: Lane = "small"
        if kind == "downloader" and self.hosts:
            lane = "large" if index >= self.config.download.workers else "small"
            host = index % len(self.hosts)
            self.remote[worker] = (host, index)
            ref = self.hosts[host].start_downloader(worker, index, lane)
            credit = self.config.download.mailbox if lane == "small" else LARGE_MAILBOX
            tell(
                self.state_keeper,
                Attach(worker=worker, kind=kind, ref=ref, credit=credit, lane=lane),
            )
            return
        if kind == "downloader":
            lane = "large" if index >= self.config.download.workers else "small"
            ref = Downloader.start(
                child=child,
                lane=lane,
                config=self.config,
                transport_factory=self.transport_factory,
                clock=self.clock,
                cancel=self.cancel,
                ranges=self.ranges,
            )
            credit = self.config.download.mailbox if lane == "small" else LARGE_MAILBOX
        elif kind == "processor" and self.config.processing.mode == "process":
            ref = RemoteProcessor.start(child=child, config=self.config)
        elif kind == "processor":
            config = self.config
            ref = Processor.start(
                child=child,
                build=lambda: (load_processor(config), load_pre_processor(config)),
                scratch=scratch_of(config),
            )
        else:
            context = PluginContext(
                output_dir=Path(self.config.output.dir),
                state_dir=Path(self.config.state.dir),
                manifest=self.config.manifest_path,
            )
            config = self.config
            ref = PostProcessor.start(
                child=child, build=lambda: load_post_processor(config), context=context
            )
        if kind != "downloader" and not self._started(worker, kind, index, ref):
            return
        self.children[worker] = ref
        attach = Attach(worker=worker, kind=kind, ref=ref, credit=credit, lane=lane)
        tell(self.state_keeper, attach)

    def _started(self, worker: str, kind: str, index: int, ref: pykka.ActorRef[Any]) -> bool:
        """Whether a plugin's actor built its plugin. At the start of the run a failure
        is the run's (a ConfigError naming the key); later it counts as a crash."""
        error: BaseException | None = ref.ask(Started(), block=True)
        if error is None:
            return True
        ref.stop(block=False)
        if not isinstance(error, ConveyorError):
            key = "post_processor" if kind == "post_processor" else "processor"
            error = ConfigError(f"processing.{key}: building the plugin failed: {failure(error)}")
        if self.starting:
            raise error
        tell(self.actor_ref, ChildCrashed(worker=worker, kind=kind, index=index, error=str(error)))
        return False

    def _job_deadline(self) -> None:
        """Stop the run gracefully when supervisor.job_timeout expires."""
        limit = self.config.supervisor.job_timeout
        if not self.clock.wait(self.stop_ticker, limit):
            tell(self.actor_ref, Shutdown(reason=f"job timeout ({limit:g} s)"))

    def _tick(self) -> None:
        interval = self.config.state.persist_interval
        while not self.clock.wait(self.stop_ticker, interval):
            if self.state_keeper is None or not tell(self.state_keeper, Tick()):
                return

    # -- messages -------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        match message:
            case Start():
                return self._start()
            case ChildCrashed():
                self._crashed(message)
            case ProcessLost():
                self._process_lost(message)
            case Shutdown(reason=reason, grace=grace):
                self._shutdown(
                    reason, self.config.supervisor.shutdown_grace if grace is None else grace
                )
            case GraceExpired():
                self._abort("shutdown grace expired")
            case InputFailed(error=error, kind=kind):
                exc = InputError(error) if kind == "input" else ConveyorError(error)
                self.failure = self.failure or RunFailed(kind=kind, error=exc)
                self._shutdown(error, self.config.supervisor.shutdown_grace)
            case RunFinished():
                self._finish(message)
            case _:
                log.warning("unexpected message", message=repr(message))
        return None

    def _crashed(self, crash: ChildCrashed) -> None:
        self.children.pop(crash.worker, None)
        self.remote.pop(crash.worker, None)
        if self.finished or (self.failure is not None and self.failure.kind == "supervision"):
            return  # already ending on an escalation; the first error is the one to report
        log.error("child crashed", worker=crash.worker, error=crash.error)
        if crash.kind == "state_keeper":
            message = f"the state keeper crashed: {crash.error}"
            self.failure = RunFailed(kind="supervision", error=SupervisionError(message))
            self._finish(RunFinished(accepted=0, completed=0, failed=0, skipped=0, reason=message))
            return
        if not self._count_restart(f"{crash.worker}: {crash.error}"):
            return
        assert self.state_keeper is not None
        tell(self.state_keeper, WorkerLost(worker=crash.worker, error=crash.error))
        if not self.shutting_down or crash.kind != "downloader":
            self._start_child(crash.kind, crash.index)
        log.warning("child restarted", kind=crash.kind, index=crash.index)

    def _process_lost(self, lost: ProcessLost) -> None:
        """A downloader worker process died: re-dispatch its work, start a new one."""
        if self.finished or lost.host >= len(self.hosts):
            return
        old = self.hosts[lost.host]
        if old.stopping:
            return
        log.error("worker process lost", process=lost.host, pid=old.pid, error=lost.error)
        slots = sorted(
            (worker, slot) for worker, (host, slot) in self.remote.items() if host == lost.host
        )
        assert self.state_keeper is not None
        for worker, _ in slots:
            del self.remote[worker]
            tell(self.state_keeper, WorkerLost(worker=worker, error=lost.error))
        old.stop(timeout=1.0)
        if not self._count_restart(f"worker process {lost.host}: {lost.error}"):
            return
        self.hosts[lost.host] = self._new_host(lost.host)
        if not self.shutting_down:
            for _, slot in slots:
                self._start_child("downloader", slot)
        log.warning("worker process restarted", process=lost.host, downloaders=len(slots))

    def _count_restart(self, what: str) -> bool:
        """Record a restart; False (and the run ends) when the intensity is exceeded."""
        now = self.clock.now()
        self.restarts.append(now)
        window = self.config.supervisor.restart_window
        while self.restarts and now - self.restarts[0] > window:
            self.restarts.popleft()
        if len(self.restarts) > self.config.supervisor.max_restarts:
            message = (
                f"restart intensity exceeded: {len(self.restarts)} restarts within "
                f"{window:g}s (supervisor.max_restarts = "
                f"{self.config.supervisor.max_restarts}); last crash: {what}"
            )
            self.failure = RunFailed(kind="supervision", error=SupervisionError(message))
            self._abort(message)
            return False
        return True

    def _shutdown(self, reason: str, grace: float) -> None:
        if self.shutting_down or self.finished or self.state_keeper is None:
            return
        self.shutting_down = True
        log.info("shutting down", reason=reason, grace=grace)
        tell(self.state_keeper, Cancel(reason=reason))
        me = self.actor_ref

        def expire() -> None:
            if not self.clock.wait(self.stop_ticker, grace):
                tell(me, GraceExpired())

        threading.Thread(target=expire, name="conveyor-grace", daemon=True).start()

    def _abort(self, reason: str) -> None:
        self.cancel.set()
        if self.hub is not None:
            self.hub.abort()
        for host in self.hosts:
            host.cancel()
        if self.state_keeper is not None:
            tell(self.state_keeper, Cancel(reason=reason, abort=True))

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """A bug in the supervisor itself: stop everything and tell the host."""
        self.cancel.set()
        self.stop_ticker.set()
        self._stop_hosts()
        if self.hub is not None:
            with contextlib.suppress(Exception):
                self.hub.finish("error")
        if not self.finished:
            self.finished = True
            error = SupervisionError(f"the supervisor crashed: {exception_value!r}")
            self.on_finished(
                RunFinished(accepted=0, completed=0, failed=0, skipped=0, reason="error"),
                RunFailed(kind="supervision", error=error),
                {},
            )
        for ref in [*self.children.values(), self.state_keeper]:
            if ref is not None:
                ref.stop(block=False)

    def _finish(self, summary: RunFinished) -> None:
        if self.finished:
            return
        self.finished = True
        self.cancel.set()
        self.stop_ticker.set()
        for host in self.hosts:
            host.cancel()
        stopping = [
            ref.stop(block=False)
            for worker, ref in list(self.children.items())
            if not worker.startswith("post_processor")
        ]
        # Give transfers that saw the cancel token a moment to clean up; a read blocked in
        # the network is not waited for (the store already says pending).
        deadline = self.clock.now() + 2.0
        for future in stopping:
            with contextlib.suppress(pykka.Timeout, pykka.ActorDeadError):
                future.get(timeout=max(0.0, deadline - self.clock.now()))
        self._stop_hosts()
        nodes: list[dict[str, Any]] = []
        if self.hub is not None:
            self.hub.finish(summary.reason)
            nodes = [dict(n, in_flight=0) for n in self.hub.snapshot()]  # (all ended)
            self.hub = None
            if self.state_keeper is not None:  # (written as the state closes)
                tell(self.state_keeper, NodesSeen(nodes=tuple(nodes)))
        for worker, ref in list(self.children.items()):
            if worker.startswith("post_processor"):
                ref.stop(block=True, timeout=30)  # flush the manifest before we report
        stats: dict[str, Any] = {}
        if self.state_keeper is not None:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                stats = self.state_keeper.ask(GetStats(), block=True, timeout=30)
                self.state_keeper.stop(block=True, timeout=30)
        if nodes:
            stats["nodes"] = nodes
        self.on_finished(summary, self.failure, stats)
        self.actor_ref.stop(block=False)


def batch_name(config: Config) -> str:
    """``cluster.name``, or one made of the state directory's last two path parts."""
    if config.cluster.name:
        return config.cluster.name
    parts = Path(os.path.realpath(config.state.dir)).parts[-2:]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(parts)).strip("-._")
    return re.sub(r"\.{2,}", ".", name)[:64] or "batch"


def _why(exc: OSError, path: Path) -> str:
    """``exc``'s reason without repeating ``path`` (which the message names already); the
    path that failed when it is another one (a parent that cannot be created)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and Path(os.fsdecode(exc.filename)) != path:
        return f"{os.fsdecode(exc.filename)}: {reason}"
    return reason
