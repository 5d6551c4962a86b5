"""The embedding API: host conveyor's actors inside your own program.

::

    from runtime import Pipeline, Config

    config = Config.from_mapping({"output": {"dir": "out"}, "state": {"dir": "state"}})
    with Pipeline(config) as pipeline:
        pipeline.submit([{"url": "https://example.org/a.bin"}])
        summary = pipeline.wait()
    print(summary.finished.completed)

``start()`` starts the actors (and, when ``input.path`` is set, streams that file in);
``submit()`` adds entries; ``events()`` or ``on_event`` deliver every message the
StateKeeper sees; ``wait()`` declares the input complete and blocks until the run ends;
``stop()`` begins a graceful shutdown. Calls are thread-safe; in an asyncio program call
``wait()`` through ``asyncio.to_thread`` so the event loop is never blocked.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import queue
import random
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pykka

from actors.control import tell
from actors.supervisor import Supervisor
from messages import Enqueue, Rejected, RunFinished, WorkItem
from messages.control import (
    GetStats,
    InputClosed,
    InputFailed,
    RunErrorKind,
    RunFailed,
    Shutdown,
    Start,
)
from runtime.core import cputime
from runtime.core.clock import Clock, SystemClock
from runtime.core.config import Config
from runtime.core.curl import CurlEngineFactory
from runtime.core.errors import EXIT_CODES, ConfigError, ConveyorError, InputError
from runtime.core.inputs import iter_batches, parse_entry
from runtime.core.lock import StateLock
from runtime.core.logs import get_logger
from runtime.core.simulate import SimulatedTransportFactory
from runtime.core.store import Store, StoreError, open_store, recheck

if TYPE_CHECKING:
    from runtime.core.transport import TransportFactory

__all__ = ["EXIT_CODES", "Pipeline", "RunSummary", "default_transports"]

log = get_logger("pipeline")

EVENTS_BUFFER = 10_000
"""Most events waiting for a reader of ``Pipeline.events()``."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """How a run ended."""

    finished: RunFinished
    """Counts as committed to the store."""
    error_kind: RunErrorKind | None = None
    """``input``, ``feeder`` or ``supervision`` when the run ended on an error."""
    error: str | None = None
    """The error message."""
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The StateKeeper's final counters (retries, the most items one downloader held, …)."""
    exception: Exception | None = None
    """The error itself (an ``InputError``, a ``SupervisionError``, …), when there was one."""

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this run (see ``EXIT_CODES``)."""
        if self.error_kind == "input":
            return EXIT_CODES["bad_input"]
        if self.error_kind is not None:
            return EXIT_CODES["run_error"]
        f = self.finished
        if f.reason != "done" or f.pending:
            return EXIT_CODES["interrupted"]
        if f.completed == f.accepted:
            return EXIT_CODES["ok"]
        return EXIT_CODES["failed_items"]


class Pipeline:
    """One run of the actor pipeline, hosted in this process."""

    def __init__(
        self,
        config: Config,
        *,
        transport_factory: TransportFactory | None = None,
        simulate: bool = False,
        clock: Clock | None = None,
        on_event: Callable[[Any], None] | None = None,
        rng: random.Random | None = None,
        seed: int | None = None,
        recheck: str | None = None,
        store: Callable[[], Store] | None = None,
    ) -> None:
        """Prepare a run; nothing starts before ``start()``.

        Args:
            config: the run's configuration.
            transport_factory: builds one transport per downloader (default: requests).
            simulate: use the seeded offline transport of ``[simulate]``.
            clock: time source (default: the system's monotonic clock).
            on_event: called from the StateKeeper's thread with every message it sees;
                keep it quick.
            rng: randomness for backoff jitter (seed it for reproducible runs). Default: a
                ``random.Random`` seeded from ``seed``.
            seed: the default rng's seed (default: a fresh random one, logged at start).
            recheck: before starting, check that every completed item's file is still in
                the output directory with its recorded size (``"size"``) or also its
                sha256 (``"full"``), and put missing or changed ones back to pending.
            store: opens the run's state store (default: the one ``state.backend`` names,
                in ``state.dir``).
        """
        self.config = config
        self.clock = clock or SystemClock()
        if transport_factory is None:
            transport_factory = default_transports(config, self.clock, simulate=simulate)
        self.transport_factory = transport_factory
        self._on_event = on_event
        self.seed = secrets.randbits(63) if seed is None else seed
        self._rng = rng if rng is not None else random.Random(self.seed)
        self._events: queue.Queue[Any] | None = None
        self._done = threading.Event()
        self._summary: RunSummary | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None
        self._state_keeper: pykka.ActorRef[Any] | None = None
        self._feeder: threading.Thread | None = None
        self._stopping = threading.Event()
        self._submitted = itertools.count(1)
        self._input_closed = False
        self._lock: StateLock | None = None
        if recheck not in (None, "size", "full"):
            raise ValueError(f"recheck must be None, 'size' or 'full', not {recheck!r}")
        if recheck is not None and config.cluster.redis:
            raise ConfigError("--recheck: a cluster's files are on its nodes, not here")
        self._recheck = recheck
        self._open_store = functools.partial(
            _same_kind_of_run,
            store or functools.partial(open_store, config),
            simulate,
            f"the state in {config.state.dir}",
            config.input.path,
        )
        self.rechecked: tuple[int, list[str]] | None = None
        """After ``start()`` with ``recheck``: files checked and ids put back to pending."""

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Start the actors, and the input reader when ``input.path`` is set.

        Raises:
            StateLockedError: another run is using ``state.dir``.
            ConveyorError: a plugin cannot be loaded or the state cannot be opened.
        """
        if self._supervisor is not None:
            raise RuntimeError("this pipeline was already started")
        self._lock = self._take_lock()
        d = self.config.download
        log.info(
            "run starting",
            seed=self.seed,
            state=self.config.state.dir,
            concurrency=d.concurrency,
            downloaders=d.workers,
            mailbox=d.mailbox,
            per_host=d.per_host,
        )
        try:
            if self._recheck is not None:
                self.rechecked = self._run_recheck(self._recheck == "full")
            self._supervisor = Supervisor.start(
                config=self.config,
                transport_factory=self.transport_factory,
                clock=self.clock,
                on_event=self._event,
                on_finished=self._finished,
                rng=self._rng,
                store_factory=self._open_store,
            )
            # The supervisor stops whatever it started when this raises.
            self._state_keeper = self._supervisor.ask(Start(), block=True)
        except BaseException:
            self._lock.release()
            raise
        if self.config.input.path:
            self._feeder = threading.Thread(target=self._feed, name="conveyor-feeder", daemon=True)
            self._feeder.start()
        return self

    def _run_recheck(self, full: bool) -> tuple[int, list[str]]:
        store = self._open_store()
        try:
            result = recheck(store, Path(self.config.output.dir), full)
        except OSError as exc:
            raise StoreError(f"cannot recheck the state in {self.config.state.dir}: {exc}") from exc
        finally:
            store.close()
        log.info("recheck", checked=result[0], pending_again=len(result[1]), full=full)
        return result

    def _take_lock(self) -> StateLock:
        state_dir = Path(self.config.state.dir)
        try:
            return StateLock.acquire(state_dir)
        except OSError as exc:
            raise ConveyorError(f"cannot open the state in {state_dir}: {exc}") from exc

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done.is_set():
            self.stop(grace=0 if exc is not None else None)
            self._done.wait()

    def submit(self, entries: Iterable[Mapping[str, Any]]) -> int:
        """Add entries (``{"url", "id"?, "name"?, "sha256"?, "size"?}``) to the run.

        Bad entries are recorded as failed ``invalid_entry`` like bad input lines.

        Returns:
            How many new items were accepted for download.
        """
        if self._state_keeper is None:
            raise RuntimeError("start() the pipeline before submitting")
        items: list[WorkItem] = []
        rejected: list[Rejected] = []
        derived: list[str] = []
        for entry in entries:
            n = next(self._submitted)
            parsed, was_derived = parse_entry(entry, 0)
            if isinstance(parsed, Rejected):
                rejected.append(
                    Rejected(
                        id=_rejected_key(entry),
                        line=0,
                        url=parsed.url,
                        name=parsed.name,
                        error=parsed.error.replace("line 0", f"entry {n}"),
                    )
                )
            else:
                items.append(parsed)
                if was_derived:
                    derived.append(parsed.id)
        batch = Enqueue(
            items=tuple(items), rejected=tuple(rejected), derived_name_ids=tuple(derived)
        )
        added: int = self._state_keeper.ask(batch, block=True)
        return added

    def events(self) -> Iterator[Any]:
        """Iterate over the messages the StateKeeper sees, until ``RunFinished``.

        Call it before ``start()`` to see every event; later calls see events from then on.
        At most ``EVENTS_BUFFER`` events wait for the reader: a reader that falls behind
        slows the run down rather than filling memory, so read from a thread of its own
        (or use ``on_event``). Closing the iterator (``break`` out of the loop, or
        ``close()``) lets the run go on without it.
        """
        if self._events is None:
            self._events = queue.Queue(maxsize=EVENTS_BUFFER)
        return self._drain(self._events)

    def _drain(self, events: queue.Queue[Any]) -> Iterator[Any]:
        try:
            while True:
                message = events.get()
                yield message
                if isinstance(message, RunFinished):
                    return
        finally:
            if self._events is events:
                self._events = None  # nobody reads it any more: stop filling it

    def stats(self) -> dict[str, Any]:
        """Return the StateKeeper's live counters."""
        if self._state_keeper is None:
            return {}
        try:
            result: dict[str, Any] = self._state_keeper.ask(GetStats(), block=True, timeout=10)
        except pykka.ActorDeadError:
            return {}
        return result

    def close_input(self) -> None:
        """Declare that no more entries will be submitted (``wait()`` does this too)."""
        if self._input_closed or self._state_keeper is None or self._feeder is not None:
            return
        self._input_closed = True
        tell(self._state_keeper, InputClosed())

    def wait(self, timeout: float | None = None) -> RunSummary:
        """Close the input and block until the run ends.

        Raises:
            TimeoutError: the run did not end within ``timeout`` seconds.
        """
        self.close_input()
        if not self._done.wait(timeout):
            raise TimeoutError(f"the run did not finish within {timeout} s")
        assert self._summary is not None
        return self._summary

    @property
    def done(self) -> bool:
        """Whether the run has ended."""
        return self._done.is_set()

    def stop(self, grace: float | None = None, reason: str = "interrupted") -> None:
        """Begin a graceful shutdown: no new grants, in-flight items get ``grace`` seconds.

        Returns at once; ``wait()`` for the end.
        """
        self._stopping.set()
        if self._supervisor is not None:
            tell(self._supervisor, Shutdown(reason=reason, grace=grace))

    # -- internals ------------------------------------------------------------------------

    def _event(self, message: Any) -> None:
        if self._on_event is not None:
            self._on_event(message)
        events = self._events
        while events is not None:
            try:
                events.put(message, timeout=0.1)  # a full buffer: the reader is behind
                return
            except queue.Full:
                if self._events is not events or self._done.is_set():
                    return  # the reader let go

    def _finished(
        self, summary: RunFinished, failure: RunFailed | None, stats: dict[str, Any]
    ) -> None:
        self._summary = RunSummary(
            finished=summary,
            error_kind=failure.kind if failure else None,
            error=str(failure.error) if failure else None,
            stats=stats,
            exception=failure.error if failure else None,
        )
        if self._lock is not None:
            self._lock.release()  # the store is committed and closed: the next run may start
        self._done.set()

    def _feed(self) -> None:
        """Stream the input file into the StateKeeper (on the feeder thread).

        Whatever stops it early ends the run: a bad file with an input error (exit 2),
        anything else (a store error during ingest, a bug) with a run error (exit 3) —
        never silently, which would leave ``wait()`` waiting forever.
        """
        assert self._state_keeper is not None
        assert self._supervisor is not None
        try:
            for batch in iter_batches(Path(self.config.input.path), self.config.input.format):
                if self._stopping.is_set():
                    return
                self._state_keeper.ask(batch)
        except InputError as exc:
            tell(self._supervisor, InputFailed(error=str(exc)))
            return
        except pykka.ActorDeadError:
            return  # the run ended while we were reading
        except Exception as exc:  # noqa: BLE001 - anything else must end the run too
            log.error("the input feeder failed", error=repr(exc))
            tell(
                self._supervisor,
                InputFailed(error=f"reading the input failed: {exc!r}", kind="feeder"),
            )
            return
        tell(self._state_keeper, InputClosed())
        cputime.record("feeder")


