"""Operator experience: live display, progress log, events, status, retry-failed, validate,
metrics and the final summary."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from rich.console import Console

from messages import (
    DownloadComplete,
    HostStatus,
    NodeStatus,
    ProgressUpdate,
    RunProgress,
    WorkItem,
)
from runtime.display import LiveDisplay, ProgressLogger
from runtime.metrics import Metrics
from runtime.testing import FaultServer, capture_logs
from tests.helpers import ROOT, read_manifest, run_cli, start_cli

TIMEOUT = 120


cli = run_cli


def write_config(tmp_path: Path, entries: list[dict[str, Any]], extra: str = "") -> Path:
    with (tmp_path / "files.ndjson").open("w") as fh:
        for entry in entries:
            fh.write(json.dumps(entry) + "\n")
    config = tmp_path / "conveyor.toml"
    config.write_text(
        '[input]\npath = "files.ndjson"\n[output]\ndir = "out"\n'
        '[state]\ndir = "state"\npersist_interval = 0.05\n'
        "[retry]\nbackoff_initial = 0.0\n" + extra
    )
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the live display --------------------------------------------------------------------


def progress(**overrides: Any) -> RunProgress:
    values: dict[str, Any] = {
        "accepted": 100, "completed": 40, "failed": 8, "skipped": 2, "pending": 50,
        "downloading": 6, "processing": 1, "bytes": 50 << 20, "retries": 7, "elapsed": 25.0,
    }  # fmt: skip
    values.update(overrides)
    return RunProgress(**values)


def test_live_display_renders_totals_busy_hosts_and_large_transfers() -> None:
    display = LiveDisplay(large_threshold=10 << 20)
    display(progress())
    display(HostStatus(host="slow.example:443", active=3, attempts=90, successes=80,
                       failures=5, retries=4, bytes=1 << 20, breaker="closed"))  # fmt: skip
    display(HostStatus(host="dead.example:80", active=0, attempts=9, successes=0, failures=9,
                       retries=6, bytes=0, breaker="open", cooldown=0.0))  # fmt: skip
    display(HostStatus(host="limited.example:80", active=0, attempts=3, successes=2,
                       failures=1, retries=1, bytes=0, breaker="closed",
                       cooldown=42.0))  # fmt: skip
    display(HostStatus(host="idle.example:80", active=0, attempts=5, successes=5, failures=0,
                       retries=0, bytes=0, breaker="closed"))  # fmt: skip
    display(ProgressUpdate(worker="d-1", item_id="huge-iso", received=300 << 20, total=1 << 30))
    display(ProgressUpdate(worker="d-2", item_id="small", received=1 << 20, total=2 << 20))

    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    console.print(display.render())
    text = console.export_text()
    lines = text.splitlines()
    assert "50/100 items" in lines[0]
    assert "50.0 MiB" in lines[0]
    assert "ETA 0:25" in lines[0]  # 50 done in 25 s, 50 to go
    assert "completed 40  failed 8  skipped 2  downloading 6  processing 1  retries 7" in text
    host_lines = {line.split()[0]: line.split() for line in lines if ".example:" in line}
    assert set(host_lines) == {"slow.example:443", "dead.example:80", "limited.example:80"}
    assert host_lines["slow.example:443"] == ["slow.example:443", "3", "80", "5", "closed", "-"]
    assert host_lines["dead.example:80"][4] == "open"
    assert host_lines["limited.example:80"][-2:] == ["42", "s"]
    assert "huge-iso  300.0 MiB / 1.0 GiB" in text
    assert "small" not in text  # below the large-file threshold

    display(NodeStatus(node="n1-abc123", address="box1", in_flight=7, done=120, last_seen_s=0.4))
    display(NodeStatus(node="n2-def456", address="box2", done=30, last_seen_s=12.0, lost=True))
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    console.print(display.render())
    node_lines = {ln.split()[0]: ln.split() for ln in console.export_text().splitlines()
                  if ln.strip().startswith("n") and "-" in ln.split()[0]}  # fmt: skip
    assert node_lines["n1-abc123"] == ["n1-abc123", "box1", "7", "120", "0.4", "s", "ago"]
    assert node_lines["n2-def456"][-1] == "lost"

    item = WorkItem(id="huge-iso", url="http://x/huge.iso", name="huge.iso")
    display(DownloadComplete(worker="d-1", item=item, path="/o/huge.iso", size=1, sha256="a"))
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    console.print(display.render())
    assert "huge-iso" not in console.export_text()


@pytest.mark.usefixtures("debug_logs")
def test_progress_logger_logs_every_few_seconds_of_run_time() -> None:
    logger = ProgressLogger(every=5.0)
    with capture_logs() as logs:
        for elapsed in (1.0, 4.9, 5.0, 7.0, 9.9, 10.0, 10.5):
            logger(progress(elapsed=elapsed))
    lines = [e for e in logs if e.get("event") == "progress"]
    assert len(lines) == 2
    assert lines[0]["done"] == 50
    assert lines[0]["bytes_per_s"] == (50 << 20) // 5


# -- the final summary, events and metrics -------------------------------------------------


def test_summary_tables_and_summary_json(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin")} for i in range(5)]
            + [{"id": f"gone{i}", "url": server.url(f"/status/404/g{i}.bin")} for i in range(3)]
            + [{"id": "bad", "url": "ftp://example.invalid/x"}],
        )
        result = cli("run", config, "--quiet")
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["http_4xx"][0] == "3"
    assert rows["http_4xx"][1].endswith("/status/404/g0.bin")  # an example url
    assert rows["invalid_entry"][0] == "1"
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["items"] == {"completed": 5, "failed": 4, "skipped": 0, "pending": 0}
    assert summary["this_run"]["exit_code"] == 1
    assert {k["error_kind"]: k["count"] for k in summary["error_kinds"]} == {
        "http_4xx": 3,
        "invalid_entry": 1,
    }
    assert next(iter(summary["hosts"].values()))["attempts"] == 8


def test_summary_shows_the_first_invalid_entries_with_lines_and_reasons(tmp_path: Path) -> None:
    """``invalid_entry 7`` comes with the five lowest lines and their reasons, as
    ``validate`` words them, in the summary, in summary.json and in ``status``."""
    lines = [
        '{"id": "a", "url": "http://sim.test/a.bin"}',
        "{not json",
        '{"url": "ftp://sim.test/b.bin"}',
        '{"id": "a", "url": "http://sim.test/c.bin"}',  # a duplicate, found at ingest
        '{"url": "http://sim.test/d.bin", "name": "../d.bin"}',
        '{"url": "http://sim.test/e.bin"}',
        '{"url": "gopher://sim.test/f"}',
        '{"url": "http://sim.test/g.bin", "name": "/g.bin"}',
        '{"url": "ftp://sim.test/h.bin"}',
    ]
    (tmp_path / "files.ndjson").write_text("\n".join(lines) + "\n")
    config = tmp_path / "conveyor.toml"
    config.write_text('[input]\npath = "files.ndjson"\n[output]\ndir = "out"\n'
                      '[state]\ndir = "state"\n')  # fmt: skip
    result = cli("run", config, "--quiet", "--simulate-downloads")
    assert result.returncode == 1, result.stderr[-2000:]
    validated = [
        line.strip()
        for line in cli("validate", config).stdout.splitlines()[1:]
        if line.startswith("  ")  # (not the closing "downloads: …" line)
    ]
    assert len(validated) == 7
    shown = result.stdout.split("5 of 7 invalid entries (`validate` lists all):\n")[1]
    assert [line.strip() for line in shown.splitlines()[:6]] == [*validated[:5], ""]
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert [e["line"] for e in summary["invalid_entries"]] == [2, 3, 4, 5, 7]
    assert summary["invalid_entries"][1] == {
        "line": 3,
        "url": "ftp://sim.test/b.bin",
        "error": "line 3: url scheme 'ftp' is not http or https",
    }
    status = [line.strip() for line in cli("status", config).stdout.splitlines()]
    assert validated[4] in status  # line 7


def test_events_file_is_numbered_ndjson_of_typed_messages(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path, [{"id": f"f{i}", "url": server.url(f"/ok/f{i}.bin")} for i in range(10)]
        )
        result = cli("run", config, "--quiet", "--events", tmp_path / "events.ndjson")
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "events.ndjson").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = {e["type"] for e in events}
    assert {"download_started", "download_complete", "outcome", "run_progress",
            "host_status", "run_finished"} <= kinds  # fmt: skip
    assert events[-1]["type"] == "run_finished"
    assert events[-1]["completed"] == 10
    done = [e for e in events if e["type"] == "download_complete"]
    assert sorted(e["item"]["id"] for e in done) == [f"f{i}" for i in range(10)]


def test_an_events_file_goes_on_after_a_crash_with_every_outcome_once(tmp_path: Path) -> None:
    """A rerun appends to ``--events FILE``: numbering goes on, a line cut short by a crash
    is dropped, and outcomes committed before the crash but missing from the file (the
    crash fell between the commit and the write) are written first — every item has
    exactly one ``outcome`` line."""
    events = tmp_path / "events.ndjson"
    with FaultServer() as server:
        config = write_config(
            tmp_path, [{"id": f"f{i}", "url": server.url(f"/ok/f{i}.bin")} for i in range(30)]
        )
        first = cli("run", config, "--quiet", "--events", events)
        assert first.returncode == 0, first.stderr[-2000:]
        # What a kill -9 between a commit and the file's write leaves behind: the last
        # outcomes missing, and half a line.
        lines = events.read_text().splitlines(keepends=True)
        cut = [i for i, line in enumerate(lines) if '"type": "outcome"' in line][-5]
        events.write_text("".join(lines[:cut]) + lines[cut][:25])
        second = cli("run", config, "--quiet", "--events", events)
    assert second.returncode == 0, second.stderr[-2000:]
    parsed = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["seq"] for e in parsed] == list(range(1, len(parsed) + 1))
    outcomes = Counter(e["id"] for e in parsed if e["type"] == "outcome")
    assert outcomes == Counter(f"f{i}" for i in range(30))
    numbers = [e["done_seq"] for e in parsed if e["type"] == "outcome"]
    assert sorted(numbers) == list(range(1, 31))
    assert parsed[-1]["type"] == "run_finished"


def test_events_to_stdout_keep_stdout_pure(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(tmp_path, [{"id": "a", "url": server.url("/ok/a.bin")}])
        result = cli("run", config, "--quiet", "--events", "-")
    assert result.returncode == 0, result.stderr[-2000:]
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types[-1] == "run_finished"
    assert "conveyor run: done" in result.stderr


def test_metrics_object_serves_prometheus_text() -> None:
    metrics = Metrics()
    metrics(progress())
    metrics(HostStatus(host="h:80", active=2, attempts=9, successes=3, failures=6,
                       retries=5, bytes=10, breaker="open"))  # fmt: skip
    port = free_port()
    metrics.serve(port)
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        metrics.stop()
    assert 'conveyor_items{status="completed"} 40.0' in text
    assert 'conveyor_queue_depth{stage="downloading"} 6.0' in text
    assert 'conveyor_host_breaker_state{host="h:80"} 2.0' in text
    assert "conveyor_downloaded_bytes 5.24288e+07" in text


def test_metrics_port_serves_during_a_run(tmp_path: Path) -> None:
    port = free_port()
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [{"id": "slow", "url": server.url("/drip/slow.bin?size=40000&rate=2000")}],
            "[download]\nmin_speed = 1\n",
        )
        proc = start_cli("run", config, "--quiet", "--metrics-port", str(port))
        try:
            assert server.wait_for("/drip/slow.bin", 1, TIMEOUT)
            text = ""
            deadline = time.monotonic() + TIMEOUT
            want = 'conveyor_queue_depth{stage="downloading"} 1.0'
            while want not in text and time.monotonic() < deadline:
                try:
                    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except requests.ConnectionError:
                    threading.Event().wait(0.05)
            assert 'conveyor_queue_depth{stage="downloading"} 1.0' in text
            assert 'conveyor_host_active{host="127.0.0.1:' in text
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=TIMEOUT)


# -- status, retry-failed, validate ----------------------------------------------------------


def test_status_of_a_finished_and_of_a_live_run(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [
                {"id": "ok", "url": server.url("/ok/ok.bin")},
                {"id": "gone", "url": server.url("/status/404/gone.bin")},
            ],
        )
        assert cli("run", config, "--quiet").returncode == 1
        for target in (config, tmp_path / "state"):
            result = cli("status", target)
            assert result.returncode == 0, result.stderr
            assert "finished: done" in result.stdout
            rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
                    if line.strip()}  # fmt: skip
            assert rows["completed"] == ["1"]
            assert rows["failed"] == ["1"]
            assert rows["http_4xx"][1].endswith("/status/404/gone.bin")
            assert "retry-failed" in result.stdout
        report = json.loads(cli("status", config, "--json").stdout)
        assert report["items"]["failed"] == 1

        live_dir = tmp_path / "live"
        live_dir.mkdir()
        live = write_config(
            live_dir,
            [{"id": "slow", "url": server.url("/drip/slow.bin?size=100000&rate=1000")}],
            "[download]\nmin_speed = 1\n",
        )
        proc = start_cli("run", live, "--quiet")
        try:
            assert server.wait_for("/drip/slow.bin", 1, TIMEOUT)
            result = cli("status", live)
            assert "running (pid" in result.stdout, result.stdout + result.stderr
            assert [ln for ln in result.stdout.splitlines() if ln.split()[:1] == ["pending"]]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=TIMEOUT)
        assert "finished: interrupted" in cli("status", live).stdout


def test_status_suggests_retry_failed_only_for_failures_it_would_retry(tmp_path: Path) -> None:
    """Rejected entries (``invalid_entry``) stay failed under ``retry-failed``: a state
    whose only failures are those gets no hint to run it; one more failure of another
    kind brings the hint back."""
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [{"id": "ok", "url": server.url("/ok/ok.bin")},
             {"id": "bad", "url": "ftp://example.invalid/x"}],
        )  # fmt: skip
        assert cli("run", config, "--quiet").returncode == 1
        only_invalid = cli("status", config)
        write_config(
            tmp_path,
            [{"id": "ok", "url": server.url("/ok/ok.bin")},
             {"id": "bad", "url": "ftp://example.invalid/x"},
             {"id": "gone", "url": server.url("/status/404/gone.bin")}],
        )  # fmt: skip
        assert cli("run", config, "--quiet").returncode == 1
        also_404 = cli("status", config)
    assert only_invalid.returncode == also_404.returncode == 0
    assert "invalid_entry" in only_invalid.stdout
    assert "retry-failed" not in only_invalid.stdout
    assert "http_4xx" in also_404.stdout
    assert "retry-failed" in also_404.stdout


def test_status_of_a_directory_without_state_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("status", tmp_path)
    assert result.returncode == 2
    assert "no conveyor state" in result.stderr


def test_retry_failed_puts_items_back_and_run_completes_them(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [
                {"id": "flaky", "url": server.url("/fail-first/1/503/flaky.bin")},
                {"id": "also", "url": server.url("/fail-first/1/502/also.bin")},
                {"id": "bad", "url": "ftp://example.invalid/x"},
            ],
            "max_attempts = 1\n",  # continues the [retry] section
        )
        assert cli("run", config, "--quiet").returncode == 1
        result = cli("retry-failed", config, "--kind", "rate_limited")
        assert result.returncode == 0
        assert "0 items with error kind rate_limited" in result.stderr
        result = cli("retry-failed", config, "--kind", "http_5xx")
        assert result.returncode == 0
        assert "2 items with error kind http_5xx are pending again" in result.stderr
        result = cli("run", config, "--quiet")
        assert result.returncode == 1  # the ftp entry stays failed
    records = {r["id"]: r for r in read_manifest(tmp_path / "state" / "manifest.jsonl")}
    assert records["flaky"]["status"] == "completed"
    assert records["also"]["status"] == "completed"
    assert records["line:3"]["error_kind"] == "invalid_entry"  # rejected entries keep their line
    assert server.counts["/fail-first/1/503/flaky.bin"] == 2


def test_run_retry_failed_flag(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [{"id": "flaky", "url": server.url("/fail-first/1/503/flaky.bin")}],
            "max_attempts = 1\n",  # continues the [retry] section
        )
        assert cli("run", config, "--quiet").returncode == 1
        result = cli("run", config, "--quiet", "--retry-failed")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 item that failed is pending again" in result.stderr


def test_validate_lists_bad_entries_and_downloads_nothing(tmp_path: Path) -> None:
    (tmp_path / "files.ndjson").write_text(
        '{"url": "http://a.test/1.bin"}\n'
        "{not json\n"
        '{"url": "ftp://a.test/2.bin"}\n'
        '{"id": "x", "url": "http://a.test/3.bin"}\n'
        '{"id": "x", "url": "http://a.test/4.bin"}\n'
        '{"url": "http://a.test/5.bin", "name": "same.bin"}\n'
        '{"url": "http://a.test/6.bin", "name": "same.bin"}\n'
        '{"url": "http://a.test/7.bin", "name": "../escape"}\n'
        '{"url": "http://a.test/8.bin", "name": "same.bin/inner"}\n'
    )
    config = tmp_path / "conveyor.toml"
    config.write_text('[input]\npath = "files.ndjson"\n[output]\ndir = "out"\n'
                      '[state]\ndir = "state"\n')  # fmt: skip
    result = cli("validate", config)
    assert result.returncode == 1, result.stderr
    assert "9 entries, 3 usable, 6 bad" in result.stdout
    *bad, settings = result.stdout.splitlines()[1:]
    bad_lines = [line.split(":")[0].strip() for line in bad]
    assert bad_lines == ["line 2", "line 3", "line 5", "line 7", "line 8", "line 9"]
    assert settings.startswith("downloads: 256 at once (1 downloader of 256, engine ")
    assert "whose file 'same.bin' is where a directory is needed" in result.stdout
    assert "duplicate id 'x'" in result.stdout
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "state").exists()

    (tmp_path / "files.ndjson").write_text('{"url": "http://a.test/1.bin"}\n')
    clean = cli("validate", config)
    assert clean.returncode == 0
    assert "1 entry, 1 usable, 0 bad" in clean.stdout

    (tmp_path / "files.ndjson").unlink()
    missing = cli("validate", config)
    assert missing.returncode == 2
    assert "files.ndjson" in missing.stderr


def run_in_pty(*args: str | Path) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return (code, output)."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "100", "LINES": "30"},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=TIMEOUT)
    return code, b"".join(chunks).decode(errors="replace")


def test_live_display_on_a_terminal_and_quiet(tmp_path: Path) -> None:
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [
                {"id": f"f{i}", "url": server.url(f"/drip/f{i}.bin?size=4000&rate=1000")}
                for i in range(5)
            ]
            + [{"id": "gone", "url": server.url("/status/404/gone.bin")}],
            "[download]\nmin_speed = 1\n",
        )
        code, shown = run_in_pty("run", config)
        assert code == 1, shown[-2000:]
        assert "6/6 items" in shown  # the display's last frame
        assert "download failed" in shown  # log lines still reach the terminal
        assert "conveyor run: done" in shown

        (tmp_path / "state").rename(tmp_path / "state-1")
        (tmp_path / "out").rename(tmp_path / "out-1")
        code, quiet = run_in_pty("run", config, "--quiet")
    assert code == 1, quiet[-2000:]
    assert "items" not in quiet.split("conveyor run:")[0]
    assert "conveyor run: done" in quiet


def test_status_shows_a_paused_host_with_its_cause() -> None:
    """``status`` names a host paused by Retry-After, how long is left and why."""
    import io

    from runtime.report import print_cooldowns

    out = io.StringIO()
    hosts = {
        "a:80": {"cooldown_until": 1_000.0 + 25, "cooldown_reason": "429 Retry-After: 25 s"},
        "b:80": {"cooldown_until": 900.0, "cooldown_reason": "429 Retry-After: 5 s"},
    }
    print_cooldowns(hosts, out, now=1_000.0)
    text = out.getvalue()
    assert "a:80 for 25 s more" in text
    assert "429 Retry-After: 25 s" in text
    assert "b:80" not in text  # its pause is over


def test_a_second_run_on_a_locked_state_exits_2_naming_the_pid(tmp_path: Path) -> None:
    """Two real processes: while one runs, a second ``run`` and ``retry-failed`` on the same
    state exit 2 naming the holder's pid, ``status`` still reads it; after ``kill -9`` the
    kernel has dropped the lock and nothing stale is left."""
    with FaultServer() as server:
        config = write_config(
            tmp_path,
            [{"id": "slow", "url": server.url("/drip/slow.bin?size=10000000&rate=1000")}],
            "[download]\nmin_speed = 1\n",
        )
        first = start_cli("run", config, "--quiet")
        try:
            assert server.wait_for("/drip/slow.bin", 1, TIMEOUT)
            for args in (("run", config, "--quiet"), ("retry-failed", config)):
                second = cli(*args)
                assert second.returncode == 2, second.stdout + second.stderr
                assert f"pid {first.pid}" in second.stderr
                assert "in use by another run" in second.stderr
            status = cli("status", config)
            assert status.returncode == 0
            assert f"running (pid {first.pid})" in status.stdout
            assert server.counts["/drip/slow.bin"] == 1  # the second run requested nothing
        finally:
            first.kill()
            first.communicate(timeout=TIMEOUT)
        after = cli("retry-failed", config)
        assert after.returncode == 0, after.stderr


def test_plugins_are_found_next_to_the_config_and_in_plugin_path(tmp_path: Path) -> None:
    """Run from another directory: a processor module beside the config and a
    post-processor in ``processing.plugin_path`` load; ``validate`` catches a typo."""
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "shout_plugin.py").write_text(
        "from runtime import BaseProcessor\n\n"
        "class Shout(BaseProcessor):\n"
        "    def process(self, downloaded):\n"
        "        return {'shout': downloaded.name.upper()}\n"
    )
    (project / "lib" / "tally_plugin.py").write_text(
        "import json\nfrom runtime import BasePostProcessor\n\n"
        "class Tally(BasePostProcessor):\n"
        "    def __init__(self, out):\n        self.out, self.lines = out, []\n"
        "    def post_process(self, outcome):\n"
        "        self.lines.append(outcome.result.get('shout', outcome.error_kind))\n"
        "    def close(self):\n"
        "        open(self.out, 'w').write(json.dumps(sorted(self.lines)))\n"
    )
    config = write_config(
        project,
        [{"id": "a", "url": "http://sim.test/a.bin"}, {"id": "b", "url": "http://sim.test/b"}],
        '[processing]\nprocessor = "shout_plugin:Shout"\n'
        'post_processor = "tally_plugin:Tally"\nplugin_path = ["lib"]\n'
        f"post_processor_options = {{ out = {json.dumps(str(project / 'tally.json'))} }}\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checked = subprocess.run([sys.executable, "-m", "runtime", "validate", str(config)],
                             cwd=elsewhere, capture_output=True, text=True, timeout=TIMEOUT,
                             check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "run", str(config), "--simulate-downloads", "--quiet"],
        cwd=elsewhere, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((project / "tally.json").read_text()) == ["A.BIN", "B"]

    config.write_text(config.read_text().replace("shout_plugin:Shout", "shout_plugin:Shuot"))
    typo = subprocess.run([sys.executable, "-m", "runtime", "validate", str(config)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)  # fmt: skip
    assert typo.returncode == 2
    assert "processing.processor" in typo.stderr
    assert "'Shuot'" in typo.stderr


def test_an_events_files_marks_are_read_from_its_end_across_blocks(tmp_path: Path) -> None:
    """The last seq and the last outcome's done_seq are found however far back that
    outcome is (here more than a read block before the end), and a partial last line is
    cut off."""
    from runtime.events import _last_marks

    path = tmp_path / "events.ndjson"
    filler = json.dumps({"type": "progress_update", "pad": "x" * 200})
    with path.open("w") as fh:
        fh.write(json.dumps({"seq": 1, "type": "outcome", "done_seq": 7}) + "\n")
        for seq in range(2, 8002):  # about 1.7 MB after the outcome
            fh.write(filler.replace("{", f'{{"seq": {seq}, ', 1) + "\n")
        fh.write('{"seq": 8002, "type": "outc')
    assert _last_marks(path) == (8001, 7, True)
    assert path.read_text().endswith("\n")
    assert _last_marks(tmp_path / "none.ndjson") == (0, 0, False)
