"""The partial file of a transfer and its digest.

A body is written to ``<name>.part`` — opened without following a link, emptied by the
open itself or cut at the resume offset — and hashed as it is written (a big one on a
helper thread, ``BackgroundHash``), so the file is renamed into place only once its size
and sha256 are checked. Both engines (``transfer``, ``curl``) write through here.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "BACKGROUND_HASH",
    "BackgroundHash",
    "hash_file",
    "hash_into",
    "lstat_or_none",
    "open_part",
    "open_part_fd",
]


BACKGROUND_HASH = 16 << 20
"""Bodies at least this large (bytes, when known) are hashed on a helper thread."""


class BackgroundHash:
    """Feeds a digest from a helper thread; ``update`` only collects the chunk.

    Chunks travel in batches of about ``BATCH`` bytes (one queue hand-over, not one per
    read), at most ``DEPTH`` batches waiting: memory stays below ~20 MiB per transfer.
    """

    BATCH = 4 << 20
    DEPTH = 4

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self.batches: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=self.DEPTH)
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.thread = threading.Thread(target=self._run, name="conveyor-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.batches.get()) is not None:
            for chunk in batch:
                self.digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size >= self.BATCH:
            self.batches.put(self.pending)
            self.pending, self.pending_size = [], 0

    def finish(self) -> None:
        """Wait until every chunk is hashed."""
        if self.pending:
            self.batches.put(self.pending)
            self.pending, self.pending_size = [], 0
        self.batches.put(None)
        self.thread.join()


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def open_part(part: Path, offset: int) -> Any:
    """Open the partial file without following a link (O_NOFOLLOW), positioned at
    ``offset`` with nothing after it (emptied by the open itself from byte 0)."""
    return os.fdopen(open_part_fd(part, offset), "wb")


def open_part_fd(part: Path, offset: int) -> int:
    """``open_part`` as a bare descriptor (for writers that call ``os.writev``)."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(part, flags | (0 if offset else os.O_TRUNC), 0o644)
    if offset:
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            os.ftruncate(fd, offset)
        except OSError:
            os.close(fd)
            raise
    return fd


def hash_into(digest: Any, path: Path, length: int = sys.maxsize) -> Any:
    """Feed the first ``length`` bytes of ``path`` (all of it by default) to ``digest``."""
    with path.open("rb") as fh:
        while length > 0 and (chunk := fh.read(min(length, 1 << 20))):
            digest.update(chunk)
            length -= len(chunk)
    return digest


def hash_file(path: Path) -> str:
    """The sha256 of a whole file, in hex."""
    return str(hash_into(hashlib.sha256(), path).hexdigest())
