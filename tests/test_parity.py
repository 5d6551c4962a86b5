"""Coming from download-pipeline-processor: its plugins, flags and process-and-discard
runs, through the command line against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from messages import Outcome
from runtime import Config, ConfigError, Pipeline
from runtime.core.filedata import FileData
from runtime.core.pluginload import check_plugin, load_plugin
from runtime.core.plugins import BasePostProcessor, BasePreProcessor, BaseProcessor
from runtime.core.store import open_view
from runtime.testing import LocalFileServer, Ok, ScriptedTransport, Status
from tests.helpers import make_config, read_manifest, run_cli, start_cli

TIMEOUT = 120
PLUGINS = (
    "--pre-processor", "tests.dpp_style:TagPreProcessor",
    "--processor", "tests.dpp_style:SpeakerProcessor",
    "--post-processor", "tests.dpp_style:StagePostProcessor",
)  # fmt: skip


def write_files(tmp_path: Path, server: LocalFileServer, kinds: dict[str, str]) -> Path:
    """A JSON array as that project reads it: url, id, name and extra fields."""
    entries = []
    for i, (name, kind) in enumerate(kinds.items()):
        path = "/missing/" + name if kind == "404" else "/" + name
        entries.append(
            {"url": server.url(path), "id": name, "name": name, "speaker": f"s{i}", "kind": kind}
        )
    files = tmp_path / "files.json"
    files.write_text(json.dumps(entries))
    return files


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def statuses(state: Path) -> dict[str, tuple[str, str | None]]:
    db = sqlite3.connect(state / "state.sqlite3")
    try:
        return {i: (s, k) for i, s, k in db.execute("SELECT id, status, error_kind FROM items")}
    finally:
        db.close()


def test_its_plugins_and_flags_run_unchanged_with_failures_at_every_stage(
    tmp_path: Path,
) -> None:
    """Its duck-typed plugins get FileData (extra fields as attributes, ``debug=``, a
    ``log``), the post-processor is called for every file — failed ones by stage, with
    ``result=None`` — and with ``--download-cache`` no file stays, while at most the
    transfers and the queues were ever on disk. A second run fetches nothing again."""
    kinds = {f"f{i:03d}.wav": "ok" for i in range(120)}
    for bad in ("404", "bad-pre", "bad-process", "bad-post"):
        kinds.update({f"{bad}-{i}.wav": bad for i in range(3)})
    bodies = {"/" + n: n.encode() * 50 for n, k in kinds.items() if k != "404"}
    record = tmp_path / "record.jsonl"
    with LocalFileServer(bodies) as server:
        files = write_files(tmp_path, server, kinds)
        args = ("run", "--files", files, *PLUGINS, "--download-cache", tmp_path / "cache",
                "--state", tmp_path / "state", "--processing-limit", "2",
                "--download-queue-size", "8", "--pre-processing-queue-size", "4",
                "--set", "download.concurrency=4", "--debug", "--quiet")  # fmt: skip
        env = {**os.environ, "DPP_RECORD": str(record)}
        result = run_cli(*args, env=env)
        assert result.returncode == 1, result.stderr[-3000:]  # some items failed
        assert "processing f000.wav" in result.stderr  # its self.log, at --debug
        seen = dict(server.counts)
        again = run_cli(*args, env=env)
        assert again.returncode == 1, again.stderr[-3000:]
        assert dict(server.counts) == seen  # nothing fetched again
    lines = records(record)
    assert sorted(r["id"] for r in lines) == sorted(kinds)  # each once, the rerun added none
    by_id = {r["id"]: r for r in lines}
    expect_stage = {"ok": None, "bad-post": None, "404": "download",
                    "bad-pre": "pre_process", "bad-process": "process"}  # fmt: skip
    for name, kind in kinds.items():
        got = by_id[name]
        assert got["stage"] == expect_stage[kind], got
        assert got["speaker"] == got["result"]["speaker"] if got["result"] else True
        assert got["debug"] is True
        if kind in ("ok", "bad-post"):
            assert got["result"]["pre_seen"] is True
            assert got["result"]["converted"] is True
            assert got["result"]["debug"] is True
            assert got["result"]["size"] == len(bodies["/" + name])
            assert got["transcript"] == f"said by {got['speaker']}"  # set by the processor
        else:
            assert got["result"] is None, got
            assert got["error"], got
    assert "cannot pre-process bad-pre-0.wav" in by_id["bad-pre-0.wav"]["error"]
    db = sqlite3.connect(str(record) + ".sqlite3")  # written by the thread that opened it
    assert db.execute("SELECT count(*) FROM seen").fetchone()[0] == len(kinds)
    db.close()
    assert "404" in by_id["404-0.wav"]["error"]
    # Disk: at most the transfers (4) and the queues (8 + 4) at any sample.
    samples = [r["result"]["disk"] for r in lines if r["result"]]
    assert 1 <= max(samples) <= 4 + 8 + 4
    converted = [r["result"]["disk_converted"] for r in lines if r["result"]]
    assert 1 <= max(converted) <= 8 + 4  # the pre-processor's copies: the backlog's at most
    assert list((tmp_path / "cache").iterdir()) == []
    state = statuses(tmp_path / "state")
    assert {state[n] for n, k in kinds.items() if k == "ok"} == {("completed", None)}
    assert {state[n] for n, k in kinds.items() if k == "bad-post"} == {
        ("failed", "post_process_error")
    }
    assert {state[n] for n, k in kinds.items() if k == "bad-pre"} == {
        ("failed", "pre_process_error")
    }
    assert {state[n] for n, k in kinds.items() if k == "404"} == {("failed", "http_4xx")}
    # --recheck knows the files were not kept: nothing goes back to pending.
    rechecked = run_cli(*args, "--recheck", env=env)
    assert "recheck: no kept files of completed items to check" in rechecked.stderr, (
        rechecked.stderr[-2000:]
    )
    assert statuses(tmp_path / "state") == state


def test_kill_9_with_a_download_cache_loses_nothing_and_fetches_no_processed_item_again(
    tmp_path: Path,
) -> None:
    """Killed mid-run and run again: every entry is recorded, no file whose
    post-processing had succeeded is requested again, and the cache ends empty (the
    files the killed run had committed but not yet deleted included)."""
    kinds = {f"f{i:03d}.wav": "ok" for i in range(300)}
    bodies = {"/" + n: n.encode() * 40 for n in kinds}
    record = tmp_path / "record.jsonl"
    env = {**os.environ, "DPP_RECORD": str(record)}
    with LocalFileServer(bodies, delay=0.02) as server:
        files = write_files(tmp_path, server, kinds)
        args = ("run", "--files", files, *PLUGINS, "--download-cache", tmp_path / "cache",
                "--state", tmp_path / "state", "--set", "download.concurrency=4",
                "--quiet")  # fmt: skip
        proc = start_cli(*args, env=env)
        try:
            grown = threading.Event()
            for _ in range(int(TIMEOUT / 0.02)):
                if len(records(record)) >= 60 or proc.poll() is not None:
                    break
                grown.wait(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        finally:
            proc.kill()
            proc.communicate()
        processed = {r["id"] for r in records(record)}
        assert 60 <= len(processed) < 300
        server.delay = 0
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        for name in processed:
            assert server.counts["/" + name] == 1, name
    assert {r["id"] for r in records(record)} == set(kinds)
    assert set(statuses(tmp_path / "state").values()) == {("completed", None)}
    assert list((tmp_path / "cache").iterdir()) == []


def test_flags_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    """Two flags for one key, or --download-cache with a keep other than none."""
    files = tmp_path / "files.json"
    files.write_text("[]")
    out, cache = tmp_path / "o", tmp_path / "c"
    cases = [
        (("--files", files, "--input", files, "--output", out),
         "--files and --input both set input.path"),
        (("--files", files, "--download-cache", cache, "--output", out),
         "--download-cache and --output both set output.dir"),
        (("--files", files, "--download-cache", cache, "--set", "output.keep=all"),
         "--download-cache keeps no file, but --set output.keep=all"),
        (("--files", files, "--output", out, "--processing-limit", "0"), "--processing-limit"),
        (("--files", files, "--output", out, "--set", "output.keep=none",
          "--set", "output.if_exists=skip"), "do not go together"),
        (("--files", files, "--output", out, "--pre-processor",
          "tests.dpp_style:SpeakerProcessor"), "nor a class with a pre_process() method"),
    ]  # fmt: skip
    for args, message in cases:
        result = run_cli("run", *args, "--state", tmp_path / "s")
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


# -- the pieces ---------------------------------------------------------------------------


def test_file_data_reads_and_writes_extra_fields_as_attributes() -> None:
    data = FileData(url="u", id="i", name="n", additional_fields={"speaker": "ada"})
    assert data.speaker == "ada"
    assert not data.has_error
    data.lang = "en"
    assert data.additional_fields == {"speaker": "ada", "lang": "en"}
    with pytest.raises(AttributeError, match="no field 'missing'"):
        _ = data.missing
    data.add_error("process", ValueError("x"))
    assert data.has_error
    assert data.error is not None
    assert data.error.stage == "process"
    copy = pickle.loads(pickle.dumps(data))  # noqa: S301 - no lookup loop while unpickling
    assert copy.speaker == "ada"
    assert copy.error is not None


class _NoMethod:
    def __init__(self, debug: bool = False) -> None:
        self.debug = debug


class _OldPost:
    """The first form of that project's post-processor: ``post_process(result)``."""

    seen: list[Any] = []  # noqa: RUF012 - the test reads it

    def post_process(self, result: Any) -> None:
        _OldPost.seen.append(result)


