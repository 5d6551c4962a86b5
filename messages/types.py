"""The typed messages that flow between conveyor's actors.

Every message is a frozen, slotted, keyword-only dataclass: data, never behaviour. Each
class has a stable ``TAG`` that the msgpack codec writes on the wire, so a message can
cross a process, a file or a network boundary and come back as the same type.

Field types are kept to what msgpack carries natively — ``str``, ``int``, ``float``,
``bool``, ``None``, ``bytes``, tuples of ``WorkItem`` and JSON-like ``dict`` values —
so the codec can check every field on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from types import MemberDescriptorType
from typing import Any, ClassVar, Literal, TypeVar

Status = Literal["completed", "failed", "skipped"]
"""The terminal status of an item."""

Lane = Literal["small", "large"]
"""A downloader's lane: small files, or files over ``download.large_threshold``."""

Scope = Literal["host", "url"]
"""What a failed attempt says something about (see ``DownloadFailed.scope``)."""

ErrorKind = Literal[
    "connection",
    "timeout",
    "stalled",
    "truncated",
    "decoding",
    "http_4xx",
    "http_5xx",
    "rate_limited",
    "too_large",
    "redirect",
    "invalid_url",
    "checksum_mismatch",
    "size_mismatch",
    "host_down",
    "filesystem",
    "unsafe_name",
    "worker_crash",
    "node_lost",
    "pre_process_error",
    "processing_error",
    "post_process_error",
    "invalid_entry",
    "large_file",
    "cancelled",
    "handed_back",
    "blocked",
]
"""Why an attempt or an item failed. The last three end no item: a move to the large
lane, a cancelled transfer, an item handed back unstarted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkItem:
    """One file to fetch, as the StateKeeper hands it out."""

    TAG: ClassVar[str] = "work_item"

    id: str
    """Stable identity of the item; the key in the state store."""
    url: str
    """An http or https URL."""
    name: str
    """Relative path of the final file inside the output directory (already made safe)."""
    sha256: str | None = None
    """Expected lowercase hex digest, verified after the transfer when given."""
    size: int | None = None
    """Expected size in bytes when the input states it."""
    line: int = 0
    """Line of the input the entry came from (0 for items submitted by the API)."""
    attempts: int = 0
    """Download attempts already made, including the one this grant starts."""
    validator: str | None = None
    """ETag or Last-Modified of the partial file, for a Range request with If-Range."""
    fields: bytes = b""
    """The entry's other keys (beyond ``url``, ``id``, ``name``, ``sha256``, ``size``),
    msgpack-encoded as one map; empty when it has none (``runtime.core.inputs.fields_of``
    reads them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """An input entry that cannot become a WorkItem, with the reason."""

    TAG: ClassVar[str] = "rejected"

    id: str
    """Key under which the rejection is recorded (``line:<n>`` when the entry has none)."""
    line: int
    """Line of the input the entry came from."""
    url: str = ""
    """The entry's url as given, if it had one."""
    name: str = ""
    """The entry's name as given, if it had one."""
    error: str = ""
    """Why the entry was rejected, naming its line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    """A batch of parsed input for the StateKeeper to record."""

    TAG: ClassVar[str] = "enqueue"

    items: tuple[WorkItem, ...] = ()
    """Entries that passed parsing; the StateKeeper still checks ids and names."""
    rejected: tuple[Rejected, ...] = ()
    """Entries that failed parsing; each becomes a terminal ``invalid_entry`` record."""
    derived_name_ids: tuple[str, ...] = ()
    """Ids whose name was derived from the url (renamed rather than rejected on a clash)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    """A downloader asks for ``n`` more items (credit-based flow control)."""

    TAG: ClassVar[str] = "demand"

    worker: str
    """Logical id of the downloader instance asking."""
    n: int
    """How many more items it can take."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """Items leased to one downloader, never more than its outstanding demand."""

    TAG: ClassVar[str] = "grant"

    worker: str
    """The downloader the items are leased to."""
    items: tuple[WorkItem, ...]
    """The leased items, in dispatch order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadStarted:
    """A downloader began an attempt on an item."""

    TAG: ClassVar[str] = "download_started"

    worker: str
    """The downloader doing the transfer."""
    item_id: str
    """The item being fetched."""
    url: str
    """The url requested."""
    attempt: int
    """1 for the first attempt."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressUpdate:
    """Bytes received so far for one transfer (throttled by the downloader)."""

    TAG: ClassVar[str] = "progress_update"

    worker: str
    """The downloader doing the transfer."""
    item_id: str
    """The item being fetched."""
    received: int
    """Bytes written to the ``.part`` file so far."""
    total: int | None = None
    """Expected size from Content-Length or the entry, when known."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeInfo:
    """The validator of a transfer under way, so a later attempt can resume it."""

    TAG: ClassVar[str] = "resume_info"

    worker: str
    """The downloader doing the transfer."""
    item_id: str
    """The item being fetched."""
    validator: str
    """A strong ETag, or else Last-Modified, of the response being written to ``.part``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadComplete:
    """A file is verified and renamed into place under its final name."""

    TAG: ClassVar[str] = "download_complete"

    worker: str
    """The downloader that fetched it."""
    item: WorkItem
    """The item as granted."""
    path: str
    """Absolute path of the final file."""
    size: int
    """Bytes in the final file."""
    sha256: str
    """Digest of the final file."""
    reused: bool = False
    """True when a verified file was already in place and nothing was fetched."""


HANDED_BACK: ErrorKind = "handed_back"
"""``DownloadFailed.error_kind`` of an item a downloader gives back unstarted, because it
sat queued behind a transfer that is taking long (no attempt is spent)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadFailed:
    """An attempt failed; the StateKeeper decides between retry and a terminal failure."""

    TAG: ClassVar[str] = "download_failed"

    worker: str
    """The downloader that tried."""
    item: WorkItem
    """The item as granted."""
    error_kind: ErrorKind
    """Stable, machine-readable failure class (``http_4xx``, ``connection``, …)."""
    error: str
    """Human-readable detail."""
    permanent: bool
    """True when retrying cannot help (a 404, a checksum mismatch, a bad name)."""
    counts_attempt: bool = True
    """False for cancellations, lane changes and hand-backs, which spend no attempt."""
    retry_after: float | None = None
    """Seconds the server asked to wait (``Retry-After``), when it did."""
    size: int | None = None
    """The body's size when the response announced it (moves an item to the large lane)."""
    scope: Scope = "host"
    """``host``: the host did not answer (refused, timed out) — evidence against the host
    every time; ``url``: it answered but this transfer failed (a 5xx, a broken body) —
    counted against the host only on the item's first failure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessingComplete:
    """A processor finished with a downloaded file."""

    TAG: ClassVar[str] = "processing_complete"

    worker: str
    """The processor that ran."""
    item_id: str
    """The processed item."""
    result: dict[str, Any] = field(default_factory=dict)
    """What the processor returned (JSON-like values only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessingFailed:
    """A pre-processor or processor raised on a downloaded file; the item ends failed,
    nothing crashes."""

    TAG: ClassVar[str] = "processing_failed"

    worker: str
    """The processor that ran."""
    item_id: str
    """The item it failed on."""
    error: str
    """The exception, as ``Type: message``."""
    error_kind: ErrorKind = "processing_error"
    """The stage that failed: ``pre_process_error`` (the pre-processor) or
    ``processing_error`` (the processor)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The terminal record of one item, handed to the post-processor."""

    TAG: ClassVar[str] = "outcome"

    id: str
    """The item's id."""
    url: str
    """The item's url."""
    name: str
    """The item's name inside the output directory."""
    path: str
    """Absolute path of the final file, or empty when there is none."""
    status: Status
    """``completed``, ``failed`` or ``skipped``."""
    size: int | None = None
    """Bytes in the final file."""
    sha256: str | None = None
    """Digest of the final file."""
    error_kind: ErrorKind | None = None
    """Failure class for failed items."""
    error: str | None = None
    """Failure detail for failed items."""
    attempts: int = 0
    """Download attempts spent."""
    result: dict[str, Any] = field(default_factory=dict)
    """The processor's result for completed items."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The entry's other keys, as the input gave them."""
    node: str = ""
    """(cluster) The node whose output directory holds the file; "": this machine."""
    done_seq: int = 0
    """Where this outcome stands in the state's record of terminal outcomes (1, 2, …, never
    reused), set when it is recorded; 0 before. An event sink that keeps the highest it has
    stored knows, after a crash, which committed outcomes it has not announced yet."""


OUTCOME_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Outcome))
"""The fields of an ``Outcome``, in order: what a record of one (a manifest line, an item
event, a stored row read back) is made of."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostProcessed:
    """The post-processor recorded an outcome; the StateKeeper may commit it as terminal."""

    TAG: ClassVar[str] = "post_processed"

    item_id: str
    """The item recorded."""
    status: Status
    """The terminal status recorded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostProcessFailed:
    """The post-processor raised on an outcome; the item ends failed."""

    TAG: ClassVar[str] = "post_process_failed"

    item_id: str
    """The item it failed on."""
    error: str
    """The exception, as ``Type: message``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Stop granting work and wind the run down."""

    TAG: ClassVar[str] = "cancel"

    reason: str
    """Why: ``interrupted``, ``deadline``, an error message."""
    abort: bool = False
    """True to abandon in-flight transfers at once instead of letting them finish."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished:
    """The run ended; the counts are as committed to the store."""

    TAG: ClassVar[str] = "run_finished"

    accepted: int
    """Entries read from the input or submitted."""
    completed: int
    """Items whose file is in place and whose processing succeeded."""
    failed: int
    """Items that ended failed."""
    skipped: int
    """Items skipped because a file was already in place (``output.if_exists = "skip"``)."""
    pending: int = 0
    """Items left for a later run (interrupted runs only)."""
    bytes: int = 0
    """Bytes downloaded in this run."""
    elapsed: float = 0.0
    """Seconds from start to finish."""
    reason: str = "done"
    """``done``, ``interrupted`` or an error message."""
    completed_bytes: int = 0
    """Bytes in the files of completed items (all runs on this state)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StartDownloader:
    """Supervisor → a downloader worker process: start a downloader actor there."""

    TAG: ClassVar[str] = "start_downloader"

    worker: str
    """Logical id of the new instance (``downloader-3.2``)."""
    index: int
    """Its slot."""
    lane: Lane = "small"
    """``small`` or ``large``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHello:
    """A cluster node → the coordinator: here I am, with this many downloaders."""

    TAG: ClassVar[str] = "node_hello"

    node: str
    """The node's name for this start (``--name`` and a suffix of its own)."""
    address: str = ""
    """Where it runs (its host name), for ``status`` and logs."""
    downloaders: int = 1
    """Downloader actors it hosts (its ``download.workers``)."""
    mailbox: int = 1
    """Items each of them holds at most (its ``download.mailbox``)."""
    output: str = ""
    """Its output directory (on its own machine)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeBeat:
    """A cluster node → the coordinator, every second: still here."""

    TAG: ClassVar[str] = "node_beat"

    node: str
    """The node."""
    read: str = "0"
    """The last entry of its stream it has read (the coordinator trims up to it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeBye:
    """A cluster node → the coordinator: I am leaving (its items go back to pending)."""

    TAG: ClassVar[str] = "node_bye"

    node: str
    """The node."""
    reason: str = ""
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLost:
    """The coordinator → a node it no longer counts on (silent too long, or unknown after
    a restart of the coordinator or of Redis): drop your work and join again."""

    TAG: ClassVar[str] = "node_lost"

    reason: str = ""
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """StateKeeper → displays and event streams, every second in a cluster: one node."""

    TAG: ClassVar[str] = "node_status"

    node: str
    """The node."""
    address: str = ""
    """Where it runs."""
    in_flight: int = 0
    """Transfers it is running."""
    done: int = 0
    """Files it completed in this run."""
    last_seen_s: float = 0.0
    """Seconds since the coordinator last heard from it."""
    lost: bool = False
    """Whether it was counted lost (silent past ``cluster.node_timeout``, or it left)."""
    last_seen_at: float = 0.0
    """When the coordinator last heard from it (Unix time; ``status`` says how long ago)."""
    left: bool = False
    """Whether it said it was leaving (stopped, interrupted) before it was counted lost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchDone:
    """The coordinator → every node: the batch ended; stop (or wait for the next)."""

    TAG: ClassVar[str] = "batch_done"

    reason: str = "done"
    """The run's end reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildCrashed:
    """A child actor → Supervisor, from ``on_failure``: restart me (through the pipe when
    the child lives in a worker process)."""

    TAG: ClassVar[str] = "child_crashed"

    worker: str
    """The crashed instance."""
    kind: str
    """Its kind."""
    index: int
    """Its slot."""
    error: str
    """The exception, as ``Type: message``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunProgress:
    """StateKeeper → displays and event streams, once per tick: where the run stands."""

    TAG: ClassVar[str] = "run_progress"

    accepted: int
    """Entries accepted so far."""
    completed: int
    """Items completed (all runs on this state)."""
    failed: int
    """Items failed."""
    skipped: int
    """Items skipped."""
    pending: int
    """Items not yet terminal (including those in flight)."""
    downloading: int
    """Items leased to downloaders."""
    processing: int
    """Downloaded items waiting for or in processing."""
    bytes: int
    """Bytes downloaded in this run."""
    retries: int
    """Retries scheduled in this run."""
    elapsed: float
    """Seconds since the run started."""
    completed_bytes: int = 0
    """Bytes in the files of completed items (all runs on this state), as committed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    """A host's statistics — their one shape: sent by the StateKeeper to displays and event
    streams when they change (once per commit), kept in the state (without ``host``,
    ``runtime.core.scheduler.host_record``) and shown by ``status``."""

    TAG: ClassVar[str] = "host_status"

    host: str
    """``host:port``."""
    active: int
    """Downloads in progress."""
    attempts: int
    """Requests sent (all runs on this state)."""
    successes: int
    """Downloads completed."""
    failures: int
    """Failed attempts, of any kind."""
    retries: int
    """Retries scheduled."""
    bytes: int
    """Bytes downloaded."""
    breaker: str
    """``closed``, ``open``, ``half_open`` or ``down``."""
    times_opened: int = 0
    """How often the breaker opened."""
    cooldown: float = 0.0
    """Seconds left of a Retry-After cool-down (0: none)."""
    cooldown_reason: str = ""
    """Why the host is cooling down (the 429 and its Retry-After), when it is."""
    window: int = 0
    """Requests in the breaker's window."""
    window_failures: int = 0
    """Failures among them."""
    breaker_reason: str = ""
    """Why the breaker opened, while it is not closed (``62 % of last 50 failed …``)."""
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    """``failures`` by error kind."""
    cooldown_until: float = 0.0
    """Wall-clock end of the cool-down (0: none)."""


_M = TypeVar("_M")
_EVOLVE: dict[type[Any], tuple[Any, tuple[Any, ...], dict[str, int]] | None] = {}


def evolve(message: _M, **changes: Any) -> _M:
    """``dataclasses.replace`` for these frozen, slotted messages, at under half its cost
    (it is on every item's path: an attempt counted, an outcome's sequence number). It
    sets the slots as the generated ``__init__`` does, with nothing to check: every value
    comes from a message already built, or is one of ``changes``. A class it cannot copy
    so (no slots, a ``__post_init__``, a field outside ``__init__``) gets ``replace``."""
    cls = type(message)
    if cls not in _EVOLVE:
        _EVOLVE[cls] = _evolve_plan(cls)
    plan = _EVOLVE[cls]
    if plan is None:
        return replace(message, **changes)  # type: ignore[type-var]
    get, slots, index = plan
    values = list(get(message)) if len(slots) > 1 else [get(message)]
    for name, value in changes.items():
        if name not in index:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        values[index[name]] = value
    new = object.__new__(cls)
    for slot, value in zip(slots, values, strict=True):
        slot.__set__(new, value)
    return new


def _evolve_plan(cls: type[Any]) -> tuple[Any, tuple[Any, ...], dict[str, int]] | None:
    """How ``evolve`` copies ``cls``: a getter of every field, the slots' descriptors and
    each field's place; None when only ``replace`` will do."""
    found = fields(cls)
    slots = tuple(getattr(cls, f.name, None) for f in found)  # (a base class's too)
    if (
        not found
        or hasattr(cls, "__post_init__")
        or not all(f.init for f in found)
        or not all(isinstance(slot, MemberDescriptorType) for slot in slots)
    ):
        return None
    names = [f.name for f in found]
    return attrgetter(*names), slots, {name: i for i, name in enumerate(names)}
