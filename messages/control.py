"""In-process control messages: the supervisor, its children and the host talking.

Unlike the data messages in ``messages.types``, these carry actor refs or exist only
inside one process, so they have no ``TAG`` and never go through the codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from messages.types import DownloadComplete, Lane, Outcome

__all__ = [
    "Adopt",
    "Attach",
    "Batch",
    "Flush",
    "GetStats",
    "GraceExpired",
    "InputClosed",
    "InputFailed",
    "NodesSeen",
    "ProcessFiles",
    "ProcessLost",
    "RecordOutcomes",
    "RunErrorKind",
    "RunFailed",
    "Shutdown",
    "Start",
    "Started",
    "TakeNext",
    "Tick",
    "WorkerLost",
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
    lane: Lane = "small"
    """A downloader's lane: ``small`` or ``large`` (files over download.large_threshold)."""
    node: str = ""
    """The cluster node it runs on ("": this machine); a node's transfers do not count
    against this machine's ``download.concurrency``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLost:
    """Supervisor → StateKeeper: a child crashed; give its work to others."""

    worker: str
    """The crashed instance."""
    error: str
    """What it crashed with."""
    node: str = ""
    """The cluster node that was lost with it: then every item it held counts a delivery
    (``cluster.max_deliveries``), started or not."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputClosed:
    """Feeder → StateKeeper: no more input will come."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputFailed:
    """Feeder → Supervisor: the input cannot be read further; end the run."""

    error: str
    """The InputError's message (file and line), or what broke the feeder."""
    kind: Literal["input", "feeder"] = "input"
    """``input`` (a bad input file: exit 2) or ``feeder`` (anything else: exit 3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """Ticker → StateKeeper: time for a group commit and timed work."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Adopt:
    """Cluster hub → StateKeeper: a file a node downloaded under a lease the coordinator
    no longer knows (given before a restart, or to a node since counted lost): record it
    if its item is still pending and not leased anew, rather than downloading it again."""

    done: Any
    """The node's ``DownloadComplete``."""
    node: str
    """The node that holds the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Flush:
    """Cluster hub → StateKeeper (ask): commit now; the answer means everything told
    before is durable (the hub then acknowledges the stream entries it came from)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodesSeen:
    """Cluster hub → StateKeeper, every second: the nodes as the hub sees them (kept in
    the state's meta for ``status``)."""

    nodes: tuple[dict[str, Any], ...]
    """``node``, ``address``, ``in_flight``, ``done``, ``last_seen_s``, ``lost``."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """Host → Supervisor (ask): start every child; errors come back to the asker."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Started:
    """Supervisor → a plugin's actor (ask): answered with None once its plugin is built
    (in the actor's own thread, where it will run), or with the exception building it
    raised."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessLost:
    """Reader thread → Supervisor: a downloader worker process is gone."""

    host: int
    """The worker process's index."""
    error: str
    """How it went (exit code, signal, a broken frame)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeNext:
    """Downloader → itself: take the next queued item (lets a Grant in between)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """Several messages for one actor, handled in one wake-up.

    A downloader sends its result, its new demand and the start of its next item
    together; processors and the post-processor answer a block of work with one batch.
    """

    messages: tuple[Any, ...]
    """The messages, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessFiles:
    """StateKeeper → Processor: a block of downloaded files (answered with one Batch)."""

    files: tuple[DownloadComplete, ...]
    """The files, each processed on its own."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordOutcomes:
    """StateKeeper → PostProcessor: a block of terminal outcomes (answered with one Batch)."""

    outcomes: tuple[Outcome, ...]
    """The outcomes, recorded in order."""


RunErrorKind = Literal["input", "feeder", "supervision"]
"""Why a run ended on an error: a bad input file, a broken input feeder, or a child (or
the StateKeeper, or the supervisor) that kept crashing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFailed:
    """Supervisor → host, with the end of the run: the error the run ended on."""

    kind: RunErrorKind
    """What failed."""
    error: Exception
    """The error itself: an ``InputError``, or a ``SupervisionError`` for ``supervision``
    (a ``ConveyorError`` for ``feeder``)."""
