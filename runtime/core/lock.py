"""One run per state directory: an exclusive OS file lock held for the whole run.

``<state.dir>/lock`` is locked with ``flock`` and holds the owner's pid. The kernel drops
the lock when the process ends, however it ends (``kill -9`` included), so a lock is never
stale. ``run``, ``retry-failed``, ``demo`` and ``Pipeline.start()`` take it; ``status``
only reads the store and never needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from runtime.core.errors import StateLockedError

__all__ = ["LOCK_FILE", "StateLock"]

LOCK_FILE = "lock"


class StateLock:
    """An exclusive lock on a state directory; ``release()`` (or process exit) frees it."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock ``state_dir`` (created if missing) for this process, without waiting.

        Raises:
            StateLockedError: another process holds it; the message names its pid.
            OSError: the directory or the lock file cannot be created.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise StateLockedError(
                f"the state in {state_dir} is in use by another run ({who}); wait for it to "
                "end or stop it (Ctrl-C), or use another state.dir",
                pid=holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(state_dir, fd)

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
