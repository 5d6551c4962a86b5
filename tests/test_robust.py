"""Robust downloads against the fault-injection server, through the real actors.

Every test counts requests server-side and runs with both download engines, ``requests``
and ``curl`` (libcurl's multi interface).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from messages import (
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    HostStatus,
    Outcome,
    RunFinished,
)
from runtime import Pipeline
from runtime.pipeline import RunSummary
from runtime.testing import FakeClock, FaultServer, body_of, capture_logs
from tests import helpers
from tests.helpers import make_config, read_manifest

TIMEOUT = 60
MiB = 1 << 20


@pytest.fixture(autouse=True, params=["requests", "curl"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with each engine (``make_config`` picks it up)."""
    monkeypatch.setattr(helpers, "ENGINE", request.param)
    return str(request.param)


@pytest.fixture
def server() -> Any:
    with FaultServer() as srv:
        yield srv


def run(config: Any, entries: list[dict[str, Any]], events: list[Any] | None = None) -> RunSummary:
    sink = events.append if events is not None else None
    with Pipeline(config, on_event=sink) as pipeline:
        pipeline.submit(entries)
        return pipeline.wait(TIMEOUT)


def by_id(config: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in read_manifest(config.manifest_path)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(config: Any) -> list[str]:
    return sorted(p.name for p in Path(config.output.dir).rglob("*") if p.is_file())


# -- statuses and retries --------------------------------------------------------------


def test_404_once_and_503_twice_then_200(tmp_path: Path, server: FaultServer) -> None:
    """A 404 is permanent (one request); 503, 503, 200 completes on the third request."""
    config = make_config(tmp_path, retry={"max_attempts": 5})
    summary = run(
        config,
        [
            {"id": "gone", "url": server.url("/status/404/gone.bin")},
            {"id": "flaky", "url": server.url("/fail-first/2/503/flaky.bin")},
            {"id": "teapot", "url": server.url("/status/418/teapot.bin")},
        ],
    )
    assert server.counts["/status/404/gone.bin"] == 1
    assert server.counts["/fail-first/2/503/flaky.bin"] == 3
    assert server.counts["/status/418/teapot.bin"] == 1
    records = by_id(config)
    assert (records["gone"]["status"], records["gone"]["error_kind"]) == ("failed", "http_4xx")
    assert (records["flaky"]["status"], records["flaky"]["attempts"]) == ("completed", 3)
    assert (Path(config.output.dir) / "flaky.bin").read_bytes() == body_of("flaky.bin", 10000)
    host = next(iter(summary.stats["hosts"].values()))
    assert host["failures"] == {"http_4xx": 2, "http_5xx": 2}
    assert (host["retries"], host["successes"], host["attempts"]) == (2, 1, 5)


def test_5xx_gives_up_after_max_attempts(tmp_path: Path, server: FaultServer) -> None:
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(config, [{"id": "down", "url": server.url("/status/502/down.bin")}])
    assert server.counts["/status/502/down.bin"] == 3
    record = by_id(config)["down"]
    assert (record["error_kind"], record["attempts"]) == ("http_5xx", 3)


def test_retry_after_seconds_is_honoured(tmp_path: Path, server: FaultServer) -> None:
    """``429 Retry-After: 2``: the retry comes no sooner than 2 s after the 429."""
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(config, [{"id": "r", "url": server.url("/retry-after/2/r.bin")}])
    times = server.times["/retry-after/2/r.bin"]
    assert len(times) == 2
    assert times[1] - times[0] >= 2.0
    assert by_id(config)["r"]["status"] == "completed"


def test_retry_after_http_date_is_honoured(tmp_path: Path, server: FaultServer) -> None:
    """The date form: an HTTP-date 3 s ahead (whole seconds) holds the retry ≥ 2 s."""
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(config, [{"id": "d", "url": server.url("/retry-after/date:3/d.bin")}])
    times = server.times["/retry-after/date:3/d.bin"]
    assert len(times) == 2
    assert times[1] - times[0] >= 2.0
    assert by_id(config)["d"]["status"] == "completed"


def test_retry_after_beyond_the_cap_fails_rate_limited(tmp_path: Path, server: FaultServer) -> None:
    config = make_config(tmp_path, retry={"max_attempts": 3, "max_retry_after": 5.0})
    run(config, [{"id": "r", "url": server.url("/retry-after/3600/r.bin")}])
    assert server.counts["/retry-after/3600/r.bin"] == 1
    record = by_id(config)["r"]
    assert (record["status"], record["error_kind"]) == ("failed", "rate_limited")
    assert "retry.max_retry_after" in record["error"]


def test_429_cools_down_the_whole_host(tmp_path: Path, server: FaultServer) -> None:
    """After a 429 with Retry-After, no request goes to that host before the time is up."""
    config = make_config(tmp_path, download={"workers": 1, "mailbox": 1})
    run(
        config,
        [
            {"id": "a", "url": server.url("/retry-after/2/a.bin")},
            {"id": "b", "url": server.url("/ok/b.bin")},
        ],
    )
    first_429 = server.times["/retry-after/2/a.bin"][0]
    assert server.times["/ok/b.bin"][0] - first_429 >= 2.0
    assert {r["status"] for r in by_id(config).values()} == {"completed"}


def test_an_overlong_retry_after_pauses_its_host_no_longer_than_the_cap(
    tmp_path: Path, server: FaultServer
) -> None:
    """``429 Retry-After: 3600`` with ``max_retry_after = 2``: that item fails
    ``rate_limited``; the host pauses 2 s (not an hour), says why, and its 20 healthy
    items then complete."""
    config = make_config(
        tmp_path, download={"workers": 1, "mailbox": 1}, retry={"max_retry_after": 2.0}
    )
    entries = [{"id": "limited", "url": server.url("/retry-after/3600/limited.bin")}]
    entries += [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin")} for i in range(20)]
    events: list[Any] = []
    with capture_logs() as logs, Pipeline(config, on_event=events.append) as pipeline:
        pipeline.submit(entries)
        summary = pipeline.wait(30)  # an hour-long pause would time out here
    assert (summary.finished.completed, summary.finished.failed) == (20, 1)
    assert by_id(config)["limited"]["error_kind"] == "rate_limited"
    first_ok = min(server.times[f"/ok/ok{i}.bin"][0] for i in range(20))
    assert first_ok - server.times["/retry-after/3600/limited.bin"][0] >= 1.9
    paused = [e for e in logs if e["event"] == "host paused"]
    assert len(paused) == 1
    assert paused[0]["seconds"] == 2.0
    assert "3600" in paused[0]["reason"]
    assert "max_retry_after" in paused[0]["reason"]
    reasons = [e.cooldown_reason for e in events if isinstance(e, HostStatus) and e.cooldown]
    assert reasons
    assert all("429" in r for r in reasons)


# -- stalls, resets, truncation and Range resume ---------------------------------------


def test_stall_mid_body_is_detected_and_resumed_with_range(
    tmp_path: Path, server: FaultServer
) -> None:
    path = "/stall/s.bin"
    config = make_config(
        tmp_path, download={"stall_window": 0.5, "min_speed": 1024}, retry={"max_attempts": 3}
    )
    summary = run(config, [{"id": "s", "url": server.url(path + "?size=200000&at=50000")}])
    assert server.counts[path] == 2
    assert server.ranges[path] == [None, "bytes=50000-"]
    record = by_id(config)["s"]
    assert (record["status"], record["attempts"]) == ("completed", 2)
    assert (Path(config.output.dir) / "s.bin").read_bytes() == body_of("s.bin", 200000)
    assert record["sha256"] == sha(body_of("s.bin", 200000))
    host = next(iter(summary.stats["hosts"].values()))
    assert host["failures"] == {"stalled": 1}


def test_reset_mid_body_resumes_with_range(tmp_path: Path, server: FaultServer) -> None:
    path = "/reset/r.bin"
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(config, [{"id": "r", "url": server.url(path + "?size=300000&at=100000")}])
    assert server.counts[path] == 2
    assert server.ranges[path] == [None, "bytes=100000-"]
    assert (Path(config.output.dir) / "r.bin").read_bytes() == body_of("r.bin", 300000)
    assert by_id(config)["r"]["status"] == "completed"


def test_truncated_body_is_transient_and_resumed(tmp_path: Path, server: FaultServer) -> None:
    path = "/truncate/t.bin"
    config = make_config(tmp_path, retry={"max_attempts": 3})
    summary = run(config, [{"id": "t", "url": server.url(path + "?size=100000&at=30000")}])
    assert server.ranges[path] == [None, "bytes=30000-"]
    assert (Path(config.output.dir) / "t.bin").read_bytes() == body_of("t.bin", 100000)
    host = next(iter(summary.stats["hosts"].values()))
    assert host["failures"] == {"truncated": 1}


def test_always_truncated_fails_without_a_final_file(tmp_path: Path, server: FaultServer) -> None:
    path = "/truncate/t.bin"
    config = make_config(tmp_path, retry={"max_attempts": 2})
    run(config, [{"id": "t", "url": server.url(path + "?size=100000&at=30000&always=1")}])
    assert server.counts[path] == 2
    assert by_id(config)["t"]["error_kind"] == "truncated"
    assert not (Path(config.output.dir) / "t.bin").exists()


def test_resumed_run_continues_a_partial_file_with_range(
    tmp_path: Path, server: FaultServer
) -> None:
    """``supervisor.job_timeout`` stops a slow transfer; the next run resumes it by Range."""
    path = "/drip/big.bin"
    url = server.url(path + "?size=400000&rate=20000")
    config = make_config(
        tmp_path, supervisor={"job_timeout": 0.5, "shutdown_grace": 0.2}, download={"min_speed": 1}
    )
    first = run(config, [{"id": "big", "url": url}])
    assert first.finished.reason.startswith("job timeout")
    assert first.finished.pending == 1
    assert first.exit_code == 130
    part = Path(config.output.dir) / "big.bin.part"
    kept = part.stat().st_size
    assert 0 < kept < 400000

    config = make_config(tmp_path, download={"min_speed": 1})
    second = run(config, [])
    assert second.exit_code == 0
    assert server.counts[path] == 2
    assert server.ranges[path] == [None, f"bytes={kept}-"]
    assert (Path(config.output.dir) / "big.bin").read_bytes() == body_of("big.bin", 400000)
    assert by_id(config)["big"]["attempts"] == 1  # the interrupted attempt was not spent


@pytest.mark.parametrize("code", [200, 206])
def test_a_server_that_cannot_resume_gets_the_whole_file_without_a_spent_attempt(
    tmp_path: Path, server: FaultServer, code: int
) -> None:
    """A Range request answered with other bytes than asked (a 200, or a 206 from another
    offset) starts the file over in the same attempt: it completes byte-identical, no
    ``.part`` left, no attempt spent on the lie; later resumes from that host ask for the
    whole file without Range."""
    size, at = 100000, 40000
    config = make_config(tmp_path, retry={"max_attempts": 3})
    lied, later = f"/range-lie/{code}/a.bin", f"/range-lie/{code}/b.bin"
    a_done = threading.Event()

    def on_event(message: Any) -> None:
        if isinstance(message, Outcome) and message.id == "a":
            a_done.set()

    with Pipeline(config, on_event=on_event) as pipeline:
        pipeline.submit([{"id": "a", "url": server.url(f"{lied}?size={size}&at={at}")}])
        assert a_done.wait(TIMEOUT)  # the host has lied once before b is even submitted
        pipeline.submit([{"id": "b", "url": server.url(f"{later}?size={size}&at={at}")}])
        summary = pipeline.wait(TIMEOUT)
    # a: cut short, then the lie (a 206 from the wrong offset is fetched again, whole)
    assert server.ranges[lied] == [None, f"bytes={at}-"] + ([None] if code == 206 else [])
    assert server.ranges[later] == [None, None]  # cut short too, but resumed without Range
    records = by_id(config)
    for item, name in (("a", "a.bin"), ("b", "b.bin")):
        assert (records[item]["status"], records[item]["attempts"]) == ("completed", 2)
        assert (Path(config.output.dir) / name).read_bytes() == body_of(name, size)
        assert records[item]["sha256"] == sha(body_of(name, size))
    assert leftovers(config) == ["a.bin", "b.bin"]  # no .part behind
    host = next(iter(summary.stats["hosts"].values()))
    assert host["failures"] == {"truncated": 2}  # the lie is not counted as a failure


def test_a_resume_answered_416_fetches_the_whole_file_without_a_spent_attempt(
    tmp_path: Path, server: FaultServer
) -> None:
    """A ``.part`` that is already whole (the run was killed between its last write and
    the rename) resumes with Range from its end; the 416 Range Not Satisfiable a real
    server answers starts the file over in the same attempt: completed, no attempt spent,
    and the host still resumes with Range. A 416 to a request without Range stays a
    permanent ``http_4xx``."""
    size, at = 50000, 20000
    clock = FakeClock()  # the retry waits for its backoff until the test moves time
    config = make_config(
        tmp_path, retry={"max_attempts": 3, "backoff_initial": 30.0, "backoff_max": 30.0}
    )
    whole, later = "/truncate/a.bin", "/truncate/b.bin"
    cut, a_done, finished = threading.Event(), threading.Event(), threading.Event()

    def on_event(message: Any) -> None:
        if isinstance(message, DownloadFailed) and message.item.id == "a":
            cut.set()
        if isinstance(message, Outcome) and message.id == "a":
            a_done.set()
        if isinstance(message, RunFinished):
            finished.set()

    def advance_until(done: threading.Event) -> None:
        for _ in range(int(TIMEOUT / 0.05)):
            clock.advance(5.0)  # past the backoff, and through the commits
            if done.wait(0.05):
                return
        raise AssertionError("the run did not get there")

    with Pipeline(config, clock=clock, on_event=on_event) as pipeline:
        pipeline.submit(
            [
                {"id": "a", "url": server.url(f"{whole}?size={size}&at={at}")},
                {"id": "plain", "url": server.url("/status/416/plain.bin")},
            ]
        )
        assert cut.wait(TIMEOUT)
        part = Path(config.output.dir) / "a.bin.part"
        assert part.stat().st_size == at
        part.write_bytes(body_of("a.bin", size))  # the rest came, then the run was killed
        advance_until(a_done)
        pipeline.submit([{"id": "b", "url": server.url(f"{later}?size={size}&at={at}")}])
        pipeline.close_input()
        advance_until(finished)
        summary = pipeline.wait(TIMEOUT)
    assert server.ranges[whole] == [None, f"bytes={size}-", None]  # cut, 416, the whole file
    assert server.ranges[later] == [None, f"bytes={at}-"]  # the 416 did not distrust the host
    assert server.ranges["/status/416/plain.bin"] == [None]
    records = by_id(config)
    for item, name in (("a", "a.bin"), ("b", "b.bin")):
        assert (records[item]["status"], records[item]["attempts"]) == ("completed", 2)
        assert (Path(config.output.dir) / name).read_bytes() == body_of(name, size)
    assert (records["plain"]["status"], records["plain"]["error_kind"]) == ("failed", "http_4xx")
    assert leftovers(config) == ["a.bin", "b.bin"]  # no .part behind
    host = next(iter(summary.stats["hosts"].values()))
    assert host["failures"] == {"truncated": 2, "http_4xx": 1}  # the 416 to a resume is not


# -- limits -----------------------------------------------------------------------------


def test_lying_content_length_and_endless_bodies_stop_at_max_size(
    tmp_path: Path, server: FaultServer
) -> None:
    config = make_config(tmp_path, download={"max_size": 2 * MiB}, retry={"max_attempts": 3})
    run(
        config,
        [
            {"id": "huge", "url": server.url("/huge/huge.bin")},
            {"id": "endless", "url": server.url("/endless/endless.bin")},
            {"id": "bomb", "url": server.url("/gzip-bomb/bomb.bin?mb=64")},
        ],
    )
    records = by_id(config)
    for name in ("huge", "endless", "bomb"):
        assert (records[name]["status"], records[name]["error_kind"]) == ("failed", "too_large")
    assert server.counts["/huge/huge.bin"] == 1
    assert server.counts["/endless/endless.bin"] == 1
    assert server.counts["/gzip-bomb/bomb.bin"] == 1
    assert leftovers(config) == []


def test_gzip_and_chunked_bodies_are_decoded(tmp_path: Path, server: FaultServer) -> None:
    body = body_of("g.bin", 50000)
    config = make_config(tmp_path)
    run(
        config,
        [
            {"id": "g", "url": server.url("/gzip/g.bin?size=50000"), "sha256": sha(body)},
            {"id": "c", "url": server.url("/chunked/c.bin?size=70000")},
        ],
    )
    assert (Path(config.output.dir) / "g.bin").read_bytes() == body
    assert (Path(config.output.dir) / "c.bin").read_bytes() == body_of("c.bin", 70000)
    records = by_id(config)
    assert (records["g"]["status"], records["g"]["size"]) == ("completed", 50000)


def test_checksum_mismatch_is_permanent_and_leaves_no_file(
    tmp_path: Path, server: FaultServer
) -> None:
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(config, [{"id": "x", "url": server.url("/ok/x.bin"), "sha256": sha(b"other")}])
    assert server.counts["/ok/x.bin"] == 1
    assert by_id(config)["x"]["error_kind"] == "checksum_mismatch"
    assert leftovers(config) == []


def test_redirects(tmp_path: Path, server: FaultServer) -> None:
    """A short chain is followed; too long a chain, a loop and a non-http target fail."""
    config = make_config(tmp_path, download={"max_redirects": 4}, retry={"max_attempts": 3})
    run(
        config,
        [
            {"id": "chain", "url": server.url("/redirect/3/chain.bin")},
            {"id": "long", "url": server.url("/redirect/9/long.bin")},
            {"id": "loop", "url": server.url("/loop/loop.bin")},
            {"id": "ftp", "url": server.url("/to-ftp/ftp.bin")},
        ],
    )
    records = by_id(config)
    assert records["chain"]["status"] == "completed"
    assert (Path(config.output.dir) / "chain.bin").read_bytes() == body_of("chain.bin", 10000)
    for name in ("long", "loop", "ftp"):
        assert (records[name]["status"], records[name]["error_kind"]) == ("failed", "redirect")
    assert server.counts["/loop/loop.bin"] == 5  # the first request and 4 redirects, once
    assert server.counts["/to-ftp/ftp.bin"] == 1
    assert leftovers(config) == ["chain.bin"]


def test_per_host_limits_concurrent_requests(tmp_path: Path, server: FaultServer) -> None:
    """Six idle downloaders, one host limited to 2: never more than 2 transfers at once."""
    config = make_config(
        tmp_path, download={"workers": 6, "mailbox": 1, "per_host": 2, "min_speed": 1}
    )
    entries = [
        {"id": f"d{i}", "url": server.url(f"/drip/d{i}.bin?size=20000&rate=10000")}
        for i in range(8)
    ]
    events: list[Any] = []
    summary = run(config, entries, events)
    assert summary.exit_code == 0
    running, most = 0, 0
    for event in events:  # in the order the StateKeeper saw them
        if isinstance(event, DownloadStarted):
            running += 1
            most = max(most, running)
        elif isinstance(event, DownloadComplete):
            running -= 1
    assert most == 2
    assert server.max_active <= 3  # a handler may still be returning as the next one starts


# -- breakers -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def dead_and_healthy(
    tmp_path: Path, server: FaultServer, dead_items: int, give_up_after: int
) -> tuple[Any, RunSummary, list[Any], dict[str, Any]]:
    dead = f"http://127.0.0.1:{closed_port()}"
    config = make_config(
        tmp_path,
        download={"workers": 4, "mailbox": 2, "per_host": 2},
        retry={"max_attempts": 2},
        # probes 0.6 s apart: the dead host's last item ends seconds after the healthy ones
        circuit={"failure_threshold": 2, "reset_timeout": 0.6, "give_up_after": give_up_after},
    )
    entries = [{"id": f"dead{i}", "url": f"{dead}/f{i}.bin"} for i in range(dead_items)]
    entries += [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin")} for i in range(100)]
    events: list[Any] = []
    summary = run(config, entries, events)
    records = by_id(config)
    assert all(records[f"ok{i}"]["status"] == "completed" for i in range(100))
    order = [
        e.item.id if isinstance(e, DownloadComplete) else e.id
        for e in events
        if isinstance(e, DownloadComplete | Outcome)
    ]
    last_healthy = max(i for i, name in enumerate(order) if name.startswith("ok"))
    last_dead = max(i for i, name in enumerate(order) if name.startswith("dead"))
    assert last_healthy < last_dead  # the healthy host never waited for the dead one
    return records, summary, events, summary.stats["hosts"][dead.removeprefix("http://")]


def test_dead_host_opens_its_breaker_and_does_not_hold_up_a_healthy_one(
    tmp_path: Path, server: FaultServer
) -> None:
    """Probing forever (give_up_after = 0): every dead item spends exactly its attempts."""
    records, _, _, stats = dead_and_healthy(tmp_path, server, dead_items=5, give_up_after=0)
    for i in range(5):
        record = records[f"dead{i}"]
        assert (record["status"], record["error_kind"]) == ("failed", "connection")
        assert record["attempts"] == 2  # waiting at an open breaker spends no attempt
    assert stats["attempts"] == 10
    assert stats["failures"] == {"connection": 10}
    assert stats["times_opened"] >= 2  # opened, then re-opened by a failed half-open probe
    assert stats["breaker"] == "open"


def test_a_host_that_stays_down_fails_its_items_without_requests(
    tmp_path: Path, server: FaultServer
) -> None:
    """200 items on a dead host cost a handful of requests, not 400 probes."""
    records, _, _, stats = dead_and_healthy(tmp_path, server, dead_items=200, give_up_after=3)
    kinds = [records[f"dead{i}"]["error_kind"] for i in range(200)]
    assert set(kinds) <= {"connection", "host_down"}
    assert kinds.count("host_down") >= 190
    # at most: threshold + the other in-flight request, then give_up_after probes
    assert stats["attempts"] <= 2 + 2 + 3
    assert stats["breaker"] == "down"
    down = next(r for r in records.values() if r["error_kind"] == "host_down")
    assert "3 probes in a row failed" in down["error"]


@pytest.mark.parametrize("order", ["spread", "first"])
def test_a_few_broken_urls_do_not_open_the_breaker_of_a_healthy_host(
    tmp_path: Path, server: FaultServer, order: str
) -> None:
    """500 healthy files and 10 URLs that always answer 503, one host, default breaker,
    fake clock: fake time moves 20 ms per finished download, so the broken URLs retry among
    the healthy ones; were the host paused, nothing would finish and time would stand
    still. All 500 complete, the breaker never opens, and the 10 fail ``http_5xx`` after
    their own attempts."""
    clock = FakeClock()
    config = make_config(
        tmp_path,
        download={"workers": 8, "mailbox": 2, "per_host": 0},
        retry={"backoff_initial": 1.0, "max_attempts": 3},
        circuit={"reset_timeout": 30.0},
    )
    good = [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin?size=2000")} for i in range(500)]
    bad = [{"id": f"bad{i}", "url": server.url(f"/status/503/bad{i}.bin")} for i in range(10)]
    entries = bad + good if order == "first" else list(good)
    if order == "spread":
        for n, entry in enumerate(bad):
            entries.insert(n * 51 + 25, entry)
    healthy_done = threading.Event()
    done: set[str] = set()

    def on_event(message: Any) -> None:
        # Downloads, not outcomes: an outcome is announced at a commit, and commits wait
        # for (fake) time to pass.
        if isinstance(message, DownloadComplete):
            clock.advance(0.02)
            done.add(message.item.id)
            if len(done) == 500:
                healthy_done.set()

    with Pipeline(config, clock=clock, on_event=on_event) as pipeline:
        pipeline.submit(entries)
        pipeline.close_input()
        assert healthy_done.wait(30), f"{len(done)} of 500 downloaded; the host paused"
        while not pipeline.done:  # now let the broken URLs' backoff run out
            clock.advance(5.0)
            with contextlib.suppress(TimeoutError):
                pipeline.wait(0.05)
        summary = pipeline.wait(TIMEOUT)
    (host,) = summary.stats["hosts"].values()
    assert (host["times_opened"], host["breaker"]) == (0, "closed")
    records = by_id(config)
    for i in range(10):
        assert (records[f"bad{i}"]["error_kind"], records[f"bad{i}"]["attempts"]) == (
            "http_5xx",
            3,
        )
        assert server.counts[f"/status/503/bad{i}.bin"] == 3
    assert summary.finished.completed == 500


def test_a_half_open_probe_is_a_fresh_item(tmp_path: Path, server: FaultServer) -> None:
    """Two broken URLs open their host's breaker (window 2); when it turns half-open their
    retries are due too, but the probe goes to the item that has not failed yet."""
    clock = FakeClock()
    config = make_config(
        tmp_path,
        download={"workers": 1, "mailbox": 1, "per_host": 0},
        retry={"backoff_initial": 1.0, "max_attempts": 3},
        circuit={"window": 2, "min_requests": 2, "failure_rate": 0.5, "reset_timeout": 10.0},
    )
    entries = [{"id": f"bad{i}", "url": server.url(f"/status/503/bad{i}.bin")} for i in range(2)]
    entries += [{"id": "ok", "url": server.url("/ok/ok.bin")}]
    both_failed = threading.Event()
    failures: list[str] = []

    def on_event(message: Any) -> None:
        if isinstance(message, DownloadFailed):
            failures.append(message.item.id)
            if len(failures) == 2:
                both_failed.set()

    with Pipeline(config, clock=clock, on_event=on_event) as pipeline:
        pipeline.submit(entries)
        pipeline.close_input()
        # Fake time stands still until both first failures are in: the breaker is open
        # and both retries wait for their backoff.
        assert both_failed.wait(TIMEOUT)
        assert failures == ["bad0", "bad1"]
        while not pipeline.done:
            clock.advance(11.0)  # past the backoff and the reset timeout at once
            with contextlib.suppress(TimeoutError):
                pipeline.wait(0.05)
        summary = pipeline.wait(TIMEOUT)
    (host,) = summary.stats["hosts"].values()
    assert host["times_opened"] == 1
    assert by_id(config)["ok"]["status"] == "completed"
    ok_at = server.times["/ok/ok.bin"][0]
    retries = [t for i in range(2) for t in server.times[f"/status/503/bad{i}.bin"][1:]]
    assert len(retries) == 4
    assert all(t > ok_at for t in retries)  # the probe was the fresh item
    assert summary.finished.failed == 2


def test_a_dead_host_opens_on_its_failure_rate_and_gives_up(
    tmp_path: Path, server: FaultServer
) -> None:
    """With the window keys: refused connections are host-level evidence every time, so
    a dead host opens after min_requests, probes, gives up, and its items end fast."""
    dead = f"http://127.0.0.1:{closed_port()}"
    config = make_config(
        tmp_path,
        download={"workers": 4, "mailbox": 2, "per_host": 2},
        retry={"max_attempts": 2},
        circuit={"window": 10, "min_requests": 4, "reset_timeout": 0.3, "give_up_after": 2},
    )
    entries = [{"id": f"dead{i}", "url": f"{dead}/f{i}.bin"} for i in range(100)]
    entries += [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin")} for i in range(50)]
    summary = run(config, entries)
    stats = summary.stats["hosts"][dead.removeprefix("http://")]
    records = by_id(config)
    assert all(records[f"ok{i}"]["status"] == "completed" for i in range(50))
    kinds = [records[f"dead{i}"]["error_kind"] for i in range(100)]
    assert kinds.count("host_down") >= 90
    assert stats["attempts"] <= 4 + 2 + 2  # min_requests, the other in flight, probes
    assert stats["breaker"] == "down"


def test_a_host_that_comes_back_gets_its_host_down_items_again(
    tmp_path: Path, server: FaultServer
) -> None:
    """An outage gives a host up while one slow transfer is still running; when that
    transfer succeeds (the outage is over), the items failed ``host_down`` meanwhile are
    pending again and complete — none stays ``host_down``, one manifest line each."""
    config = make_config(
        tmp_path,
        download={"workers": 4, "mailbox": 1, "per_host": 0, "min_speed": 1},
        retry={"max_attempts": 2, "backoff_initial": 1.0},  # retries wait out the outage
        circuit={"window": 4, "min_requests": 4, "reset_timeout": 0.05, "give_up_after": 2},
    )
    entries = [{"id": "slow", "url": server.url("/drip/slow.bin?size=20000&rate=1000")}]
    entries += [{"id": f"f{i}", "url": server.url(f"/outage/f{i}.bin")} for i in range(30)]
    downs = threading.Event()

    def on_event(message: Any) -> None:
        if isinstance(message, Outcome) and message.error_kind == "host_down":
            server.outage.clear()  # the host recovers while it counts as down
            downs.set()

    server.outage.set()
    with Pipeline(config, on_event=on_event) as pipeline:
        pipeline.submit(entries)
        summary = pipeline.wait(TIMEOUT)
    assert downs.is_set()  # the host was given up while the slow transfer ran...
    records = read_manifest(config.manifest_path)
    assert len(records) == 31  # ...the superseded host_down lines are gone...
    assert {r["status"] for r in records} == {"completed"}  # ...and every item came back
    assert summary.finished.completed == 31


# -- the large-file lane ------------------------------------------------------------------


def test_slow_large_file_does_not_delay_small_files(tmp_path: Path, server: FaultServer) -> None:
    """Slow 3 MB and 2.5 MB files (over large_threshold) go to the large lane; 200 small
    ones flow past them."""
    config = make_config(
        tmp_path,
        download={
            "workers": 2,
            "large_workers": 1,
            "large_threshold": 1_000_000,
            "min_speed": 1,
            "per_host": 0,
        },
    )
    entries = [{"id": "big", "url": server.url("/drip/big.bin?size=3000000&rate=100000")}]
    entries += [
        {
            "id": "known",
            "url": server.url("/drip/known.bin?size=2500000&rate=100000"),
            "size": 2500000,
        }
    ]
    entries += [{"id": f"s{i}", "url": server.url(f"/ok/s{i}.bin?size=2000")} for i in range(200)]
    events: list[Any] = []
    summary = run(config, entries, events)
    assert summary.exit_code == 0

    done = [e.item.id for e in events if isinstance(e, DownloadComplete)]
    assert len(done) == 202
    assert max(done.index(f"s{i}") for i in range(200)) < min(
        done.index("big"), done.index("known")
    )
    # discovered by Content-Length: one aborted request in the small lane, then the large lane
    assert server.counts["/drip/big.bin"] == 2
    assert server.counts["/drip/known.bin"] == 1  # size known from the entry
    records = by_id(config)
    assert (records["big"]["status"], records["big"]["attempts"]) == ("completed", 1)
    assert (Path(config.output.dir) / "big.bin").read_bytes() == body_of("big.bin", 3000000)


def test_a_small_item_of_another_host_never_waits_behind_a_slow_transfer(
    tmp_path: Path, server: FaultServer
) -> None:
    """mailbox 2, eight downloaders: a slow transfer and a small file of another host go
    to different downloaders, so the small one finishes long before the slow one."""
    config = make_config(
        tmp_path, download={"workers": 8, "mailbox": 2, "min_speed": 1, "per_host": 0}
    )
    other_host = server.url("/ok/small.bin").replace("127.0.0.1", "localhost")
    entries = [
        {"id": "slow", "url": server.url("/drip/slow.bin?size=200000&rate=10000")},
        {"id": "small", "url": other_host, "size": 10000},
    ]
    events: list[Any] = []
    summary = run(config, entries, events)
    assert summary.exit_code == 0
    done = [e.item.id for e in events if isinstance(e, DownloadComplete)]
    assert done == ["small", "slow"]
    started = {e.item_id: e.worker for e in events if isinstance(e, DownloadStarted)}
    assert started["small"] != started["slow"]


def test_two_slow_transfers_run_side_by_side(tmp_path: Path, server: FaultServer) -> None:
    """Two slow files with idle downloaders around run at once, not one after the other."""
    config = make_config(
        tmp_path, download={"workers": 8, "mailbox": 2, "min_speed": 1, "per_host": 0}
    )
    entries = [
        {"id": f"slow{i}", "url": server.url(f"/drip/slow{i}.bin?size=100000&rate=10000")}
        for i in range(2)
    ]
    assert run(config, entries).exit_code == 0
    assert server.max_active == 2


def test_items_queued_behind_a_slow_transfer_are_handed_back(
    tmp_path: Path, server: FaultServer
) -> None:
    """Two downloaders, mailbox 2: the item prefetched behind a slow transfer is handed
    back (no attempt spent) and completes on the other downloader before the slow one."""
    config = make_config(
        tmp_path, download={"workers": 2, "mailbox": 2, "min_speed": 1, "per_host": 0}
    )
    entries = [{"id": "slow", "url": server.url("/drip/slow.bin?size=300000&rate=10000")}]
    entries += [{"id": f"s{i}", "url": server.url(f"/ok/s{i}.bin")} for i in range(6)]
    events: list[Any] = []
    summary = run(config, entries, events)
    assert summary.exit_code == 0
    done = [e.item.id for e in events if isinstance(e, DownloadComplete)]
    assert done[-1] == "slow"
    records = by_id(config)
    assert all(records[f"s{i}"]["attempts"] == 1 for i in range(6))
    assert all(server.counts[f"/ok/s{i}.bin"] == 1 for i in range(6))
    assert summary.stats["hosts"][next(iter(summary.stats["hosts"]))]["attempts"] == 7


def test_host_statistics_persist_across_runs(tmp_path: Path, server: FaultServer) -> None:
    config = make_config(tmp_path)
    run(config, [{"id": "gone", "url": server.url("/status/404/gone.bin")}])
    summary = run(config, [{"id": "ok", "url": server.url("/ok/ok.bin")}])
    (stats,) = summary.stats["hosts"].values()
    assert (stats["attempts"], stats["successes"], stats["bytes"]) == (2, 1, 10000)
    assert stats["failures"] == {"http_4xx": 1}


def test_big_bodies_hashed_on_a_helper_thread_verify_and_resume(
    tmp_path: Path, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the helper-thread hash for every size: digests are right, also after a reset."""
    monkeypatch.setattr("runtime.core.transfer.BACKGROUND_HASH", 1)
    monkeypatch.setattr("runtime.core.partfile.BackgroundHash.BATCH", 10_000)  # many batches
    body = body_of("h.bin", 300000)
    config = make_config(tmp_path, retry={"max_attempts": 3})
    run(
        config,
        [
            {"id": "h", "url": server.url("/ok/h.bin?size=300000"), "sha256": sha(body)},
            {"id": "r", "url": server.url("/reset/r.bin?size=300000&at=100000")},
        ],
    )
    records = by_id(config)
    assert records["h"]["sha256"] == sha(body)
    assert records["r"]["sha256"] == sha(body_of("r.bin", 300000))
    assert server.ranges["/reset/r.bin"] == [None, "bytes=100000-"]


def test_trust_env_auto_looks_at_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.core.transport import _trust_env

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy", "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                "NETRC"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert (_trust_env("auto"), _trust_env("yes"), _trust_env("no")) == (False, True, False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    assert _trust_env("auto")
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    assert not _trust_env("auto")  # read once by the transport instead
    (tmp_path / ".netrc").write_text("machine a.test login u password p\n")
    assert _trust_env("auto")


def test_small_files_record_a_validator_only_when_they_fail(
    tmp_path: Path, server: FaultServer
) -> None:
    config = make_config(tmp_path, retry={"max_attempts": 1})
    run(
        config,
        [
            {"id": "fine", "url": server.url("/ok/fine.bin")},
            {"id": "cut", "url": server.url("/truncate/cut.bin?size=50000&at=20000")},
        ],
    )
    db = sqlite3.connect(Path(config.state.dir) / "state.sqlite3")
    validators = dict(db.execute("SELECT id, validator FROM items").fetchall())
    db.close()
    assert validators["fine"] is None
    assert validators["cut"] is not None
    assert validators["cut"].startswith('"')
