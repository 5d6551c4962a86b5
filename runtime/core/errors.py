"""conveyor's exceptions.

One root, so a host program can catch everything conveyor raises in one clause::

    ConveyorError
    ├── ConfigError            a config file or override that cannot be used
    ├── InputError             an input file that cannot be read at all
    ├── StateLockedError       another run holds the state directory's lock
    ├── SupervisionError       a child kept crashing (restart intensity exceeded)
    └── FetchError             one transfer failed; carries error_kind and permanent
        ├── HTTPStatusError    the server answered with a 4xx/5xx status
        ├── TruncatedError     fewer bytes arrived than Content-Length promised
        ├── ChecksumError      the body's sha256 differs from the entry's
        ├── TooLargeError      the body exceeded download.max_size
        ├── StalledError       slower than download.min_speed for download.stall_window
        ├── LaneChangeError    too large for the small-file lane (not a failure)
        ├── RangeIgnoredError  a Range request got other bytes (not a failure: fetch whole)
        │   └── RangeNotSatisfiableError  a resume got 416 (not a failure: fetch whole)
        └── CancelledError     the transfer was cancelled (shutdown)

``requests`` exceptions never leave ``runtime.core.transport``: they are translated there,
with ``raise ... from exc``, into ``FetchError`` with a stable ``error_kind``.
"""

from __future__ import annotations

import typing

from messages.types import ErrorKind, Scope

EXIT_CODES = {
    "ok": 0,
    "failed_items": 1,
    "bad_input": 2,
    "run_error": 3,
    "interrupted": 130,
}
"""Process exit codes of ``python -m runtime run``; ``RunSummary.exit_code`` picks one."""

__all__ = [
    "EXIT_CODES",
    "FAILURE_KINDS",
    "CancelledError",
    "ChecksumError",
    "ConfigError",
    "ConveyorError",
    "FetchError",
    "HTTPStatusError",
    "InputError",
    "LaneChangeError",
    "RangeIgnoredError",
    "RangeNotSatisfiableError",
    "StalledError",
    "StateLockedError",
    "SupervisionError",
    "TooLargeError",
    "TruncatedError",
]


FAILURE_KINDS: tuple[ErrorKind, ...] = tuple(
    k for k in typing.get_args(ErrorKind) if k not in ("large_file", "cancelled", "handed_back")
)
"""Every ``error_kind`` a failed item can end with (the manifest's and ``status``'s)."""


class ConveyorError(Exception):
    """Root of every error conveyor raises on purpose."""


class ConfigError(ConveyorError):
    """The configuration cannot be used; the message names file, key and expected type."""


class InputError(ConveyorError):
    """The input file cannot be read; the message names the file and line."""


class StateLockedError(ConveyorError):
    """Another process runs on this state directory.

    Attributes:
        pid: the pid that holds the lock, when it could be read.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class SupervisionError(ConveyorError):
    """A child actor crashed more often than the restart intensity allows."""


class FetchError(ConveyorError):
    """One transfer failed.

    Attributes:
        error_kind: stable failure class written to the manifest.
        permanent: True when retrying the same request cannot succeed.
        scope: ``host`` when the failure says the host is unwell (no connection, no
            answer), ``url`` when the host answered and only this URL's transfer failed
            (an error status, a broken body).
    """

    error_kind: ErrorKind = "connection"
    permanent: bool = False
    retry_after: float | None = None
    scope: Scope = "host"

    def __init__(
        self,
        message: str,
        *,
        error_kind: ErrorKind | None = None,
        permanent: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if error_kind is not None:
            self.error_kind = error_kind
        if permanent is not None:
            self.permanent = permanent
        self.retry_after = retry_after


class HTTPStatusError(FetchError):
    """The server answered with an error status; 4xx is permanent except 408 and 429."""

    def __init__(self, status: int, url: str, retry_after: float | None = None) -> None:
        transient = status >= 500 or status in (408, 429)
        kinds: dict[int, ErrorKind] = {429: "rate_limited", 408: "timeout"}
        kind: ErrorKind = kinds.get(status, "http_5xx" if status >= 500 else "http_4xx")
        super().__init__(
            f"HTTP {status} for {url}",
            error_kind=kind,
            permanent=not transient,
            retry_after=retry_after,
        )
        self.status = status
        self.scope = "url"  # the host answered


class TruncatedError(FetchError):
    """The body ended before Content-Length bytes arrived."""

    error_kind = "truncated"


class ChecksumError(FetchError):
    """The body's sha256 differs from the one the entry gives."""

    error_kind = "checksum_mismatch"
    permanent = True


class TooLargeError(FetchError):
    """The body is larger than download.max_size."""

    error_kind = "too_large"
    permanent = True


class StalledError(FetchError):
    """The transfer stayed below download.min_speed for download.stall_window seconds."""

    error_kind = "stalled"


class LaneChangeError(FetchError):
    """The body is larger than download.large_threshold: hand it to the large-file lane."""

    error_kind = "large_file"

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes: moving to the large-file lane")
        self.size = size


class RangeIgnoredError(FetchError):
    """A Range request was answered from another offset than asked: the server cannot
    resume this file. Not a failure — the engine discards the ``.part`` and fetches the
    whole file in the same attempt."""

    scope = "url"  # the host answered
    host_at_fault = True
    """Whether the host cannot resume (its later resumes in this run ask for whole files)."""


class RangeNotSatisfiableError(RangeIgnoredError):
    """A resume was answered 416 Range Not Satisfiable: the ``.part`` is already as long
    as the file (a run killed between its last write and the rename) or longer. Not a
    failure and not the host's fault — the engine discards the ``.part`` and fetches the
    whole file in the same attempt, as for any Range answer it cannot use."""

    host_at_fault = False


class CancelledError(FetchError):
    """The transfer was cancelled by a shutdown; the item goes back to pending."""

    error_kind = "cancelled"
