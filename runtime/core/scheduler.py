"""What may be dispatched next: per-host limits, breakers, cool-downs, backoff and lanes.

The ledger owns one ``Scheduler`` (plain state, no threads) and asks it for the next item a
downloader of a given lane may take. Pending work is queued **per host, in the store**:
the scheduler reads a host's items in small blocks only when that host may take a request,
and goes round-robin over the hosts that may, so a host that is cooling down, has an open
breaker or is at ``download.per_host`` holds nothing in memory and delays no other host,
however many items it has. In memory are only those small blocks, the items in flight and
the retries waiting for their not-before time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any, Protocol

from messages import HostStatus, WorkItem
from messages.types import Lane
from runtime.core.breaker import CircuitBreaker
from runtime.core.config import Config
from runtime.core.hosts import HostState, host_of, host_record, host_status

__all__ = ["BREAKER_KINDS", "PendingSource", "Scheduler"]

BREAKER_KINDS = frozenset({"connection", "timeout", "stalled", "truncated", "http_5xx"})
"""Failure kinds that say something about the host's health and count for its breaker."""

LANES: tuple[Lane, ...] = ("small", "large")

PROBE_SCAN = 256
"""Queued items of a host looked at for a fresh half-open probe before taking any."""


class PendingSource(Protocol):
    """Where pending items wait, per host (the store)."""

    def pending_hosts(self) -> list[str]:
        """Every host that has pending items."""
        ...

    def pending_of(
        self, host: str, large: bool, after: int, limit: int
    ) -> list[tuple[int, WorkItem]]:
        """Up to ``limit`` pending items of ``host`` in the large lane (or the small one)
        after position ``after``, in input order, with their positions."""
        ...


def _first_fresh(queue: deque[WorkItem]) -> int | None:
    """Index of the first item that has not been attempted yet, within ``PROBE_SCAN``."""
    for i, item in enumerate(itertools.islice(queue, PROBE_SCAN)):
        if not item.attempts:
            return i
    return None


