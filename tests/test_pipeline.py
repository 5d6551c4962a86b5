"""The real actors in-process, driven by a scripted transport."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pykka
import pytest
import structlog

from messages import (
    DownloadComplete,
    DownloadFailed,
    DownloadStarted,
    Outcome,
    RunFinished,
)
from runtime import Config, ConfigError, ConveyorError, Pipeline, SupervisionError
from runtime.core.store import open_view
from runtime.events import EventStream
from runtime.testing import Crash, Fail, Ok, ScriptedTransport, Stall, Status, capture_logs
from tests.helpers import CHECKSUM, files_outside, make_config, read_manifest

TIMEOUT = 60


def url(i: object) -> str:
    return f"http://files.test/{i}"


def test_items_flow_to_completed_with_checksums(tmp_path: Path) -> None:
    """Downloads land under their names, verified, and the manifest records each one."""
    bodies = {f"f{i}.bin": bytes([i]) * (1000 + i) for i in range(20)}
    transport = ScriptedTransport({url(n): [Ok(b)] for n, b in bodies.items()})
    config = make_config(tmp_path, processing={"processor": CHECKSUM})
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit(
            [
                {"url": url(n), "id": n, "sha256": hashlib.sha256(b).hexdigest()}
                for n, b in bodies.items()
            ]
        )
        summary = pipeline.wait(TIMEOUT)
    assert summary.exit_code == 0
    assert (summary.finished.accepted, summary.finished.completed) == (20, 20)
    for name, body in bodies.items():
        assert (Path(config.output.dir) / name).read_bytes() == body
    records = read_manifest(config.manifest_path)
    assert sorted(r["id"] for r in records) == sorted(bodies)
    assert all(r["status"] == "completed" and r["result"]["size"] == r["size"] for r in records)
    assert not list(Path(config.output.dir).glob("*.part"))


def test_batch_hooks_get_blocks_and_fail_items_one_by_one(tmp_path: Path) -> None:
    """A processor and a post-processor that override only the batch hooks get blocks
    of files and outcomes; what they return as an exception fails that item alone."""
    from tests.plugins import BlockManifest

    BlockManifest.blocks.clear()
    BlockManifest.ids.clear()
    names = [f"f{i}" for i in range(40)] + ["boom1", "pp-boom2"]
    transport = ScriptedTransport({url(n): [Ok(b"x" * 7)] for n in names})
    config = make_config(
        tmp_path,
        processing={
            "processor": "tests.plugins:BlockProcessor",
            "post_processor": "tests.plugins:BlockManifest",
            "workers": 1,
        },
    )
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url(n), "id": n} for n in names])
        summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.completed, summary.finished.failed) == (40, 2)
    assert sorted(BlockManifest.ids) == sorted(names)  # every outcome, once
    assert sum(BlockManifest.blocks) == len(names)
    with open_view(Path(config.state.dir)) as view:
        rows = {r["id"]: r for r in view.outcomes_after(0, 100)}
    assert rows["boom1"]["error_kind"] == "processing_error"
    assert "ValueError: cannot process boom1" in rows["boom1"]["error"]
    assert rows["pp-boom2"]["error_kind"] == "post_process_error"
    assert rows["f0"]["status"] == "completed"


def test_the_default_processor_is_skipped(tmp_path: Path) -> None:
    """With the default processor (which does nothing) no processor actor runs: each file
    goes straight to the post-processor, with the sha256 computed while downloading."""
    bodies = {f"f{i}.bin": bytes([i]) * (500 + i) for i in range(10)}
    transport = ScriptedTransport({url(n): [Ok(b)] for n, b in bodies.items()})
    config = make_config(tmp_path)
    assert config.processing.skipped
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url(n), "id": n} for n in bodies])
        running = [t.name for t in threading.enumerate()]
        summary = pipeline.wait(TIMEOUT)
    assert not [name for name in running if name.startswith("Processor")]
    assert (summary.finished.accepted, summary.finished.completed) == (10, 10)
    records = {r["id"]: r for r in read_manifest(config.manifest_path)}
    assert {n: records[n]["sha256"] for n in bodies} == {
        n: hashlib.sha256(b).hexdigest() for n, b in bodies.items()
    }
    assert all(r["result"] == {} for r in records.values())


def test_retries_transient_failures_and_stops_at_permanent_ones(tmp_path: Path) -> None:
    """503 twice then 200 completes on the third request; a 404 is requested once."""
    transport = ScriptedTransport(
        {
            url("flaky"): [Status(503), Status(503), Ok(b"x" * 10)],
            url("gone"): [Status(404)],
            url("down"): [Fail("connection")],
        }
    )
    config = make_config(tmp_path, retry={"max_attempts": 3})
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url(n), "id": n} for n in ("flaky", "gone", "down")])
        summary = pipeline.wait(TIMEOUT)
    assert transport.requests == {url("flaky"): 3, url("gone"): 1, url("down"): 3}
    by_id = {r["id"]: r for r in read_manifest(config.manifest_path)}
    assert by_id["flaky"]["status"] == "completed"
    assert by_id["flaky"]["attempts"] == 3
    assert (by_id["gone"]["status"], by_id["gone"]["error_kind"]) == ("failed", "http_4xx")
    assert (by_id["down"]["error_kind"], by_id["down"]["attempts"]) == ("connection", 3)
    assert summary.exit_code == 1


def test_checksum_mismatch_fails_without_leaving_a_file(tmp_path: Path) -> None:
    """A body whose sha256 differs never appears under its final name."""
    transport = ScriptedTransport({url("a"): [Ok(b"evil")]})
    config = make_config(tmp_path)
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("a"), "sha256": hashlib.sha256(b"good").hexdigest()}])
        pipeline.wait(TIMEOUT)
    (record,) = read_manifest(config.manifest_path)
    assert record["error_kind"] == "checksum_mismatch"
    assert list(Path(config.output.dir).iterdir()) == []


def test_processor_exception_fails_only_that_item(tmp_path: Path) -> None:
    """A plugin that raises produces ProcessingFailed, the actor survives."""
    transport = ScriptedTransport({url(n): [Ok(b"data")] for n in ("boom.bin", "fine.bin")})
    config = make_config(tmp_path, processing={"processor": "tests.plugins:FailingProcessor"})
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("boom.bin")}, {"url": url("fine.bin")}])
        summary = pipeline.wait(TIMEOUT)
    by_name = {r["name"]: r for r in read_manifest(config.manifest_path)}
    assert by_name["boom.bin"]["error_kind"] == "processing_error"
    assert "ValueError: cannot process boom.bin" in by_name["boom.bin"]["error"]
    assert by_name["fine.bin"]["status"] == "completed"
    assert summary.finished.failed == 1


def test_an_entrys_other_keys_reach_the_processor_and_the_manifest(tmp_path: Path) -> None:
    """Keys beyond url, id, name, sha256 and size travel with the item: the processor
    sees them (``Downloaded.fields``) and the manifest line carries them; the line of an
    entry without any stays as it was. Without a processor they reach the manifest too."""
    names = ("talk.wav", "plain.wav")
    for processor in ("tests.plugins:FieldsProcessor", "runtime.plugins:NullProcessor"):
        transport = ScriptedTransport({url(n): [Ok(b"x")] for n in names})
        config = make_config(tmp_path / processor[:5], processing={"processor": processor})
        out = io.StringIO()
        events = EventStream(out)
        with Pipeline(config, transport_factory=transport, on_event=events) as pipeline:
            pipeline.submit(
                [{"url": url("talk.wav"), "speaker": "ada", "take": [1, 2.5, None]},
                 {"url": url("plain.wav")}]
            )  # fmt: skip
            assert pipeline.wait(TIMEOUT).finished.completed == 2
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        done = {e["item"]["name"]: e["item"] for e in lines if e["type"] == "download_complete"}
        assert done["talk.wav"]["fields"] == {"speaker": "ada", "take": [1, 2.5, None]}
        by_name = {r["name"]: r for r in read_manifest(config.manifest_path)}
        assert by_name["talk.wav"]["fields"] == {"speaker": "ada", "take": [1, 2.5, None]}
        assert "fields" not in by_name["plain.wav"]
        if processor.startswith("tests"):
            assert by_name["talk.wav"]["result"] == {"speaker": "ada"}
            assert by_name["plain.wav"]["result"] == {"speaker": None}


def test_post_processor_exception_fails_only_that_item(tmp_path: Path) -> None:
    """A post-processor that raises fails the item; the run goes on."""
    transport = ScriptedTransport({url(n): [Ok(b"d")] for n in ("pp-boom", "ok")})
    config = make_config(
        tmp_path, processing={"post_processor": "tests.plugins:ExplodingPostProcessor"}
    )
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url(n), "id": n} for n in ("pp-boom", "ok")])
        summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.completed, summary.finished.failed) == (1, 1)


def test_downloader_crash_is_restarted_and_the_item_completes(tmp_path: Path) -> None:
    """A bug in the transport crashes the downloader; its item is re-dispatched."""
    transport = ScriptedTransport({url("a"): [Crash(), Ok(b"after restart")], url("b"): [Ok(b"b")]})
    config = make_config(tmp_path, download={"workers": 1, "mailbox": 2})
    with capture_logs() as logs, Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("a"), "id": "a"}, {"url": url("b"), "id": "b"}])
        summary = pipeline.wait(TIMEOUT)
    assert summary.exit_code == 0
    assert (Path(config.output.dir) / "a").read_bytes() == b"after restart"
    crashes = [e for e in logs if e["event"] == "child crashed"]
    assert [c["worker"] for c in crashes] == ["downloader-0.1"]
    assert "RuntimeError: scripted crash" in crashes[0]["error"]
    assert any(e["event"] == "child restarted" for e in logs)
    by_id = {r["id"]: r for r in read_manifest(config.manifest_path)}
    assert by_id["a"]["attempts"] == 2


def test_exceeding_restart_intensity_ends_the_run_with_a_clear_error(tmp_path: Path) -> None:
    """A downloader that keeps crashing ends the run instead of looping."""
    transport = ScriptedTransport({url(i): [Crash("bug in transport")] for i in range(10)})
    config = make_config(
        tmp_path,
        retry={"max_attempts": 10},
        supervisor={"max_restarts": 2, "restart_window": 60.0},
    )
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url(i)} for i in range(10)])
        summary = pipeline.wait(TIMEOUT)
    assert summary.error_kind == "supervision"
    assert summary.error is not None
    assert "restart intensity exceeded: 3 restarts within 60s" in summary.error
    assert "bug in transport" in summary.error
    assert summary.exit_code == 3
    assert isinstance(summary.exception, SupervisionError)  # the typed error, not just text
    assert str(summary.exception) == summary.error


@pytest.mark.parametrize(
    "name", ["../../x", "/abs/x", "a/../../b", "..", "", "a\x00b", "a\nb", "n" * 300]
)
def test_hostile_names_never_write_outside_the_output_dir(tmp_path: Path, name: str) -> None:
    """Each hostile name is rejected as invalid_entry and nothing lands outside."""
    transport = ScriptedTransport({url("x"): [Ok(b"payload")]})
    config = make_config(tmp_path)
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("x"), "name": name, "id": "hostile"}])
        summary = pipeline.wait(TIMEOUT)
    (record,) = read_manifest(config.manifest_path)
    assert record["error_kind"] == "invalid_entry"
    assert transport.requests[url("x")] == 0
    assert summary.finished.failed == 1
    assert files_outside(tmp_path, [Path(config.output.dir), Path(config.state.dir)]) == []


def test_symlink_inside_output_dir_cannot_lead_outside(tmp_path: Path) -> None:
    """A directory link planted in the output directory is not followed out."""
    config = make_config(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    Path(config.output.dir).mkdir(parents=True)
    (Path(config.output.dir) / "link").symlink_to(outside)
    transport = ScriptedTransport({url("x"): [Ok(b"payload")]})
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("x"), "name": "link/file"}])
        pipeline.wait(TIMEOUT)
    (record,) = read_manifest(config.manifest_path)
    assert record["error_kind"] == "unsafe_name"
    assert list(outside.iterdir()) == []


def test_events_and_stats_are_available_to_the_host(tmp_path: Path) -> None:
    """The embedding API streams typed events ending with RunFinished."""
    transport = ScriptedTransport({url("a"): [Ok(b"abc")]})
    config = make_config(tmp_path)
    pipeline = Pipeline(config, transport_factory=transport)
    events = pipeline.events()
    pipeline.start()
    pipeline.submit([{"url": url("a")}])
    pipeline.close_input()
    kinds = [type(e) for e in events]
    assert kinds[0] is DownloadStarted
    assert DownloadComplete in kinds
    assert Outcome in kinds
    assert kinds[-1] is RunFinished
    assert pipeline.wait(TIMEOUT).exit_code == 0


def test_if_exists_skip_records_existing_files_as_skipped(tmp_path: Path) -> None:
    """With output.if_exists = "skip" a file already in place is not fetched."""
    config = make_config(tmp_path, output={"if_exists": "skip"})
    Path(config.output.dir).mkdir(parents=True)
    (Path(config.output.dir) / "a").write_bytes(b"old")
    transport = ScriptedTransport({url("a"): [Ok(b"new")]})
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": url("a")}])
        summary = pipeline.wait(TIMEOUT)
    assert summary.finished.skipped == 1
    assert transport.requests[url("a")] == 0
    assert summary.exit_code == 1


def test_graceful_stop_aborts_transfers_still_running_after_the_grace(tmp_path: Path) -> None:
    """stop(grace): a stalled transfer is cancelled at the deadline and stays pending."""
    transport = ScriptedTransport(
        {url("stuck"): [Stall(), Ok(b"finally")], url("quick"): [Ok(b"q")]}
    )
    config = make_config(tmp_path, download={"workers": 2})
    pipeline = Pipeline(config, transport_factory=transport)
    events = pipeline.events()
    pipeline.start()
    pipeline.submit([{"url": url("stuck"), "id": "stuck"}])
    for event in events:
        if isinstance(event, DownloadStarted) and event.item_id == "stuck":
            break
    pipeline.stop(grace=0.2)
    summary = pipeline.wait(TIMEOUT)
    assert summary.finished.reason == "interrupted"
    assert summary.finished.pending == 1
    assert summary.exit_code == 130
    assert not (Path(config.output.dir) / "stuck").exists()  # never under its final name
    with Pipeline(config, transport_factory=transport) as again:
        again.submit([{"url": url("stuck"), "id": "stuck"}, {"url": url("quick")}])
        rerun = again.wait(TIMEOUT)
    assert rerun.exit_code == 0
    assert (Path(config.output.dir) / "stuck").read_bytes() == b"finally"


def test_start_fails_cleanly_when_the_state_cannot_be_opened(tmp_path: Path) -> None:
    """An unusable state directory is an error from start(), and no actor is left."""
    (tmp_path / "state").write_text("a file, not a directory")
    config = make_config(tmp_path)
    with pytest.raises(ConveyorError, match="cannot open the state in"):
        Pipeline(config, transport_factory=ScriptedTransport({})).start()
    assert wait_for_no_actors()


def test_start_fails_cleanly_on_a_bad_plugin(tmp_path: Path) -> None:
    """A plugin that cannot be imported names the config key."""
    config = make_config(tmp_path, processing={"processor": "no.such.module:Thing"})
    with pytest.raises(ConfigError, match=r"processing\.processor: cannot import 'no\.such"):
        Pipeline(config, transport_factory=ScriptedTransport({})).start()
    assert wait_for_no_actors()


def wait_for_no_actors() -> bool:
    """The actors stop asynchronously after a failed start; join their threads."""
    for thread in threading.enumerate():
        if thread.name.startswith(
            ("StateKeeper", "_Supervised", "Supervisor", "Downloader", "Processor", "PostProcessor")
        ):
            thread.join(timeout=10)
    return pykka.ActorRegistry.get_all() == []


@pytest.mark.usefixtures("debug_logs")
def test_log_lines_about_an_item_carry_its_id(tmp_path: Path) -> None:
    """Every line an actor logs while working on an item has the item's id."""
    transport = ScriptedTransport({url("a"): [Status(500), Ok(b"a")]})
    config = make_config(tmp_path)
    with (
        capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
        Pipeline(config, transport_factory=transport) as pipeline,
    ):
        pipeline.submit([{"url": url("a"), "id": "item-a"}])
        pipeline.wait(TIMEOUT)
    failures = [e for e in logs if e["event"] == "download failed"]
    assert failures
    assert all(e.get("item_id") == "item-a" for e in failures)
    assert failures[0]["error_kind"] == "http_5xx"


