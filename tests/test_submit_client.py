"""``python -m runtime submit --follow``: what it shows while a job runs and when it ends."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from runtime.pipeline import EXIT_CODES
from runtime.service.client import ProgressLines, print_job_summary, submit_file
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


def _read_until(stream: IO[bytes], wanted: str) -> str:
    """What ``stream`` (a pipe) says until ``wanted`` appears; read unbuffered, so a
    line already read is never held back in a buffer while waiting for more."""
    fd, seen = stream.fileno(), ""
    deadline = time.monotonic() + TIMEOUT
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536).decode() if ready else ""
        if not chunk:
            raise AssertionError(f"{wanted!r} never came; got {seen!r}")
        seen += chunk
    return seen


@pytest.mark.slow
def test_ctrl_c_on_submit_follow_leaves_the_job_running_and_says_where_it_is(
    service: Service, tmp_path: Path
) -> None:
    """SIGINT while following: no traceback, one line naming the job and where to look at
    it, exit 130 — and the job goes on running on the server."""
    files = FileServer(free=0)  # every request waits: the job stays running
    try:
        listing = tmp_path / "list.ndjson"
        listing.write_text("".join(json.dumps(i) + "\n" for i in files.items(2, "c")))
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "submit", str(listing), "--server", service.base,
             "--token", TOKEN, "--follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        job_id = _read_until(proc.stdout, "\n").split()[0]
        _read_until(proc.stderr, f"job {job_id} running\n")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        job = service.call("GET", f"/v1/jobs/{job_id}").json()
        service.call("POST", f"/v1/jobs/{job_id}/cancel")
    finally:
        files.close()
    assert proc.returncode == EXIT_CODES["interrupted"], err
    assert job["status"] == "running"
    text = err.decode()
    assert "Traceback" not in text
    assert "KeyboardInterrupt" not in text
    url = f"{service.base}/v1/jobs/{job_id}"
    assert [line for line in text.splitlines() if not line.startswith(f"job {job_id} ")] == [
        f"conveyor: stopped following; job {job_id} keeps running on the server: "
        f"GET {url} shows it, {url}/events streams its progress"
    ]  # besides progress lines that came before the signal


@pytest.mark.slow
def test_submit_names_bad_entries_by_their_line_in_the_file_as_validate_does(
    service: Service, tmp_path: Path
) -> None:
    """A blank line and a JSON array's multi-line elements make an item's position in the
    submitted list differ from its line: each rejected entry is named by its line in the
    file, with the reason, as ``validate`` names it."""
    ndjson = tmp_path / "list.ndjson"
    ndjson.write_text(
        '{"url": "http://127.0.0.1:9/a.bin"}\n'
        "\n"
        '{"url": "ftp://example.org/b.bin"}\n'
        '{"url": "http://127.0.0.1:9/c.bin", "name": "../c.bin"}\n'
    )
    array = tmp_path / "list.json"
    array.write_text(
        '[\n  {"url": "http://127.0.0.1:9/d.bin"},\n'
        '  {\n    "url": "ftp://example.org/e.bin"\n  }\n]\n'
    )
    for listing, lines in ((ndjson, [3, 4]), (array, [3])):
        config = tmp_path / f"{listing.suffix[1:]}.toml"
        config.write_text(f'[input]\npath = "{listing.name}"\n')
        validate = subprocess.run(
            [sys.executable, "-m", "runtime", "validate", str(config)],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        reasons = [ln.strip() for ln in validate.stdout.splitlines() if ln.startswith("  line")]
        assert [int(r.split()[1].rstrip(":")) for r in reasons] == lines, validate.stdout
        submit = subprocess.run(
            [sys.executable, "-m", "runtime", "submit", str(listing), "--server", service.base,
             "--token", TOKEN],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert submit.returncode == EXIT_CODES["ok"], submit.stderr
        assert submit.stderr.splitlines() == [f"conveyor: {listing}: {r}" for r in reasons]
        service.call("POST", f"/v1/jobs/{submit.stdout.split()[0]}/cancel")


def test_submit_names_a_line_that_is_not_json_once(tmp_path: Path) -> None:
    """A line that is not JSON stops the submit before anything is sent, naming the line
    once (the reader's reason already starts with it)."""
    listing = tmp_path / "list.ndjson"
    listing.write_text('{"url": "http://127.0.0.1:9/a.bin"}\n{not json\n')
    err = io.StringIO()
    code = submit_file(str(listing), server="http://127.0.0.1:9", out=io.StringIO(), err=err)
    assert code == EXIT_CODES["bad_input"]
    assert err.getvalue() == (
        f"conveyor: {listing}: line 2: not valid JSON (Expecting property name enclosed in "
        "double quotes)\n"
    )
