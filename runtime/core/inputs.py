"""Stream the input list: JSON array or NDJSON, one entry at a time.

A 1,000,000-line input is never loaded whole: NDJSON is read line by line and a JSON
array is decoded element by element from a rolling buffer. Each entry becomes either a
``WorkItem`` or a ``Rejected`` record naming its line; only an unreadable file (missing,
not UTF-8, a JSON array whose syntax breaks) raises ``InputError``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import msgpack

from messages import Enqueue, Rejected, WorkItem
from runtime.core.errors import InputError
from runtime.core.hosts import split_plain_url

__all__ = [
    "UnsafeNameError",
    "derive_id",
    "derive_name",
    "iter_batches",
    "iter_raw_entries",
    "parse_entry",
    "safe_name",
    "shorten",
]

MAX_COMPONENT_BYTES = 255
PART_SUFFIX = ".part"
MAX_FILE_NAME_BYTES = MAX_COMPONENT_BYTES - len(PART_SUFFIX)
"""The last component must leave room for ``.part`` while the file downloads."""
MAX_NAME_BYTES = 4096
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Unicode category Cc: the C0 and C1 control characters and DEL."""
_CONTROL_OR_SPACE = re.compile("[\x00-\x20\x7f-\x9f]")
_DRIVE = re.compile(r"[A-Za-z]:")
_READ_SIZE = 1 << 20


class UnsafeNameError(ValueError):
    """A name that would escape the output directory or cannot be a file name."""


