"""Parts of the job service without a server: the limits middleware, the job store, the
submit client's reading of failure examples."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import requests

from runtime.service.jobstore import Job, SQLiteJobStore
from runtime.service.limits import Limits


async def _call(limits: Limits, headers: list[Any], body: bytes = b"") -> int:
    """One request through the middleware; its status."""
    sent: list[dict[str, Any]] = []
    chunks = [body[i : i + 10] for i in range(0, len(body), 10)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Any) -> None:
        sent.append(message)

    await limits({"type": "http", "headers": headers}, receive, send)
    return int(sent[0]["status"])


def test_limits_refuse_too_many_connections_and_too_big_bodies() -> None:
    """Beyond max_connections at once: 429; a body over max_body, announced or not: 413."""

    async def scenario() -> list[int]:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            while (await receive())["more_body"]:
                pass
            if scope["headers"] == [(b"x-hold", b"1")]:
                entered.set()
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        limits = Limits(app, max_connections=1, max_body=100)
        held = asyncio.create_task(_call(limits, [(b"x-hold", b"1")]))
        await asyncio.wait_for(entered.wait(), 10)
        crowded = await _call(limits, [])  # the held request has the only slot
        release.set()
        statuses = [crowded, await asyncio.wait_for(held, 10)]
        assert limits.active == 0
        statuses.append(await _call(limits, [], b"x" * 101))  # streamed, no length
        statuses.append(await _call(limits, [(b"content-length", b"101")]))
        statuses.append(await _call(limits, [], b"x" * 100))
        return statuses

    assert asyncio.run(scenario()) == [429, 200, 413, 413, 200]


def test_event_numbers_continue_after_trimming_and_reopening(tmp_path: Path) -> None:
    """A sequence number is never used twice: not after old events were trimmed, not
    after the store was closed and opened again (a restart)."""
    store = SQLiteJobStore(tmp_path)
    job = Job(id="j1", number=0, status="queued", total=1, invalid=0, created_at=0.0)
    store.create(job, None)
    assert store.append_events("j1", [("a", 0.0, {})] * 5, keep=3) == 5
    events, first = store.events_after("j1", 0, 100)
    assert [e.seq for e in events] == [3, 4, 5]
    assert first == 3
    store.close()
    store = SQLiteJobStore(tmp_path)
    assert store.append_events("j1", [("b", 0.0, {"x": 1})], keep=3) == 6
    assert [e.seq for e in store.events_after("j1", 4, 100)[0]] == [5, 6]
    store.close()


def test_an_idempotency_key_names_one_job_and_one_body(tmp_path: Path) -> None:
    """The same key and body give back the first job; another body is refused."""
    store = SQLiteJobStore(tmp_path)
    first = Job(id="a", number=0, status="queued", total=1, invalid=0, created_at=0.0)
    second = Job(id="b", number=0, status="queued", total=1, invalid=0, created_at=0.0)
    assert store.create(first, ("k", "digest-1"))[1] is True
    job, new = store.create(second, ("k", "digest-1"))
    assert (job.id, new) == ("a", False)
    try:
        store.create(second, ("k", "digest-2"))
    except KeyError:
        pass
    else:
        raise AssertionError("a reused key with another body must be refused")
    assert [j.id for j in store.page(None, 0, 10)] == ["a"]
    store.close()


def test_job_events_keep_every_item_and_coalesce_progress() -> None:
    """Item events are all kept, in order; progress is sent at most once per interval
    (and once more at the end), with the hosts that changed since the last one. The time
    is the injected clock's: on a machine whose monotonic clock is near 0 (just booted)
    the first progress event is still due at once."""
    from messages import HostStatus, Outcome, RunProgress
    from runtime.service.jobs import JobEvents
    from runtime.testing import FakeClock

    job = Job(id="j", number=1, status="running", total=10, invalid=0, created_at=0.0)
    clock = FakeClock(start=0.0)
    events = JobEvents(job, interval=3600.0, clock=clock)

    def progress(done: int) -> RunProgress:
        return RunProgress(accepted=10, completed=done, failed=0, skipped=0, pending=10 - done,
                           downloading=1, processing=0, bytes=done * 100, retries=0,
                           elapsed=1.0)  # fmt: skip

    host = HostStatus(host="h:80", active=1, attempts=1, successes=1, failures=0, retries=0,
                      bytes=100, breaker="closed")  # fmt: skip
    for i in range(3):
        events(Outcome(id=str(i), url=f"http://h/{i}", name=str(i), path="", status="completed",
                       done_seq=i + 1))  # fmt: skip
        events(progress(i + 1))
    events(host)
    first, announced = events.take()
    assert announced == 3  # the last outcome's done_seq, stored with the events
    assert first[0][1] == clock.wall()
    assert [kind for kind, _, _ in first] == ["item", "item", "item", "progress"]
    assert [data["id"] for kind, _, data in first if kind == "item"] == ["0", "1", "2"]
    assert first[-1][2]["completed"] == 3
    assert first[-1][2]["percent"] == 30.0
    assert [h["host"] for h in first[-1][2]["hosts"]] == ["h:80"]
    events(progress(4))
    clock.advance(3599.0)
    assert events.take() == ([], 0)  # within the interval: coalesced
    clock.advance(1.0)
    assert [kind for kind, _, _ in events.take()[0]] == ["progress"]  # due again
    events(progress(5))
    final, _ = events.take(final=True)
    assert [kind for kind, _, _ in final] == ["progress"]
    assert final[0][2]["completed"] == 5
    assert final[0][2]["hosts"] == []  # none changed since the last one


def _manager_with_a_job(tmp_path: Path) -> tuple[Any, Job]:
    """A job manager (not started) and one stored job whose state recorded five outcomes."""
    from messages import Outcome, WorkItem
    from runtime.core.config import Config
    from runtime.core.store import Admission, SQLiteStore
    from runtime.service.jobs import JobManager

    config = Config.from_mapping({"service": {"data_dir": str(tmp_path / "data")}})
    store = SQLiteJobStore(tmp_path / "data")
    manager = JobManager(config, store)
    job, _ = store.create(
        Job(id="j", number=0, status="running", total=5, invalid=0, created_at=0.0), None
    )
    state = SQLiteStore(manager.job_dir("j") / "state")
    Admission(state).ingest([WorkItem(id=f"i{n}", url=f"http://h/{n}", name=f"i{n}", line=n + 1)
                  for n in range(5)], [], [])  # fmt: skip
    for n in (3, 0, 4, 1, 2):  # recorded in this order: done_seq 1..5
        state.record_outcome(Outcome(id=f"i{n}", url=f"http://h/{n}", name=f"i{n}", path="",
                                     status="completed", size=10 * n))  # fmt: skip
    state.close()
    return manager, job


def test_a_resumed_job_first_stores_the_item_events_its_state_committed_after_the_mark(
    tmp_path: Path,
) -> None:
    """The catch-up after a crash: outcomes the job's state committed after the last
    ``done_seq`` stored with the events get their ``item`` events, in the order they were
    recorded, and the mark moves on; a second catch-up adds nothing."""
    manager, job = _manager_with_a_job(tmp_path)
    store = manager.store
    store.append_events("j", [("item", 1.0, {"id": "i3"}), ("item", 1.0, {"id": "i0"})],
                        1000, announced=2)  # fmt: skip
    manager._catch_up(job)
    events, _ = store.events_after("j", 0, 100)
    assert [e.data["id"] for e in events] == ["i3", "i0", "i4", "i1", "i2"]
    assert [e.data["size"] for e in events[2:]] == [40, 10, 20]
    assert store.announced("j") == 5
    manager._catch_up(job)
    assert len(store.events_after("j", 0, 100)[0]) == 5
    store.close()


def test_events_that_could_not_be_stored_are_stored_by_the_next_flush(tmp_path: Path) -> None:
    """A write of a job's events that fails (a locked database) loses nothing: the next
    flush stores them, in order, with their done_seq mark."""
    from messages import Outcome
    from runtime.service.jobs import JobEvents, _Runner

    manager, job = _manager_with_a_job(tmp_path)
    runner = _Runner("j", JobEvents(job, interval=3600.0))
    runner.events(Outcome(id="i3", url="u", name="i3", path="", status="completed", done_seq=1))
    real = manager.store.append_events

    def locked(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("database is locked")

    manager.store.append_events = locked
    with pytest.raises(RuntimeError, match="locked"):
        manager._flush(runner)
    manager.store.append_events = real
    runner.events(Outcome(id="i0", url="u", name="i0", path="", status="completed", done_seq=2))
    manager._flush(runner)
    events, _ = manager.store.events_after("j", 0, 100)
    assert [e.data["id"] for e in events if e.type == "item"] == ["i3", "i0"]
    assert manager.store.announced("j") == 2
    manager.store.close()


def test_a_jobs_stored_counts_follow_its_progress(tmp_path: Path) -> None:
    """Each stored progress event also updates the job's stored counts, so after a
    ``kill -9`` (before the job ends and writes its summary) ``GET /v1/jobs/{id}`` shows
    the last progress, not the counts of an earlier stop."""
    from messages import RunProgress
    from runtime.service.jobs import JobEvents, _Runner

    manager, job = _manager_with_a_job(tmp_path)
    runner = _Runner("j", JobEvents(job, interval=0.0))
    runner.events(RunProgress(accepted=5, completed=3, failed=1, skipped=0, pending=1,
                              downloading=1, processing=0, bytes=70, retries=2, elapsed=1.0,
                              completed_bytes=300))  # fmt: skip
    manager._flush(runner)
    stored = manager.get("j")
    assert manager.progress(stored)["bytes"] == 300  # no runner registered: the stored counts
    assert (stored.summary["completed"], stored.summary["failed"]) == (3, 1)
    assert stored.summary["pending"] == 1
    manager.store.close()


def test_submit_follow_reads_failed_items_until_every_kind_has_an_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages of failed items are read until each kind of the job's ``errors`` has an
    example (the first item of it), and no further; a kind never found stops the reading
    after ``EXAMPLES_PAGES`` pages; a failed read keeps the examples found so far."""
    from runtime.service import client

    asked: list[int] = []

    class Answer:
        def __init__(self, cursor: int) -> None:
            self.cursor = cursor

        def raise_for_status(self) -> None:
            if self.cursor < 0:
                raise requests.HTTPError("503")

        def json(self) -> dict[str, Any]:
            page = self.cursor // client.EXAMPLES_PAGE
            kind = "timeout" if page == 2 else "http_4xx"  # a kind first seen on page 3
            items = [{"seq": self.cursor + i + 1, "url": f"u{self.cursor + i}",
                      "error_kind": kind, "error": f"e{page}"}
                     for i in range(client.EXAMPLES_PAGE)]  # fmt: skip
            return {"items": items, "next_cursor": self.cursor + client.EXAMPLES_PAGE}

    def get(url: str, *, params: dict[str, str], **_: Any) -> Answer:
        assert url == "http://s/v1/jobs/j/items"
        assert (params["status"], params["limit"]) == ("failed", str(client.EXAMPLES_PAGE))
        asked.append(int(params["cursor"]))
        return Answer(int(params["cursor"]) if len(asked) <= failing_after else -1)

    monkeypatch.setattr(client.requests, "get", get)
    failing_after = 1000
    examples = client._failure_examples("http://s", "j", {}, {"http_4xx", "timeout"})
    assert [(e["error_kind"], e["url"]) for e in examples] == [("http_4xx", "u0"),
                                                               ("timeout", "u2000")]  # fmt: skip
    assert asked == [0, 1000, 2000]
    asked.clear()
    examples = client._failure_examples("http://s", "j", {}, {"http_4xx", "never"})
    assert len(asked) == client.EXAMPLES_PAGES == 20
    assert [e["error_kind"] for e in examples] == ["http_4xx", "timeout"]
    asked.clear()
    failing_after = 1
    examples = client._failure_examples("http://s", "j", {}, {"http_4xx", "timeout"})
    assert (len(asked), [e["error_kind"] for e in examples]) == (2, ["http_4xx"])
    assert client._failure_examples("http://s", "j", {}, set()) == []  # nothing failed
    assert len(asked) == 2  # and nothing read


def test_a_job_whose_state_is_being_created_reads_as_not_started(tmp_path: Path) -> None:
    """A starting run creates ``state.sqlite3`` a moment before its tables: the job's
    items, details and files read as not started yet (they used to answer 500)."""
    import sqlite3

    from runtime.core.config import Config
    from runtime.service.jobqueries import JobError
    from runtime.service.jobs import JobManager

    config = Config.from_mapping({"service": {"data_dir": str(tmp_path / "data")}})
    store = SQLiteJobStore(tmp_path / "data")
    manager = JobManager(config, store)
    job, _ = store.create(
        Job(id="j", number=0, status="running", total=1, invalid=0, created_at=0.0), None
    )
    state = manager.job_dir("j") / "state"
    state.mkdir(parents=True)
    db = sqlite3.connect(state / "state.sqlite3")
    db.execute("PRAGMA journal_mode=WAL")  # the file exists, no table yet
    db.close()
    assert manager.items(job, None, 0, 10) == []
    assert manager.details(job) == {"errors": {}, "hosts": {}}
    with pytest.raises(JobError):
        manager.completed_file(job, "a.bin")
