"""``ScriptedTransport``: a transport factory that answers each url from a script of steps.

A step is ``Ok``, ``Stall``, ``Status``, ``Fail`` or ``Crash`` (together: ``Step``); the
transport counts every request, so a test can say how often a url was asked for.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from messages.types import ErrorKind
from runtime.core.errors import FetchError

if TYPE_CHECKING:
    from runtime.core.transport import Response, Transport

__all__ = ["Crash", "Fail", "Ok", "ScriptedTransport", "Stall", "Status", "Step"]


@dataclass(frozen=True, slots=True)
class Ok:
    """Answer 200 with ``body``; ``cut_after`` bytes then a reset when set."""

    body: bytes
    cut_after: int | None = None


@dataclass(frozen=True, slots=True)
class Stall:
    """Answer 200, send ``first`` and then nothing, until the download is cancelled.

    Empty chunks keep coming every ``every`` seconds (real time, in the downloader's
    thread) so the downloader's cancel token is checked, as it would be between reads.
    """

    first: bytes = b"x"
    every: float = 0.01


@dataclass(frozen=True, slots=True)
class Status:
    """Answer with an HTTP error status (and ``headers``, e.g. ``Retry-After``)."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise a transport-level ``FetchError``."""

    error_kind: ErrorKind = "connection"
    permanent: bool = False


@dataclass(frozen=True, slots=True)
class Crash:
    """Raise a non-HTTP exception, as a bug in the transport would."""

    message: str = "scripted crash"


Step = Ok | Stall | Status | Fail | Crash


class _ScriptedResponse:
    def __init__(
        self,
        status: int,
        body: bytes,
        cut_after: int | None,
        stall: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {"Content-Length": str(len(body)), **(headers or {})}
        self._body = body
        self._cut = cut_after
        self._stall = stall
        self._closed = threading.Event()

    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]:
        if self._stall is not None:
            yield self._body
            while not self._closed.wait(self._stall):
                yield b""
            return
        limit = len(self._body) if self._cut is None else self._cut
        for i in range(0, limit, chunk_size):
            yield self._body[i : min(i + chunk_size, limit)]
        if self._cut is not None:
            raise FetchError("connection reset by peer (scripted)", error_kind="connection")

    def close(self) -> None:
        self._closed.set()


class ScriptedTransport:
    """A transport factory whose answers follow a per-url script.

    The n-th request of a url gets ``script[url][n]``; the last step repeats when the
    script runs out; a url without a script gets 404. ``requests`` counts every request.
    """

    def __init__(self, script: Mapping[str, Sequence[Step]]) -> None:
        self.script = {url: list(steps) for url, steps in script.items()}
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self) -> Transport:
        """Return a transport (they all share this script and its counts)."""
        return _ScriptedConnection(self)

    def answer(self, url: str) -> Response:
        """Play the next step for ``url``."""
        with self._lock:
            n = self.requests[url]
            self.requests[url] += 1
        steps = self.script.get(url) or [Status(404)]
        step = steps[min(n, len(steps) - 1)]
        match step:
            case Ok(body=body, cut_after=cut):
                return _ScriptedResponse(200, body, cut)
            case Stall(first=first, every=every):
                return _ScriptedResponse(200, first, None, stall=every)
            case Status(code=code, headers=headers):
                return _ScriptedResponse(code, b"", None, headers=headers)
            case Fail(error_kind=kind, permanent=permanent):
                raise FetchError(f"scripted {kind}", error_kind=kind, permanent=permanent)
            case Crash(message=message):
                raise RuntimeError(message)
        raise AssertionError(step)  # pragma: no cover


class _ScriptedConnection:
    def __init__(self, owner: ScriptedTransport) -> None:
        self._owner = owner

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        return self._owner.answer(url)

    def close(self) -> None:
        pass