def test_a_class_is_taken_by_its_method_and_built_with_debug() -> None:
    """Not a subclass and no method of the stage: a clear error naming the key."""
    with pytest.raises(ConfigError, match=r"processing\.processor: .* nor a class with a process"):
        load_plugin("tests.test_parity:_NoMethod", {}, BaseProcessor, "processor")
    check_plugin("tests.dpp_style:SpeakerProcessor", {}, BaseProcessor, "processor")
    with pytest.raises(ConfigError, match=r"processing\.processor_options"):
        check_plugin("tests.dpp_style:SpeakerProcessor", {"x": 1}, BaseProcessor, "processor")
    pre = load_plugin("tests.dpp_style:TagPreProcessor", {}, BasePreProcessor, "pre_processor",
                      debug=True)  # fmt: skip
    assert isinstance(pre, BasePreProcessor)
    assert pre.plugin.debug is True  # type: ignore[attr-defined]
    assert pre.plugin.log is not None  # type: ignore[attr-defined]
    post = load_plugin("tests.test_parity:_OldPost", {}, BasePostProcessor, "post_processor")
    done = Outcome(id="i", url="u", name="n", path="", status="completed", result={"result": 5})
    post.post_process(done)
    post.post_process(Outcome(id="j", url="u", name="m", path="", status="failed", error="x"))
    assert _OldPost.seen == [5, None]


