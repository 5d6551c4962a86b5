"""The curl engine: libcurl's multi interface runs a downloader's transfers at once.

One ``CurlEngine`` per downloader actor. The actor ``start``s each granted item (which
either finishes at once — a file already in place, an unsafe name — or adds a transfer
to the multi handle) and calls ``perform`` while transfers run: libcurl moves every
transfer's bytes in C, Python sees each body chunk once (written to ``<name>.part`` and
hashed) and each finished transfer once. What a transfer must check — paths, resume,
status and size, the large-file lane, ``max_size`` on decoded bytes, verification — is
``runtime.core.transfer.Transfer``'s, shared with the requests engine; libcurl's own
machinery does the rest: connection reuse, ``CONNECTTIMEOUT``, ``LOW_SPEED_LIMIT`` /
``LOW_SPEED_TIME`` for stalls, ``MAXREDIRS`` and http(s)-only redirects, decoding.
Errors are translated by one table, ``CURL_ERRORS``.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pycurl

from messages import DownloadComplete, DownloadFailed, WorkItem
from messages.types import ErrorKind
from runtime.core.config import Config
from runtime.core.errors import (
    CancelledError,
    FetchError,
    RangeIgnoredError,
    StalledError,
    TooLargeError,
)
from runtime.core.netguard import BlockedAddressError, Redirect, blocked_error, guard_of
from runtime.core.partfile import BACKGROUND_HASH, BackgroundHash, hash_into, open_part_fd
from runtime.core.transfer import Transfer, overdue, verify

if TYPE_CHECKING:
    from runtime.core.transport import Transport

__all__ = ["CURL_ERRORS", "CurlEngine", "CurlEngineFactory", "translate_curl"]

CURL_ERRORS: dict[int, tuple[ErrorKind, bool]] = {
    pycurl.E_UNSUPPORTED_PROTOCOL: ("redirect", True),  # a redirect to ftp:, file:, …
    pycurl.E_URL_MALFORMAT: ("invalid_url", True),
    pycurl.E_COULDNT_RESOLVE_PROXY: ("connection", False),
    pycurl.E_COULDNT_RESOLVE_HOST: ("connection", False),
    pycurl.E_COULDNT_CONNECT: ("connection", False),
    pycurl.E_PARTIAL_FILE: ("truncated", False),
    pycurl.E_OPERATION_TIMEDOUT: ("timeout", False),
    pycurl.E_TOO_MANY_REDIRECTS: ("redirect", True),
    pycurl.E_GOT_NOTHING: ("connection", False),
    pycurl.E_SEND_ERROR: ("connection", False),
    pycurl.E_RECV_ERROR: ("connection", False),
    pycurl.E_BAD_CONTENT_ENCODING: ("decoding", False),
    pycurl.E_SSL_CONNECT_ERROR: ("connection", False),
    pycurl.E_PEER_FAILED_VERIFICATION: ("connection", True),
    pycurl.E_SSL_CACERT_BADFILE: ("connection", True),
    pycurl.E_HTTP2: ("connection", False),
}
"""libcurl error code → (``error_kind``, permanent); anything else is a transient
``connection`` failure."""

SCAN_INTERVAL = 0.1
"""Seconds between two looks at every transfer's deadline (not at each ``perform``: a
busy downloader calls it for every finished transfer)."""

FLUSH_BYTES = 1 << 20
"""Body bytes collected from libcurl's callbacks before they are written and hashed."""
FLUSH_PIECES = 256
"""Most pieces collected before they are written (``writev`` takes at most 1,024)."""

