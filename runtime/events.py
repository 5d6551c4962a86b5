"""Event sinks for the CLI: an NDJSON event stream, and a fan-out to several sinks.

Every sink is called from the StateKeeper's thread with each typed message it sees, so
a sink must be quick and must not block; none of them reads shared state.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from messages import OUTCOME_FIELDS, Outcome, RunFinished, RunProgress, WorkItem
from runtime.core.inputs import fields_of
from runtime.core.store import open_view, state_exists

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
    ``RunProgress``/``HostStatus`` once per commit. An ``outcome`` comes only once its
    commit made it durable, with its ``done_seq``. Lines are flushed with every
    ``RunProgress`` (right after each commit's outcomes) and at the end.
    """

    def __init__(self, out: TextIO, *, close: bool = False, seq: int = 0) -> None:
        self.out = out
        self.seq = seq
        self.close_when_done = close
        self._lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        tag = getattr(type(message), "TAG", None)
        if tag is None:
            return
        fields = dataclasses.asdict(message)
        item = getattr(message, "item", None)
        if isinstance(item, WorkItem):  # its entry's other keys, as the input gave them
            fields["item"]["fields"] = fields_of(item)
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


CATCH_UP_BLOCK = 1000
"""Committed outcomes read at a time when an events file catches up."""


def continue_events_file(path: Path, state_dir: Path) -> EventStream:
    """Open ``run --events FILE`` to go on where it stopped.

    A new file starts empty. An existing one is appended to: numbering goes on from its
    last line, a line cut short by a crash is dropped, and the outcomes the state
    committed after the file's last ``outcome`` line — announced by a run that died
    before they reached the file — are written first. So every outcome is in the file
    once, whatever crashed when.

    Raises:
        OSError: the file cannot be read or written.
    """
    seq, done, existed = _last_marks(path)
    stream = EventStream(path.open("a", encoding="utf-8"), close=True, seq=seq)
    if not existed or not state_exists(state_dir):
        return stream
    with open_view(state_dir) as view:
        while block := view.outcomes_after(done, CATCH_UP_BLOCK):
            for record in block:
                stream(_outcome_of(record))
            done = block[-1]["done_seq"]
    stream.out.flush()
    return stream


def _outcome_of(record: dict[str, Any]) -> Outcome:
    """A stored terminal record as the ``Outcome`` it was (without the processor's result)."""
    fields = {k: record[k] for k in OUTCOME_FIELDS if k in record}
    return Outcome(**{**fields, "name": record["name"] or ""})


def _last_marks(path: Path) -> tuple[int, int, bool]:
    """The last ``seq`` and the last outcome's ``done_seq`` of an events file, and whether
    it had any line; a partial last line (a crash mid-write) is cut off. Read from the
    end, a block at a time: a long file is not read whole."""
    try:
        fh = path.open("r+b")
    except FileNotFoundError:
        return 0, 0, False
    with fh:
        end = fh.seek(0, 2)
        end = _cut_partial_line(fh, end)
        seq: int | None = None
        done: int | None = None
        tail = b""
        pos = end
        while pos > 0 and done is None:
            step = min(1 << 20, pos)
            pos -= step
            fh.seek(pos)
            lines = (fh.read(step) + tail).split(b"\n")
            tail = lines.pop(0) if pos > 0 else b""  # maybe the end of an earlier line
            for line in reversed(lines):
                event = _event(line)
                if event is None:
                    continue
                if seq is None:
                    seq = int(event.get("seq", 0))
                if event.get("type") == Outcome.TAG:
                    done = int(event.get("done_seq", 0))
                    break
        return seq or 0, done or 0, end > 0


def _cut_partial_line(fh: BinaryIO, end: int) -> int:
    """Truncate the file after its last newline; return the new end."""
    pos = end
    while pos > 0:
        step = min(1 << 16, pos)
        fh.seek(pos - step)
        block = fh.read(step)
        newline = block.rfind(b"\n")
        if newline >= 0:
            cut: int = pos - step + newline + 1
            if cut != end:
                fh.truncate(cut)
            return cut
        pos -= step
    if end:
        fh.truncate(0)
    return 0


def _event(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None
