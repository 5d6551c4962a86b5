"""In-process control messages between the supervisor and its children.

Unlike the messages in ``messages/``, these carry actor refs or exist only inside one
process, so they never go through the codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka

__all__ = [
    "Attach",
    "ChildCrashed",
    "GetStats",
    "GraceExpired",
    "InputClosed",
    "InputFailed",
    "Shutdown",
    "Tick",
    "WorkerLost",
    "tell",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach:
    """Supervisor → StateKeeper: a child is running and may be sent work."""

    worker: str
    """Logical id of this instance (name and generation, e.g. ``downloader-3.1``)."""
    kind: str
    """``downloader``, ``processor`` or ``post_processor``."""
    ref: Any
    """Where to send its work: an actor ref, or a ``RemoteRef`` into a worker process."""
    credit: int = 0
    """Initial demand (a downloader's mailbox)."""
    lane: str = "small"
    """A downloader's lane: ``small`` or ``large`` (files over download.large_threshold)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLost:
    """Supervisor → StateKeeper: a child crashed; give its work to others."""

    worker: str
    """The crashed instance."""
    error: str
    """What it crashed with."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildCrashed:
    """Child → Supervisor, from ``on_failure``: restart me."""

    worker: str
    """The crashed instance."""
    kind: str
    """Its kind."""
    index: int
    """Its slot among children of that kind."""
    error: str
    """The exception, as ``Type: message``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputClosed:
    """Feeder → StateKeeper: no more input will come."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFailed:
    """Feeder → Supervisor: the input cannot be read further; end the run."""

    error: str
    """The InputError's message (file and line), or what broke the feeder."""
    kind: str = "input"
    """``input`` (a bad input file: exit 2) or ``feeder`` (anything else: exit 3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Ticker → StateKeeper: time for a group commit and timed work."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GetStats:
    """Ask the StateKeeper for its counters (returns a dict)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    """Pipeline → Supervisor: stop granting, let in-flight work finish within ``grace``."""

    reason: str = "interrupted"
    """Recorded as the run's end reason."""
    grace: float | None = None
    """Seconds to wait before abandoning in-flight transfers (default from config)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GraceExpired:
    """Timer → Supervisor: the shutdown grace is over."""


def tell(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``ref``; return False instead of raising when it already stopped.

    Used for reports whose receiver may have ended the run meanwhile (an aborted
    shutdown): the work is not lost, the store still says pending.
    """
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True
