"""Redis Streams: how a cluster's messages travel between its coordinator and its nodes.

The messages are the ones local worker processes exchange with the main process
(``messages``: Demand, Grant, DownloadComplete, …), one msgpack frame per batch
(``messages.encode_batch``). A batch named ``B`` uses two kinds of stream:

- ``conveyor:B:up``: every node's messages to the coordinator, read in the consumer
  group ``coordinator``. An entry is acknowledged *and deleted* (``ack``) only once the
  store commit that recorded what it said is done: a coordinator killed before that
  reads it again when it comes back (``read_up`` returns its pending entries first), and
  Redis holds only what is in flight.
- ``conveyor:B:down:NODE``: the coordinator's messages to one node (grants, cancels),
  read by that node alone from where it left off, and trimmed up to what it has read
  (``trim_down``).

An entry is ``{"n": sender, "f": frame}``. ``read_up`` decodes every frame with the
strict codec: an entry that is not a well-formed frame from a well-named node — an
unknown tag, a wrong type, a missing field, an oversized frame — is rejected whole
(returned in ``Read.rejected`` with the reason, acknowledged and deleted), never
half-applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from messages import decode_batch, encode_batch

__all__ = [
    "GROUP",
    "MAX_FRAME",
    "Envelope",
    "Read",
    "StreamLink",
    "explained",
    "join_hint",
    "redacted",
    "valid_node_name",
]

GROUP = "coordinator"
"""The consumer group the coordinator reads ``up`` in."""
MAX_FRAME = 16 << 20
"""Largest frame accepted (bytes); a bigger entry is rejected unread."""
DOWN_MAXLEN = 100_000
"""Entries a node's ``down`` stream keeps at most (approximately) if it stops reading."""
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def redacted(url: str) -> str:
    """``url`` without its password, for messages (``redis://:***@host:6379/0``; a
    ``password=`` in the query too)."""
    url = re.sub(r"^(\w+://[^:@/]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def explained(exc: BaseException, url: str) -> str:
    """What redis-py's ``exc`` means for someone who gave ``url``, in words of the url."""
    text = str(exc)
    if any(s in text for s in ("NOAUTH", "HELLO must be called", "Authentication required")):
        return "this Redis requires a password: give it in the url (redis://:PASSWORD@host:port/db)"
    if "WRONGPASS" in text or "invalid username-password" in text:
        return "wrong password (or user) for this Redis"
    ca = re.search(r"[?&]ssl_ca_certs=([^&#]+)", url)
    if ca and not os.path.isfile(ca.group(1)):
        return f"the CA certificate file {ca.group(1)} (ssl_ca_certs in the url) does not exist"
    return text


def join_hint(batch: str, url: str = "URL") -> str:
    """The command that starts a node of ``batch`` (for the coordinator's messages)."""
    return f"python -m runtime worker --redis {url} --batch {batch}"


def valid_node_name(name: str) -> bool:
    """Letters, digits, ``.``, ``_``, ``-``; 64 at most; not starting with a symbol."""
    return _NODE_NAME.fullmatch(name) is not None and ".." not in name


@dataclass(frozen=True, slots=True)
class Envelope:
    """One entry of ``up``: who sent which messages."""

    entry_id: str
    """The stream entry's id (acknowledge it with ``ack`` once its effect is durable)."""
    node: str
    """The sending node."""
    messages: tuple[Any, ...]
    """The decoded messages, in order."""


@dataclass(frozen=True, slots=True)
class Read:
    """What one ``read_up`` got."""

    envelopes: list[Envelope] = field(default_factory=list)
    """Well-formed entries, in stream order."""
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """``(entry id, why)`` of the entries refused (already acknowledged and deleted)."""


class StreamLink:
    """A batch's streams on one Redis connection (redis-py; thread-safe, pooled)."""

    def __init__(self, client: Any, batch: str) -> None:
        """``client``: a ``redis.Redis`` (``decode_responses=False``); ``batch``: the
        batch's name."""
        self.client = client
        self.batch = batch
        self.up = f"conveyor:{batch}:up"
        self.owner_key = f"conveyor:{batch}:coordinator"
        """Who coordinates the batch (set with a time to live, renewed every second)."""
        self.ended_key = f"conveyor:{batch}:ended"
        """Set when the batch ended (its reason), until a coordinator opens it again."""

    @classmethod
    def connect(cls, url: str, batch: str, *, timeout: float = 30.0) -> StreamLink:
        """Connect to ``redis://``, ``rediss://`` or ``unix://`` ``url`` (password
        included). A Redis that does not answer for ``timeout`` seconds is an error (the
        longest blocking read here waits 0.2 s), not a hang."""
        import redis  # (only the cluster needs it)

        client = redis.Redis.from_url(url, decode_responses=False,
                                      socket_connect_timeout=min(timeout, 10.0),
                                      socket_timeout=timeout)  # fmt: skip
        return cls(client, batch)

    def down(self, node: str) -> str:
        """The name of ``node``'s stream."""
        return f"conveyor:{self.batch}:down:{node}"

    # -- node -> coordinator ----------------------------------------------------------

    def send_up(self, node: str, messages: Sequence[Any]) -> str:
        """Append ``messages`` (one frame) to ``up``; return the entry id."""
        entry = self.client.xadd(self.up, {"n": node, "f": encode_batch(tuple(messages))})
        return _text(entry)

    def ensure_group(self) -> None:
        """Create the coordinator's consumer group (and ``up``) unless they exist."""
        import redis

        try:
            self.client.xgroup_create(self.up, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_up(
        self, consumer: str, *, count: int = 512, block_ms: int = 100, pending: bool = False
    ) -> Read:
        """Read the next entries of ``up`` for ``consumer`` — with ``pending``, the ones
        it was given before and has not acknowledged (a restart), from the start — and
        decode them; refused entries are acknowledged and deleted here."""
        start = "0" if pending else ">"
        reply = self.client.xreadgroup(
            GROUP, consumer, {self.up: start}, count=count, block=None if pending else block_ms
        )
        read = Read()
        for _stream, entries in reply or ():
            for raw_id, fields in entries:
                entry_id = _text(raw_id)
                why = _check(fields)
                if why is None:
                    try:
                        messages = decode_batch(fields[b"f"])
                    except ValueError as exc:  # CodecError
                        why = f"a frame that does not decode: {exc}"
                    else:
                        node = fields[b"n"].decode()
                        read.envelopes.append(Envelope(entry_id, node, messages))
                        continue
                read.rejected.append((entry_id, why))
        if read.rejected:
            self.ack([entry_id for entry_id, _ in read.rejected])
        return read

    def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete entries of ``up`` (their effect is durable)."""
        if not entry_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.up, GROUP, *entry_ids)
        pipe.xdel(self.up, *entry_ids)  # (XACK alone leaves the entry in the stream)
        pipe.execute()

    # -- coordinator -> node ----------------------------------------------------------

    def send_down(self, node: str, messages: Sequence[Any]) -> str:
        """Append ``messages`` (one frame) to ``node``'s stream; return the entry id."""
        entry = self.client.xadd(
            self.down(node),
            {"n": "coordinator", "f": encode_batch(tuple(messages))},
            maxlen=DOWN_MAXLEN,
            approximate=True,
        )
        return _text(entry)

    def send_down_many(self, frames: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Append one frame per ``(node, messages)`` in one round trip (a pipeline)."""
        pipe = self.client.pipeline(transaction=False)
        for node, messages in frames:
            pipe.xadd(
                self.down(node),
                {"n": "coordinator", "f": encode_batch(tuple(messages))},
                maxlen=DOWN_MAXLEN,
                approximate=True,
            )
        pipe.execute()

    def read_down(
        self, node: str, after: str, *, count: int = 512, block_ms: int = 100
    ) -> tuple[str, list[tuple[Any, ...]]]:
        """The frames of ``node``'s stream after entry ``after`` ("0": from the start):
        the id of the last one read, and each frame's messages. A frame that does not
        decode raises ``CodecError`` (only the coordinator writes there)."""
        reply = self.client.xread({self.down(node): after}, count=count, block=block_ms)
        frames: list[tuple[Any, ...]] = []
        for _stream, entries in reply or ():
            for raw_id, fields in entries:
                after = _text(raw_id)
                frames.append(decode_batch(fields[b"f"]))
        return after, frames

    def trim_down(self, node: str, upto: str) -> None:
        """Drop the entries of ``node``'s stream up to ``upto`` (it has read them)."""
        self.client.xtrim(self.down(node), minid=_next_id(upto), approximate=False)

    def drop_down(self, node: str) -> None:
        """Delete ``node``'s stream (the node is gone)."""
        self.client.delete(self.down(node))


def _check(fields: dict[bytes, bytes]) -> str | None:
    """Why an ``up`` entry's fields are not a frame from a node (None: they are)."""
    if set(fields) != {b"n", b"f"}:
        return f"fields {sorted(k.decode(errors='replace') for k in fields)}, not n and f"
    if len(fields[b"f"]) > MAX_FRAME:
        return f"a frame of {len(fields[b'f'])} bytes (at most {MAX_FRAME})"
    try:
        node = fields[b"n"].decode()
    except UnicodeDecodeError:
        return "a node name that is not UTF-8"
    if not valid_node_name(node):
        return f"a bad node name {node[:80]!r}"
    return None


def _text(entry_id: Any) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _next_id(entry_id: str) -> str:
    """The smallest id after ``entry_id`` (``MINID`` keeps ids from it on)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"
