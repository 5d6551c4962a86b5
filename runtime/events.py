"""Event sinks for the CLI: an NDJSON event stream, and a fan-out to several sinks.

Every sink is called from the StateKeeper's thread with each typed message it sees, so
a sink must be quick and must not block; none of them reads shared state.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any, TextIO

from messages import RunFinished, RunProgress

__all__ = ["EventStream", "fan_out"]

Sink = Callable[[Any], None]


def fan_out(*sinks: Sink | None) -> Sink:
    """One sink that calls each of ``sinks`` (``None`` entries are skipped)."""
    chosen = [s for s in sinks if s is not None]

    def sink(message: Any) -> None:
        for one in chosen:
            one(message)

    return sink


class EventStream:
    """``run --events FILE|-``: one JSON line per typed message, numbered.

    ``{"seq": 1, "type": "download_started", ...fields}``; nested messages (the item in a
    ``DownloadComplete``) are objects. ``ProgressUpdate`` comes at most once per
    ``download.progress_interval`` per transfer (the downloaders space them), and
    ``RunProgress``/``HostStatus`` once per commit. Lines are flushed with every
    ``RunProgress`` and at the end.
    """

    def __init__(self, out: TextIO, *, close: bool = False) -> None:
        self.out = out
        self.seq = 0
        self.close_when_done = close
        self._lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        tag = getattr(type(message), "TAG", None)
        if tag is None:
            return
        fields = dataclasses.asdict(message)
        with self._lock:
            self.seq += 1
            self.out.write(json.dumps({"seq": self.seq, "type": tag, **fields}) + "\n")
            if isinstance(message, RunProgress | RunFinished):
                self.out.flush()

    def close(self) -> None:
        """Flush (and close the file when the stream owns it)."""
        with self._lock:
            self.out.flush()
            if self.close_when_done:
                self.out.close()
