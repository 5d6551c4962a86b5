"""``python -m runtime submit --follow``: what it shows while a job runs and when it ends."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.pipeline import EXIT_CODES
from runtime.service.client import ProgressLines, print_job_summary
from runtime.testing import FakeClock
from tests.service_helpers import TIMEOUT, TOKEN, FileServer, Service, write_config


def _progress(done: int, failed: int = 0) -> dict[str, Any]:
    return {"completed": done - failed, "failed": failed, "skipped": 0, "total": 100,
            "percent": float(done), "bytes": done * 2048, "bytes_per_s": 4096, "eta_s": 75.0,
            "downloading": 2, "retries": 0}  # fmt: skip


def test_progress_lines_come_every_few_seconds_of_the_clock() -> None:
    """Not a terminal: every status change at once, the first progress at once, then
    one progress line per ``every`` seconds of the injected clock, however many events."""
    clock = FakeClock(autojump=False)
    out = io.StringIO()
    lines = ProgressLines("j1", out, clock, every=5.0)
    lines.event("status", {"status": "running", "previous": "queued"})
    for second in range(12):  # a progress event every second
        lines.event("progress", _progress(second + 1, failed=second // 4))
        clock.advance(1.0)
    lines.event("status", {"status": "completed", "previous": "running"})
    assert out.getvalue().splitlines() == [
        "job j1 running",
        "job j1 progress: 1/100 done (1.0 %), 0 failed, 2.0 KiB at 4.0 KiB/s, ETA 1:15",
        "job j1 progress: 6/100 done (6.0 %), 1 failed, 12.0 KiB at 4.0 KiB/s, ETA 1:15",
        "job j1 progress: 11/100 done (11.0 %), 2 failed, 22.0 KiB at 4.0 KiB/s, ETA 1:15",
        "job j1 completed",
    ]


def test_the_summary_lists_failure_kinds_with_an_example_and_the_hosts() -> None:
    """The end of ``--follow`` reads like ``run``'s: counts, failed items by kind (most
    first) with an example url and reason each, and the per-host table."""
    job = {
        "job_id": "j1",
        "status": "completed",
        "error": None,
        "progress": {"completed": 0, "failed": 50, "skipped": 0, "total": 50},
        "errors": {"connection": 20, "blocked": 30},
        "hosts": {"10.0.0.1:80": {"attempts": 0, "successes": 0, "failures": {"blocked": 30}}},
    }
    failed = [
        {"url": "http://10.0.0.1/a", "error_kind": "blocked", "error": "refused to connect: x"},
        {"url": "http://10.0.0.1/b", "error_kind": "blocked", "error": "refused again"},
        {"url": "http://h:1/c", "error_kind": "connection", "error": "curl error 7: refused"},
    ]
    out = io.StringIO()
    print_job_summary(job, failed, out)
    text = out.getvalue()
    assert text.startswith("job j1 completed: 0 completed, 50 failed, 0 skipped of 50\n")
    rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert ["blocked", "30", "http://10.0.0.1/a"] in rows
    assert ["connection", "20", "http://h:1/c"] in rows
    assert rows.index(["blocked", "30", "http://10.0.0.1/a"]) < rows.index(
        ["connection", "20", "http://h:1/c"]
    )
    assert "    blocked: refused to connect: x\n" in text
    assert "    connection: curl error 7: refused\n" in text
    assert "10.0.0.1:80" in text
    assert "blocked 30" in text  # the host's failures


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    server = Service(write_config(tmp_path / "service"))
    try:
        yield server
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_submit_follow_not_on_a_terminal_shows_progress_and_why_items_failed(
    service: Service, tmp_path: Path
) -> None:
    """Piped (not a terminal): progress and status lines on stderr while the job runs;
    at the end the failure kinds with an example url and reason, and the hosts."""
    files = FileServer()
    try:
        items = [*files.items(3, "s"),
                 {"url": "http://10.0.0.1/a", "id": "b1"},
                 {"url": "http://10.0.0.1/b", "id": "b2"},
                 {"url": f"{files.base}/to?ftp://example.org/x", "id": "r1"}]  # fmt: skip
        listing = tmp_path / "list.ndjson"
        listing.write_text("".join(json.dumps(i) + "\n" for i in items))
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "submit", str(listing), "--server", service.base,
             "--token", TOKEN, "--follow"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        files.close()
    assert done.returncode == EXIT_CODES["failed_items"], done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id} running" in done.stderr.splitlines()
    assert f"job {job_id} progress: " in done.stderr
    assert f"job {job_id} completed" in done.stderr.splitlines()
    out = done.stdout
    assert f"job {job_id} completed: 3 completed, 3 failed, 0 skipped of 6" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert ["blocked", "2", "http://10.0.0.1/a"] in rows
    assert ["redirect", "1", f"{files.base}/to?ftp://example.org/x"] in rows
    assert (
        "    blocked: refused to connect: 10.0.0.1 is a private address "
        "(allow it with service.allow_networks)"
    ) in out.splitlines()
    assert files.base.removeprefix("http://") in out  # the hosts table
