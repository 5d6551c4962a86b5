"""Cluster mode: the coordinator's hub (a node's loop is ``actors.node``), joined by
Redis Streams.

The coordinator is an ordinary run whose StateKeeper stays the one owner of state; the
``ClusterHub`` (a thread of the coordinator) makes each node's downloaders look like
local workers. It reads the nodes' messages (``runtime.core.streams``: one ``up`` stream,
a consumer group) and tells them to the StateKeeper as if they came from a worker
process; every ~0.2 s it asks the StateKeeper to commit (``Flush``) and only then
acknowledges and deletes the entries it told, so a coordinator killed meanwhile reads
them again when it comes back. Grants go back through a ``NodeRef``: an append to the
node's own stream. A node silent for ``cluster.node_timeout`` is lost — its downloaders
are ``WorkerLost`` and their items pending again — and whatever it reports later is for
leases it no longer holds: the ledger ignores it, so an item ends once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pykka

from actors.control import tell
from messages import (
    BatchDone,
    Cancel,
    ChildCrashed,
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    NodeBeat,
    NodeBye,
    NodeHello,
    NodeLost,
    StartDownloader,
)
from messages.control import Adopt, Attach, Batch, Flush, NodesSeen, WorkerLost
from runtime.core.clock import Clock
from runtime.core.config import MAX_CONCURRENCY, MAX_DOWNLOADERS, Config
from runtime.core.errors import ConveyorError
from runtime.core.logs import Grumble, get_logger
from runtime.core.streams import StreamLink, join_hint

if TYPE_CHECKING:
    pass

__all__ = ["ClusterHub", "NodeRef"]

log = get_logger("cluster")

ACK_EVERY = 0.2
"""Seconds between the hub's commits-then-acknowledgements."""
ENDED_KEPT = 24 * 3600
"""Seconds a batch's end marker stays in Redis (a node arriving late reads it)."""
ALONE_AFTER = 10.0
"""Seconds without any node (and no local downloads) before the coordinator says so."""


# -- the coordinator's side ----------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    address: str
    workers: list[str]
    last_seen: float
    mailbox: int = 1
    read: str = "0"
    done: int = 0
    in_flight: int = 0

    def seen(self, name: str, now: float, wall: float) -> dict[str, Any]:
        """What ``status`` and the summary show of it (``NodeStatus``'s fields)."""
        return {"node": name, "address": self.address, "in_flight": self.in_flight,
                "done": self.done, "last_seen_s": round(now - self.last_seen, 1),
                "last_seen_at": round(wall - (now - self.last_seen), 1)}  # fmt: skip


class NodeRef:
    """Stands in for a downloader actor that lives on a cluster node."""

    def __init__(self, hub: ClusterHub, node: str) -> None:
        self.hub = hub
        self.node = node

    def tell(self, message: Any) -> None:
        """Send a Grant (or Cancel) to the node's stream."""
        if not self.hub.send(self.node, message):
            raise pykka.ActorDeadError(f"cluster node {self.node} is gone")