def test_two_pipelines_on_one_state_the_second_is_refused_until_the_first_ends(
    tmp_path: Path,
) -> None:
    """The state lock holds within one process too, and is released when a run ends."""
    from runtime.core.errors import StateLockedError

    config = make_config(tmp_path)
    transport = ScriptedTransport({url("a"): [Ok(b"a")], url("b"): [Ok(b"b")]})
    with Pipeline(config, transport_factory=transport) as first:
        with pytest.raises(StateLockedError, match="in use by another run") as caught:
            Pipeline(config, transport_factory=transport).start()
        assert caught.value.pid is not None
        first.submit([{"url": url("a"), "id": "a"}])
        assert first.wait(TIMEOUT).exit_code == 0
    with Pipeline(config, transport_factory=transport) as second:
        second.submit([{"url": url("b"), "id": "b"}])
        assert second.wait(TIMEOUT).exit_code == 0


def test_a_failing_ingest_ends_the_run_with_a_run_error_and_committed_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder never dies silently: a store error during ingest ends the run (exit 3)
    with the error named, and what was ingested before it is committed."""
    import sqlite3

    from runtime.core.store import Admission

    real_ingest = Admission.ingest
    calls = {"n": 0}

    def failing_ingest(self: Admission, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return real_ingest(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Admission, "ingest", failing_ingest)
    entries = tmp_path / "in.ndjson"
    entries.write_text("".join(f'{{"url": "http://sim.test/{i}"}}\n' for i in range(2500)))
    config = make_config(tmp_path, input={"path": str(entries)})
    with Pipeline(config, simulate=True) as pipeline:
        summary = pipeline.wait(TIMEOUT)  # used to hang here forever
    assert summary.exit_code == 3
    assert summary.error_kind == "feeder"
    assert isinstance(summary.exception, ConveyorError)
    assert summary.error is not None
    assert "disk I/O error (injected)" in summary.error
    db = sqlite3.connect(Path(config.state.dir) / "state.sqlite3")
    (count,) = db.execute("SELECT count(*) FROM items").fetchone()
    (run_state,) = db.execute("SELECT value FROM meta WHERE key='run_state'").fetchone()
    db.close()
    assert count == 1000  # the first batch, committed
    assert run_state == '"finished"'


def test_ingest_runs_beside_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are downloaded and recorded while the input is still being read: the reader
    holds back its last block until the first outcome is announced, and the run neither
    waits for the whole input before dispatching nor deadlocks."""
    import runtime.pipeline

    lines = 3000
    entries = tmp_path / "in.ndjson"
    entries.write_text(
        "".join(f'{{"url": "http://h{i % 20}.test/f{i}.bin"}}\n' for i in range(lines))
    )
    config = make_config(tmp_path, input={"path": str(entries)})
    first_outcome = threading.Event()
    real_batches = runtime.pipeline.iter_batches

    def held_back(path: Path, fmt: str = "auto") -> Any:
        blocks = list(real_batches(path, fmt))
        yield from blocks[:-1]
        assert first_outcome.wait(TIMEOUT), "no file completed while the input was open"
        yield blocks[-1]

    def on_event(message: Any) -> None:
        if isinstance(message, Outcome):
            first_outcome.set()

    monkeypatch.setattr(runtime.pipeline, "iter_batches", held_back)
    with Pipeline(config, simulate=True, on_event=on_event) as pipeline:
        summary = pipeline.wait(TIMEOUT)
    assert summary.finished.completed == lines
    assert first_outcome.is_set()


