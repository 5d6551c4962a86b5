"""What may be dispatched next: per-host limits, breakers, cool-downs, backoff and lanes.

The StateKeeper owns one ``Scheduler`` (plain state, no threads) and asks it for the next
item a downloader of a given lane may take. Items that cannot go now — their host's breaker
is open, the host is cooling down after a 429, it is at ``download.per_host``, or the item
belongs to the other lane — are *parked* per (lane, host) instead of blocking the queue, so
a blocked host never holds up the others (no head-of-line blocking). Retries wait in a heap
until their not-before time.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from messages import WorkItem
from messages.types import Lane
from runtime.core.breaker import CircuitBreaker
from runtime.core.config import Config

__all__ = ["BREAKER_KINDS", "HostState", "Scheduler", "host_of"]

BREAKER_KINDS = frozenset({"connection", "timeout", "stalled", "truncated", "http_5xx"})
"""Failure kinds that say something about the host's health and count for its breaker."""

PARK_LIMIT = 10_000
"""Most items held aside for blocked hosts; past it, dispatch waits instead of reading on."""

GIVE_UP_LIMIT = 1_024
"""Most items of down hosts held before they are failed; past it, reading waits too."""


PROBE_SCAN = 256
"""Parked items looked at for a fresh half-open probe before taking any."""


def _first_fresh(queue: deque[WorkItem]) -> int | None:
    """Index of the first item that has not been attempted yet, within ``PROBE_SCAN``."""
    for i, item in enumerate(itertools.islice(queue, PROBE_SCAN)):
        if not item.attempts:
            return i
    return None


