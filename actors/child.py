"""The base of every supervised child: report a crash to the supervisor."""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar

import pykka

from actors.control import tell
from messages.control import ChildCrashed

__all__ = ["ChildActor"]


class ChildActor(pykka.ThreadingActor):
    """A supervised actor with a logical id; ``on_failure`` asks for a restart."""

    use_daemon_thread = True
    kind: ClassVar[str] = "child"

    def __init__(self, *, worker: str, index: int, supervisor: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.worker = worker
        self.index = index
        self.supervisor = supervisor

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Tell the supervisor, which restarts this slot and re-dispatches its work."""
        name = exception_type.__name__ if exception_type else "Error"
        tell(
            self.supervisor,
            ChildCrashed(
                worker=self.worker,
                kind=self.kind,
                index=self.index,
                error=f"{name}: {exception_value}",
            ),
        )
        self.cleanup()

    def cleanup(self) -> None:
        """Release resources after a crash (``on_stop`` is not called then)."""
