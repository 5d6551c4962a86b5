"""The Downloader: fetches leased items one at a time into ``<name>.part``, then renames.

The transfer itself (``runtime.core.transfer``) is the engine's; this actor keeps the
mailbox, the demand and the reporting.

It pulls work: the supervisor attaches it to the StateKeeper with ``download.mailbox``
credit, and after each finished item it sends ``Demand(1)``. So the items queued here
never exceed the mailbox, by construction. While a transfer runs the actor cannot read its
inbox; shutdown reaches it through the cancel token checked in the chunk loop.

Expected failures (HTTP errors, timeouts, bad bodies, disk errors) become
``DownloadFailed`` messages. Anything else is a bug: it escapes, pykka stops the actor,
``on_failure`` tells the supervisor, and the StateKeeper re-dispatches the lease.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from actors.child import ChildActor, ChildContext
from actors.control import tell
from messages import (
    HANDED_BACK,
    Demand,
    DownloadFailed,
    DownloadStarted,
    Grant,
    ProgressUpdate,
    ResumeInfo,
    WorkItem,
)
from messages.control import Batch, TakeNext
from messages.types import Lane
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.engine import Engine
from runtime.core.logs import get_logger
from runtime.core.transfer import RangeMemory, Transfer

if TYPE_CHECKING:
    from runtime.core.transport import Transport, TransportFactory

__all__ = ["Downloader", "ProtocolError"]

log = get_logger("downloader")


class ProtocolError(RuntimeError):
    """A peer broke the pipeline's protocol (a bug, so it crashes the actor)."""


