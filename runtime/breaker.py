"""Per-host circuit breaker: closed → open → half-open → closed.

- closed: requests flow; ``failure_threshold`` consecutive transient failures open it.
- open: nothing is sent to the host; after ``reset_timeout`` it turns half-open.
- half-open: exactly one probe may go out; its success closes the breaker, its failure
  opens it again for another ``reset_timeout``.

Pure state, no threads: the StateKeeper owns one per host and passes the time in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CircuitBreaker"]


@dataclass(slots=True)
class CircuitBreaker:
    """The breaker of one host."""

    failure_threshold: int
    reset_timeout: float
    state: str = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    times_opened: int = 0

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (turning open into half-open when due)."""
        if self.state == "open" and now >= self.opened_at + self.reset_timeout:
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
        self.state = "closed"
        self.failures = 0
        self.probe_in_flight = False

    def failed(self, now: float) -> None:
        """A request to the host failed transiently (connection, timeout, 5xx, stall)."""
        if self.state == "half_open":
            self._open(now)
            return
        self.failures += 1
        if self.state == "closed" and self.failures >= self.failure_threshold:
            self._open(now)

    def released(self) -> None:
        """A request ended without telling anything about the host (cancelled, crashed)."""
        self.probe_in_flight = False

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.probe_in_flight = False
        self.times_opened += 1
