"""``FaultServer``: ``LocalFileServer`` plus fault routes, and ``body_of``, their bodies."""

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
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qs

from runtime.fileserver import LocalFileServer

__all__ = ["FaultServer", "body_of"]


GiB = 1 << 30


def body_of(name: str, size: int) -> bytes:
    """The body every route serves for ``name`` at ``size`` bytes."""
    seed = hashlib.sha256(name.encode()).digest()
    block = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(128))
    return (block * (size // len(block) + 1))[:size]


class FaultServer(LocalFileServer):
    """A ``LocalFileServer`` with fault routes: a real HTTP server on 127.0.0.1 for tests.

    It serves ``files`` as ``LocalFileServer`` does (``fail_first``, ``delay``, ``counts``)
    and, on any other path, these routes (``<name>`` is any file name; bodies are
    ``body_of(name, size)``, ``?size=N`` sets the size, default 10,000):

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

    ``times`` holds the arrival of each path's requests (``time.monotonic``); ``ranges``
    the Range header each request carried; ``max_active`` the most requests that were in
    progress at once.

    ``on_request(path, range)`` runs as each request arrives, before it is answered
    (``range``: its Range header or None): a test's hook into that moment, to move a fake
    clock or cancel.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        fail_first: Mapping[str, int] | None = None,
        delay: float = 0.0,
        on_request: Callable[[str, str | None], None] | None = None,
    ) -> None:
        super().__init__(files, fail_first=fail_first, delay=delay)
        self.on_request = on_request
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.ranges: defaultdict[str, list[str | None]] = defaultdict(list)
        self.agents: defaultdict[str, list[str | None]] = defaultdict(list)
        self.active = 0
        self.max_active = 0
        self.outage = threading.Event()

    # -- routing --------------------------------------------------------------------------

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            super()._serve(h)
        finally:
            with self._lock:
                self.active -= 1

    def _arrived(self, path: str, h: http.server.BaseHTTPRequestHandler) -> int:
        with self._lock:  # one hold with the count (the lock is reentrant): waiters see both
            self.times[path].append(time.monotonic())
            self.ranges[path].append(h.headers.get("Range"))
            self.agents[path].append(h.headers.get("User-Agent"))
            n = super()._arrived(path, h)
        if self.on_request is not None:
            self.on_request(path, h.headers.get("Range"))
        return n

    def _route(self, h: http.server.BaseHTTPRequestHandler, parts: SplitResult, n: int) -> None:
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
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