def _rejected_key(entry: Any) -> str:
    """A submitted bad entry's id, from its content: the same entry submitted again on
    the same state (a resumed program) is the same record, not a second one."""
    text = json.dumps(entry, sort_keys=True, default=repr)
    return "submit:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _same_kind_of_run(
    factory: Callable[[], Store], simulate: bool, where: str, input_path: str
) -> Store:
    """Open the store, refusing to mix simulated and real downloads in one state: the
    items of one would count as done for the other. Warn when another input file joins
    a state's batch."""
    store = factory()
    earlier = store.get_meta("input_path")
    if input_path and earlier and earlier != input_path and store.counts():
        log.warning(
            "this state already holds the items of another input file: its entries join "
            "that batch (an id or a name seen there is a duplicate; use another state "
            "directory for a batch of its own)",
            state=where.removeprefix("the state in "),
            earlier_input=earlier,
            input=input_path,
        )
    if input_path:
        store.set_meta(input_path=input_path)
    simulated = store.get_meta("simulated")
    if simulated is not None and bool(simulated) != simulate and store.counts():
        store.close()
        if simulate:
            raise StoreError(
                f"{where} holds real downloads; --simulate-downloads would record simulated "
                "files as done: give another state directory (--state, or another --output)"
            )
        raise StoreError(
            f"{where} holds a simulated run (--simulate-downloads), whose items count as done: "
            "give another state directory (--state, or another --output), or delete it to "
            "start over"
        )
    store.set_meta(simulated=simulate)
    return store


def default_transports(config: Config, clock: Clock, *, simulate: bool = False) -> Any:
    """The transports a run uses unless given others: the simulator of
    ``--simulate-downloads``, else the engine ``download.engine`` names."""
    if simulate:
        return SimulatedTransportFactory(config.simulate, clock)
    if config.download.engine == "curl":
        return CurlEngineFactory(config)
    from runtime.core.transport import RequestsTransportFactory  # (loads only for its engine)

    return RequestsTransportFactory(config)
