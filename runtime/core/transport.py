"""HTTP transports: the boundary where ``requests`` errors become ``FetchError``.

A ``Transport`` opens one streaming response; the downloader does everything else
(status check, ``.part`` file, verification, rename), so the real, simulated and
scripted transports all exercise the same download logic. Nothing from ``requests`` or
``urllib3`` escapes this module: every library error is translated with
``raise ... from exc`` into a ``FetchError`` carrying ``error_kind`` and ``permanent``.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from messages.types import ErrorKind
from runtime.core.config import Config
from runtime.core.errors import FetchError
from runtime.core.netguard import (
    BlockedAddressError,
    NetworkGuard,
    Redirect,
    blocked_error,
    find_blocked,
    guard_of,
    guarded_connection,
)

__all__ = [
    "RequestsTransport",
    "RequestsTransportFactory",
    "Response",
    "Transport",
    "TransportFactory",
    "requests_adapter",
    "translate",
]


class Response(Protocol):
    """One streaming HTTP response."""

    status: int
    headers: Mapping[str, str]

    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]:
        """Yield the (decoded) body; raise ``FetchError`` on a broken transfer."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class Transport(Protocol):
    """Opens streaming responses; one instance per downloader, used from its thread."""

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        """Send a GET and return once the status line and headers arrived."""
        ...

    def close(self) -> None:
        """Release pooled connections."""
        ...


TransportFactory = Callable[[], Transport]


def translate(exc: BaseException, url: str, redirects: Sequence[str] = ()) -> FetchError:
    """Map a requests/urllib3/socket error to a ``FetchError`` with a stable kind.

    ``redirects``: the urls that answered with a redirect before ``exc`` (a refused
    connection is then told as the last one's).
    """
    text = f"{type(exc).__name__}: {exc}"
    blocked = find_blocked(exc)
    if blocked is not None:
        if redirects:
            request = getattr(exc, "request", None)  # requests' error names what it sent
            target = getattr(request, "url", None) or blocked.host
            blocked = blocked.redirected(Redirect(len(redirects), redirects[-1], str(target)))
        return blocked_error(str(blocked))
    if isinstance(exc, requests.exceptions.TooManyRedirects):
        return FetchError(f"too many redirects for {url}", error_kind="redirect", permanent=True)
    if isinstance(exc, requests.exceptions.InvalidSchema | requests.exceptions.MissingSchema):
        return FetchError(f"refused redirect or url: {text}", error_kind="redirect", permanent=True)
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.URLRequired):
        return FetchError(text, error_kind="invalid_url", permanent=True)
    if isinstance(
        exc,
        requests.exceptions.Timeout | urllib3.exceptions.TimeoutError | TimeoutError,
    ):
        return FetchError(text, error_kind="timeout")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
        kind: ErrorKind = "truncated" if "IncompleteRead" in text else "connection"
        return FetchError(text, error_kind=kind)
    if isinstance(exc, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError):
        return FetchError(text, error_kind="decoding")
    return FetchError(text, error_kind="connection")


def _guarded_adapter(guard: NetworkGuard) -> requests.adapters.HTTPAdapter:
    """An adapter whose new connections go through the guard (see ``runtime.core.netguard``)."""

    def new_conn(conn: urllib3.connection.HTTPConnection) -> socket.socket:
        try:
            return guarded_connection(
                guard, (conn._dns_host, conn.port), conn.timeout,
                conn.source_address, conn.socket_options,
            )  # fmt: skip
        except BlockedAddressError as exc:
            raise urllib3.exceptions.NewConnectionError(conn, str(exc)) from exc

    class HTTP(urllib3.connection.HTTPConnection):
        _new_conn = new_conn

    class HTTPS(urllib3.connection.HTTPSConnection):
        _new_conn = new_conn

    class HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = HTTP

    class HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = HTTPS

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kw: Any) -> None:
            super().init_poolmanager(*args, **kw)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    return Adapter(pool_connections=4, pool_maxsize=4, max_retries=0)


def requests_adapter(guard: NetworkGuard | None) -> requests.adapters.HTTPAdapter:
    """The adapter of conveyor's sessions: no retries of its own, the guard when on."""
    if guard is None:
        return requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
    return _guarded_adapter(guard)


_LIBRARY_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)


_ENV_SETTINGS = ("NETRC",)


def _trust_env(setting: str) -> bool:
    """``download.trust_env``: ``auto`` trusts the environment only when it has settings.

    requests looks up proxies and ``.netrc`` credentials on every request when
    ``trust_env`` is on; with nothing to find, that is pure cost. (CA bundle variables are
    honoured either way: read once when the transport is built.)
    """
    if setting != "auto":
        return setting == "yes"
    if urllib.request.getproxies() or any(os.environ.get(k) for k in _ENV_SETTINGS):
        return True
    home = os.path.expanduser("~")
    return any(os.path.exists(os.path.join(home, n)) for n in (".netrc", "_netrc"))


class _RequestsResponse:
    def __init__(self, response: requests.Response, url: str) -> None:
        self._response = response
        self._url = url
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    def iter_bytes(self, chunk_size: int) -> Iterator[bytes]:
        # read1, not iter_content: it returns what has arrived instead of blocking until a
        # whole chunk is there, so a stall loses no received bytes and a slow transfer
        # reports progress; decoding is bounded by chunk_size, so a gzip bomb inflates
        # one chunk at a time.
        raw = self._response.raw
        try:
            while chunk := raw.read1(chunk_size, decode_content=True):
                yield chunk
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, self._url) from exc

    def close(self) -> None:
        self._response.close()


class RequestsTransport:
    """A ``requests.Session`` with its own connection pool, one per downloader."""

    def __init__(self, config: Config) -> None:
        self.session = requests.Session()
        adapter = requests_adapter(guard_of(config.download))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = config.download.user_agent
        self.session.max_redirects = config.download.max_redirects
        self.session.trust_env = _trust_env(config.download.trust_env)
        if not self.session.trust_env:  # the CA bundle variables still count, read once
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:
                self.session.verify = bundle
        # Silence for a whole stall window is a stall, whatever the read timeout says.
        read = min(config.download.read_timeout, config.download.stall_window)
        self.timeout = (config.download.connect_timeout, read)

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        """Send the GET, following redirects."""
        redirects: list[str] = []

        def seen(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            if response.is_redirect:  # called for each response, the redirects' too
                redirects.append(response.url)

        try:
            response = self.session.get(
                url, headers=dict(headers), stream=True, timeout=self.timeout,
                hooks={"response": seen},
            )  # fmt: skip
        except _LIBRARY_ERRORS as exc:
            raise translate(exc, url, redirects) from exc
        return _RequestsResponse(response, url)

    def close(self) -> None:
        """Close the session's pool."""
        self.session.close()


class RequestsTransportFactory:
    """Builds a ``RequestsTransport`` per downloader; picklable, for worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self) -> Transport:
        """Return a transport for one downloader."""
        return RequestsTransport(self.config)