class Scheduler:
    """See the module docstring."""

    def __init__(self, config: Config, source: PendingSource) -> None:
        self.config = config
        self.source = source
        self.hosts: dict[str, HostState] = {}
        per_host = config.download.per_host
        self.block = min(64, max(4, 2 * per_host)) if per_host else 64
        """Items read from the store per host and lane at a time."""
        self.queued: dict[tuple[Lane, str], deque[WorkItem]] = {}
        self.cursor: dict[tuple[Lane, str], int] = {}
        self.unread: set[tuple[Lane, str]] = set()  # may have pending items not read yet
        self.ring: dict[Lane, deque[str]] = {lane: deque() for lane in LANES}
        self.in_ring: set[tuple[Lane, str]] = set()
        self.sleeping: list[tuple[float, str]] = []  # hosts blocked until a time
        self.wake_at: dict[str, float] = {}
        self.waiting: list[tuple[float, int, WorkItem]] = []  # retries, by not-before time
        self.large_ids: set[str] = set()
        self.dirty: set[str] = set()
        self.down: set[str] = set()  # hosts whose breaker gave up
        self._seq = itertools.count()
        self.input_grew(source.pending_hosts())

    # -- hosts ----------------------------------------------------------------------------

    def host(self, url: str) -> HostState:
        """The state of the url's host, about to change (so saved with the next commit)."""
        key = host_of(url)
        self.dirty.add(key)
        return self._state(key)

    def _state(self, key: str) -> HostState:
        """The state of a host, created on first sight."""
        state = self.hosts.get(key)
        if state is None:
            state = HostState(breaker=CircuitBreaker(self.config.circuit))
            self.hosts[key] = state
            self.dirty.add(key)
        return state

    def load_stats(self, saved: dict[str, dict[str, Any]]) -> None:
        """Continue the statistics of earlier runs (breakers start closed)."""
        for key, record in saved.items():
            kept = host_status(key, record)
            state = self._state(key)
            state.breaker.times_opened = kept.times_opened
            state.attempts = kept.attempts
            state.successes = kept.successes
            state.retries = kept.retries
            state.bytes = kept.bytes
            state.failures = dict(kept.failures_by_kind)
        self.dirty.clear()  # nothing changed yet

    def allowed(self, host: HostState, now: float) -> bool:
        """Whether one more request may go to ``host`` now."""
        if now < host.not_before:
            return False
        per_host = self.config.download.per_host
        if per_host and host.active >= per_host:
            return False
        return host.breaker.allows(now)

    def _blocked_until(self, host: HostState) -> float:
        """When a host that may not take a request now may again, if a time says so
        (0: it waits for an outcome instead — its ``per_host`` slots or its probe)."""
        until = host.not_before
        breaker = host.breaker
        if breaker.state == "open":
            until = max(until, breaker.opened_at + breaker.config.reset_timeout)
        return until

    def lane_of(self, item: WorkItem) -> Lane:
        """``large`` for items known to exceed ``download.large_threshold``."""
        if item.id in self.large_ids:
            return "large"
        size = item.size
        return (
            "large" if size is not None and size > self.config.download.large_threshold else "small"
        )

    # -- queues ---------------------------------------------------------------------------

    def input_grew(self, hosts: Iterable[str], large: Collection[str] | None = None) -> None:
        """New pending items of these hosts were stored: read on (in the large-file lane
        only for the ``large`` hosts, when they are known)."""
        for key in hosts:
            self._state(key)
            self.unread.add(("small", key))
            if large is None or key in large:
                self.unread.add(("large", key))
            self._refresh(key)

    def requeue(self, item: WorkItem, not_before: float = 0.0) -> None:
        """Put an item back, to go no earlier than ``not_before``."""
        if not_before:
            heapq.heappush(self.waiting, (not_before, next(self._seq), item))
            return
        key = host_of(item.url)
        self._state(key)
        lane = self.lane_of(item)
        self.queued.setdefault((lane, key), deque()).appendleft(item)
        self._refresh(key)

    def _refresh(self, key: str) -> None:
        """Put a host back in the rounds of the lanes it has work for (whether it may take
        a request now is decided when its turn comes)."""
        for lane in LANES:
            slot = (lane, key)
            if slot not in self.in_ring and (self.queued.get(slot) or slot in self.unread):
                self.ring[lane].append(key)
                self.in_ring.add(slot)

    def _read(self, lane: Lane, key: str) -> deque[WorkItem] | None:
        """The host's queued items of ``lane``, reading the next block from the store if
        none are queued; None when it has none left."""
        slot = (lane, key)
        queue = self.queued.get(slot)
        if queue:
            return queue
        if slot not in self.unread:
            return None
        rows = self.source.pending_of(key, lane == "large", self.cursor.get(slot, 0), self.block)
        if len(rows) < self.block:
            self.unread.discard(slot)
        if not rows:
            self.queued.pop(slot, None)
            return None
        self.cursor[slot] = rows[-1][0]
        queue = self.queued.setdefault(slot, deque())
        queue.extend(item for _, item in rows if item.id not in self.large_ids)
        return queue or self._read(lane, key)

    def _take(self, lane: Lane, key: str, probe: bool, fresh_only: bool) -> WorkItem | None:
        """The next item of the host, a fresh one for a half-open probe if there is one."""
        queue = self._read(lane, key)
        if queue is None:
            return None
        at = 0
        if probe:
            found = _first_fresh(queue)
            while found is None and (lane, key) in self.unread and len(queue) < PROBE_SCAN:
                queue = self._more(lane, key, queue)
                found = _first_fresh(queue)
            if found is None and fresh_only:
                return None
            at = found or 0
        item = queue[at]
        del queue[at]
        if not queue:
            del self.queued[(lane, key)]
        return item

    def _more(self, lane: Lane, key: str, queue: deque[WorkItem]) -> deque[WorkItem]:
        """Append the host's next block from the store to its queue."""
        slot = (lane, key)
        del self.queued[slot]
        more = self._read(lane, key)
        if more is not None:
            queue.extend(more)
        self.queued[slot] = queue
        return queue

    def _wake(self, now: float) -> None:
        """Hosts whose cool-down or open breaker ended, and retries whose time came."""
        while self.sleeping and self.sleeping[0][0] <= now:
            until, key = heapq.heappop(self.sleeping)
            if self.wake_at.get(key) == until:
                del self.wake_at[key]
                self._refresh(key)
        while self.waiting and self.waiting[0][0] <= now:
            self.requeue(heapq.heappop(self.waiting)[2])

    def _sleep(self, key: str, host: HostState, now: float) -> None:
        until = self._blocked_until(host)
        if until > now and self.wake_at.get(key) != until:
            self.wake_at[key] = until
            heapq.heappush(self.sleeping, (until, key))

    def next_for(self, lane: Lane, now: float) -> WorkItem | None:
        """The next item a downloader of ``lane`` may take now, or None.

        Hosts take turns: each call serves the next host in the round that may take a
        request. A host that may not is dropped from the round until a time (its
        cool-down, its breaker's reset) or an outcome (a free ``per_host`` slot, its
        probe's result) brings it back.
        """
        self._wake(now)
        ring = self.ring[lane]
        stale: list[str] = []  # half-open hosts whose queued items all failed before
        item = None
        while ring:
            key = ring[0]
            host = self.hosts[key]
            if key in self.down or not self.allowed(host, now):
                ring.popleft()
                self.in_ring.discard((lane, key))
                if key not in self.down:
                    self._sleep(key, host, now)
                continue
            probe = host.breaker.state == "half_open"
            item = self._take(lane, key, probe, fresh_only=True)
            if item is not None:
                ring.rotate(-1)  # the next call starts with the next host
                break
            ring.popleft()
            self.in_ring.discard((lane, key))
            if probe and self._read(lane, key) is not None:
                stale.append(key)
        for key in stale:  # nothing fresh came: a half-open host probes with a known-bad one
            if item is None:
                item = self._take(lane, key, True, fresh_only=False)
            self._refresh(key)
        return item

    def take_given_up(self, limit: int) -> list[WorkItem]:
        """Up to ``limit`` items of hosts that are down, to fail without a request (read
        from the store block by block); the rest stay for a later call."""
        taken: list[WorkItem] = []
        if not self.down:
            return taken
        for key in sorted(self.down):
            for lane in LANES:
                while len(taken) < limit and (queue := self._read(lane, key)) is not None:
                    while queue and len(taken) < limit:
                        taken.append(queue.popleft())
                    if not queue:
                        self.queued.pop((lane, key), None)
            if len(taken) >= limit:
                break
        for due in list(self.waiting):
            if len(taken) >= limit:
                break
            if host_of(due[2].url) in self.down:
                self.waiting.remove(due)
                heapq.heapify(self.waiting)
                taken.append(due[2])
        return taken

    # -- outcomes -------------------------------------------------------------------------

    def dispatched(self, item: WorkItem) -> None:
        """An item was granted to a downloader."""
        host = self.host(item.url)
        host.active += 1
        host.attempts += 1
        host.breaker.dispatched()

    def succeeded(self, item: WorkItem, size: int, reused: bool) -> bool:
        """A download completed.

        Returns:
            Whether this success brought a host that was down back up (the caller
            revives the items it already failed ``host_down``).
        """
        key = host_of(item.url)
        host = self.host(item.url)
        host.active -= 1
        self._refresh(key)
        if reused:
            host.attempts -= 1  # nothing was requested
            host.breaker.released()
            return False
        host.successes += 1
        host.bytes += size
        host.breaker.succeeded()
        if key not in self.down:
            return False
        self.down.discard(key)
        return True

    def failed(
        self,
        item: WorkItem,
        kind: str,
        retry_after: float | None,
        now: float,
        retried: bool,
        wall: float = 0.0,
        scope: str = "host",
    ) -> float:
        """An attempt failed; feed the breaker and the host's cool-down.

        ``scope`` is the failure's (see ``DownloadFailed.scope``).

        A ``rate_limited`` answer pauses the whole host for its Retry-After, but never
        longer than ``retry.max_retry_after``: one answer asking for an hour must not
        freeze every other item of the host (that item alone fails ``rate_limited``).

        Returns:
            Seconds the host was paused by this failure (0 when it was not).
        """
        key = host_of(item.url)
        host = self.host(item.url)
        host.active -= 1
        self._refresh(key)
        host.failures[kind] = host.failures.get(kind, 0) + 1
        if retried:
            host.retries += 1
        if kind not in BREAKER_KINDS:
            host.breaker.released()
        elif scope == "host" or item.attempts <= 1:
            # Host-level evidence counts every time; a URL-level failure only as the
            # item's first, so one broken URL's retries cannot open the breaker.
            host.breaker.failed(now, kind)
            if host.breaker.given_up:
                self.down.add(key)
        else:
            host.breaker.ignored()
        if kind == "rate_limited" and retry_after:
            cap = self.config.retry.max_retry_after
            pause = min(retry_after, cap)
            if now + pause > host.not_before:
                host.not_before = now + pause
                host.cooldown_until = wall + pause if wall else 0.0
                capped = f" (capped by retry.max_retry_after = {cap:g} s)" * (pause < retry_after)
                host.cooldown_reason = f"429 Retry-After: {retry_after:g} s{capped}"
                return pause
        return 0.0

    def released(self, item: WorkItem, large_size: int | None = None) -> None:
        """An attempt ended without an outcome (cancelled, crashed, moved lanes)."""
        host = self.host(item.url)
        host.active -= 1
        host.attempts -= 1
        host.breaker.released()
        self._refresh(host_of(item.url))
        if large_size is not None:
            self.large_ids.add(item.id)

    def take_dirty(self, now: float) -> list[HostStatus]:
        """Statistics of the hosts changed since the last call, by host."""
        dirty = [
            self.hosts[key].status(key, now) for key in sorted(self.dirty) if key in self.hosts
        ]
        self.dirty.clear()
        return dirty

    def host_stats(self, now: float) -> dict[str, dict[str, Any]]:
        """Statistics of every host, as the state keeps them."""
        return {key: host_record(s.status(key, now)) for key, s in sorted(self.hosts.items())}
