"""Live progress for the CLI: a rich display on a TTY, a log line every few seconds otherwise.

Both are event sinks fed by the StateKeeper (``RunProgress`` and ``HostStatus`` once per
commit, ``ProgressUpdate`` from transfers, and the results); neither polls shared state.
``ProgressModel`` holds what the events said; ``LiveDisplay.render()`` turns it into a
rich renderable, so a test can render it into a fixed-size recording console.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from messages import (
    DownloadComplete,
    DownloadFailed,
    HostStatus,
    NodeStatus,
    ProgressUpdate,
    RunFinished,
    RunProgress,
)
from runtime.core.logs import get_logger
from runtime.report import breaker_text, human_bytes

__all__ = ["LiveDisplay", "ProgressLogger", "ProgressModel"]

log = get_logger("progress")

MAX_HOSTS = 8
MAX_LARGE = 5


@dataclass
class _Transfer:
    url: str
    received: int = 0
    total: int | None = None


@dataclass
class ProgressModel:
    """What the events said so far."""

    large_threshold: int = 100 << 20
    totals: RunProgress | None = None
    hosts: dict[str, HostStatus] = field(default_factory=dict)
    nodes: dict[str, NodeStatus] = field(default_factory=dict)
    large: dict[str, _Transfer] = field(default_factory=dict)
    finished: RunFinished | None = None

    def apply(self, message: Any) -> None:
        """Take one event into account."""
        match message:
            case RunProgress():
                self.totals = message
            case HostStatus():
                self.hosts[message.host] = message
            case NodeStatus():
                self.nodes[message.node] = message
            case ProgressUpdate(item_id=item_id, received=received, total=total):
                if total is not None and total >= self.large_threshold:
                    transfer = self.large.setdefault(item_id, _Transfer(url=""))
                    transfer.received, transfer.total = received, total
            case DownloadComplete(item=item) | DownloadFailed(item=item):
                self.large.pop(item.id, None)
            case RunFinished():
                self.finished = message

    def busy_hosts(self) -> list[HostStatus]:
        """Hosts worth a line: active, cooling down or with a breaker not closed."""
        busy = [h for h in self.hosts.values()
                if h.active or h.cooldown > 0 or h.breaker != "closed"]  # fmt: skip
        return sorted(busy, key=lambda h: (-h.active, h.host))


class LiveDisplay:
    """The TTY display: overall bar, busy hosts, large transfers."""

    def __init__(self, console: Console | None = None, *, large_threshold: int = 100 << 20):
        self.console = console or Console(stderr=True)
        self.model = ProgressModel(large_threshold=large_threshold)
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __call__(self, message: Any) -> None:
        """Event sink: update the model (the refresh thread redraws)."""
        with self._lock:
            self.model.apply(message)

    def start(self) -> None:
        """Start redrawing four times a second."""
        self._live = Live(
            get_renderable=self._locked_render,
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )
        self._live.start()

    def stop(self) -> None:
        """Draw a last time and stop."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def _locked_render(self) -> RenderableType:
        with self._lock:
            return self.render()

    def render(self) -> RenderableType:
        """The display as a rich renderable."""
        m = self.model
        t = m.totals
        parts: list[RenderableType] = []
        if t is None:
            parts.append(Text("starting…"))
            return Group(*parts)
        done = t.completed + t.failed + t.skipped
        rate = t.bytes / t.elapsed if t.elapsed > 0 else 0.0
        per_item = t.elapsed / done if done else 0.0
        eta = per_item * t.pending if done else None
        head = Table.grid(padding=(0, 1))
        head.add_row(
            ProgressBar(total=max(t.accepted, 1), completed=done, width=30),
            Text(f"{done:,}/{t.accepted:,} items"),
            Text(f"{human_bytes(t.bytes)}  {human_bytes(rate)}/s"),
            Text(f"elapsed {_duration(t.elapsed)}  ETA {_duration(eta)}"),
        )
        parts.append(head)
        parts.append(
            Text(
                f"completed {t.completed:,}  failed {t.failed:,}  skipped {t.skipped:,}  "
                f"downloading {t.downloading}  processing {t.processing}  "
                f"retries {t.retries:,}"
            )
        )
        busy = m.busy_hosts()
        if busy:
            hosts = Table(box=None, padding=(0, 1), show_edge=False)
            for column in ("host", "active", "done", "failed", "breaker", "cool-down"):
                hosts.add_column(column, justify="left" if column == "host" else "right")
            for h in busy[:MAX_HOSTS]:
                hosts.add_row(
                    h.host,
                    str(h.active),
                    f"{h.successes:,}",
                    f"{h.failures:,}",
                    breaker_text(h),
                    f"{h.cooldown:.0f} s ({h.cooldown_reason})"
                    if h.cooldown > 0 and h.cooldown_reason
                    else f"{h.cooldown:.0f} s"
                    if h.cooldown > 0
                    else "-",
                )
            parts.append(hosts)
            if len(busy) > MAX_HOSTS:
                parts.append(Text(f"… and {len(busy) - MAX_HOSTS} more busy hosts"))
        if m.nodes:
            nodes = Table(box=None, padding=(0, 1), show_edge=False)
            for column in ("node", "address", "in flight", "done", "last seen"):
                nodes.add_column(
                    column, justify="left" if column in ("node", "address") else "right"
                )
            for n in sorted(m.nodes.values(), key=lambda n: (n.lost, n.node))[:MAX_HOSTS]:
                seen = ("left" if n.left else "lost") if n.lost else f"{n.last_seen_s:.1f} s ago"
                nodes.add_row(n.node, n.address, str(n.in_flight), f"{n.done:,}", seen)
            parts.append(nodes)
        for item_id, tr in list(m.large.items())[:MAX_LARGE]:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(
                ProgressBar(total=max(tr.total or 1, 1), completed=tr.received, width=30),
                Text(f"{item_id}  {human_bytes(tr.received)} / {human_bytes(tr.total or 0)}"),
            )
            parts.append(bar)
        return Group(*parts)


class ProgressLogger:
    """Not a TTY: one structured ``progress`` log line every ``every`` seconds of run time."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.next_at = every

    def __call__(self, message: Any) -> None:
        """Event sink: log when a ``RunProgress`` shows enough time has passed."""
        if not isinstance(message, RunProgress) or message.elapsed < self.next_at:
            return
        self.next_at = message.elapsed + self.every
        done = message.completed + message.failed + message.skipped
        log.info(
            "progress",
            done=done,
            accepted=message.accepted,
            completed=message.completed,
            failed=message.failed,
            skipped=message.skipped,
            pending=message.pending,
            downloading=message.downloading,
            bytes=message.bytes,
            bytes_per_s=round(message.bytes / message.elapsed) if message.elapsed else 0,
            retries=message.retries,
        )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
