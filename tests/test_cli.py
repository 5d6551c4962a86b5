"""``python -m runtime`` as a user runs it: real subprocesses against a real local server."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from messages import RunFinished
from runtime.foreground import print_summary
from runtime.pipeline import RunSummary
from runtime.testing import LocalFileServer
from tests.helpers import read_manifest, run_cli, start_cli

TIMEOUT = 120


def make_files(count: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"/f{i:04d}.bin": rng.randbytes(rng.randint(100, 20_000)) for i in range(count)}


def write_run(
    tmp_path: Path, server: LocalFileServer, files: dict[str, bytes], extra: str = ""
) -> Path:
    with (tmp_path / "files.ndjson").open("w") as fh:
        for path, body in files.items():
            sha = hashlib.sha256(body).hexdigest()
            fh.write(f'{{"id": "{path[1:]}", "url": "{server.url(path)}", "sha256": "{sha}"}}\n')
    config = tmp_path / "conveyor.toml"
    config.write_text(
        '[input]\npath = "files.ndjson"\n[output]\ndir = "out"\n'
        '[state]\ndir = "state"\npersist_interval = 0.05\n' + extra
    )
    return config


run = run_cli
start = start_cli


def committed_completed(state_dir: Path) -> set[str]:
    db = sqlite3.connect(state_dir / "state.sqlite3")
    try:
        return {i for (i,) in db.execute("SELECT id FROM items WHERE status='completed'")}
    finally:
        db.close()


def assert_all_verified(out: Path, files: dict[str, bytes]) -> None:
    for path, body in files.items():
        assert (
            hashlib.sha256((out / path[1:]).read_bytes()).digest() == hashlib.sha256(body).digest()
        ), path
    assert not list(out.glob("*.part"))


def test_run_downloads_500_files_and_writes_the_manifest(tmp_path: Path) -> None:
    """500 files through the CLI: every sha256 matches, 500 completed manifest lines."""
    files = make_files(500)
    with LocalFileServer(files) as server:
        config = write_run(tmp_path, server, files)
        result = run("run", config, "--log-format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_all_verified(tmp_path / "out", files)
    records = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert len(records) == 500
    assert {r["status"] for r in records} == {"completed"}
    assert {r["id"] for r in records} == {p[1:] for p in files}
    assert "completed   500" in result.stdout
    host_row = next(line for line in result.stdout.splitlines() if "127.0.0.1:" in line)
    assert host_row.split()[1:4] == ["500", "500", "0"]  # attempts, ok, retries


def test_summary_prints_hosts_with_breakers_and_failures() -> None:
    hosts = {
        f"h{i}.test:80": {
            "attempts": 100 - i,
            "successes": 90 - i,
            "retries": 3,
            "bytes": 2048,
            "breaker": "open" if i == 0 else "closed",
            "times_opened": 2 if i == 0 else 0,
            "breaker_reason": "60 % of last 20 failed (http_5xx 12)" if i == 0 else "",
            "window": 0 if i == 0 else 20,
            "window_failures": 0 if i == 0 else 1,
            "failures": {"http_5xx": 4, "stalled": 1} if i == 0 else {},
        }
        for i in range(25)
    }
    finished = RunFinished(accepted=3, completed=2, failed=1, skipped=0, bytes=2048, elapsed=1.0)
    out = io.StringIO()
    print_summary(RunSummary(finished=finished, stats={"retries": 7, "hosts": hosts}), out)
    text = out.getvalue()
    assert "retries     7" in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.split()[:1] == ["host"])
    assert "  open: 60 % of last 20 failed (http_5xx 12); opened 2x  " in lines[first + 1]
    assert lines[first + 1].split()[:6] == ["h0.test:80", "100", "90", "3", "2.0", "KiB"]
    assert lines[first + 1].split()[-4:] == ["http_5xx", "4,", "stalled", "1"]
    assert "  closed, 5 % of last 20 failed  " in lines[first + 2]
    assert "... and 5 more hosts" in text


@pytest.fixture(params=["curl", "requests"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The download engine of the runs started from here (through the environment)."""
    monkeypatch.setenv("CONVEYOR_DOWNLOAD_ENGINE", request.param)
    return str(request.param)


