"""Per-host circuit breaker: closed → open → half-open → closed.

- closed: requests flow; ``failure_threshold`` consecutive transient failures open it.
- open: nothing is sent to the host; after ``reset_timeout`` it turns half-open.
- half-open: exactly one probe may go out; its success closes the breaker, its failure
  opens it again for another ``reset_timeout``.
- down: after ``give_up_after`` failed probes in a row (when set) the host counts as
  down for the rest of the run; nothing more is sent to it. (A success that still
  arrives from an earlier request closes the breaker again.)

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
    give_up_after: int = 0
    state: str = "closed"
    failures: int = 0
    probe_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    times_opened: int = 0

    @property
    def given_up(self) -> bool:
        """Whether ``give_up_after`` probes in a row failed: the host is down."""
        return self.state == "down"

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
        self.probe_failures = 0
        self.probe_in_flight = False

    def failed(self, now: float) -> None:
        """A request to the host failed transiently (connection, timeout, 5xx, stall)."""
        if self.state == "half_open":
            self.probe_failures += 1
            self._open(now)
            if self.give_up_after and self.probe_failures >= self.give_up_after:
                self.state = "down"
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
