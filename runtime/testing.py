"""Test doubles that ship with conveyor, for its own tests and for programs embedding it.

- ``FakeClock``: time that moves only when told (``advance``), or jumps on ``sleep``.
- ``ScriptedTransport``: answers each url from a script of steps, counting requests.
- ``SimulatedTransportFactory``: the seeded offline transport of ``--simulate-downloads``
  (sizes, latencies and failures from ``[simulate]``).
- ``LocalFileServer``: a real HTTP server on 127.0.0.1 serving in-memory files, with
  flaky routes and server-side request counts.
- ``capture_logs``: structlog's log capture, re-exported.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from structlog.testing import capture_logs

from messages.types import ErrorKind
from runtime.core.clock import Clock
from runtime.core.config import SimulateConfig
from runtime.core.errors import FetchError
from runtime.core.transport import Response, Transport

__all__ = [
    "Crash",
    "Fail",
    "FakeClock",
    "LocalFileServer",
    "Ok",
    "ScriptedTransport",
    "SimulatedTransportFactory",
    "Stall",
    "Status",
    "capture_logs",
]


class FakeClock:
    """A clock for tests: ``advance()`` moves it; ``autojump`` makes ``sleep`` move it."""

    def __init__(
        self, start: float = 1000.0, *, autojump: bool = True, wall_start: float = 1.8e9
    ) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._autojump = autojump
        self._cond = threading.Condition()

    def now(self) -> float:
        """Return the fake time."""
        with self._cond:
            return self._now

    def wall(self) -> float:
        """Return fake wall time: ``wall_start`` plus however far the clock has moved."""
        with self._cond:
            return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward and wake sleepers whose time has come."""
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """Jump (autojump) or wait until ``advance`` has moved time by ``seconds``."""
        if self._autojump:
            self.advance(max(0.0, seconds))
            return
        with self._cond:
            target = self._now + seconds
            self._cond.wait_for(lambda: self._now >= target)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait for ``event`` until fake time has moved by ``seconds``.

        Never jumps: periodic work driven by a fake clock runs only when a test advances
        time, so ticks are explicit.
        """
        with self._cond:
            target = self._now + seconds
            while not event.is_set() and self._now < target:
                self._cond.wait(0.01)
            return event.is_set()


# -- scripted transport ------------------------------------------------------------------


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


# -- the seeded simulator (``--simulate-downloads``) ------------------------------------


_SIM_BLOCK = random.Random(0).randbytes(65536)


class _SimulatedResponse:
    def __init__(self, status: int, size: int, seed: int) -> None:
        self.status = status
        self.size = size
        self.headers: Mapping[str, str] = {"Content-Length": str(size)}
        self._seed = seed

    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]:
        # A fixed random block behind a per-url prefix: distinct bodies, no per-request
        # cost of generating random bytes (that dominated simulated runs).
        step = max(1, min(chunk_size, len(_SIM_BLOCK)))
        block = self._seed.to_bytes(8, "big") + _SIM_BLOCK[8:step]
        left = self.size
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    def close(self) -> None:
        pass


class _SimulatedTransport:
    def __init__(self, factory: SimulatedTransportFactory) -> None:
        self._factory = factory

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        return self._factory.respond(url)

    def close(self) -> None:
        pass


class SimulatedTransportFactory:
    """Offline transports whose sizes, latencies and failures follow one seed.

    Each url's n-th request draws from ``Random(seed, url, n)``, so a run is the same
    whichever downloader serves which item.
    """

    def __init__(self, config: SimulateConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._requests: dict[str, int] = {}

    def __call__(self) -> Transport:
        """Return a transport for one downloader."""
        return _SimulatedTransport(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # In a worker process: the same seed, settings and clock (which must pickle).
        return (SimulatedTransportFactory, (self.config, self.clock))

    def respond(self, url: str) -> Response:
        """Answer one simulated request."""
        with self._lock:
            n = self._requests.get(url, 0)
            self._requests[url] = n + 1
        digest = hashlib.sha256(f"{self.config.seed}\x00{url}".encode()).digest()
        url_seed = int.from_bytes(digest[:8], "big")
        size = random.Random(url_seed).randint(self.config.min_size, self.config.max_size)
        if self.config.latency:
            self.clock.sleep(self.config.latency)
        if random.Random(url_seed + n + 1).random() < self.config.failure_rate:
            return _SimulatedResponse(503, 0, url_seed)
        return _SimulatedResponse(200, size, url_seed)


# -- a real HTTP server ------------------------------------------------------------------


class LocalFileServer:
    """Serve in-memory files over HTTP on 127.0.0.1, with failure injection.

    ``files`` maps a path (``/a.bin``) to its body. ``fail_first`` maps a path to how many
    of its first requests get a 503. ``delay`` makes every response wait that many
    seconds (a real sleep in the server thread, to keep a run in flight). ``counts``
    holds the server-side request count of every path.
    """

    def __init__(
        self,
        files: Mapping[str, bytes],
        *,
        fail_first: Mapping[str, int] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.files = dict(files)
        self.fail_first = dict(fail_first or {})
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self._lock = threading.Condition()
        self._stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up early (a killed run) are expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        """The full url of a path."""
        return self.base_url + path

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Block until the server has seen ``n`` requests in all; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self.counts.total() >= n, timeout)

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.counts[path] += 1
            n = self.counts[path]
            self._lock.notify_all()
        if self.delay:
            self._stop.wait(self.delay)
        body = self.files.get(path)
        if body is None:
            status, body = 404, b"not found"
        elif n <= self.fail_first.get(path, 0):
            status, body = 503, b"try again"
        else:
            status = 200
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.wfile.write(body)

    def __enter__(self) -> LocalFileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> LocalFileServer:
        """Start serving in a background thread."""
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