def host_of(url: str) -> str:
    """The breaker and statistics key of a url: ``host:port``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


@dataclass(slots=True)
class HostState:
    """Everything known about one host."""

    breaker: CircuitBreaker
    active: int = 0
    not_before: float = 0.0
    attempts: int = 0
    successes: int = 0
    retries: int = 0
    bytes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    cooldown_reason: str = ""
    """Why the host is cooling down (empty when it is not)."""
    cooldown_until: float = 0.0
    """Wall-clock end of the cool-down, for ``status`` (0: none)."""

    def as_dict(self) -> dict[str, Any]:
        """Statistics as plain data."""
        return {
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": dict(self.failures),
            "retries": self.retries,
            "bytes": self.bytes,
            "active": self.active,
            "breaker": self.breaker.state,
            "times_opened": self.breaker.times_opened,
            "window": len(self.breaker.outcomes),
            "window_failures": self.breaker.failures,
            "breaker_reason": self.breaker.reason if self.breaker.state != "closed" else "",
            "cooldown_until": self.cooldown_until,
            "cooldown_reason": self.cooldown_reason,
        }


class Scheduler:
    """See the module docstring."""

    def __init__(self, config: Config, fetch: Callable[[int], list[WorkItem]]) -> None:
        self.config = config
        self.fetch = fetch
        self.hosts: dict[str, HostState] = {}
        self.ready: deque[WorkItem] = deque()
        self.due: deque[WorkItem] = deque()
        self.waiting: list[tuple[float, int, WorkItem]] = []
        self.parked: dict[tuple[str, str], deque[WorkItem]] = {}
        self.parked_count = 0
        self.large_ids: set[str] = set()
        self.scan_exhausted = False
        self.dirty: set[str] = set()
        self.given_up: list[WorkItem] = []
        self.down: set[str] = set()  # hosts whose breaker gave up
        self._seq = itertools.count()

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
            c = self.config.circuit
            state = HostState(
                breaker=CircuitBreaker(
                    window=c.window,
                    min_requests=c.min_requests,
                    failure_rate=c.failure_rate,
                    reset_timeout=c.reset_timeout,
                    give_up_after=c.give_up_after,
                )
            )
            self.hosts[key] = state
            self.dirty.add(key)
        return state

    def load_stats(self, saved: dict[str, dict[str, Any]]) -> None:
        """Continue the statistics of earlier runs (breakers start closed)."""
        for key, stats in saved.items():
            state = self._state(key)
            state.breaker.times_opened = stats.get("times_opened", 0)
            state.attempts = stats.get("attempts", 0)
            state.successes = stats.get("successes", 0)
            state.retries = stats.get("retries", 0)
            state.bytes = stats.get("bytes", 0)
            state.failures = dict(stats.get("failures", {}))
        self.dirty.clear()  # nothing changed yet

    def allowed(self, host: HostState, now: float) -> bool:
        """Whether one more request may go to ``host`` now."""
        if now < host.not_before:
            return False
        per_host = self.config.download.per_host
        if per_host and host.active >= per_host:
            return False
        return host.breaker.allows(now)

    def lane_of(self, item: WorkItem) -> Lane:
        """``large`` for items known to exceed ``download.large_threshold``."""
        if item.id in self.large_ids:
            return "large"
        size = item.size
        return (
            "large" if size is not None and size > self.config.download.large_threshold else "small"
        )

    # -- queues ---------------------------------------------------------------------------

    def input_grew(self) -> None:
        """New pending items were stored: read on."""
        self.scan_exhausted = False

    def requeue(self, item: WorkItem, not_before: float = 0.0) -> None:
        """Put an item back, to go no earlier than ``not_before``."""
        if not_before:
            heapq.heappush(self.waiting, (not_before, next(self._seq), item))
        else:
            self.due.append(item)

    def _candidate(self) -> WorkItem | None:
        if self.due:
            return self.due.popleft()
        if not self.ready and not self.scan_exhausted:
            d = self.config.download
            want = max(64, 2 * (d.workers + d.large_workers) * d.mailbox)
            self.ready.extend(self.fetch(want))
            self.scan_exhausted = not self.ready
        return self.ready.popleft() if self.ready else None

    def _unpark(self, lane: Lane, now: float, *, fresh_probes: bool) -> WorkItem | None:
        """A parked item of ``lane`` whose host may take it now.

        With ``fresh_probes``, a half-open host's probe must be an item that has not
        failed yet (looked for among the first ``PROBE_SCAN`` parked ones), so a probe
        does not keep re-testing a known-bad URL; without, any item will do.
        """
        for (item_lane, key), queue in self.parked.items():
            if item_lane != lane or not self.allowed(self.hosts[key], now):
                continue
            probe = self.hosts[key].breaker.state == "half_open"
            at = _first_fresh(queue) if probe else 0
            if at is None:
                if fresh_probes:
                    continue
                at = 0
            item = queue[at]
            del queue[at]
            if not queue:
                del self.parked[(item_lane, key)]
            self.parked_count -= 1
            return item
        return None

    def next_for(self, lane: Lane, now: float) -> WorkItem | None:
        """The next item a downloader of ``lane`` may take now, or None."""
        while self.waiting and self.waiting[0][0] <= now:
            self.due.append(heapq.heappop(self.waiting)[2])
        item = self._unpark(lane, now, fresh_probes=True)
        if item is not None:
            return item
        while self.parked_count < PARK_LIMIT and len(self.given_up) < GIVE_UP_LIMIT:
            item = self._candidate()
            if item is None:
                break
            item_lane = self.lane_of(item)
            key = host_of(item.url)
            host = self._state(key)  # registers the host before its items can be parked
            if key in self.down:
                self.given_up.append(item)
                continue
            probe = host.breaker.state == "half_open"
            if item_lane == lane and self.allowed(host, now) and not (probe and item.attempts):
                return item
            self.parked.setdefault((item_lane, key), deque()).append(item)
            self.parked_count += 1
        # Nothing fresh came: a half-open host probes with an item that failed before.
        return self._unpark(lane, now, fresh_probes=False)

    def take_given_up(self, limit: int) -> list[WorkItem]:
        """Up to ``limit`` items of hosts that are down, to fail without a request (parked
        ones included); the rest stay for a later call."""
        taken, self.given_up = self.given_up[:limit], self.given_up[limit:]
        if not self.down:
            return taken
        for slot in [s for s in self.parked if s[1] in self.down]:
            queue = self.parked[slot]
            while queue and len(taken) < limit:
                taken.append(queue.popleft())
                self.parked_count -= 1
            if not queue:
                del self.parked[slot]
            if len(taken) >= limit:
                break
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
            Whether this success brought a host that was down back up: its items set
            aside to fail ``host_down`` are pending again (the caller revives the ones
            it already failed).
        """
        host = self.host(item.url)
        host.active -= 1
        if reused:
            host.attempts -= 1  # nothing was requested
            host.breaker.released()
            return False
        host.successes += 1
        host.bytes += size
        host.breaker.succeeded()
        key = host_of(item.url)
        if key not in self.down:
            return False
        self.down.discard(key)
        kept = [i for i in self.given_up if host_of(i.url) != key]
        self.due.extend(i for i in self.given_up if host_of(i.url) == key)
        self.given_up = kept
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
        host = self.host(item.url)
        host.active -= 1
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
                self.down.add(host_of(item.url))
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
        if large_size is not None:
            self.large_ids.add(item.id)

    def take_dirty(self) -> dict[str, dict[str, Any]]:
        """Statistics of hosts changed since the last call (for the store)."""
        dirty = {key: self.hosts[key].as_dict() for key in self.dirty if key in self.hosts}
        self.dirty.clear()
        return dirty

    def host_stats(self) -> dict[str, dict[str, Any]]:
        """Statistics of every host."""
        return {key: state.as_dict() for key, state in sorted(self.hosts.items())}
