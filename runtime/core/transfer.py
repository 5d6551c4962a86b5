"""One transfer, as the requests engine does it: from a leased item to its file.

The downloader actor keeps its mailbox, its demand and its reporting; everything about
moving one item's bytes lives here — path safety, reuse of a file already in place,
``.part`` handling, Range/If-Range resume, status and size checks, the large-file lane,
stall and deadline detection, ``max_size`` on decoded bytes, hashing, verification and
error classification. It tells its owner what it learns through ``TransferHooks``, and
remembers in a ``RangeMemory`` the hosts that cannot resume.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from messages import DownloadComplete, DownloadFailed, WorkItem
from messages.types import Lane
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.errors import (
    CancelledError,
    ChecksumError,
    FetchError,
    HTTPStatusError,
    LaneChangeError,
    RangeIgnoredError,
    RangeNotSatisfiableError,
    StalledError,
    TooLargeError,
    TruncatedError,
)
from runtime.core.hosts import host_of
from runtime.core.logs import get_logger
from runtime.core.partfile import (
    BACKGROUND_HASH,
    BackgroundHash,
    hash_file,
    hash_into,
    lstat_or_none,
    open_part,
)
from runtime.core.retry import parse_retry_after

if TYPE_CHECKING:
    from runtime.core.transport import Response, Transport

__all__ = [
    "EARLY_VALIDATOR",
    "RangeMemory",
    "ResponseHead",
    "Transfer",
    "TransferHooks",
    "overdue",
    "verify",
]

log = get_logger("downloader")


class ResponseHead(Protocol):
    """The status and headers of a response (all ``check_response`` looks at)."""

    status: int
    headers: Mapping[str, str]


class TransferHooks(Protocol):
    """What a transfer tells the actor that owns it, while it runs."""

    def validator(self, item: WorkItem, validator: str) -> None:
        """How to resume the item's partial file (an ETag or Last-Modified)."""
        ...

    def progress(self, item: WorkItem, received: int, total: int | None) -> None:
        """Bytes in the item's ``.part`` so far (at most every ``progress_interval``).

        Within an attempt they only grow: a restart from byte 0 (a Range answer that
        cannot be used) is decided on the response's head, before a byte of the attempt
        is written or reported. They may be lower than an earlier attempt's last report
        when its ``.part`` was discarded, and then a ``DownloadStarted`` came between.
        """
        ...

    def tick(self, now: float) -> None:
        """Called after every chunk (the owner may hand back what waits behind it)."""
        ...


class RangeMemory:
    """The hosts (``host:port``) that answered a Range request with other bytes than
    asked: their items are fetched whole, without Range, for the rest of the run.

    One per run and process, shared by its downloaders (they call from their own threads).
    """

    def __init__(self) -> None:
        self._hosts: set[str] = set()
        self._lock = threading.Lock()

    def honours(self, url: str) -> bool:
        """Whether a resume of ``url`` may ask for the rest with Range."""
        return host_of(url) not in self._hosts

    def distrust(self, url: str, item_id: str) -> None:
        """Remember that ``url``'s host cannot resume (logged the first time, naming the
        item that showed it)."""
        host = host_of(url)
        with self._lock:
            if host in self._hosts:
                return
            self._hosts.add(host)
        log.warning(
            "host does not honour Range; fetching its files whole", host=host, item_id=item_id
        )