_CA_VARIABLES = ("CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def translate_curl(code: int, message: str, *, received: int, headers_seen: bool) -> FetchError:
    """The ``FetchError`` a libcurl error code stands for."""
    kind, permanent = CURL_ERRORS.get(code, ("connection", False))
    text = f"curl error {code}: {message}"
    if code == pycurl.E_OPERATION_TIMEDOUT and headers_seen:
        # Too slow, or silent, in the middle of a body: a stall (the speed limit is
        # download.min_speed over download.stall_window).
        return StalledError(f"stalled after {received} bytes: {text}")
    if code == pycurl.E_RECV_ERROR and received:
        kind = "truncated"  # the connection broke in the middle of the body
    return FetchError(text, error_kind=kind, permanent=permanent)


_HEADER_LINE = re.compile(r"^([^:\r\n]+):([^\r\n]*)", re.MULTILINE)
"""``Name: value`` lines of a response head."""


class _Headers(dict[str, str]):
    """Response headers by lower-case name (what ``Transfer.check_response`` reads)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass(slots=True)
class _Head:
    status: int
    headers: _Headers


@dataclass(slots=True, eq=False)
class _Job:
    """One running transfer."""

    item: WorkItem
    dest: Path
    part: Path
    offset: int
    handle: Any
    started: float
    status: int = 0
    headers: _Headers = field(default_factory=_Headers)
    raw: list[bytes] = field(default_factory=list)
    """Header lines as libcurl hands them over (``list.append`` is the callback: no
    Python frame per line); parsed into ``status`` and ``headers`` when needed."""
    parsed: int = 0
    """How many of ``raw`` were parsed."""
    checked: bool = False
    expected: int | None = None
    fd: int | None = None
    """The part file while the body arrives."""
    digest: Any = None
    hasher: Any = None
    received: int = 0
    deadline: float = 0.0
    next_report: float = 0.0
    validator: str | None = None
    error: BaseException | None = None
    pieces: list[bytes] = field(default_factory=list)
    """Body pieces collected since the last flush (written with one ``writev``)."""
    collected: int = 0
    """Bytes in ``pieces``."""
    sockets: list[socket.socket] = field(default_factory=list)
    url: str = ""
    """The url libcurl is at: the item's, then each redirect's (named by the guard)."""
    redirect: Redirect | None = None
    """The redirect that led to ``url``, if any."""


class CurlEngine:
    """See the module docstring."""

    def __init__(self, transfer: Transfer) -> None:
        """``transfer``: the downloader's, for the checks both engines share (it is
        never asked to fetch)."""
        self.transfer = transfer
        self.worker = transfer.worker
        self.config = transfer.config
        self.clock = transfer.clock
        self.cancel = transfer.cancel
        self.hooks = transfer.hooks
        self.multi = pycurl.CurlMulti()
        self.jobs: dict[Any, _Job] = {}
        self.idle: list[Any] = []  # handles to reuse (their connections stay cached)
        self.guard = guard_of(self.config.download)
        self.ca_bundle = next((os.environ[v] for v in _CA_VARIABLES if os.environ.get(v)), None)
        self.next_scan = 0.0  # when perform next looks at every transfer's deadline

    # -- the actor's side -----------------------------------------------------------

    @property
    def active(self) -> int:
        """Transfers running."""
        return len(self.jobs)

    def start(self, item: WorkItem) -> DownloadComplete | DownloadFailed | None:
        """Begin an item's transfer; a result when it ends at once, else None."""
        try:
            prepared = self.transfer.prepare(item)
            if isinstance(prepared, DownloadComplete):
                return prepared
            part, offset, headers = self.transfer.resume_plan(item, prepared)
        except (FetchError, OSError) as exc:
            return self.transfer.failed(item, exc)
        self._add(item, prepared, part, offset, headers)
        return None

    def _add(
        self,
        item: WorkItem,
        dest: Path,
        part: Path,
        offset: int,
        headers: dict[str, str],
        started: float | None = None,
    ) -> None:
        """Add a transfer of ``item`` to the multi handle; ``started``: when its attempt
        sent its first request, for a restart (default: now)."""
        handle = self.idle.pop() if self.idle else self._new_handle()
        now = self.clock.now()
        report = now + self.config.download.progress_interval
        started = now if started is None else started
        job = _Job(item=item, dest=dest, part=part, offset=offset, handle=handle,
                   started=started, next_report=report)  # fmt: skip
        self._configure(handle, job, headers)
        self.jobs[handle] = job
        self.multi.add_handle(handle)

    def perform(self, wait: float) -> list[DownloadComplete | DownloadFailed]:
        """Move every transfer on for up to ``wait`` s, or until one ends; return what
        ended. (Looping here, not through the actor's inbox, keeps a big body's 16 KiB
        callbacks from costing an actor message each.)"""
        done: list[DownloadComplete | DownloadFailed] = []
        until = time.monotonic() + wait
        while True:
            while self.multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
                pass
            while True:
                queued, ok, failed = self.multi.info_read()
                ended = [self._finish(handle, None) for handle in ok]
                ended += [self._finish(h, (code, msg)) for h, code, msg in failed]
                done += [result for result in ended if result is not None]
                if not queued:
                    break
            left = until - time.monotonic()
            if done or not self.jobs or left <= 0 or self.cancel.is_set():
                break
            due = self.multi.timeout()  # ms until libcurl wants to be called; -1: none
            self.multi.select(min(left, due / 1000) if due >= 0 else left)
        now = self.clock.now()
        cancelled = self.cancel.is_set()
        if now < self.next_scan and not cancelled:
            return done
        self.next_scan = now + SCAN_INTERVAL
        for handle, job in list(self.jobs.items()):
            if cancelled:
                job.error = CancelledError(f"cancelled after {job.received} bytes")
            elif job.deadline and now > job.deadline:
                job.error = overdue(job.deadline - job.started)
            if job.error is not None:
                result = self._finish(handle, (pycurl.E_ABORTED_BY_CALLBACK, "aborted"))
                if result is not None:
                    done.append(result)
        return done

    def close(self) -> None:
        """Abort what runs and free every handle."""
        for handle, job in list(self.jobs.items()):
            job.error = CancelledError("the downloader stopped")
            self._finish(handle, (pycurl.E_ABORTED_BY_CALLBACK, "aborted"))
        for handle in self.idle:
            handle.close()
        self.idle.clear()
        self.multi.close()

    # -- one transfer ---------------------------------------------------------------

    def _new_handle(self) -> Any:
        """An easy handle with the options every transfer shares (set once: handles are
        reused, with their connections, and never reset)."""
        d = self.config.download
        handle = pycurl.Curl()
        handle.setopt(pycurl.USERAGENT, d.user_agent)
        handle.setopt(pycurl.FOLLOWLOCATION, 1)
        handle.setopt(pycurl.MAXREDIRS, d.max_redirects)
        web = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
        handle.setopt(pycurl.PROTOCOLS, web)
        handle.setopt(pycurl.REDIR_PROTOCOLS, web)
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(d.connect_timeout * 1000)))
        # Below min_speed for a whole stall window (silence included) is a stall.
        handle.setopt(pycurl.LOW_SPEED_LIMIT, max(1, int(d.min_speed)))
        handle.setopt(pycurl.LOW_SPEED_TIME, max(1, round(d.stall_window)))
        handle.setopt(pycurl.ACCEPT_ENCODING, "")  # every encoding libcurl can decode
        handle.setopt(pycurl.HTTP_CONTENT_DECODING, 1)
        handle.setopt(pycurl.BUFFERSIZE, 512 * 1024)
        handle.setopt(pycurl.TCP_KEEPALIVE, 1)
        handle.setopt(pycurl.NOSIGNAL, 1)
        if self.ca_bundle:
            handle.setopt(pycurl.CAINFO, self.ca_bundle)
        return handle

    def _configure(self, handle: Any, job: _Job, headers: dict[str, str]) -> None:
        """Point a handle at one transfer: its url, headers and callbacks."""
        handle.setopt(pycurl.URL, job.item.url)
        if headers:
            handle.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()])
        else:  # (an empty list would leave the last transfer's headers in place)
            handle.unsetopt(pycurl.HTTPHEADER)
        if self.guard is not None:
            handle.setopt(pycurl.OPENSOCKETFUNCTION, lambda _, a: self._open_socket(job, a))
        handle.setopt(pycurl.HEADERFUNCTION, job.raw.append)
        handle.setopt(pycurl.WRITEFUNCTION, lambda data: self._write(job, data))

    def _open_socket(self, job: _Job, address: Any) -> socket.socket | int:
        """libcurl is about to connect (first request or a redirect): ask the guard."""
        assert self.guard is not None
        self._parse_headers(job)  # the redirects so far name where libcurl is going
        family, kind, proto, where = address
        ip = where[0] if isinstance(where, tuple) else ""
        if isinstance(ip, bytes):
            ip = ip.decode("ascii", "replace")
        url = job.url or job.item.url
        try:
            self.guard.check(str(ip), urllib.parse.urlsplit(url).hostname or "", job.redirect)
        except BlockedAddressError as exc:
            job.error = blocked_error(str(exc))
            return pycurl.SOCKET_BAD
        sock = socket.socket(family, kind, proto)
        job.sockets.append(sock)  # pycurl uses a duplicate; this one is closed at the end
        return sock

    def _parse_headers(self, job: _Job) -> None:
        """Parse the header lines that arrived since the last call."""
        raw = job.raw
        if self.guard is not None:  # line by line: the guard follows every redirect
            while job.parsed < len(raw):
                line = raw[job.parsed]
                job.parsed += 1
                self._header(job, line)
            return
        # Only the last response's head matters: from its status line on, all at once.
        start = job.parsed
        for i in range(len(raw) - 1, job.parsed - 1, -1):
            if raw[i].startswith(b"HTTP/"):
                self._header(job, raw[i])
                start = i + 1
                break
        text = b"".join(raw[start:]).decode("iso-8859-1")
        job.parsed = len(raw)
        job.headers.update((k.strip().lower(), v.strip()) for k, v in _HEADER_LINE.findall(text))

    def _header(self, job: _Job, line: bytes) -> None:
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text.startswith("HTTP/"):  # a new response (after a redirect, a 100 Continue)
            parts = text.split(" ", 2)
            job.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            job.headers = _Headers()
        elif ":" in text:
            name, _, value = text.partition(":")
            job.headers[name.strip().lower()] = value.strip()
        elif not text and 300 <= job.status < 400 and job.headers.get("location"):
            # The end of a redirect's head: libcurl goes on to its Location next. (Its
            # own url is out of reach from a callback: pycurl refuses getinfo there.)
            source = job.url or job.item.url
            target = urllib.parse.urljoin(source, job.headers["location"])
            hop = job.redirect.hop + 1 if job.redirect is not None else 1
            job.url, job.redirect = target, Redirect(hop, source, target)

    def _begin_body(self, job: _Job) -> None:
        """The final response's head arrived: check it, open the part file."""
        job.checked = True
        t = self.transfer
        t.pending_validator = None
        offset, expected = t.check_response(job.item, _Head(job.status, job.headers), job.offset)
        job.validator, job.offset, job.expected = t.pending_validator, offset, expected
        job.deadline = job.started + t.time_limit(expected)
        if self.clock.now() > job.deadline:  # a restart's answer came too late
            raise overdue(job.deadline - job.started)
        job.digest = hashlib.sha256()
        if offset:
            hash_into(job.digest, job.part, offset)
        big = (expected or 0) >= BACKGROUND_HASH
        job.hasher = BackgroundHash(job.digest) if big else job.digest
        job.fd = open_part_fd(job.part, offset)
        job.received = offset

    def _write(self, job: _Job, data: bytes) -> int | None:
        # libcurl hands over at most 16 KiB per call: collect, and write, hash and check
        # a whole block at a time (a 1 GiB body is 65,000 calls).
        if job.checked and job.error is None:
            job.pieces.append(data)
            job.collected += len(data)
            if job.collected >= FLUSH_BYTES or len(job.pieces) >= FLUSH_PIECES:
                return self._flush(job)
            return None
        if job.error is not None:
            return 0
        self._parse_headers(job)
        if 300 <= job.status < 400 and job.headers.get("Location"):
            return None  # the body of a redirect that libcurl follows
        try:
            self._begin_body(job)
        except (FetchError, OSError) as exc:
            job.error = exc
            return 0  # abort this transfer
        job.pieces.append(data)
        job.collected += len(data)
        return self._flush(job) if job.collected >= FLUSH_BYTES else None  # (one piece)

    def _flush(self, job: _Job) -> int | None:
        """Write, hash and check what was collected; 0 (abort) on a failure.

        The pieces go to the file with one ``writev`` (no copy into a buffer first) and
        to the digest one by one (on its helper thread for a big body)."""
        if not job.pieces:
            return None
        try:
            pieces, size = job.pieces, job.collected
            job.pieces, job.collected = [], 0
            job.received += size
            max_size = self.config.download.max_size
            if max_size and job.received > max_size:
                raise TooLargeError(f"more than download.max_size = {max_size} bytes")
            assert job.fd is not None
            _write_all(job.fd, pieces, size)
            for piece in pieces:
                job.hasher.update(piece)
            now = self.clock.now()
            if now >= job.next_report:
                job.next_report = now + self.config.download.progress_interval
                self.hooks.progress(job.item, job.received, job.expected)
        except (FetchError, OSError) as exc:
            job.error = exc
            return 0  # abort this transfer
        return None

    def _finish(
        self, handle: Any, error: tuple[int, str] | None
    ) -> DownloadComplete | DownloadFailed | None:
        """The result of a transfer that ended; None when it starts over (its Range
        request got an answer it cannot use: the whole file is fetched in the same
        attempt, by the attempt's deadline; while cancelling, the item is cancelled)."""
        job = self.jobs.pop(handle)
        self.multi.remove_handle(handle)
        result = self._result(job, error)
        self.idle.append(handle)
        if result is None:  # no Range this time, so it cannot be ignored again
            self._add(job.item, job.dest, job.part, 0, {}, started=job.started)
        return result

    def _result(
        self, job: _Job, error: tuple[int, str] | None
    ) -> DownloadComplete | DownloadFailed | None:
        """What an ended transfer comes to (see ``_finish``)."""
        item = job.item
        result: DownloadComplete | DownloadFailed | None
        try:
            self._parse_headers(job)
            if error is None and not job.checked:
                self._begin_body(job)  # an empty body: its head is still checked
            if job.checked and job.fd is not None:
                # What the last callbacks collected: the rest of the body, or, when the
                # transfer failed or was cancelled, bytes a Range resume goes on from.
                first = job.error
                self._flush(job)
                job.error = first or job.error
            self._close(job)
            if job.error is not None:
                raise job.error
            if error is not None:
                raise translate_curl(
                    error[0], error[1], received=job.received - job.offset,
                    headers_seen=job.checked,
                )  # fmt: skip
            size, digest = job.received, job.digest.hexdigest()
            verify(item, size, digest, job.expected)
            os.replace(job.part, job.dest)
            result = DownloadComplete(
                worker=self.worker, item=item, path=str(job.dest), size=size, sha256=digest
            )
        except RangeIgnoredError as exc:
            self.transfer.range_ignored(item, job.part, exc)
            result = None
            if self.cancel.is_set():  # shutting down: no new request
                cancelled = CancelledError("cancelled before fetching the whole file")
                result = self.transfer.failed(item, cancelled)
        except FetchError as exc:
            if job.checked or job.status:
                exc.scope = "url"  # the host answered: this transfer is what failed
            if exc.permanent:  # a transient failure keeps the part for a Range resume
                job.part.unlink(missing_ok=True)
            elif job.validator is not None:
                self.hooks.validator(item, job.validator)
            result = self.transfer.failed(item, exc)
        except OSError as exc:
            result = self.transfer.failed(item, exc)
        return result

    def _close(self, job: _Job) -> None:
        for sock in job.sockets:
            sock.close()
        job.sockets.clear()
        if isinstance(job.hasher, BackgroundHash):
            job.hasher.finish()
        if job.fd is not None:
            os.close(job.fd)
            job.fd = None


def _write_all(fd: int, pieces: list[bytes], size: int) -> None:
    """Write ``pieces`` (``size`` bytes in all) to ``fd`` with as few calls as it takes."""
    written = os.writev(fd, pieces)
    if written < size:  # a short write (a full disk says so on the next call)
        rest = b"".join(pieces)[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


class CurlEngineFactory:
    """Stands where a ``TransportFactory`` goes: downloaders of the small-file lane see
    ``engine`` and build a ``CurlEngine``; the large-file lane's get a requests transport
    (it reads big bodies 1 MiB at a time, where libcurl calls Python every 16 KiB: faster
    for files over ``download.large_threshold``). Picklable, for worker processes."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def make_engine(self, transfer: Transfer) -> CurlEngine:
        """The engine of a downloader of the small-file lane."""
        return CurlEngine(transfer)

    def __call__(self) -> Transport:
        """A transport for a downloader of the large-file lane."""
        from runtime.core.transport import RequestsTransport  # requests loads only for this

        return RequestsTransport(self.config)