class Downloader(ChildActor):
    """One downloader instance; see the module docstring."""

    kind = "downloader"

    def __init__(
        self,
        *,
        child: ChildContext,
        config: Config,
        transport_factory: TransportFactory,
        clock: Clock,
        cancel: threading.Event,
        lane: Lane = "small",
        ranges: RangeMemory | None = None,
    ) -> None:
        """``ranges``: the hosts known not to honour Range, shared by the downloaders of
        one run in one process (default: this downloader's own)."""
        super().__init__(child=child)
        self.config = config
        self.lane = lane
        self.transport_factory = transport_factory
        self.clock = clock
        self.cancel = cancel
        self.queue: deque[WorkItem] = deque()
        self.announced: str | None = None  # the item whose DownloadStarted went out early
        self.owed = 0  # demand for items handed back, sent when the running transfer ends
        self.transfer_started = 0.0
        self.pumping = False  # (curl engine) a TakeNext is on its way to us
        # The engine is built here, in the starting thread (a failing on_start would stop
        # us silently). The large-file lane transfers with a transport: requests reads
        # big bodies 1 MiB at a time, where libcurl calls Python every 16 KiB (W3 in
        # benchmarks/README.md); it is built with the first item, so a run without large
        # files never loads requests.
        make_engine = getattr(transport_factory, "make_engine", None) if lane == "small" else None
        self.transport: Transport | None = None
        self.transfer = Transfer(
            worker=self.worker,
            config=config,
            transport=self.transport,
            clock=clock,
            cancel=cancel,
            lane=lane,
            hooks=_Hooks(self),
            ranges=ranges,
        )
        self.engine: Engine | None = make_engine(self.transfer) if make_engine else None

    def on_stop(self) -> None:
        """Close the transport (or the engine)."""
        self.cleanup()
        super().on_stop()

    def cleanup(self) -> None:
        """Close the transport (or the engine); also after a crash."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if self.engine is not None:
            self._receive_concurrent(message, self.engine)
            return
        match message:
            case Grant(items=items):
                was_idle = not self.queue
                self.queue.extend(items)
                if len(self.queue) > self.config.download.mailbox:
                    raise ProtocolError(
                        f"{self.worker} holds {len(self.queue)} items, "
                        f"mailbox is {self.config.download.mailbox}"
                    )
                if was_idle:
                    self.actor_ref.tell(TakeNext())
            case TakeNext():
                self._work_one()
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))

    # -- the curl engine: every held item transfers at once --------------------------

    def _receive_concurrent(self, message: Any, engine: Engine) -> None:
        match message:
            case Grant(items=items):
                if engine.active + len(items) > self.config.download.mailbox:
                    raise ProtocolError(
                        f"{self.worker} holds {engine.active + len(items)} items, "
                        f"mailbox is {self.config.download.mailbox}"
                    )
                batch: list[Any] = [self._started(item) for item in items]
                done = [r for item in items if (r := engine.start(item)) is not None]
                self._report(batch, done)
                self._pump(engine)
            case TakeNext():
                self.pumping = False
                # Keep the transfers moving here while nothing else waits in the inbox
                # (a grant, a stop): no message round trip per finished transfer.
                while True:
                    self._report([], engine.perform(PUMP_WAIT))
                    if not engine.active or not self.actor_inbox.empty():
                        break
                self._pump(engine)
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))

    def _report(self, batch: list[Any], done: list[Any]) -> None:
        """Send starts and results together, with the demand the results free."""
        if done:
            batch += [*done, Demand(worker=self.worker, n=len(done))]
        if batch:
            tell(self.state_keeper, Batch(messages=tuple(batch)))

    def _pump(self, engine: Engine) -> None:
        """Keep the transfers moving while there are any (no loop when idle)."""
        if engine.active and not self.pumping:
            self.pumping = True
            self.actor_ref.tell(TakeNext())

    # -- the requests engine: one transfer at a time ----------------------------------

    def _work_one(self) -> None:
        if not self.queue:
            return
        item = self.queue[0]
        if self.transport is None:
            self.transport = self.transfer.transport = self.transport_factory()
        if item.id != self.announced:
            tell(self.state_keeper, self._started(item))
        self.announced = None  # a retry of the same item later must be announced again
        self.transfer_started = self.clock.now()
        with structlog.contextvars.bound_contextvars(item_id=item.id):
            result = self.transfer.download(item)
        self.queue.popleft()
        # One message per item: the result, new demand and the start of the next item.
        batch: list[Any] = [result, Demand(worker=self.worker, n=1 + self.owed)]
        self.owed = 0
        if self.queue:
            batch.append(self._started(self.queue[0]))
            self.announced = self.queue[0].id
            self.actor_ref.tell(TakeNext())
        tell(self.state_keeper, Batch(messages=tuple(batch)))

    def _hand_back(self) -> None:
        """Give back the items queued behind the running transfer (it is taking long).

        They go back to the StateKeeper unstarted, so an idle downloader takes them; the
        demand they used is asked for again only when this transfer ends, so they are not
        granted straight back to a downloader that is still busy.
        """
        queued = [self.queue.pop() for _ in range(len(self.queue) - 1)]
        self.owed += len(queued)
        log.debug("handing back queued items", actor=self.worker, items=len(queued))
        returned = tuple(
            DownloadFailed(
                worker=self.worker,
                item=item,
                error_kind=HANDED_BACK,
                error="queued behind a long transfer; given back to another downloader",
                permanent=False,
                counts_attempt=False,
            )
            for item in reversed(queued)
        )
        tell(self.state_keeper, Batch(messages=returned))

    def _started(self, item: WorkItem) -> DownloadStarted:
        return DownloadStarted(
            worker=self.worker, item_id=item.id, url=item.url, attempt=item.attempts
        )

    # -- what a transfer tells us -------------------------------------------------------

    def _send_validator(self, item: WorkItem, validator: str) -> None:
        tell(
            self.state_keeper, ResumeInfo(worker=self.worker, item_id=item.id, validator=validator)
        )

    def _progress(self, item: WorkItem, received: int, total: int | None) -> None:
        tell(
            self.state_keeper,
            ProgressUpdate(worker=self.worker, item_id=item.id, received=received, total=total),
        )

    def _tick(self, now: float) -> None:
        if len(self.queue) > 1 and now - self.transfer_started >= HAND_BACK_AFTER:
            self._hand_back()


class _Hooks:
    """The downloader's side of a running ``Transfer`` (see ``TransferHooks``)."""

    def __init__(self, downloader: Downloader) -> None:
        self.downloader = downloader

    def validator(self, item: WorkItem, validator: str) -> None:
        self.downloader._send_validator(item, validator)

    def progress(self, item: WorkItem, received: int, total: int | None) -> None:
        self.downloader._progress(item, received, total)

    def tick(self, now: float) -> None:
        self.downloader._tick(now)


HAND_BACK_AFTER = 0.5
"""Seconds a transfer may run before the items queued behind it are handed back."""

PUMP_WAIT = 0.005
"""(curl engine) Longest wait for network activity before the actor reads its inbox:
how late a grant or a cancellation may reach a busy downloader."""