class Transfer:
    """Fetches items one at a time with a ``Transport`` (the requests engine)."""

    def __init__(
        self,
        *,
        worker: str,
        config: Config,
        transport: Transport | None,
        clock: Clock,
        cancel: threading.Event,
        lane: Lane,
        hooks: TransferHooks,
        ranges: RangeMemory | None = None,
    ) -> None:
        """``ranges``: the hosts known not to honour Range, shared with the other
        downloaders of the run (default: this transfer's own)."""
        self.worker = worker
        self.config = config
        self.transport = transport
        self.clock = clock
        self.cancel = cancel
        self.lane = lane
        self.hooks = hooks
        self.ranges = ranges if ranges is not None else RangeMemory()
        self.out_dir = Path(config.output.dir)
        self.real_out = os.path.realpath(self.out_dir)
        self.pending_validator: str | None = None  # of a small transfer in progress
        self.safe_dirs: set[str] = set()

    def download(self, item: WorkItem) -> DownloadComplete | DownloadFailed:
        """Fetch one item into its file; every expected failure is a ``DownloadFailed``."""
        try:
            prepared = self.prepare(item)
            if isinstance(prepared, DownloadComplete):
                return prepared
            return self._fetch(item, prepared)
        except (FetchError, OSError) as exc:
            return self.failed(item, exc)

    def prepare(self, item: WorkItem) -> DownloadComplete | Path:
        """Check the item's path; return its file when already in place, else the path
        to download to. Raises ``FetchError`` (unsafe name) or ``OSError``."""
        dest = self.out_dir / item.name
        self.pending_validator = None  # never a stale one from the previous item
        self._prepare_dir(dest.parent)
        st = lstat_or_none(dest)
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                self._check_inside(dest)  # a link planted under the final name
            if self.config.output.if_exists != "overwrite":
                reused = self._reuse(item, dest)
                if reused is not None:
                    return reused
        return dest

    def failed(self, item: WorkItem, exc: FetchError | OSError) -> DownloadFailed:
        """The ``DownloadFailed`` an attempt's exception stands for."""
        if isinstance(exc, FetchError):
            log.info(
                "download failed",
                item_id=item.id,
                error_kind=exc.error_kind,
                error=str(exc),
                attempt=item.attempts,
            )
            return DownloadFailed(
                worker=self.worker,
                item=item,
                error_kind=exc.error_kind,
                error=str(exc),
                permanent=exc.permanent,
                counts_attempt=not isinstance(exc, CancelledError | LaneChangeError),
                retry_after=exc.retry_after,
                size=exc.size if isinstance(exc, LaneChangeError) else None,
                scope=exc.scope,
            )
        log.warning("file system error", item_id=item.id, error=str(exc))
        return DownloadFailed(
            worker=self.worker,
            item=item,
            error_kind="filesystem",
            error=f"{type(exc).__name__}: {exc}",
            permanent=False,
        )

    def _prepare_dir(self, folder: Path) -> None:
        """Create ``folder`` and make sure it resolves inside the output directory.

        Checked once per directory (symlinks included) and remembered, which saves a
        dozen system calls per file; a directory swapped for a link *during* the run by
        another process is outside what conveyor defends against.
        """
        key = str(folder)
        if key in self.safe_dirs:
            return
        folder.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(folder)
        if real != self.real_out and not real.startswith(self.real_out + os.sep):
            raise FetchError(
                f"{folder} resolves outside the output directory",
                error_kind="unsafe_name",
                permanent=True,
            )
        if len(self.safe_dirs) >= 10_000:
            self.safe_dirs.clear()
        self.safe_dirs.add(key)

    def _check_inside(self, dest: Path) -> None:
        """Refuse a path that resolves outside the output directory (symlinks included)."""
        real = os.path.realpath(dest)
        if not real.startswith(self.real_out + os.sep):
            raise FetchError(
                f"{dest} resolves outside the output directory",
                error_kind="unsafe_name",
                permanent=True,
            )

    def _reuse(self, item: WorkItem, dest: Path) -> DownloadComplete | None:
        """Accept a file already in place when it matches what the entry expects."""
        size = dest.stat().st_size
        if item.size is not None and size != item.size:
            return None
        digest = hash_file(dest)
        if item.sha256 is not None and digest != item.sha256:
            return None
        log.debug("file already in place", item_id=item.id, path=str(dest))
        return DownloadComplete(
            worker=self.worker, item=item, path=str(dest), size=size, sha256=digest, reused=True
        )

    def resume_plan(self, item: WorkItem, dest: Path) -> tuple[Path, int, dict[str, str]]:
        """The partial file, the offset to resume from and the request headers that ask
        for the rest (Range with If-Range, only when the item has a validator and its
        host honours Range).

        The offset is 0 unless Range is asked for, so a non-zero offset always means a
        Range request (what ``check_response`` holds the answer to)."""
        part = dest.with_name(dest.name + ".part")
        st = lstat_or_none(part)
        if st is not None and not stat.S_ISREG(st.st_mode):
            part.unlink()  # not ours (a planted link?): start over, never write through it
            st = None
        offset = st.st_size if st is not None else 0
        if not offset or not item.validator:
            return part, 0, {}  # nothing to resume, or no validator to resume it safely
        if not self.ranges.honours(item.url):
            part.unlink()  # its host cannot resume: the whole file, from byte 0
            return part, 0, {}
        return part, offset, {"Range": f"bytes={offset}-", "If-Range": item.validator}

    def _fetch(self, item: WorkItem, dest: Path) -> DownloadComplete:
        part, offset, headers = self.resume_plan(item, dest)
        started = self.clock.now()  # one deadline for the attempt, a restart included
        try:
            return self._fetch_from(item, dest, part, offset, headers, started)
        except RangeIgnoredError as exc:
            self.range_ignored(item, part, exc)
            if self.cancel.is_set():  # shutting down: no new request
                raise CancelledError("cancelled before fetching the whole file") from exc
            # No Range this time, so it cannot be ignored again.
            return self._fetch_from(item, dest, part, 0, {}, started)

    def range_ignored(self, item: WorkItem, part: Path, exc: RangeIgnoredError) -> None:
        """The server cannot use ``item``'s Range request: discard the ``.part``, and
        remember the host when it cannot resume (the caller fetches the whole file in
        the same attempt, unless it is cancelling)."""
        log.info(
            "range not usable; fetching the whole file",
            item_id=item.id,
            error=str(exc),
            url=item.url,
        )
        if exc.host_at_fault:
            self.ranges.distrust(item.url, item.id)
        part.unlink(missing_ok=True)

    def time_limit(self, expected: int | None) -> float:
        """Seconds an attempt may take, from its first request (a restart from byte 0
        included): ``download.timeout`` plus the expected size over ``min_speed``."""
        d = self.config.download
        return d.timeout + (expected or 0) / max(d.min_speed, 1)

    def _fetch_from(
        self,
        item: WorkItem,
        dest: Path,
        part: Path,
        offset: int,
        headers: dict[str, str],
        started: float,
    ) -> DownloadComplete:
        assert self.transport is not None
        response = self.transport.open(item.url, headers)
        try:
            offset, expected = self.check_response(item, response, offset)
            deadline = started + self.time_limit(expected)
            size, digest = self._stream(item, response, part, offset, expected, deadline)
        except FetchError as exc:
            exc.scope = "url"  # the host answered: this transfer is what failed
            if exc.permanent:  # a transient failure keeps the part for a Range resume
                part.unlink(missing_ok=True)
            elif self.pending_validator is not None:
                self.hooks.validator(item, self.pending_validator)
            raise
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            response.close()
        try:
            verify(item, size, digest, expected)
        except FetchError as exc:
            exc.scope = "url"
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return DownloadComplete(
            worker=self.worker, item=item, path=str(dest), size=size, sha256=digest
        )

    def check_response(self, item: WorkItem, response: Any, offset: int) -> tuple[int, int | None]:
        """Check status, range and size; return the write offset and the expected total."""
        cfg = self.config.download
        if response.status == 416 and offset:
            # Nothing from the offset on: the .part is already the whole file (a run was
            # killed before its rename), or longer. Never trusted as complete on the
            # server's word (Content-Range: bytes */TOTAL): the caller fetches it whole.
            raise RangeNotSatisfiableError(
                f"asked for bytes from {offset}, got 416 "
                f"({response.headers.get('Content-Range') or 'no Content-Range'})"
            )
        if response.status >= 400:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock.wall())
            raise HTTPStatusError(response.status, item.url, retry_after=retry_after)
        if response.status == 206 and offset:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:  # never spliced: the caller fetches the whole file
                raise RangeIgnoredError(
                    f"asked for bytes from {offset}, got {response.headers.get('Content-Range')}"
                )
        elif offset:
            # A full response to a Range request: the body from byte 0, the part truncated.
            # The same validator (or none) means the file did not change: the host cannot
            # resume (a changed validator is the file changing, not the host's fault).
            if _validator(response.headers) in (None, item.validator):
                self.ranges.distrust(item.url, item.id)
            offset = 0
        length = _content_length(response.headers)
        expected = offset + length if length is not None else item.size
        if cfg.max_size and expected is not None and expected > cfg.max_size:
            raise TooLargeError(f"{expected} bytes announced, download.max_size is {cfg.max_size}")
        if (
            self.lane == "small"
            and expected is not None
            and expected > cfg.large_threshold
            and not offset
        ):
            raise LaneChangeError(expected)
        validator = _validator(response.headers)
        if validator is not None and validator != item.validator:
            if expected is None or expected >= EARLY_VALIDATOR:
                # Recorded before the body, so even a killed run resumes this file.
                self.hooks.validator(item, validator)
            else:
                self.pending_validator = validator  # recorded only if the transfer fails
        return offset, expected

    def _stream(
        self,
        item: WorkItem,
        response: Response,
        part: Path,
        offset: int,
        total: int | None,
        deadline: float,
    ) -> tuple[int, str]:
        """Append the body to ``part`` from ``offset`` by ``deadline``; return the size
        and the sha256."""
        digest = hashlib.sha256()
        if offset:
            hash_into(digest, part, offset)
        # Big bodies are hashed on another thread (hashlib releases the GIL), so receiving,
        # writing and hashing overlap on two cores instead of taking turns.
        hasher: Any = BackgroundHash(digest) if (total or 0) >= BACKGROUND_HASH else digest
        try:
            received = self._receive(item, response, part, offset, total, hasher, deadline)
        finally:
            if isinstance(hasher, BackgroundHash):
                hasher.finish()
        return received, digest.hexdigest()

    def _receive(
        self,
        item: WorkItem,
        response: Response,
        part: Path,
        offset: int,
        total: int | None,
        digest: Any,
        deadline: float,
    ) -> int:
        cfg = self.config.download
        received = offset
        now = self.clock.now()
        window_start, window_bytes = now, 0
        next_report = now + cfg.progress_interval
        with open_part(part, offset) as fh:
            try:
                for chunk in response.iter_bytes(cfg.chunk_size):
                    if self.cancel.is_set():
                        raise CancelledError(f"cancelled after {received} bytes")
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    window_bytes += len(chunk)
                    if cfg.max_size and received > cfg.max_size:
                        raise TooLargeError(f"more than download.max_size = {cfg.max_size} bytes")
                    now = self.clock.now()
                    if now - window_start >= cfg.stall_window:
                        if window_bytes / (now - window_start) < cfg.min_speed:
                            raise StalledError(
                                f"{window_bytes} bytes in {now - window_start:.1f} s, below "
                                f"download.min_speed = {cfg.min_speed} B/s"
                            )
                        window_start, window_bytes = now, 0
                    if now > deadline:
                        raise overdue(self.time_limit(total))
                    if now >= next_report:
                        next_report = now + cfg.progress_interval
                        self.hooks.progress(item, received, total)
                    self.hooks.tick(now)
            except FetchError as exc:
                if exc.error_kind == "timeout" and received > offset and now <= deadline:
                    # no byte for a whole read timeout in the middle of a body: a stall
                    # (past the deadline it is the attempt's own timeout)
                    raise StalledError(f"stalled after {received} bytes: {exc}") from exc
                raise
        return received


def overdue(limit: float) -> FetchError:
    """The failure of an attempt that ran past its deadline (``limit`` seconds)."""
    return FetchError(f"the download took longer than {limit:.0f} s", error_kind="timeout")


EARLY_VALIDATOR = 1 << 20
"""Bodies at least this large (or of unknown size) have their ETag/Last-Modified recorded
before the transfer; smaller ones only when the transfer fails (one message and one
store write less per small file)."""


def _validator(headers: Any) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range may carry."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = headers.get("Last-Modified")
    return str(modified) if modified else None


def _range_start(content_range: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length")
    if value is None or headers.get("Content-Encoding", "identity") != "identity":
        return None  # a decoded body's length differs from Content-Length
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def verify(item: WorkItem, size: int, digest: str, expected: int | None) -> None:
    if expected is not None and size < expected:
        raise TruncatedError(f"got {size} of {expected} bytes")
    if item.size is not None and size != item.size:
        raise FetchError(
            f"got {size} bytes, the entry says {item.size}",
            error_kind="size_mismatch",
            permanent=True,
        )
    if item.sha256 is not None and digest != item.sha256:
        raise ChecksumError(f"sha256 {digest} differs from the entry's {item.sha256}")