class NativePre(BasePreProcessor):
    """conveyor's own form: returns a replaced ``Downloaded``; fails ``bad-pre`` names."""

    def pre_process(self, downloaded: Any) -> Any:
        import dataclasses

        if downloaded.name.startswith("bad-pre"):
            raise ValueError("no")
        return dataclasses.replace(downloaded, fields={**downloaded.fields, "pre": 1})


class NativeProc(BaseProcessor):
    def process(self, downloaded: Any) -> dict[str, Any]:
        if downloaded.name.startswith("bad-process"):
            raise ValueError("no")
        return {"pre": downloaded.fields.get("pre")}


@pytest.mark.parametrize(("backend", "mode"), [("sqlite", "thread"), ("memory", "process")])
def test_a_pre_processor_runs_before_the_processor_and_keep_failed_keeps_only_failures(
    tmp_path: Path, backend: str, mode: str
) -> None:
    """What the pre-processor returns is what the processor sees; its failure is
    ``pre_process_error`` and the processor never sees that file; with
    ``output.keep = "failed"`` only the failed files stay, and recheck looks at none of
    the deleted ones."""
    names = ["a.bin", "b.bin", "bad-pre.bin", "bad-process.bin"]
    transport = ScriptedTransport({f"http://h.test/{n}": [Ok(b"x" * 10)] for n in names})
    config = make_config(
        tmp_path,
        output={"keep": "failed"},
        state={"backend": backend},
        processing={"pre_processor": "tests.test_parity:NativePre", "mode": mode,
                    "processor": "tests.test_parity:NativeProc"},
    )  # fmt: skip
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": f"http://h.test/{n}"} for n in names])
        summary = pipeline.wait(TIMEOUT)
    assert (summary.finished.completed, summary.finished.failed) == (2, 2)
    by_name = {r["name"]: r for r in read_manifest(config.manifest_path)}
    assert by_name["a.bin"]["result"] == {"pre": 1}
    assert by_name["bad-pre.bin"]["error_kind"] == "pre_process_error"
    assert by_name["bad-process.bin"]["error_kind"] == "processing_error"
    out = Path(config.output.dir)
    assert sorted(p.name for p in out.iterdir()) == ["bad-pre.bin", "bad-process.bin"]


def test_keep_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"output\.keep must be one of"):
        Config.from_mapping({"output": {"keep": "some"}})


