"""The retry policy: which failures are retried, and when.

Composed from tenacity's callables (``stop_after_attempt``, ``wait_exponential``) and fed
a ``RetryCallState`` per decision, because the wait is not slept here: the StateKeeper
turns it into the item's not-before time, so a downloader serves other items meanwhile.
Jitter ("equal jitter": half the backoff fixed, half random) comes from the run's seeded
``random.Random``, so tests are reproducible.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass

import tenacity

from messages.types import ErrorKind
from runtime.core.config import RetryConfig

__all__ = ["RetryDecision", "RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt."""

    retry: bool
    """Whether the item gets another attempt."""
    delay: float = 0.0
    """Seconds to wait before it, when it does."""
    error_kind: ErrorKind | None = None
    """A replacement error kind for a terminal failure (``rate_limited``), if any."""
    error: str | None = None
    """A replacement message for that failure."""


class RetryPolicy:
    """Backoff with jitter, Retry-After, and a bounded number of attempts."""

    def __init__(self, config: RetryConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self._stop = tenacity.stop_after_attempt(config.max_attempts)
        self._wait = tenacity.wait_exponential(
            multiplier=config.backoff_initial, max=config.backoff_max, exp_base=2
        )

    def _state(self, attempt: int) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return state

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), jittered."""
        base = float(self._wait(self._state(attempt)))
        return base / 2 + self.rng.uniform(0, base / 2)

    def decide(self, attempt: int, permanent: bool, retry_after: float | None) -> RetryDecision:
        """Decide after failed attempt number ``attempt``."""
        if permanent:
            return RetryDecision(retry=False)
        if retry_after is not None and retry_after > self.config.max_retry_after:
            return RetryDecision(
                retry=False,
                error_kind="rate_limited",
                error=f"the server asked to wait {retry_after:g} s, more than "
                f"retry.max_retry_after = {self.config.max_retry_after:g} s",
            )
        if self._stop(self._state(attempt)):
            return RetryDecision(retry=False)
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return RetryDecision(retry=True, delay=delay)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Parse ``Retry-After`` (delay-seconds or an HTTP-date) into seconds from now.

    Args:
        value: the header, if any.
        now_wall: the wall-clock time (``Clock.wall()``) an HTTP-date is measured from.

    Returns None for a missing or unparsable header; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_wall)
