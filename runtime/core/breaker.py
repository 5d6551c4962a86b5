"""Per-host circuit breaker that judges the host by its recent failure rate.

- closed: requests flow. Each finished request that says something about the host goes
  into a sliding window of the last ``window`` outcomes (a count-based window, as in
  resilience4j). When a failure leaves at least ``min_requests`` outcomes in it and
  *more than* ``failure_rate`` of them failed, the breaker opens.
- open: nothing is sent to the host; after ``reset_timeout`` it turns half-open.
- half-open: exactly one probe may go out; its success closes the breaker (with an empty
  window), its failure opens it again for another ``reset_timeout``.
- down: after ``give_up_after`` failed probes in a row (when set) the host counts as
  down; nothing more is sent to it. Any success that still arrives (from a request sent
  earlier) closes the breaker again.

Which failures count is the caller's business (the Scheduler): host-level evidence
(refused connections, timeouts before a response) always does; a URL-level failure (a
5xx, a broken body) only the first time an item fails, so a few broken URLs retrying
cannot open the breaker of a healthy host. A failure that does not count is ``ignored``.

Pure state, no threads: the StateKeeper owns one per host and passes the time in.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from runtime.core.config import CircuitConfig

__all__ = ["CircuitBreaker"]


@dataclass(slots=True)
class CircuitBreaker:
    """The breaker of one host."""

    config: CircuitConfig = field(default_factory=CircuitConfig)
    """``[circuit]``: the window, the rate that opens it, the timeouts."""
    state: str = "closed"
    probe_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    times_opened: int = 0
    reason: str = ""
    """Why the breaker last opened (``62 % of last 50 failed (connection)``)."""
    outcomes: deque[str] = field(default_factory=deque)
    """The window: ``""`` for a success, the error kind for a counted failure."""
    kinds: Counter[str] = field(default_factory=Counter)
    """Counted failures in the window, by kind."""

    @property
    def given_up(self) -> bool:
        """Whether ``give_up_after`` probes in a row failed: the host is down."""
        return self.state == "down"

    @property
    def failures(self) -> int:
        """Failures in the window."""
        return sum(self.kinds.values())

    @property
    def rate(self) -> float:
        """The share of failures in the window (0 when it is empty)."""
        return self.failures / len(self.outcomes) if self.outcomes else 0.0

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (turning open into half-open when due)."""
        if self.state == "open" and now >= self.opened_at + self.config.reset_timeout:
            self.state = "half_open"
            self.probe_in_flight = False
        if self.state == "closed":
            return True
        return self.state == "half_open" and not self.probe_in_flight

    def dispatched(self) -> None:
        """A request was sent; in half-open state it is the probe."""
        if self.state == "half_open":
            self.probe_in_flight = True

    def succeeded(self) -> None:
        """A request to the host succeeded."""
        if self.state != "closed":
            self.outcomes.clear()  # a fresh start, as after any change of state
            self.kinds.clear()
        self.state = "closed"
        self.probe_failures = 0
        self.probe_in_flight = False
        self._record("")

    def failed(self, now: float, kind: str = "failure") -> None:
        """A request failed in a way that counts against the host."""
        if self.state == "half_open":
            self.probe_failures += 1
            self.reason = f"the probe failed ({kind})"
            self._open(now)
            if self.config.give_up_after and self.probe_failures >= self.config.give_up_after:
                self.state = "down"
            return
        if self.state != "closed":
            return  # a late answer while open or down: the window restarts on close
        self._record(kind)
        if len(self.outcomes) >= self.config.min_requests and self.rate > self.config.failure_rate:
            self.reason = self.describe()
            self._open(now)

    def ignored(self) -> None:
        """A request failed in a way that says nothing about the host (a known-bad URL)."""
        self.probe_in_flight = False

    def released(self) -> None:
        """A request ended without telling anything about the host (cancelled, crashed)."""
        self.probe_in_flight = False

    def describe(self) -> str:
        """The window as text: ``62 % of last 50 failed (connection 20, timeout 11)``."""
        if not self.outcomes:
            return "no requests yet"
        kinds = ", ".join(f"{k} {n}" for k, n in self.kinds.most_common())
        text = f"{self.rate:.0%} of last {len(self.outcomes)} failed".replace("%", " %")
        return f"{text} ({kinds})" if kinds else text

    def _record(self, kind: str) -> None:
        self.outcomes.append(kind)
        if kind:
            self.kinds[kind] += 1
        while len(self.outcomes) > self.config.window:
            old = self.outcomes.popleft()
            if old:
                self.kinds[old] -= 1
                if not self.kinds[old]:
                    del self.kinds[old]

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.probe_in_flight = False
        self.times_opened += 1
        self.outcomes.clear()
        self.kinds.clear()