def test_the_longest_accepted_file_name_downloads(tmp_path: Path) -> None:
    """A 250-byte file name (255 with ``.part``) is written; 251 is rejected at ingest
    without a request."""
    transport = ScriptedTransport({url("a"): [Ok(b"a")], url("b"): [Ok(b"b")]})
    config = make_config(tmp_path)
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit(
            [
                {"url": url("a"), "id": "a", "name": "n" * 250},
                {"url": url("b"), "id": "b", "name": "n" * 251},
            ]
        )
        summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.completed, summary.finished.failed) == (1, 1)
    assert (Path(config.output.dir) / ("n" * 250)).read_bytes() == b"a"
    assert transport.requests[url("b")] == 0
    failed = next(r for r in read_manifest(config.manifest_path) if r["status"] == "failed")
    assert failed["error_kind"] == "invalid_entry"


def test_an_http_date_retry_after_is_read_on_the_injected_clock(tmp_path: Path) -> None:
    """``Retry-After: <HTTP-date>`` 40 s ahead of the *fake* wall clock waits 40 fake
    seconds: no real time is read anywhere on the way."""
    import email.utils

    from runtime.testing import FakeClock

    clock = FakeClock(wall_start=1_900_000_000.0)  # years from the real date
    date = email.utils.formatdate(clock.wall() + 40, usegmt=True)
    script = ScriptedTransport({url("d"): [Status(429, {"Retry-After": date}), Ok(b"d")]})
    asked: list[float] = []

    class Connection:
        def open(self, target: str, headers: Mapping[str, str]) -> Any:
            asked.append(clock.now())
            return script.answer(target)

        def close(self) -> None:
            pass

    limited = threading.Event()

    def on_event(message: object) -> None:
        if isinstance(message, DownloadFailed):
            limited.set()

    config = make_config(tmp_path, retry={"max_retry_after": 60.0})
    with Pipeline(config, transport_factory=Connection, clock=clock, on_event=on_event) as pipeline:
        pipeline.submit([{"url": url("d"), "id": "d"}])
        pipeline.close_input()
        assert limited.wait(TIMEOUT)  # the 429 was read before fake time moves
        while not pipeline.done:  # fake time moves only here
            clock.advance(5.0)
            with contextlib.suppress(TimeoutError):
                pipeline.wait(0.05)
        summary = pipeline.wait(TIMEOUT)
    assert summary.finished.completed == 1
    assert len(asked) == 2
    assert 40.0 <= asked[1] - asked[0] <= 45.0