def test_a_used_cache_a_simulated_state_and_an_unbuildable_plugin_are_refused(
    tmp_path: Path,
) -> None:
    """A new state refuses a non-empty --download-cache (a file there would be taken for
    a download, then deleted); a state of simulated downloads refuses a real run (and
    the other way round); a plugin whose constructor raises fails the start naming it."""
    files = tmp_path / "files.json"
    files.write_text(json.dumps([{"url": "http://files.test/a.wav", "id": "a"}]))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "a.wav").write_text("the user's own file")
    used = run_cli("run", "--files", files, "--download-cache", cache, "--quiet")
    assert used.returncode == 2, used.stderr[-2000:]
    assert "is not empty ('a.wav' is there)" in used.stderr
    assert (cache / "a.wav").read_text() == "the user's own file"

    out = tmp_path / "out"
    simulated = run_cli("run", "--files", files, "--output", out, "--simulate-downloads")
    assert simulated.returncode == 0, simulated.stderr[-2000:]
    real = run_cli("run", "--files", files, "--output", out, "--quiet")
    assert real.returncode == 2, real.stderr[-2000:]
    assert "holds a simulated run (--simulate-downloads)" in real.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"url": "http://files.test/b.wav"}]))
    joined = run_cli("run", "--files", other, "--output", out, "--simulate-downloads")
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert "already holds the items of another input file" in joined.stderr

    broken = run_cli("run", "--files", files, "--output", tmp_path / "o2",
                     "--processor", "tests.test_parity:Unbuildable")  # fmt: skip
    assert broken.returncode == 2, broken.stderr[-2000:]
    assert "processing.processor: building the plugin failed: ValueError: no model" in (
        broken.stderr
    )


class Unbuildable:
    def __init__(self, debug: bool = False) -> None:
        raise ValueError("no model here")

    def process(self, file_data: Any) -> Any:
        return None


def test_plugins_are_built_once_per_actor_and_results_must_be_plain_data(
    tmp_path: Path,
) -> None:
    """No extra instance is built to check a plugin (only imported); a processor that
    returns a Path fails its item saying what may be returned."""
    from tests.dpp_style import Built

    Built.count = 0
    transport = ScriptedTransport({f"http://h.test/{n}": [Ok(b"x")] for n in ("a", "b")})
    config = make_config(tmp_path, processing={"processor": "tests.dpp_style:Built",
                                               "workers": 2})  # fmt: skip
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": "http://h.test/a"}, {"url": "http://h.test/b"}])
        summary = pipeline.wait(TIMEOUT)
    assert Built.count == 2  # one per processor actor
    assert summary.finished.failed == 2
    errors = {r["error"] for r in read_manifest(config.manifest_path)}
    assert all("cannot be stored: plain data only" in e for e in errors), errors


def test_a_failed_item_keeps_its_kind_when_the_post_processor_fails_too(tmp_path: Path) -> None:
    transport = ScriptedTransport({"http://h.test/pp-boom": [Status(404)]})
    config = make_config(
        tmp_path, processing={"post_processor": "tests.plugins:ExplodingPostProcessor"}
    )
    with Pipeline(config, transport_factory=transport) as pipeline:
        pipeline.submit([{"url": "http://h.test/pp-boom", "id": "pp-boom"}])
        pipeline.wait(TIMEOUT)
    with open_view(Path(config.state.dir)) as view:
        (item,) = view.items(None, 0, 10)
    assert item["error_kind"] == "http_4xx"
    assert "the post-processor failed: RuntimeError: post-processing refused" in item["error"]


def test_an_interrupted_runs_files_are_swept_and_only_those(tmp_path: Path) -> None:
    """Outcomes committed as not kept whose files are still there (the run was killed
    between the commit and the deletions) are deleted by the next start, once; a kept
    file, and the files of a state whose output directory changed, are left alone."""
    from runtime.core.store import SQLiteStore, sweep_unkept
    from runtime.core.store.protocol import NewItem

    out = tmp_path / "out"
    out.mkdir()
    store = SQLiteStore(tmp_path / "state")
    store.begin_run()
    names = ["gone.bin", "kept.bin", "part.bin"]
    store.add(
        [NewItem(n, i, f"http://h.test/{n}", n, None, None, "h.test:80", False, None)
         for i, n in enumerate(names)],
        checked=False,
    )  # fmt: skip
    for name in names:
        (out / name).write_text("x")
    (out / "part.bin.part").write_text("x")
    for name, path, status in (("gone.bin", "", "completed"),
                               ("kept.bin", str(out / "kept.bin"), "completed"),
                               ("part.bin", "", "failed")):  # fmt: skip
        store.record_outcome(Outcome(id=name, url="u", name=name, path=path, status=status))
    store.commit()
    assert sweep_unkept(store, out, ("completed", "failed"), parts=True) == 3
    assert sorted(p.name for p in out.iterdir()) == ["kept.bin"]
    (out / "gone.bin").write_text("x")  # (as if downloaded again by another run)
    assert sweep_unkept(store, out, ("completed", "failed"), parts=True) == 0  # mark moved
    store.set_meta(discarded_through=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "gone.bin").write_text("x")
    assert sweep_unkept(store, elsewhere, ("completed",), parts=False) == 0
    assert (elsewhere / "gone.bin").exists()
    store.close()


def test_processing_workers_are_capped() -> None:
    with pytest.raises(ConfigError, match=r"processing\.workers must be at most 256"):
        Config.from_mapping({"processing": {"workers": 100_000}})
