"""Test doubles that ship with conveyor, for its own tests and for programs embedding it.

- ``FakeClock``: time that moves only when told (``advance``), or jumps on ``sleep``.
- ``ScriptedTransport``: answers each url from a script of steps, counting requests.
- ``SimulatedTransportFactory``: the seeded offline transport of ``--simulate-downloads``,
  re-exported from ``runtime.core.simulate`` (production code, below the actors).
- ``FaultServer`` (also ``LocalFileServer``): a real HTTP server on 127.0.0.1 serving
  in-memory files and fault routes (error statuses, Retry-After, stalls, resets, slow
  drips, redirects, endless and gzip bodies), with server-side request counts.
- ``capture_logs``: structlog's log capture, re-exported.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.server
import socket
import struct
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from structlog.testing import capture_logs

from messages.types import ErrorKind
from runtime.core.errors import FetchError
from runtime.core.simulate import SimulatedTransportFactory

if TYPE_CHECKING:
    from runtime.core.transport import Response, Transport

__all__ = [
    "Crash",
    "Fail",
    "FakeClock",
    "FaultServer",
    "LocalFileServer",
    "Ok",
    "ScriptedTransport",
    "SimulatedTransportFactory",
    "Stall",
    "Status",
    "body_of",
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


# -- a real HTTP server ------------------------------------------------------------------


GiB = 1 << 30


def body_of(name: str, size: int) -> bytes:
    """The body every route serves for ``name`` at ``size`` bytes."""
    seed = hashlib.sha256(name.encode()).digest()
    block = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(128))
    return (block * (size // len(block) + 1))[:size]


class FaultServer:
    """A real HTTP server on 127.0.0.1 for tests and the demo, with failure injection.

    It serves ``files`` (a path such as ``/a.bin`` → its body; ``fail_first`` maps a path
    to how many of its first requests get a 503) and these routes (``<name>`` is any file
    name; bodies are ``body_of(name, size)``, ``?size=N`` sets the size, default 10,000):

    - ``/ok/<name>``                   200, with ETag and Range support (206; 416 with
                                       ``Content-Range: bytes */<size>`` from the end on)
    - ``/status/<code>/<name>``        always ``code``
    - ``/fail-first/<k>/<code>/<name>`` ``code`` for the first k requests, then ``/ok``
    - ``/outage/<name>``                503 while ``outage`` is set (a test clears it), then ok
    - ``/retry-after/<value>/<name>``  first request 429 with ``Retry-After: <value>``
                                       (``date:<secs>`` sends an HTTP-date secs ahead), then ok
    - ``/reset/<name>?at=M``           first request: M bytes, then a TCP reset; then ok
    - ``/truncate/<name>?at=M``        first request: M bytes of a longer Content-Length, then
                                       close; ``&always=1`` every time
    - ``/stall/<name>?at=M&secs=S``    first request: M bytes then silence for S seconds
    - ``/range-lie/<code>/<name>?at=M`` first request: M bytes of a longer body, then close
                                       (a ``.part`` to resume); then a Range request gets
                                       ``code``: 200 with the whole body, or 206 with a
                                       Content-Range (and bytes) from half the offset asked;
                                       a request without Range gets 200
    - ``/drip/<name>?rate=B``          B bytes per 0.1 s (a slow but live transfer), with
                                       ETag and Range support
    - ``/redirect/<n>/<name>``         a chain of n redirects to ``/ok/<name>``
    - ``/loop/<name>``                 redirects to itself
    - ``/to-ftp/<name>``               redirects to an ftp:// url
    - ``/huge/<name>``                 ``Content-Length`` of 100 GiB, endless body
    - ``/endless/<name>``              chunked, endless body
    - ``/gzip/<name>``                 ``Content-Encoding: gzip`` of the body
    - ``/gzip-bomb/<name>?mb=M``       a small gzip body that inflates to M MiB of zeros
    - ``/chunked/<name>``              the body in chunked transfer encoding

    ``counts`` holds requests per path; ``times`` their arrival (``time.monotonic``);
    ``ranges`` the Range header each request carried; ``max_active`` the most requests that
    were in progress at once.

    ``delay`` makes every response wait that many seconds first. ``on_request(path,
    range)`` runs as each request arrives, before it is answered (``range``: its Range
    header or None): a test's hook into that moment, to move a fake clock or cancel.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        fail_first: Mapping[str, int] | None = None,
        delay: float = 0.0,
        on_request: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.files = dict(files or {})
        self.fail_first = dict(fail_first or {})
        self.delay = delay
        self.on_request = on_request
        self.counts: Counter[str] = Counter()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.ranges: defaultdict[str, list[str | None]] = defaultdict(list)
        self.active = 0
        self.max_active = 0
        self._lock = threading.Condition()
        self.stop = threading.Event()
        self.outage = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def do_GET(self) -> None:
                owner.serve(self)

            def do_HEAD(self) -> None:
                owner.serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that abort transfers are the point of this server

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

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

    def wait_for(self, path: str, n: int, timeout: float) -> bool:
        """Block until ``path`` was requested ``n`` times."""
        with self._lock:
            return self._lock.wait_for(lambda: self.counts[path] >= n, timeout)

    # -- routing --------------------------------------------------------------------------

    def serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.handle(h)
        finally:
            with self._lock:
                self.active -= 1

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.counts[path] += 1
            n = self.counts[path]
            self.times[path].append(time.monotonic())
            self.ranges[path].append(h.headers.get("Range"))
            self._lock.notify_all()
        if self.on_request is not None:
            self.on_request(path, h.headers.get("Range"))
        if self.delay:
            self.stop.wait(self.delay)
        if path in self.files:
            if n <= self.fail_first.get(path, 0):
                self._plain(h, 503, b"try again\n")
            else:
                self._plain(h, 200, self.files[path])
            return
        segs = path.strip("/").split("/")
        route, args, name = segs[0], segs[1:-1], segs[-1]
        size = int(query.get("size", "10000"))
        first = n == 1
        match route:
            case "ok":
                self._ok(h, name, size)
            case "status":
                self._plain(h, int(args[0]), b"status\n")
            case "outage":
                if self.outage.is_set():
                    self._plain(h, 503, b"down for maintenance\n")
                else:
                    self._ok(h, name, size)
            case "fail-first":
                if n <= int(args[0]):
                    self._plain(h, int(args[1]), b"failing\n")
                else:
                    self._ok(h, name, size)
            case "retry-after":
                if first:
                    value = args[0]
                    if value.startswith("date:"):
                        when = time.time() + float(value[5:])
                        value = email.utils.formatdate(when, usegmt=True)
                    self._plain(h, 429, b"slow down\n", {"Retry-After": value})
                else:
                    self._ok(h, name, size)
            case "reset" | "truncate" | "stall":
                if first or query.get("always") == "1":
                    self._broken(
                        h,
                        route,
                        name,
                        size,
                        int(query.get("at", "1000")),
                        float(query.get("secs", "30")),
                    )
                else:
                    self._ok(h, name, size)
            case "range-lie":
                if first:
                    self._broken(h, "truncate", name, size, int(query.get("at", "1000")), 0)
                else:
                    self._range_lie(h, int(args[0]), name, size)
            case "drip":
                self._ok(h, name, size, rate=int(query.get("rate", "10000")))
            case "redirect":
                hops = int(args[0])
                target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/ok/{name}"
                self._plain(
                    h, 302, b"", {"Location": target + (f"?{parts.query}" if parts.query else "")}
                )
            case "loop":
                self._plain(h, 302, b"", {"Location": path})
            case "to-ftp":
                self._plain(h, 302, b"", {"Location": f"ftp://127.0.0.1/{name}"})
            case "huge":
                self._endless(h, {"Content-Length": str(100 * GiB)})
            case "endless":
                self._endless(h, {"Transfer-Encoding": "chunked"}, chunked=True)
            case "gzip":
                data = gzip.compress(body_of(name, size))
                self._plain(h, 200, data, {"Content-Encoding": "gzip"})
            case "gzip-bomb":
                mib = int(query.get("mb", "64"))
                comp = zlib.compressobj(9, zlib.DEFLATED, 31)
                data = b"".join(comp.compress(b"\0" * (1 << 20)) for _ in range(mib))
                self._plain(h, 200, data + comp.flush(), {"Content-Encoding": "gzip"})
            case "chunked":
                self._chunked(h, body_of(name, size))
            case _:
                self._plain(h, 404, b"no such route\n")

    # -- responses ------------------------------------------------------------------------

    def _plain(
        self, h: Any, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            self._write(h, body)

    @staticmethod
    def _write(h: Any, data: bytes) -> bool:
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            return False
        return True

    def _ok(self, h: Any, name: str, size: int, rate: int = 0) -> None:
        body = body_of(name, size)
        etag = _etag(body)
        start = 0
        wanted = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if wanted and wanted.startswith("bytes=") and (if_range is None or if_range == etag):
            start = int(wanted[6:].split("-")[0])
        if start and start >= size:  # nothing from there on, as real servers answer
            self._plain(h, 416, b"", {"Content-Range": f"bytes */{size}", "ETag": etag})
            return
        if start:
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            h.send_response(200)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(size - start))
        h.end_headers()
        if h.command == "HEAD":
            return
        if not rate:
            self._write(h, body[start:])
            return
        for i in range(start, size, rate):
            if not self._write(h, body[i : i + rate]):
                return
            if i + rate < size and self.stop.wait(0.1):
                return

    def _range_lie(self, h: Any, code: int, name: str, size: int) -> None:
        """A server that cannot resume: a Range request gets the whole body (``code``
        200) or a 206 from the wrong offset (half the one asked for)."""
        body = body_of(name, size)
        wanted = h.headers.get("Range")
        start = 0
        if code == 206 and wanted and wanted.startswith("bytes="):
            start = int(wanted[6:].split("-")[0]) // 2
        if start:
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            h.send_response(200)
        h.send_header("ETag", _etag(body))
        h.send_header("Content-Length", str(size - start))
        h.end_headers()
        if h.command != "HEAD":
            self._write(h, body[start:])

    def _broken(self, h: Any, kind: str, name: str, size: int, at: int, secs: float) -> None:
        body = body_of(name, size)
        etag = _etag(body)
        h.send_response(200)
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(size))
        h.end_headers()
        if not self._write(h, body[:at]):
            return
        if kind == "stall":
            self.stop.wait(secs)
        elif kind == "reset":
            self.stop.wait(0.2)  # let the client read what was sent before the reset
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.close_connection = True
        h.connection.close()

    def _endless(self, h: Any, headers: dict[str, str], chunked: bool = False) -> None:
        h.send_response(200)
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        block = b"z" * 65536
        frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
        while not self.stop.is_set() and self._write(h, frame):
            pass
        h.close_connection = True

    def _chunked(self, h: Any, body: bytes) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), 4096):
            piece = body[i : i + 4096]
            self._write(h, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self._write(h, b"0\r\n\r\n")


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


LocalFileServer = FaultServer
"""The name this server had when it served only in-memory files (still works)."""