def test_worker_processes_use_the_pipelines_clock_or_refuse_to_start(tmp_path: Path) -> None:
    """A downloader process gets the pipeline's own clock; one that cannot travel there
    (a FakeClock shares threads with the test) is a clear error, not a silent real clock."""
    from runtime.testing import FakeClock

    config = make_config(tmp_path, download={"processes": 1})
    with pytest.raises(ConveyorError, match="needs a clock that can be sent"):
        Pipeline(config, simulate=True, clock=FakeClock()).start()
    assert wait_for_no_actors()


def test_the_run_rng_is_seeded_and_can_be_given() -> None:
    """Jitter draws from one RNG per run: seeded from ``seed`` (reproducible), else a
    fresh seed the pipeline reports."""
    import random

    config = Config()
    assert Pipeline(config, seed=7)._rng.random() == random.Random(7).random()
    chosen = random.Random(3)
    assert Pipeline(config, rng=chosen)._rng is chosen
    free = Pipeline(config)
    assert free._rng.random() == random.Random(free.seed).random()


def test_a_throttled_simulated_host_waits_and_holds_up_no_other(tmp_path: Path) -> None:
    """``simulate.throttle_hosts`` answers 429 with its Retry-After: the host cools down
    (its items stay pending, none is dropped) while every other host's items complete."""
    entries = [{"url": f"http://{h}.test/f{i}.bin"} for i in range(40) for h in ("slow", "ok")]
    config = make_config(
        tmp_path,
        simulate={"throttle_hosts": ["slow.test"], "throttle_retry_after": 60},
        download={"per_host": 2},
    )
    healthy_done = threading.Event()
    done: list[str] = []

    def on_event(message: Any) -> None:
        if isinstance(message, Outcome):
            done.append(message.url)
            if sum("ok.test" in u for u in done) == 40:
                healthy_done.set()

    with Pipeline(config, simulate=True, on_event=on_event) as pipeline:
        pipeline.submit(entries)
        pipeline.close_input()
        assert healthy_done.wait(TIMEOUT)  # while the slow host waits out its 60 s
        pipeline.stop(grace=5.0, reason="test over")
        summary = pipeline.wait(TIMEOUT)
    records = read_manifest(config.manifest_path)
    assert {r["url"] for r in records if r["status"] == "completed"} == {
        e["url"] for e in entries if "ok.test" in e["url"]
    }
    assert all("slow.test" not in r["url"] for r in records)
    assert summary.finished.pending == 40