def test_kill_9_then_rerun_completes_without_downloading_twice(tmp_path: Path, engine: str) -> None:
    """After SIGKILL, items committed as completed are never requested again."""
    files = make_files(200, seed=2)
    with LocalFileServer(files, delay=0.02) as server:
        config = write_run(tmp_path, server, files, "[download]\nworkers = 4\nmailbox = 2\n")
        proc = start("run", config)
        try:
            assert server.wait_for_requests(80, timeout=TIMEOUT), "the run never got going"
            done_before = committed_completed(tmp_path / "state")
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        finally:
            proc.kill()
            proc.communicate()
        done_before = committed_completed(tmp_path / "state")  # what the kill left committed
        assert 0 < len(done_before) < 200
        server.delay = 0
        result = run("run", config)
        assert result.returncode == 0, result.stderr[-2000:]
        for item_id in done_before:
            assert server.counts[f"/{item_id}"] == 1, item_id
        assert sum(server.counts.values()) < 200 + 4 * 2 + 1  # at most the in-flight again
    assert_all_verified(tmp_path / "out", files)
    records = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert sorted(r["id"] for r in records) == sorted(p[1:] for p in files)
    assert {r["status"] for r in records} == {"completed"}


def test_sigint_stops_gracefully_and_a_rerun_completes_the_rest(
    tmp_path: Path, engine: str
) -> None:
    """SIGINT: in-flight items finish, exit code 130, the next run does the rest."""
    files = make_files(150, seed=3)
    with LocalFileServer(files, delay=0.03) as server:
        config = write_run(tmp_path, server, files, "[download]\nworkers = 2\n")
        proc = start("run", config)
        try:
            assert server.wait_for_requests(10, timeout=TIMEOUT)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
        assert proc.returncode == 130, stderr[-2000:]
        assert "finishing in-flight items" in stderr
        assert "pending (next run)" in stdout
        first = committed_completed(tmp_path / "state")
        assert 0 < len(first) < 150
        server.delay = 0
        result = run("run", config)
        assert result.returncode == 0, result.stderr[-2000:]
        assert set(server.counts.values()) == {1}  # graceful: nothing was fetched twice
    assert_all_verified(tmp_path / "out", files)


def test_simulated_run_needs_no_network(tmp_path: Path) -> None:
    """--simulate-downloads drives the same pipeline with the seeded transport."""
    (tmp_path / "files.ndjson").write_text(
        "".join(f'{{"url": "http://sim.invalid/{i}.bin"}}\n' for i in range(50))
    )
    config = tmp_path / "c.toml"
    config.write_text(
        '[input]\npath = "files.ndjson"\n[simulate]\nfailure_rate = 0.2\n'
        "seed = 5\n[retry]\nmax_attempts = 10\nbackoff_initial = 0.01\n"
    )
    result = run("run", config, "--simulate-downloads")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "downloads").iterdir())) == 50


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    """A config error is one clear line and exit code 2."""
    config = tmp_path / "c.toml"
    config.write_text('[input]\npath = "x.json"\n[download]\nworkers = "many"\n')
    result = run("run", config)
    assert result.returncode == 2
    assert f"{config}: download.workers must be integer" in result.stderr


def test_broken_input_exits_2_naming_the_line(tmp_path: Path) -> None:
    """A JSON array that breaks mid-way ends the run with exit 2 and the line."""
    (tmp_path / "files.json").write_text('[\n{"url": "http://127.0.0.1:9/a"},\n{"url": ]\n')
    config = tmp_path / "c.toml"
    config.write_text('[input]\npath = "files.json"\n[retry]\nmax_attempts = 1\n')
    result = run("run", config)
    assert result.returncode == 2, result.stdout
    assert "files.json: line 3: malformed JSON array" in result.stdout


@pytest.mark.parametrize("args", [("--help",), ("run", "--help"), ("demo", "--help")])
def test_help_explains_every_option(args: tuple[str, ...]) -> None:
    """--help lists the options and the exit codes."""
    result = run(*args)
    assert result.returncode == 0
    if args[0] == "run":
        for option in ("--simulate-downloads", "--debug", "--log-format", "130"):
            assert option in result.stdout
    assert "usage:" in result.stdout


