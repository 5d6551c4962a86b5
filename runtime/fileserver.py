"""A small HTTP server on 127.0.0.1 serving in-memory files.

It is what ``python -m runtime demo`` and the breaker benchmark download from: real HTTP
on a free local port, no network. ``runtime.testing.FaultServer`` builds on it with fault
routes for the tests, so the serving code exists once.
"""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import SplitResult, urlsplit

__all__ = ["LocalFileServer"]


class LocalFileServer:
    """An HTTP/1.1 server on 127.0.0.1 (a free port) serving ``files`` from memory.

    ``files`` maps a path such as ``/a.bin`` to its body; any other path gets a 404.
    ``fail_first`` maps a path to how many of its first requests get a 503 (a flaky
    server), ``delay`` makes every response wait that many seconds first, and ``counts``
    holds the requests per path. It serves, on a daemon thread, inside a ``with`` block.
    """

    def __init__(
        self,
        files: Mapping[str, bytes] | None = None,
        *,
        fail_first: Mapping[str, int] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.files = dict(files or {})
        self.fail_first = dict(fail_first or {})
        self.delay = delay
        self.counts: Counter[str] = Counter()
        # Reentrant: a subclass notes more about a request under the same hold (_arrived).
        self._lock = threading.Condition(threading.RLock())
        self.stop = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def do_GET(self) -> None:
                owner._serve(self)

            def do_HEAD(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gives up on a transfer is no error of the server's

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
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
        """Block until ``path`` was requested ``n`` times; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self.counts[path] >= n, timeout)

    # -- serving --------------------------------------------------------------------------

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Answer one request: count it, wait ``delay``, then the file or ``_route``."""
        parts = urlsplit(h.path)
        n = self._arrived(parts.path, h)
        if self.delay:
            self.stop.wait(self.delay)
        body = self.files.get(parts.path)
        if body is None:
            self._route(h, parts, n)
        elif n <= self.fail_first.get(parts.path, 0):
            self._plain(h, 503, b"try again\n")
        else:
            self._plain(h, 200, body)

    def _arrived(self, path: str, h: http.server.BaseHTTPRequestHandler) -> int:
        """Count a request of ``path``; return how many it has had, this one included."""
        with self._lock:
            self.counts[path] += 1
            self._lock.notify_all()
            return self.counts[path]

    def _route(self, h: http.server.BaseHTTPRequestHandler, parts: SplitResult, n: int) -> None:
        """Answer the ``n``-th request of a path that is not a file: 404 here."""
        self._plain(h, 404, b"no such file\n")

    def _plain(
        self, h: Any, status: int, body: bytes, headers: Mapping[str, str] | None = None
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
        """Send ``data``; False when the client has gone."""
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            return False
        return True
