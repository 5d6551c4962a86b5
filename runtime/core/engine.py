"""The engine interface: how a downloader of the small-file lane runs many transfers.

A downloader hands each granted item to its engine's ``start`` (a result when the item
ends at once, else None) and calls ``perform`` while transfers run; ``perform`` returns
the results of the transfers that ended. Two engines implement it:

- ``runtime.core.curl.CurlEngine``: libcurl's multi interface (the default);
- ``TransportEngine`` (here): any ``Transport`` — the simulator of
  ``--simulate-downloads`` — run inside the same loop, each request's latency waited for
  by the loop instead of by a thread, so a simulated run exercises the code users run.

Both share every check of a transfer with the requests engine through
``runtime.core.transfer.Transfer``. A transport factory with a ``make_engine(transfer)``
method gives the downloaders of the small-file lane an engine; without one, they
transfer one item at a time through the factory's transports.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

from messages import DownloadComplete, DownloadFailed, WorkItem
from runtime.core.errors import CancelledError
from runtime.core.transfer import Transfer

if TYPE_CHECKING:
    from runtime.core.transport import Transport

__all__ = ["Engine", "TransportEngine"]

Result = DownloadComplete | DownloadFailed


class Engine(Protocol):
    """What a downloader drives (see the module docstring)."""

    @property
    def active(self) -> int:
        """Transfers running."""
        ...

    def start(self, item: WorkItem) -> Result | None:
        """Begin an item's transfer; its result when it ends at once, else None."""
        ...

    def perform(self, wait: float) -> list[Result]:
        """Move every transfer on for up to ``wait`` s, or until one ends; what ended."""
        ...

    def close(self) -> None:
        """Abort what runs and free what the engine holds."""
        ...


class TransportEngine:
    """Runs a ``Transport``'s transfers in the engine loop; see the module docstring.

    Each item waits ``latency`` seconds (the request's time to its first byte) among the
    others, then its body is read through ``Transfer.download`` at once.
    """

    def __init__(self, transfer: Transfer, transport: Transport, latency: float) -> None:
        transfer.transport = transport
        self.transfer = transfer
        self.clock = transfer.clock
        self.cancel = transfer.cancel
        self.latency = latency
        self.waiting: deque[tuple[float, WorkItem]] = deque()  # due times only grow

    @property
    def active(self) -> int:
        """Transfers running."""
        return len(self.waiting)

    def start(self, item: WorkItem) -> Result | None:
        """Begin an item's transfer (at once without latency)."""
        if not self.latency:
            return self._run(item)
        self.waiting.append((self.clock.now() + self.latency, item))
        return None

    def perform(self, wait: float) -> list[Result]:
        """Finish the transfers that are due, waiting up to ``wait`` s for the first."""
        done: list[Result] = []
        until = self.clock.now() + wait
        while True:
            now = self.clock.now()
            while self.waiting and self.waiting[0][0] <= now and not self.cancel.is_set():
                done.append(self._run(self.waiting.popleft()[1]))
            if done or not self.waiting or now >= until or self.cancel.is_set():
                break
            self.clock.wait(self.cancel, min(until, self.waiting[0][0]) - now)
        if self.cancel.is_set():
            while self.waiting:
                item = self.waiting.popleft()[1]
                done.append(self.transfer.failed(item, CancelledError("cancelled")))
        return done

    def close(self) -> None:
        """Drop what waits (its items are pending in the store)."""
        self.waiting.clear()

    def _run(self, item: WorkItem) -> Result:
        return self.transfer.download(item)  # what it logs names the item