def test_an_outcome_is_announced_only_once_it_is_committed(tmp_path: Path) -> None:
    """Every ``Outcome`` the event sink (and so ``events()`` and ``--events``) sees is
    already durable: another connection to the state reads the item as terminal, with the
    outcome's ``done_seq``. A crash can delay an announcement, never make a false one."""
    import sqlite3

    transport = ScriptedTransport({url(i): [Ok(b"x" * 100)] for i in range(40)})
    config = make_config(tmp_path, state={"persist_interval": 0.05})
    path = Path(config.state.dir) / "state.sqlite3"
    seen: list[tuple[str, str | None]] = []
    numbers: list[int] = []
    stored_numbers: list[int | None] = []

    def sink(message: Any) -> None:
        if isinstance(message, Outcome):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                row = db.execute("SELECT * FROM items WHERE id = ?", (message.id,)).fetchone()
                columns = [c[0] for c in db.execute("SELECT * FROM items LIMIT 0").description]
            finally:
                db.close()
            stored = dict(zip(columns, row, strict=True)) if row else {}
            seen.append((message.id, stored.get("status")))
            numbers.append(getattr(message, "done_seq", 0))
            stored_numbers.append(stored.get("done_seq"))

    with Pipeline(config, transport_factory=transport, on_event=sink) as pipeline:
        pipeline.submit([{"url": url(i), "id": str(i)} for i in range(40)])
        summary = pipeline.wait(TIMEOUT)
    assert summary.finished.completed == 40
    assert sorted(i for i, _ in seen) == sorted(str(i) for i in range(40))
    assert [status for _, status in seen] == ["completed"] * 40
    assert numbers == stored_numbers == list(range(1, 41))


def test_a_bad_entry_submitted_again_on_the_same_state_is_one_record(tmp_path: Path) -> None:
    """A program that resumes by submitting the same entries again gets one record for a
    bad entry, not one per run: its id comes from its content."""
    from runtime.core.store import open_view

    transport = ScriptedTransport({url("a"): [Ok(b"x")]})
    config = make_config(tmp_path)
    entries = [{"url": url("a"), "id": "a"}, {"url": "ftp://x/y"}]
    for _ in range(2):
        with Pipeline(config, transport_factory=transport) as pipeline:
            pipeline.submit(entries)
            summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.accepted, summary.finished.failed) == (2, 1)
    with open_view(Path(config.state.dir)) as view:
        assert view.counts() == {"completed": 1, "failed": 1}
