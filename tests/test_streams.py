"""The cluster's Redis Streams link, against a real redis-server started here."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest

from messages import Demand, DownloadFailed, Grant, WorkItem, encode_batch
from runtime.core.streams import MAX_FRAME, StreamLink, valid_node_name
from runtime.testing import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def link(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[StreamLink]:
    """A link on a batch of this test's own (streams of other tests never meet it)."""
    link = StreamLink.connect(redis_server.url, batch=request.node.name[:60])
    link.ensure_group()
    yield link
    link.client.flushdb()
    link.client.close()


def item(i: int) -> WorkItem:
    return WorkItem(id=f"i{i}", url=f"http://h.test/{i}", name=f"f{i}")


def test_up_entries_arrive_in_order_and_are_gone_once_acknowledged(link: StreamLink) -> None:
    """Frames from two nodes come out in order with their sender; acknowledged entries
    leave the stream and the pending list (XACK alone would leave them in the stream)."""
    link.send_up("node-a", [Demand(worker="a/d0", n=2)])
    link.send_up("node-b", [Demand(worker="b/d0", n=1), Demand(worker="b/d1", n=3)])
    read = link.read_up("coordinator", block_ms=1000)
    assert read.rejected == []
    assert [(e.node, e.messages) for e in read.envelopes] == [
        ("node-a", (Demand(worker="a/d0", n=2),)),
        ("node-b", (Demand(worker="b/d0", n=1), Demand(worker="b/d1", n=3))),
    ]
    assert link.client.xlen(link.up) == 2
    link.ack([e.entry_id for e in read.envelopes])
    assert link.client.xlen(link.up) == 0
    assert link.client.xpending(link.up, "coordinator")["pending"] == 0


def test_a_restarted_coordinator_reads_again_what_it_had_not_acknowledged(
    link: StreamLink,
) -> None:
    """Entries read but not acknowledged (no commit recorded them) come back, first and
    only them; acknowledged ones never do."""
    for i in range(3):
        link.send_up("node-a", [Demand(worker="a/d0", n=i + 1)])
    first = link.read_up("coordinator", block_ms=1000)
    link.ack([first.envelopes[0].entry_id])  # the first one was committed
    again = link.read_up("coordinator", pending=True)
    assert [e.messages[0].n for e in again.envelopes] == [2, 3]
    link.ack([e.entry_id for e in again.envelopes])
    assert link.read_up("coordinator", pending=True).envelopes == []
    assert link.read_up("coordinator", block_ms=10).envelopes == []


def test_hostile_entries_are_rejected_whole_and_the_rest_still_flows(link: StreamLink) -> None:
    """An unknown tag, a wrong type, extra fields, a bad node name, garbage, an oversized
    frame: each entry is refused with its reason, acknowledged and deleted; the good
    entries around them are delivered."""
    up = link.up
    link.send_up("node-a", [Demand(worker="a/d0", n=1)])
    hostile = {
        "unknown tag": {"n": "node-a", "f": msgpack.packb([["rm_rf", {}]])},
        "wrong type": {"n": "node-a", "f": msgpack.packb([["demand", {"worker": "w", "n": "1"}]])},
        "dotted name": {"n": "../etc", "f": encode_batch((Demand(worker="w", n=1),))},
        "extra field": {"n": "node-a", "f": b"\x90", "x": b"1"},
        "garbage": {"n": "node-a", "f": b"\xc1\xff\x00"},
        "oversized": {"n": "node-a", "f": b"\x90" + b"\x00" * MAX_FRAME},
    }
    for fields in hostile.values():
        link.client.xadd(up, fields)
    link.send_up("node-b", [Demand(worker="b/d0", n=1)])
    read = link.read_up("coordinator", count=100, block_ms=1000)
    assert [e.node for e in read.envelopes] == ["node-a", "node-b"]
    reasons = [why for _, why in read.rejected]
    assert len(reasons) == len(hostile)
    assert "unknown message tag 'rm_rf'" in reasons[0]
    assert "expected int, got str" in reasons[1]
    assert "bad node name '../etc'" in reasons[2]
    assert "not n and f" in reasons[3]
    assert "does not decode" in reasons[4]
    assert f"at most {MAX_FRAME}" in reasons[5]
    link.ack([e.entry_id for e in read.envelopes])
    assert link.client.xlen(up) == 0  # the refused ones are gone too


def test_a_nodes_down_stream_is_read_from_where_it_left_off_and_trimmed(
    link: StreamLink,
) -> None:
    grants = [Grant(worker="a/d0", items=(item(i),)) for i in range(5)]
    for grant in grants:
        link.send_down("node-a", [grant])
    after, frames = link.read_down("node-a", "0", count=3, block_ms=1000)
    assert [f[0] for f in frames] == grants[:3]
    link.trim_down("node-a", after)
    assert link.client.xlen(link.down("node-a")) == 2  # only what it has not read
    after, frames = link.read_down("node-a", after, block_ms=1000)
    assert [f[0] for f in frames] == grants[3:]
    failed = DownloadFailed(
        worker="a/d0", item=item(9), error_kind="http_5xx", error="503", permanent=False
    )
    link.send_down("node-a", [failed])
    assert link.read_down("node-a", after, block_ms=1000)[1] == [(failed,)]


@pytest.mark.parametrize(
    ("name", "ok"),
    [("node-1", True), ("a.b_c", True), ("..", False), ("a..b", False), ("-x", False),
     ("", False), ("x" * 65, False), ("a/b", False), ("ü", False)],
)  # fmt: skip
def test_node_names(name: str, ok: bool) -> None:
    assert valid_node_name(name) is ok


@pytest.mark.parametrize(
    ("url", "shown"),
    [("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
     ("rediss://user:pw@h/0?ssl_ca_certs=/ca.pem", "rediss://user:***@h/0?ssl_ca_certs=/ca.pem"),
     ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
     ("unix:///run/r.sock?db=0&Password=pw", "unix:///run/r.sock?db=0&Password=***"),
     ("redis://h:6379/0", "redis://h:6379/0")],
)  # fmt: skip
def test_a_urls_password_is_never_shown(url: str, shown: str) -> None:
    from runtime.core.streams import redacted

    assert redacted(url) == shown
