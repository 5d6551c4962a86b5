"""The base of every supervised child: who it is, whom it answers, how it reports a crash."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import pykka

from actors.control import tell
from messages import ChildCrashed
from runtime.core import cputime

__all__ = ["ChildActor", "ChildContext", "report_crash"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildContext:
    """What every child needs to know, built once by its supervisor per start."""

    worker: str
    """Logical id of this instance: kind, slot and generation (``downloader-3.2``)."""
    index: int
    """Its slot among the children of its kind."""
    supervisor: Any
    """Where crashes go (an actor ref, or the uplink of a worker process)."""
    state_keeper: Any
    """Where results go (likewise)."""


def report_crash(
    supervisor: Any, worker: str, kind: str, index: int, exception: BaseException | None
) -> None:
    """Tell ``supervisor`` that a child crashed with ``exception`` (restart or escalate)."""
    name = type(exception).__name__ if exception is not None else "Error"
    tell(
        supervisor,
        ChildCrashed(worker=worker, kind=kind, index=index, error=f"{name}: {exception}"),
    )


class ChildActor(pykka.ThreadingActor):
    """A supervised actor with a logical id; ``on_failure`` asks for a restart."""

    use_daemon_thread = True
    kind: ClassVar[str] = "child"

    def __init__(self, *, child: ChildContext) -> None:
        super().__init__()
        self.worker = child.worker
        self.index = child.index
        self.supervisor = child.supervisor
        self.state_keeper = child.state_keeper

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Tell the supervisor, which restarts this slot and re-dispatches its work."""
        report_crash(self.supervisor, self.worker, self.kind, self.index, exception_value)
        self.cleanup()

    def on_stop(self) -> None:
        """Record this thread's CPU time (for the benchmarks; see ``cputime``)."""
        cputime.record(self.kind)

    def cleanup(self) -> None:
        """Release resources after a crash (``on_stop`` is not called then)."""