def test_console_script_matches_python_m_runtime() -> None:
    """The installed `conveyor` entry point is the same CLI."""
    exe = Path(sys.executable).with_name("conveyor")
    if not exe.exists():
        pytest.skip("the project is not installed with its console script")
    result = subprocess.run(
        [exe, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
        env={**os.environ},
    )
    assert result.returncode == 0
    assert "run" in result.stdout
    assert "demo" in result.stdout


def test_a_second_signal_aborts_at_once(tmp_path: Path) -> None:
    """SIGINT twice: no waiting for the grace period, exit code 130."""
    files = make_files(20, seed=4)
    with LocalFileServer(files, delay=30) as server:
        config = write_run(
            tmp_path, server, files, "[download]\nworkers = 2\n[supervisor]\nshutdown_grace = 60\n"
        )
        proc = start("run", config)
        try:
            assert server.wait_for_requests(2, timeout=TIMEOUT)
            proc.send_signal(signal.SIGINT)
            assert proc.stderr is not None
            seen = ""
            while "finishing in-flight items" not in seen:  # one signal at a time: the OS
                line = proc.stderr.readline()  # merges two that arrive before the handler
                assert line, "the run ended without acknowledging the first signal"
                seen += line
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=20)  # far less than grace or server delay
            stderr = seen + rest
        finally:
            proc.kill()
    assert proc.returncode == 130
    assert "aborted; state is as of the last commit" in stderr


def test_demo_runs_offline_and_succeeds(tmp_path: Path) -> None:
    """The README's first quick-start command: the demo ends with exit code 0."""
    result = run("demo", "--dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "demo: OK" in result.stderr
    records = read_manifest(tmp_path / "demo" / "state" / "manifest.jsonl")
    assert len(records) == 202
    assert sum(r["status"] == "completed" for r in records) == 200
    assert sum(r["attempts"] == 2 for r in records) == 29  # the flaky ones, retried once


def test_demo_refuses_a_directory_it_did_not_create(tmp_path: Path) -> None:
    """``demo --dir`` on a directory with the user's files exits 2 and deletes nothing."""
    mine = tmp_path / "mine"
    (mine / "downloads").mkdir(parents=True)
    (mine / "downloads" / "precious.bin").write_bytes(b"keep me")
    (mine / "state").mkdir()
    (mine / "notes.txt").write_text("mine")
    result = run("demo", "--dir", mine, "--files", "5")
    assert result.returncode == 2
    assert "was not created by the demo" in result.stderr
    assert (mine / "downloads" / "precious.bin").read_bytes() == b"keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["downloads", "notes.txt", "state"]


def test_demo_runs_again_in_its_own_directory_but_not_with_foreign_files(
    tmp_path: Path,
) -> None:
    """A second demo in the demo's own directory starts afresh; a file added there by
    the user makes it refuse."""
    demo = tmp_path / "demo"
    for _ in range(2):
        result = run("demo", "--dir", demo, "--files", "10")
        assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_manifest(demo / "state" / "manifest.jsonl")) == 12  # not appended to
    (demo / "report.txt").write_text("mine")
    result = run("demo", "--dir", demo, "--files", "10")
    assert result.returncode == 2
    assert "report.txt" in result.stderr
    assert (demo / "report.txt").read_text() == "mine"