class ClusterHub:
    """The coordinator's end of a cluster batch (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Config,
        batch: str,
        state_keeper: pykka.ActorRef[Any],
        clock: Clock,
    ) -> None:
        self.config = config
        self.batch = batch
        self.state_keeper = state_keeper
        self.clock = clock
        self.link = StreamLink.connect(config.cluster.redis, batch)
        self.link.ensure_group()  # (a wrong address or password fails the start here)
        # One coordinator per batch: another state's is refused; this state's own (a
        # restart after kill -9) takes over.
        self.me = f"{socket.gethostname()}:{os.path.realpath(config.state.dir)}"
        self.ttl = max(10, int(3 * config.cluster.node_timeout))
        owner_key = self.link.owner_key
        if not self.link.client.set(owner_key, self.me, nx=True, ex=self.ttl):
            owner = (self.link.client.get(owner_key) or b"").decode(errors="replace")
            if owner != self.me:
                raise ConveyorError(
                    f"batch {batch!r} already has a coordinator ({owner}): give this run "
                    "another cluster.name"
                )
            self.link.client.expire(owner_key, self.ttl)
        self.link.client.delete(self.link.ended_key)
        self.link.client.sadd("conveyor:batches", batch)
        self.nodes: dict[str, _Node] = {}
        self.lost: set[str] = set()
        self.told_lost: set[str] = set()
        self.gone: dict[str, dict[str, Any]] = {}  # lost nodes, as last seen
        self.lock = threading.Lock()
        self.warn_alone_at: float | None = None  # (no node is there: when to say so)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="conveyor-cluster", daemon=True)
        self.outbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.unreachable = Grumble(log, "cannot reach the cluster's nodes")
        self.sender = threading.Thread(
            target=self._send_loop, name="conveyor-cluster-send", daemon=True
        )

    def start(self) -> None:
        """Read the nodes' messages from now on (unacknowledged ones first)."""
        self.sender.start()
        self.thread.start()

    def send(self, node: str, message: Any) -> bool:
        """Queue ``message`` for ``node``'s stream; False when the node is gone. The
        sender thread appends what is queued, a frame per node, in one round trip: the
        StateKeeper that grants never waits for Redis."""
        with self.lock:
            if node not in self.nodes:
                return False
        self.outbox.put((node, message))
        return True

    def _send_loop(self) -> None:
        while (first := self.outbox.get()) is not None:
            frames: dict[str, list[Any]] = {first[0]: [first[1]]}
            with contextlib.suppress(queue.Empty):
                for _ in range(4096):
                    nxt = self.outbox.get_nowait()
                    if nxt is None:
                        self.outbox.put(None)  # (seen after this last round)
                        break
                    frames.setdefault(nxt[0], []).append(nxt[1])
            try:
                self.link.send_down_many(list(frames.items()))
            except Exception as exc:  # noqa: BLE001 - Redis away: the nodes will time out
                self.unreachable.failed(self.clock.now(), error=str(exc))
            else:
                self.unreachable.over(self.clock.now())

    def finish(self, reason: str) -> None:
        """The batch is over: tell every node, stop reading, leave the batch list."""
        self.stop.set()
        self.outbox.put(None)  # what was queued goes out first
        for thread in (self.thread, self.sender):
            if thread.ident is not None:  # (started)
                thread.join(5.0)
        with self.lock:
            nodes = list(self.nodes)
        with contextlib.suppress(Exception):
            client = self.link.client
            # Marked ended (a node that missed its BatchDone sees it), then closed. What
            # nodes still say (a last beat) must not greet the next run on this batch as
            # news, and the nodes' streams go once they have read their BatchDone.
            client.set(self.link.ended_key, reason, ex=ENDED_KEPT)
            for node in nodes:
                self.link.send_down(node, [BatchDone(reason=reason)])
            client.srem("conveyor:batches", self.batch)
            client.delete(self.link.up, self.link.owner_key)
            for key in client.scan_iter(self.link.down("*").encode()):
                client.expire(key, 60)
        self.link.client.close()

    def abort(self) -> None:
        """Stop every node's transfers now (the shutdown grace is over)."""
        with self.lock:
            nodes = list(self.nodes)
        for node in nodes:
            self.send(node, Cancel(reason="abort", abort=True))

    def snapshot(self) -> list[dict[str, Any]]:
        """The nodes, for ``status`` and the summary: the ones joined, then the lost."""
        now, wall = self.clock.now(), self.clock.wall()
        with self.lock:
            alive = [s.seen(n, now, wall) for n, s in self.nodes.items()]
            return alive + [dict(gone, lost=True) for gone in self.gone.values()]

    # -- the reader thread ------------------------------------------------------------

    def _run(self) -> None:
        told: list[str] = []  # entries told to the StateKeeper, not yet acknowledged
        cannot_read = Grumble(log, "cannot read the cluster's stream")
        last_ack = last_report = self.clock.now()
        pending = True  # first the entries a killed coordinator had not acknowledged
        while not self.stop.is_set():
            try:
                read = self.link.read_up("coordinator", pending=pending, block_ms=100)
            except Exception as exc:  # noqa: BLE001 - Redis away: retry with a pause
                if "NOGROUP" in str(exc):  # Redis came back empty: what was in flight is gone
                    told = []
                    cannot_read.over(self.clock.now())
                    self._redis_lost()
                    continue
                cannot_read.failed(self.clock.now(), error=str(exc))
                self.stop.wait(1.0)
                continue
            cannot_read.over(self.clock.now())
            if pending and not read.envelopes and not read.rejected:
                pending = False
            for entry_id, why in read.rejected:
                log.warning("refused a message from the cluster", entry=entry_id, reason=why)
            for envelope in read.envelopes:
                self._handle(envelope.node, envelope.messages)
                told.append(envelope.entry_id)
            now = self.clock.now()
            if told and (now - last_ack >= ACK_EVERY or len(told) >= 4096):
                try:
                    self.state_keeper.ask(Flush(), timeout=60)
                    self.link.ack(told)
                except Exception as exc:  # noqa: BLE001 - they are read again after a restart
                    log.warning("cannot acknowledge the cluster's messages", error=str(exc))
                told, last_ack = [], now
            self._check_silence(now)
            self._check_alone(now)
            if now - last_report >= 1.0:
                tell(self.state_keeper, NodesSeen(nodes=tuple(self.snapshot())))
                last_report = now
                with contextlib.suppress(Exception):  # (still this batch's coordinator)
                    self.link.client.set(self.link.owner_key, self.me, ex=self.ttl)

    def _check_alone(self, now: float) -> None:
        """Say so when no node has been there for a while and the coordinator does not
        download itself: nothing moves until one joins (said again every minute)."""
        if self.config.cluster.local_downloads:
            return
        with self.lock:
            alone = not self.nodes
        if not alone:
            self.warn_alone_at = None
        elif self.warn_alone_at is None:
            self.warn_alone_at = now + ALONE_AFTER
        elif now >= self.warn_alone_at:
            log.warning(f"no node is in the batch: start one with {join_hint(self.batch)}",
                        batch=self.batch)  # fmt: skip
            self.warn_alone_at = now + 60.0

    def _redis_lost(self) -> None:
        """Redis restarted without its data: every node's reports in flight are gone, so
        every node is lost (its items pending again) and asked to join again."""
        log.warning("the cluster's Redis lost its streams; every node joins again")
        with contextlib.suppress(Exception):
            self.link.ensure_group()
            self.link.client.sadd("conveyor:batches", self.batch)
            self.link.client.set(self.link.owner_key, self.me, ex=self.ttl)
        with self.lock:
            nodes = list(self.nodes)
        for node in nodes:
            self._lose(node, "Redis lost what was in flight")

    def _handle(self, node: str, messages: tuple[Any, ...]) -> None:
        """One node's frame: its own messages go to the StateKeeper."""
        now = self.clock.now()
        if not isinstance(messages[0] if messages else None, NodeHello):
            with self.lock:
                known = node in self.nodes
            if not known:  # lost, or from before a restart: it must join again
                orphans = tuple(
                    Adopt(done=m, node=node) for m in messages if isinstance(m, DownloadComplete)
                )
                if orphans:  # files it finished all the same: kept if their items still wait
                    tell(self.state_keeper, Batch(messages=orphans))
                self._tell_lost(node)
                return
        forward: list[Any] = []
        for message in messages:
            match message:
                case NodeHello():
                    self._join(node, message, now)
                case NodeBeat(read=read):
                    self._beat(node, read, now)
                case NodeBye(reason=reason):
                    self._lose(node, f"the node left: {reason or 'no reason given'}", left=True)
                case ChildCrashed(worker=worker, error=error, index=index) if self._owns(
                    node, worker
                ):
                    self._replace(node, worker, index, error)
                case _ if self._owns(node, getattr(message, "worker", "")):
                    forward.append(message)
                case _:
                    log.warning("refused a message for another node's worker", node=node,
                                message=type(message).__name__)  # fmt: skip
        if forward:
            with self.lock:
                state = self.nodes.get(node)
                if state is not None:
                    state.last_seen = now
                    for m in forward:
                        if isinstance(m, DownloadStarted):
                            state.in_flight += 1
                        elif isinstance(m, DownloadComplete | DownloadFailed):
                            state.in_flight = max(0, state.in_flight - 1)
                            state.done += isinstance(m, DownloadComplete)
            tell(self.state_keeper, Batch(messages=tuple(forward)) if len(forward) > 1
                 else forward[0])  # fmt: skip

    def _owns(self, node: str, worker: str) -> bool:
        with self.lock:
            state = self.nodes.get(node)
            return state is not None and worker in state.workers

    def _join(self, node: str, hello: NodeHello, now: float) -> None:
        with self.lock:
            if node in self.nodes or node in self.lost:
                return  # (a hello read again after a restart, or from a lost node)
            # (what a node says of itself is bounded as this machine's own settings are)
            count = min(max(1, hello.downloaders), MAX_DOWNLOADERS)
            workers = [f"{node}/downloader-{i}" for i in range(count)]
            mailbox = min(max(1, hello.mailbox), MAX_CONCURRENCY)
            self.nodes[node] = _Node(
                address=hello.address, workers=workers, last_seen=now, mailbox=mailbox
            )
        log.info("cluster node joined", node=node, address=hello.address,
                 downloaders=len(workers), mailbox=hello.mailbox)  # fmt: skip
        for i, worker in enumerate(workers):
            self._start_downloader(node, worker, i, mailbox)

    def _start_downloader(self, node: str, worker: str, index: int, mailbox: int) -> None:
        """Have ``node`` start ``worker``, and the StateKeeper count on it."""
        self.send(node, StartDownloader(worker=worker, index=index, lane="small"))
        tell(self.state_keeper, Attach(worker=worker, kind="downloader", ref=NodeRef(self, node),
                                       credit=mailbox, lane="small", node=node))  # fmt: skip

    def _replace(self, node: str, worker: str, index: int, error: str) -> None:
        """A node's downloader crashed: its items go back, a new one takes its slot."""
        log.warning("a cluster node's downloader crashed", node=node, worker=worker,
                    error=error)  # fmt: skip
        tell(self.state_keeper, WorkerLost(worker=worker, error=error))
        base, _, gen = worker.partition(".")
        new = f"{base}.{int(gen or 1) + 1 if gen.isdigit() else 2}"
        with self.lock:
            state = self.nodes.get(node)
            if state is None:
                return
            state.workers = [new if w == worker else w for w in state.workers]
            mailbox = state.mailbox
        self._start_downloader(node, new, index, mailbox)

    def _beat(self, node: str, read: str, now: float) -> None:
        with self.lock:
            state = self.nodes.get(node)
            if state is None:
                return
            state.last_seen = now
            trim, state.read = read != state.read, read
        if trim and read != "0":
            with contextlib.suppress(Exception):
                self.link.trim_down(node, read)

    def _check_silence(self, now: float) -> None:
        timeout = self.config.cluster.node_timeout
        with self.lock:
            silent = [n for n, s in self.nodes.items() if now - s.last_seen > timeout]
        for node in silent:
            self._lose(node, f"the node was silent for more than {timeout:g} s")

    def _lose(self, node: str, why: str, *, left: bool = False) -> None:
        now = self.clock.now()
        with self.lock:
            state = self.nodes.pop(node, None)
            self.lost.add(node)
            if state is not None:
                seen = state.seen(node, now, self.clock.wall())
                self.gone[node] = dict(seen, in_flight=0, left=left)
        if state is None:
            return
        if left:
            log.info("cluster node left; its items are pending again", node=node, reason=why)
        else:
            log.warning("cluster node lost; its items are pending again", node=node, reason=why)
        for worker in state.workers:
            tell(self.state_keeper, WorkerLost(worker=worker, error=f"{node}: {why}", node=node))
        with contextlib.suppress(Exception):
            self.link.drop_down(node)
        self._tell_lost(node, why)

    def _tell_lost(
        self, node: str, why: str = "the coordinator restarted, or lost track of this node"
    ) -> None:
        """Ask a node to drop its work and join again (once per node)."""
        with self.lock:
            if node in self.told_lost:
                return
            self.told_lost.add(node)
            self.lost.add(node)
        with contextlib.suppress(Exception):
            self.link.send_down(node, [NodeLost(reason=why)])
