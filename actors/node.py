"""A cluster node's loop (``python -m runtime worker``): the other end of
``actors.cluster``.

A node announces itself (``NodeHello``), beats every second, starts the downloaders the
coordinator asks for, hands them their grants and sends what they say up
(``StreamUplink``). It downloads into its own output directory; the files stay there.
It stops when the batch ends, or joins again under a new name when the coordinator no
longer counts on it (``NodeLost``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from actors.child import ChildContext
from actors.control import tell
from actors.downloader import Downloader
from messages import (
    BatchDone,
    Cancel,
    Grant,
    NodeBeat,
    NodeBye,
    NodeHello,
    NodeLost,
    StartDownloader,
)
from messages.control import Batch
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.logs import Grumble, get_logger
from runtime.core.streams import StreamLink
from runtime.core.transfer import RangeMemory

if TYPE_CHECKING:
    from runtime.core.transport import TransportFactory

__all__ = ["BEAT", "NodeEnd", "StreamUplink", "run_node"]

log = get_logger("node")

BEAT = 1.0
"""Seconds between a node's beats."""
ENDED = "the batch ended"
REJOIN = "the coordinator asks this node to join again"
WAITING_POLL = 0.2
"""Seconds between a waiting node's looks for its coordinator (it joins that soon)."""
AWAY_AFTER = 3
"""Beats in a row without the coordinator's key before a node says it is not running."""
UPLINK_PATIENCE = 30.0
"""Seconds a node's message waits for Redis to answer before the node gives up."""


@dataclass(frozen=True, slots=True)
class NodeEnd:
    """Why ``run_node`` returned."""

    reason: str
    """Said to the user: ``the batch ended (done)``, ``the coordinator asks …``, ``stopped``."""
    ended: str | None = None
    """The batch's end reason (``done``, ``interrupted``, …) when it ended; else None."""
    rejoin: bool = False
    """Whether the coordinator asks this node to join again under a new name."""


class StreamUplink:
    """On a node: stands in for the StateKeeper and the Supervisor."""

    def __init__(self, link: StreamLink, node: str) -> None:
        self.link = link
        self.node = node

    def tell(self, message: Any) -> None:
        """Append ``message`` (or a ``Batch`` of them) to ``up``, waiting (with backoff)
        for Redis for up to ``UPLINK_PATIENCE`` seconds: a report is not dropped for a
        passing hiccup."""
        messages = message.messages if isinstance(message, Batch) else (message,)
        deadline = time.monotonic() + UPLINK_PATIENCE
        pause = 0.05
        while True:
            try:
                self.link.send_up(self.node, messages)
                return
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    raise pykka.ActorDeadError(f"cannot reach the coordinator: {exc}") from exc
                time.sleep(pause)
                pause = min(pause * 2, 2.0)


def run_node(
    *,
    link: StreamLink,
    node: str,
    config: Config,
    transport_factory: TransportFactory,
    clock: Clock,
    stop: threading.Event,
) -> NodeEnd:
    """Serve one batch as ``node``: announce, beat, download what is granted, until the
    batch ends (``BatchDone``), the coordinator asks it to join again (``NodeLost``) or
    ``stop`` is set. Returns why it ended."""
    uplink = StreamUplink(link, node)
    cancel = threading.Event()
    ranges = RangeMemory()
    local: dict[str, pykka.ActorRef[Any]] = {}
    d = config.download
    read = "0"
    hello = NodeHello(node=node, address=socket.gethostname(), downloaders=d.workers,
                      mailbox=d.mailbox, output=os.path.realpath(config.output.dir))  # fmt: skip
    # The node speaks (its hello, then a beat a second) only while the batch has a
    # coordinator: a node waiting for one adds nothing to Redis meanwhile.
    greeted = False
    if link.client.get(link.owner_key) is not None:
        link.send_up(node, [hello])
        greeted = True
    else:
        log.info("waiting for the batch's coordinator to open it", batch=link.batch)

    ended: list[str] = []  # (the end marker's reason, when this node missed BatchDone)
    seen_open = seen_owner = False  # the batch open; its coordinator running, once
    absent = 0  # looks in a row that found no coordinator (AWAY_AFTER: it is away)
    unreachable = Grumble(log, "cannot reach the coordinator")

    def beat() -> None:
        nonlocal seen_open, seen_owner, absent, greeted
        while not stop.wait(BEAT if greeted else WAITING_POLL):
            try:
                why, owner = link.client.mget(link.ended_key, link.owner_key)
                if owner is not None:
                    link.send_up(node, [NodeBeat(node=node, read=read)] if greeted else [hello])
                    greeted = True
            except Exception as exc:  # noqa: BLE001 - Redis away: keep trying
                unreachable.failed(time.monotonic(), error=str(exc))
                continue
            unreachable.over(time.monotonic())
            if why is not None and seen_open:  # it ended before this node heard of it
                ended.append(why.decode(errors="replace"))
                stop.set()
            seen_open = seen_open or why is None  # (a marker from an earlier run: not ours)
            if why is not None:
                continue
            if owner is not None:
                if seen_owner and absent >= AWAY_AFTER:
                    log.info("the batch's coordinator is back", batch=link.batch)
                seen_owner, absent = True, 0
                continue
            absent += 1  # (a Redis restarted empty misses the key for a second or so)
            if seen_owner and absent == AWAY_AFTER:
                log.warning("the batch's coordinator is not running; this node waits "
                            "for it to come back", batch=link.batch)  # fmt: skip

    threading.Thread(target=beat, name="conveyor-beat", daemon=True).start()
    cannot_read = Grumble(log, "cannot read this node's stream")
    end = NodeEnd("stopped")
    try:
        while not stop.is_set():
            try:
                after, frames = link.read_down(node, read, block_ms=200)
            except Exception as exc:  # noqa: BLE001 - Redis away: retry with a pause
                cannot_read.failed(time.monotonic(), error=str(exc))
                stop.wait(1.0)
                continue
            cannot_read.over(time.monotonic())
            read = after
            for frame in frames:
                for message in frame:
                    match message:
                        case Grant(worker=worker):
                            if (ref := local.get(worker)) is not None:
                                tell(ref, message)
                        case StartDownloader(worker=worker, index=index, lane=lane):
                            child = ChildContext(
                                worker=worker, index=index, supervisor=uplink, state_keeper=uplink
                            )
                            local[worker] = Downloader.start(
                                child=child, lane=lane, config=config,
                                transport_factory=transport_factory, clock=clock,
                                cancel=cancel, ranges=ranges,
                            )  # fmt: skip
                        case Cancel(abort=True):
                            cancel.set()
                        case BatchDone(reason=why):
                            end = NodeEnd(f"{ENDED} ({why})", ended=why)
                            stop.set()
                        case NodeLost(reason=why):
                            end = NodeEnd(f"{REJOIN} ({why})", rejoin=True)
                            stop.set()
                        case _:
                            log.warning("unexpected message", message=type(message).__name__)
    finally:
        if ended and end.reason == "stopped":
            end = NodeEnd(f"{ENDED} ({ended[0]})", ended=ended[0])
        stop.set()
        cancel.set()
        for ref in local.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=True, timeout=5)
        if end.ended is None:  # (nobody reads after the end)
            with contextlib.suppress(Exception):
                link.send_up(node, [NodeBye(node=node, reason=end.reason)])
    return end
