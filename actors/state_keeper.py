"""The StateKeeper: the one owner of a run's mutable state, as an actor.

The state and every decision about it live in a ``runtime.core.ledger.Ledger``; this actor
is its mailbox. It turns each message into a ledger call, then carries out what the
ledger decided — grants to downloaders, files to processors, outcomes to the
post-processor, events to the sink, the summary to the supervisor — and commits to the
store once per tick (group commit) and at the end.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pykka

from actors.control import tell
from messages import (
    Cancel,
    Demand,
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    Enqueue,
    NodeStatus,
    PostProcessed,
    PostProcessFailed,
    ProcessingComplete,
    ProcessingFailed,
    ProgressUpdate,
    ResumeInfo,
)
from messages.control import (
    Adopt,
    Attach,
    Batch,
    Flush,
    GetStats,
    InputClosed,
    NodesSeen,
    Tick,
    WorkerLost,
)
from runtime.core import cputime
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.ledger import Ledger
from runtime.core.logs import get_logger
from runtime.core.store import Store, discard, refuse_foreign_files, sweep_unkept

__all__ = ["EventSink", "StateKeeper"]

log = get_logger("state_keeper")

EventSink = Callable[[Any], None]
"""Receives every message the StateKeeper sees, for progress displays and the API."""


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
        store_factory: Callable[[], Store],
    ) -> None:
        """``store_factory``: opens the run's state store (``runtime.core.store.open_store``
        of the configuration, unless the host program gave another)."""
        super().__init__()
        self.supervisor = supervisor
        self._sink = on_event or (lambda _m: None)
        self.refs: dict[str, Any] = {}  # where each attached worker's messages go
        # Opened here, in the starting thread: a state that cannot be opened is an error
        # (StoreError) for whoever starts the run (a failing on_start would stop us
        # silently).
        self.store: Store | None = store_factory()
        self.store.set_meta(pid=os.getpid())
        out = Path(config.output.dir)
        if config.output.keep != "all":
            try:
                refuse_foreign_files(self.store, out, Path(config.state.dir))
            except BaseException:
                self.store.close()
                raise
        self.ledger = Ledger(config, self.store, clock, rng)
        self.store.commit()
        swept = sweep_unkept(self.store, out, self.ledger.discard, self.ledger.discard_parts)
        if swept:
            log.info("deleted files an interrupted run did not keep", files=swept)

    def on_stop(self) -> None:
        """Commit whatever is left."""
        cputime.record("state_keeper")
        if self.store is not None:
            self.store.close()
            self.store = None

    def on_receive(self, message: Any) -> Any:
        """Feed one message, or a ``Batch`` of them, to the ledger; carry out its effects.

        Actors send related messages together (a result, new demand and the next item's
        start; a batch of processed files) so one wake-up of this thread handles them all.
        """
        if isinstance(message, Batch):
            for one in message.messages:
                self._apply(one)
            self.ledger.pump()
            result = None
        else:
            result, pump = self._apply(message)
            if pump:
                self.ledger.pump()
        self._carry_out()
        return result

    def _apply(self, message: Any) -> tuple[Any, bool]:
        """Feed one message; return the answer and whether to move work forward."""
        ledger = self.ledger
        match message:
            case Demand(worker=worker, n=n):
                ledger.demand(worker, n)
            case DownloadStarted(item_id=item_id):
                ledger.started_transfer(item_id)
                ledger.emit(message)
                return None, False
            case ProgressUpdate():
                ledger.emit(message)
                return None, False
            case ResumeInfo():
                ledger.resume_info(message)
                return None, False
            case DownloadComplete():
                ledger.downloaded(message)
            case DownloadFailed():
                ledger.download_failed(message)
            case ProcessingComplete() | ProcessingFailed():
                ledger.processed(message)
            case PostProcessed() | PostProcessFailed():
                ledger.recorded(message)
            case Enqueue():
                added = ledger.enqueue(message)
                ledger.pump()
                return added, False
            case InputClosed():
                ledger.close_input()
            case Attach(worker=worker, kind=kind, ref=ref, credit=credit, lane=lane, node=node):
                self.refs[worker] = ref
                ledger.attach(worker, kind, credit, lane, node)
            case WorkerLost(worker=worker, error=error, node=node):
                self.refs.pop(worker, None)
                ledger.worker_lost(worker, error, node)
            case Tick():
                ledger.commit()
            case Adopt(done=done, node=node_name):
                ledger.adopt(done, node_name)
            case NodesSeen(nodes=nodes):
                ledger.store.set_meta(nodes=list(nodes))  # (committed with the next commit)
                for one in nodes:
                    ledger.emit(NodeStatus(**one))
                return None, False
            case Flush():  # (the cluster hub acknowledges what it told us, once durable)
                ledger.commit()
                return None, False
            case Cancel(reason=reason, abort=abort):
                ledger.cancel(reason, abort)
            case GetStats():
                return ledger.snapshot(), False
            case _:
                log.warning("unexpected message", message=repr(message))
                return None, False
        return None, True

    def _carry_out(self) -> None:
        """Send what the ledger decided."""
        effects = self.ledger.take()
        if effects.discards:
            discard(effects.discards)  # (what cannot be deleted is logged)
        for worker, message in effects.sends:
            tell(self.refs[worker], message)
        for event in effects.events:
            self._sink(event)
        if effects.finished is not None:
            tell(self.supervisor, effects.finished)