def test_run_with_worker_processes(tmp_path: Path) -> None:
    """The CLI with downloaders and processors in worker processes: 200 files verify."""
    files = make_files(200, seed=3)
    with LocalFileServer(files) as server:
        config = write_run(
            tmp_path,
            server,
            files,
            '[download]\nprocesses = 2\nworkers = 4\n[processing]\nmode = "process"\n'
            'processor = "runtime.plugins:ChecksumProcessor"\n',
        )
        result = run("run", config, "--log-format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_all_verified(tmp_path / "out", files)
    records = read_manifest(tmp_path / "state" / "manifest.jsonl")
    assert len(records) == 200
    assert all(r["result"]["sha256"] == r["sha256"] for r in records)


# -- unchecked edges -----------------------------------------------------------------------


def simple_config(tmp_path: Path, input_text: str | None = "") -> Path:
    if input_text is not None:
        (tmp_path / "files.ndjson").write_text(input_text)
    config = tmp_path / "conveyor.toml"
    config.write_text('[input]\npath = "files.ndjson"\n[output]\ndir = "out"\n'
                      '[state]\ndir = "state"\n')  # fmt: skip
    return config


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    """``--metrics-port 99999``: exit 2 with a message, no traceback."""
    result = run("run", simple_config(tmp_path), "--metrics-port", "99999")
    assert result.returncode == 2
    assert "between 1 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_kind_without_retry_failed_is_a_usage_error(tmp_path: Path) -> None:
    """``run --kind X`` alone would be silently ignored: refuse it."""
    result = run("run", simple_config(tmp_path), "--kind", "http_5xx")
    assert result.returncode == 2
    assert "--kind only works together with --retry-failed" in result.stderr
    assert not (tmp_path / "state").exists()


def test_retry_failed_with_an_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    """A typo in ``--kind`` is not a silent no-op."""
    config = simple_config(tmp_path, '{"url": "http://sim.test/a"}\n')
    assert run("run", config, "--simulate-downloads", "--quiet").returncode == 0
    result = run("retry-failed", config, "--kind", "nonsense")
    assert result.returncode == 2
    assert "unknown error kind 'nonsense'" in result.stderr
    assert "http_5xx" in result.stderr
    assert "host_down" in result.stderr


def test_run_with_a_missing_input_creates_nothing(tmp_path: Path) -> None:
    """The same one-line error as ``validate``, exit 2, and no state or output dir."""
    config = simple_config(tmp_path, None)
    result = run("run", config, "--quiet")
    validate = run("validate", config)
    assert result.returncode == validate.returncode == 2
    assert result.stderr.strip().splitlines() == validate.stderr.strip().splitlines()
    assert "files.ndjson: cannot open input" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conveyor.toml"]


def test_an_empty_input_says_so(tmp_path: Path) -> None:
    """An empty list is not an error, but the user is told nothing was there."""
    result = run("run", simple_config(tmp_path, ""), "--quiet")
    assert result.returncode == 0
    assert "has no entries; nothing to do" in result.stderr


def test_a_read_only_output_directory_fails_at_start(tmp_path: Path) -> None:
    """Unwritable output: exit 2 at once, not three failed requests per item."""
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing: mark it immutable
        locked = subprocess.run(["chattr", "+i", str(out)], capture_output=True, check=False)
        undo = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        locked = subprocess.CompletedProcess([], 0)
        undo = ["chmod", "755", str(out)]
    try:
        if locked.returncode != 0 or _writable(out):
            pytest.skip("cannot make a read-only directory on this file system")
        with LocalFileServer({"/a.bin": b"a"}) as server:
            config = simple_config(tmp_path, f'{{"url": "{server.url("/a.bin")}"}}\n')
            result = run("run", config, "--quiet")
            assert server.counts["/a.bin"] == 0
        assert result.returncode == 2
        assert f"cannot write to the output directory {out}" in result.stderr
    finally:
        subprocess.run(undo, check=False)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_status_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``status --json | head -1`` on a big report: no BrokenPipeError traceback."""
    from runtime.core.store import SQLiteStore

    store = SQLiteStore(tmp_path / "state")
    store.save_hosts({f"host-{i}.test:80": {"attempts": i, "failures": {}} for i in range(3000)})
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "status", str(tmp_path / "state"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # what `head -1` does after its line
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    assert b"Traceback" not in stderr
    assert b"BrokenPipeError" not in stderr


# -- recheck, version, runs without a config ------------------------------------------------


def test_recheck_fetches_deleted_and_changed_files_again(tmp_path: Path) -> None:
    """A plain rerun trusts the state; ``--recheck`` finds deleted or resized files and
    ``--recheck=full`` also same-size changes, and only those are downloaded again."""
    files = make_files(6, seed=11)
    with LocalFileServer(files) as server:
        config = write_run(tmp_path, server, files)
        assert run("run", config, "--quiet").returncode == 0
        out = tmp_path / "out"
        (out / "f0000.bin").unlink()
        (out / "f0001.bin").write_bytes(b"short")
        body = bytearray((out / "f0002.bin").read_bytes())
        body[0] ^= 0xFF
        (out / "f0002.bin").write_bytes(bytes(body))

        assert run("run", config, "--quiet").returncode == 0
        assert server.counts.total() == 6  # nothing noticed without --recheck
        result = run("run", "--recheck", config, "--quiet")  # the config may follow it
        assert result.returncode == 0, result.stderr
        assert "6 files checked, 2 missing or changed" in result.stderr
        assert (server.counts["/f0000.bin"], server.counts["/f0001.bin"]) == (2, 2)
        assert server.counts["/f0002.bin"] == 1  # same size: only a full recheck sees it
        result = run("run", config, "--quiet", "--recheck=full")
        assert result.returncode == 0, result.stderr
        assert "1 missing or changed" in result.stderr
        assert server.counts["/f0002.bin"] == 2
        assert server.counts.total() == 9
    assert_all_verified(out, files)


def test_recheck_with_nothing_changed_says_every_file_is_in_place(tmp_path: Path) -> None:
    """``--recheck`` on an intact output says all completed files are in place, not
    "0 missing or changed, pending again", and fetches nothing."""
    files = make_files(3, seed=12)
    with LocalFileServer(files) as server:
        config = write_run(tmp_path, server, files)
        assert run("run", config, "--quiet").returncode == 0
        sized = run("run", config, "--quiet", "--recheck")
        full = run("run", config, "--quiet", "--recheck=full")
        assert server.counts.total() == 3
    assert sized.returncode == full.returncode == 0, sized.stderr + full.stderr
    assert "recheck: all 3 completed files are in place (size checked)" in sized.stderr
    assert "recheck: all 3 completed files are in place (size and sha256 checked)" in full.stderr
    assert "missing or changed" not in sized.stderr + full.stderr


def test_a_run_that_cannot_start_gives_no_resume_hint(tmp_path: Path) -> None:
    """Without a config, a run whose output (or state) directory cannot be created says
    why and exits 2, without "state in … (run the same command again to resume)"."""
    (tmp_path / "files.ndjson").write_text('{"url": "http://127.0.0.1:9/a.bin"}\n')
    (tmp_path / "blocker").write_text("a file where a directory is needed")
    out = tmp_path / "blocker" / "out"
    own_state = run("run", "--input", tmp_path / "files.ndjson", "--output", out,
                    "--state", tmp_path / "state", "--quiet")  # fmt: skip
    beside = run("run", "--input", tmp_path / "files.ndjson", "--output", out, "--quiet")
    assert own_state.returncode == beside.returncode == 2
    assert f"cannot create the output directory {out}" in own_state.stderr
    assert f"cannot open the state in {out}.state" in beside.stderr
    for result in (own_state, beside):
        assert "conveyor: state in" not in result.stderr
        assert "resume" not in result.stderr
        assert "Traceback" not in result.stderr


def test_an_output_directory_that_cannot_be_created_names_the_setting_once(
    tmp_path: Path,
) -> None:
    """The refusal names the setting (``output.dir``) and its path once, with the reason
    alone — not the OSError's text, which repeats the path."""
    (tmp_path / "files.ndjson").write_text('{"url": "http://127.0.0.1:9/a.bin"}\n')
    (tmp_path / "blocker").write_text("a file where a directory is needed")
    out = tmp_path / "blocker" / "out"
    result = run("run", "--input", tmp_path / "files.ndjson", "--output", out,
                 "--state", tmp_path / "state", "--quiet")  # fmt: skip
    assert result.returncode == 2
    (line,) = [ln for ln in result.stderr.splitlines() if "output directory" in ln]
    assert line == f"conveyor: cannot create the output directory {out} (output.dir): " \
        "Not a directory"  # fmt: skip


def test_version_flag_and_attribute() -> None:
    """``--version`` and ``runtime.__version__`` report the installed package's version."""
    from importlib import metadata

    import runtime

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"conveyor {metadata.version('conveyor')}"
    assert runtime.__version__ == metadata.version("conveyor")


def test_run_without_a_config_file(tmp_path: Path) -> None:
    """``run --input FILE --output DIR``: downloads, keeps its state beside the output,
    resumes on a rerun, and takes ``--set``; a bad ``--set`` names itself."""
    files = make_files(4, seed=5)
    with LocalFileServer(files) as server:
        write_run(tmp_path, server, files)  # for files.ndjson
        argv = [sys.executable, "-m", "runtime", "run", "--input", "files.ndjson",
                "--output", "got", "--set", "download.workers=2", "--quiet"]  # fmt: skip
        first = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                               timeout=TIMEOUT, check=False)  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert f"state in {tmp_path / 'got.state'}" in first.stderr
        assert_all_verified(tmp_path / "got", files)
        assert (tmp_path / "got.state" / "state.sqlite3").is_file()
        again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                               timeout=TIMEOUT, check=False)  # fmt: skip
        assert again.returncode == 0
        assert server.counts.total() == 4  # resumed: nothing fetched twice
    bad = run("run", "--input", tmp_path / "files.ndjson", "--set", "download.workers=-1")
    assert bad.returncode == 2
    assert "--set download.workers must not be negative" in bad.stderr
    neither = run("run")
    assert neither.returncode == 2
    assert "give a config file or --input FILE" in neither.stderr


