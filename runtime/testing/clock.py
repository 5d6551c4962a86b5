"""``FakeClock``: time that moves only when a test says so."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A clock for tests: ``advance()`` moves it; ``autojump`` makes ``sleep`` move it."""

    def __init__(
        self, start: float = 1000.0, *, autojump: bool = True, wall_start: float = 1.8e9
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._autojump = autojump
        self._cond = threading.Condition()

    def now(self) -> float:
        """Return the fake time."""
        with self._cond:
            return self._now

    def wall(self) -> float:
        """Return fake wall time: ``wall_start`` plus however far the clock has moved."""
        with self._cond:
            return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward and wake sleepers whose time has come."""
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Jump (autojump) or wait until ``advance`` has moved time by ``seconds``."""
        if self._autojump:
            self.advance(max(0.0, seconds))
            return
        with self._cond:
            target = self._now + seconds
            self._cond.wait_for(lambda: self._now >= target)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for ``event`` until fake time has moved by ``seconds``.

        Never jumps: periodic work driven by a fake clock runs only when a test advances
        time, so ticks are explicit.
        """
        with self._cond:
            target = self._now + seconds
            while not event.is_set() and self._now < target:
                self._cond.wait(0.01)
            return event.is_set()