def safe_name(name: str) -> str:
    """Return ``name`` as a relative path that stays inside the output directory.

    Backslashes count as separators and empty or ``.`` components are dropped; anything
    that could escape (``..``, an absolute path) or that no file system takes (NUL, control
    characters, a component over 255 bytes) is rejected rather than guessed at.

    Raises:
        UnsafeNameError: with the reason.
    """
    if not name:
        raise UnsafeNameError("name is empty")
    if _CONTROL.search(name):
        raise UnsafeNameError("name contains a control character (NUL, newline, …)")
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _DRIVE.match(normalised):
        raise UnsafeNameError("name is an absolute path")
    parts = [p for p in normalised.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeNameError("name contains '..'")
    if not parts:
        raise UnsafeNameError("name has no file name in it")
    for part in parts[:-1]:
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafeNameError(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes")
    if len(parts[-1].encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise UnsafeNameError(
            f"the file name is longer than {MAX_FILE_NAME_BYTES} bytes (it needs room for "
            f"'{PART_SUFFIX}' while downloading, within the {MAX_COMPONENT_BYTES}-byte limit)"
        )
    result = "/".join(parts)
    if len(result.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeNameError(f"name is longer than {MAX_NAME_BYTES} bytes")
    if result.endswith(".part"):
        raise UnsafeNameError("names ending in '.part' are reserved for partial downloads")
    return result


def derive_id(url: str) -> str:
    """Return a stable id for an entry that gives none: a digest of its url."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]


def derive_name(url: str, item_id: str, path: str | None = None) -> str:
    """Return the url's last path segment, made safe; the id when there is none.

    A derived name never rejects an entry: one that is too long is shortened (keeping
    its extension, adding a digest of the original so two long names stay distinct).
    ``path`` is the url's path when the caller has split it already.
    """
    if path is None:
        path = urlsplit(url).path
    segment = unquote(path.rsplit("/", 1)[-1])
    for candidate in (segment, item_id.replace("/", "_")):
        try:
            return safe_name(shorten(candidate))
        except UnsafeNameError:
            continue
    return "index"


def shorten(name: str, limit: int = MAX_FILE_NAME_BYTES) -> str:
    """Fit a single-component ``name`` into ``limit`` UTF-8 bytes, keeping its extension."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    tail = "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12] + (f".{ext}" if ext else "")
    room = limit - len(tail.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
    return cut + tail


def _check_url(url: Any) -> tuple[str, str]:
    """The url and its path, or ValueError saying why the url cannot be fetched."""
    if not isinstance(url, str) or not url:
        raise ValueError("'url' must be a non-empty string")
    plain = split_plain_url(url)
    if plain is not None:
        return url, plain[3]
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url scheme {parts.scheme or '(none)'!r} is not http or https")
    if not parts.hostname:
        raise ValueError("url has no host")
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError("url contains whitespace or a control character")
    return url, parts.path


def parse_entry(obj: Any, line: int) -> tuple[WorkItem | Rejected, bool]:
    """Turn one decoded input entry into a WorkItem, or a Rejected naming its line.

    Returns:
        The item or rejection, and whether its name was derived from the url.
    """
    if not isinstance(obj, Mapping):
        return _reject(line, {}, f"entry is a JSON {_jtype(obj)}, not an object"), False
    raw_id = obj.get("id")
    try:
        for key in ("url", "id", "name", "sha256"):
            if _text(obj.get(key)) != obj.get(key):
                raise ValueError(f"{key!r} is not valid Unicode (it holds a lone surrogate)")
        url, path = _check_url(obj.get("url"))
        if (raw_id is not None and not isinstance(raw_id, str | int)) or isinstance(raw_id, bool):
            raise ValueError("'id' must be a string or an integer")
        item_id = str(raw_id) if raw_id is not None else derive_id(url)
        if not item_id or len(item_id) > 1024 or "\x00" in item_id:
            raise ValueError("'id' must be 1 to 1024 characters without NUL")
        name, derived = _entry_name(obj, url, item_id, path)
        sha256 = obj.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
            raise ValueError("'sha256' must be 64 hex digits")
        size = obj.get("size")
        if size is not None and (type(size) is not int or size < 0):
            raise ValueError("'size' must be a non-negative integer")
        fields = _extra_fields(obj)
    except (ValueError, UnsafeNameError) as exc:
        return _reject(line, obj, str(exc)), False
    item = WorkItem(
        id=item_id,
        url=url,
        name=name,
        sha256=sha256.lower() if sha256 else None,
        size=size,
        line=line,
        fields=fields,
    )
    return item, derived


ENTRY_KEYS = frozenset({"url", "id", "name", "sha256", "size"})
"""The keys of an entry that conveyor reads itself; any other is one of its fields."""
MAX_FIELDS_BYTES = 64 * 1024
"""Most bytes an entry's other keys may take, encoded (each is stored with its item)."""


def _extra_fields(obj: Mapping[str, Any]) -> bytes:
    """An entry's other keys, encoded for the store (empty when there are none)."""
    if obj.keys() <= ENTRY_KEYS:
        return b""
    extra = {k: v for k, v in obj.items() if k not in ENTRY_KEYS}
    try:
        blob: bytes = msgpack.packb(extra)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"its other keys cannot be stored: {exc}") from None
    if len(blob) > MAX_FIELDS_BYTES:
        raise ValueError(
            f"its other keys take {len(blob):,} bytes, more than the {MAX_FIELDS_BYTES:,} "
            "an entry may carry"
        )
    return blob


def fields_of(item: WorkItem) -> dict[str, Any]:
    """The entry's other keys of ``item``, as the input gave them."""
    if not item.fields:
        return {}
    fields: dict[str, Any] = msgpack.unpackb(item.fields)
    return fields


def _entry_name(obj: Mapping[str, Any], url: str, item_id: str, path: str) -> tuple[str, bool]:
    if "name" not in obj or obj["name"] is None:
        return derive_name(url, item_id, path), True
    name = obj["name"]
    if not isinstance(name, str):
        raise ValueError("'name' must be a string")
    try:
        return safe_name(name), False
    except UnsafeNameError as exc:
        raise UnsafeNameError(f"unsafe name {name[:80]!r}: {exc}") from None


def _jtype(obj: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(obj), "null" if obj is None else type(obj).__name__
    )


def _text(value: Any) -> Any:
    """A string as it can be stored (UTF-8): lone surrogates, which JSON's ``\\udcff``
    escapes can carry, written as escapes; anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _reject(line: int, obj: Mapping[str, Any], reason: str) -> Rejected:
    url = obj.get("url")
    name = obj.get("name")
    return Rejected(
        id=f"line:{line}",
        line=line,
        url=_text(url) if isinstance(url, str) else "",
        name=_text(name) if isinstance(name, str) else "",
        error=f"line {line}: {_text(reason)}",
    )


def iter_raw_entries(path: Path, fmt: str = "auto") -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line, decoded_json, error)`` for each entry of the input, streaming.

    ``error`` is set (and ``decoded_json`` is None) for an NDJSON line that is not JSON.

    Raises:
        InputError: the file cannot be opened, or a JSON array is malformed.
    """
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open input: {exc.strerror}") from exc
    with fh:
        if fmt == "auto":
            fmt = "json" if _first_char(fh) == b"[" else "ndjson"
        if fmt == "json":
            yield from _iter_json_array(fh, path)
        else:
            yield from _iter_ndjson(fh, path)


def _first_char(fh: IO[bytes]) -> bytes:
    head = fh.read(4096)
    fh.seek(0)
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return stripped[:1]


def _iter_ndjson(fh: IO[bytes], path: Path) -> Iterator[tuple[int, Any, str | None]]:
    for line_no, raw in enumerate(fh, start=1):
        text = raw.removeprefix(b"\xef\xbb\xbf") if line_no == 1 else raw
        if not text.strip():
            continue
        try:
            yield line_no, json.loads(text.decode("utf-8")), None
        except UnicodeDecodeError:
            yield line_no, None, f"line {line_no}: not valid UTF-8"
        except json.JSONDecodeError as exc:
            yield line_no, None, f"line {line_no}: not valid JSON ({exc.msg})"


class _ArrayReader:
    """Decode the elements of one top-level JSON array from a rolling text buffer."""

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self.fh = fh
        self.path = path
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False
        self.pending = b""
        self.decoder = json.JSONDecoder()

    def fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(_READ_SIZE)
        if not chunk:
            self.eof = True
            if self.pending:
                raise InputError(f"{self.path}: line {self.line}: not valid UTF-8")
            return False
        data = self.pending + chunk
        try:
            text = data.decode("utf-8")
            self.pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(data) - 3:
                raise InputError(f"{self.path}: line {self.line}: not valid UTF-8") from None
            text, self.pending = data[: exc.start].decode("utf-8"), data[exc.start :]
        if self.pos > _READ_SIZE:
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += text.removeprefix("\ufeff") if not self.buf else text
        return True

    def skip_ws(self) -> str:
        """Advance past whitespace and return the next character ('' at end of input)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                if self.buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def error(self, what: str) -> InputError:
        return InputError(f"{self.path}: line {self.line}: malformed JSON array ({what})")

    def value(self) -> Any:
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.fill():
                    continue
                raise self.error(exc.msg) from None
            if end >= len(self.buf) and self.fill():
                continue  # a number may continue in the next chunk
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return obj

    def __iter__(self) -> Iterator[tuple[int, Any, str | None]]:
        if self.skip_ws() != "[":
            raise self.error("expected '[' at the start")
        self.pos += 1
        if self.skip_ws() == "]":
            self.pos += 1
        else:
            while True:
                if self.skip_ws() == "":
                    raise self.error("unexpected end of file")
                start_line = self.line
                yield start_line, self.value(), None
                sep = self.skip_ws()
                self.pos += 1
                if sep == "]":
                    break
                if sep != ",":
                    raise self.error(f"expected ',' or ']', got {sep or 'end of file'!r}")
        if self.skip_ws() != "":
            raise self.error("data after the closing ']'")


def _iter_json_array(fh: IO[bytes], path: Path) -> Iterator[tuple[int, Any, str | None]]:
    yield from _ArrayReader(fh, path)


def iter_batches(path: Path, fmt: str = "auto", batch_size: int = 1000) -> Iterator[Enqueue]:
    """Yield the input as ``Enqueue`` batches of at most ``batch_size`` entries.

    Raises:
        InputError: as ``iter_raw_entries``; batches before the error were yielded.
    """
    items: list[WorkItem] = []
    rejected: list[Rejected] = []
    derived: list[str] = []
    for line, obj, error in iter_raw_entries(path, fmt):
        if error is not None:
            rejected.append(Rejected(id=f"line:{line}", line=line, error=error))
        else:
            entry, was_derived = parse_entry(obj, line)
            if isinstance(entry, WorkItem):
                items.append(entry)
                if was_derived:
                    derived.append(entry.id)
            else:
                rejected.append(entry)
        if len(items) + len(rejected) >= batch_size:
            yield Enqueue(
                items=tuple(items), rejected=tuple(rejected), derived_name_ids=tuple(derived)
            )
            items, rejected, derived = [], [], []
    if items or rejected:
        yield Enqueue(items=tuple(items), rejected=tuple(rejected), derived_name_ids=tuple(derived))