def test_flags_override_the_file_and_the_environment_overrides_both(tmp_path: Path) -> None:
    """Order of precedence: file < command line < environment."""
    files = make_files(2, seed=9)
    with LocalFileServer(files) as server:
        config = write_run(tmp_path, server, files)
        flagged = run("run", config, "--output", tmp_path / "by-flag", "--quiet")
        assert flagged.returncode == 0, flagged.stderr
        assert_all_verified(tmp_path / "by-flag", files)
        env = {**os.environ, "CONVEYOR_OUTPUT_DIR": "by-env", "CONVEYOR_STATE_DIR": "s2"}
        by_env = run("run", config, "--output", tmp_path / "by-flag2", "--quiet", env=env)
        assert by_env.returncode == 0, by_env.stderr
        assert_all_verified(tmp_path / "by-env", files)
        assert not (tmp_path / "by-flag2").exists()


# -- the README's examples -------------------------------------------------------------------


@contextlib.contextmanager
def serving(*args: str | Path, env: dict[str, str]) -> Iterator[str]:
    """``python -m runtime serve ARGS --port 0`` in a subprocess; yield its base url."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", *map(str, args), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    listening = threading.Event()

    def read() -> None:  # to the end, so the pipe never fills
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on " in line:
                listening.set()
        listening.set()  # the end of the output: it stopped

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert listening.wait(TIMEOUT), "serve did not start in time"
        started = [line for line in lines if "listening on " in line]
        assert started, f"serve did not start: {''.join(lines)}"
        yield started[0].split("listening on ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        reader.join(TIMEOUT)
        assert proc.stderr is not None
        proc.stderr.close()


def test_the_readme_service_example_on_loopback_needs_allow_networks(tmp_path: Path) -> None:
    """The README's ``serve`` + ``submit --follow`` against a file on 127.0.0.1: the item
    fails ``blocked``, unless the service was started with
    ``--set service.allow_networks=...`` (a list of networks separated by ``:``)."""
    token = "readme-token-0123456789"  # noqa: S105 - a test server's token
    env = {**os.environ, "CONVEYOR_SERVICE_TOKEN": token}
    outcomes = {}
    with LocalFileServer({"/a.bin": b"a" * 1000}) as files:
        listing = tmp_path / "files.ndjson"
        listing.write_text(json.dumps({"url": files.url("/a.bin")}) + "\n")
        for allow in ((), ("--set", "service.allow_networks=10.0.0.0/8:127.0.0.1/32")):
            with serving("--data-dir", tmp_path / f"data{len(allow)}", *allow, env=env) as base:
                done = run("submit", listing, "--server", base, "--follow", env=env)
                assert done.stdout, done.stderr
                job = requests.get(f"{base}/v1/jobs/{done.stdout.split()[0]}", timeout=TIMEOUT,
                                   headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
            outcomes[allow != ()] = (done.returncode, job["errors"])
        assert files.counts["/a.bin"] == 1  # refused without a request
    assert outcomes == {False: (1, {"blocked": 1}), True: (0, {})}


def test_a_run_that_cannot_start_lets_go_of_its_events_file_and_metrics_port(
    tmp_path: Path,
) -> None:
    """When the pipeline cannot start (its state cannot be opened), the events file is
    closed and the metrics port is free again: nothing of the failed run lingers."""
    import socket

    from runtime.foreground import run_pipeline
    from tests.helpers import make_config

    (tmp_path / "blocker").write_text("a file where the state directory should be")
    config = make_config(tmp_path, state={"dir": "blocker/state"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events = tmp_path / "events.ndjson"
    code = run_pipeline(config, quiet=True, events=str(events), metrics_port=port)
    assert code == 2
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # raises while the metrics server still listens
    assert events.read_text() == ""
