"""``python -m runtime submit``: send a list of files to a job service, follow the job."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import requests

from messages import HostStatus, RunFinished, RunProgress
from runtime.core.clock import Clock, SystemClock
from runtime.core.errors import EXIT_CODES, InputError
from runtime.core.inputs import iter_raw_entries
from runtime.display import LiveDisplay
from runtime.report import human_bytes, print_error_kinds, print_hosts

__all__ = ["ProgressLines", "print_job_summary", "read_sse", "submit_file"]

PROGRESS_EVERY = 5.0
"""Seconds between two progress lines when the output is not a terminal."""
EXAMPLES_PAGE = 1000
"""Failed items read at a time for an example of each error kind in the summary."""
EXAMPLES_PAGES = 20
"""Pages of failed items read at most for those examples (a kind first seen later has none)."""
ENDED = ("completed", "failed", "cancelled")


def read_sse(response: requests.Response) -> Iterator[tuple[str | None, str, str]]:
    """``(id, event, data)`` of each event of a Server-Sent Events response."""
    event_id: str | None = None
    kind, data = "message", list[str]()
    for raw in response.iter_lines(decode_unicode=True):
        line = raw if isinstance(raw, str) else raw.decode()
        if not line:
            if data:
                yield event_id, kind, "\n".join(data)
            kind, data = "message", list[str]()
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)


def submit_file(
    path: str,
    *,
    server: str,
    token: str = "",
    follow: bool = False,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    """Submit ``path``'s entries as one job; return an exit code like ``run``'s.

    With ``follow``: ``run``'s live display on a terminal (``err``), else a progress line
    on ``err`` every ``PROGRESS_EVERY`` seconds of ``clock``; at the end the job's counts,
    its failures by kind and its hosts on ``out``. Ctrl-C while following stops only
    the following (exit 130); the job keeps running on the server.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        items, line_of = _read_list(path)
    except InputError as exc:
        print(f"conveyor: {exc}", file=err)
        return EXIT_CODES["bad_input"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    body: dict[str, Any] = {"items": items}
    if callback_url:
        body["callback_url"] = callback_url
    base = server.rstrip("/")
    try:
        answer = requests.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=60)
    except requests.RequestException as exc:
        print(f"conveyor: cannot reach {base}: {exc}", file=err)
        return EXIT_CODES["run_error"]
    if answer.status_code != 202:
        print(
            f"conveyor: the server refused the job ({answer.status_code}): {answer.text}",
            file=err,
        )
        return EXIT_CODES["bad_input"]
    job = answer.json()
    print(job["job_id"], file=out, flush=True)
    for bad in job["invalid_items"]:
        index = bad["index"]
        where = f"line {line_of[index]}" if 0 <= index < len(line_of) else f"item {index}"
        print(f"conveyor: {path}: {where}: {bad['error']}", file=err)
    if not follow:
        return EXIT_CODES["ok"]
    lines = None if err.isatty() else ProgressLines(job["job_id"], err, clock or SystemClock())
    try:
        return _follow(base, job["job_id"], headers, (out, err), lines)
    except KeyboardInterrupt:  # Ctrl-C stops the following, not the job
        url = f"{base}/v1/jobs/{job['job_id']}"
        print(
            f"conveyor: stopped following; job {job['job_id']} keeps running on the server: "
            f"GET {url} shows it, {url}/events streams its progress",
            file=err,
            flush=True,
        )
        return EXIT_CODES["interrupted"]


def _read_list(path: str) -> tuple[list[Any], list[int]]:
    """The entries of the list at ``path``, and the line each starts on (how ``validate``
    names an entry; the service knows it only by its index in the list).

    Raises:
        InputError: the list cannot be read, or a line of it is not JSON.
    """
    items: list[Any] = []
    line_of: list[int] = []
    for line, entry, error in iter_raw_entries(Path(path)):
        if error is not None:
            raise InputError(f"{path}: {error}")  # the reason starts with its line
        items.append(entry)
        line_of.append(line)
    return items, line_of


def _follow(
    base: str,
    job_id: str,
    headers: dict[str, str],
    streams: tuple[TextIO, TextIO],
    lines: ProgressLines | None,
) -> int:
    """Show the job's progress until it ends (``lines``, or ``run``'s live display)."""
    out, err = streams
    display = LiveDisplay() if lines is None else None
    if display is not None:
        display.start()
    last = 0
    status = "queued"
    try:
        while status not in ENDED:
            stream_headers = {**headers, "Last-Event-ID": str(last)}
            try:
                with requests.get(
                    f"{base}/v1/jobs/{job_id}/events",
                    headers=stream_headers,
                    stream=True,
                    timeout=(10, 60),
                ) as response:
                    response.raise_for_status()
                    for event_id, kind, data in read_sse(response):
                        last = int(event_id) if event_id else last
                        event = json.loads(data)
                        if lines is not None:
                            lines.event(kind, event)
                        elif display is not None:
                            _show(display, kind, event)
                        status = str(event["status"]) if kind == "status" else status
            except requests.RequestException as exc:
                print(f"conveyor: the event stream broke ({exc}); reconnecting", file=err)
            if status not in ENDED:
                status = requests.get(
                    f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30
                ).json()["status"]
    finally:
        if display is not None:
            display.stop()
    final = requests.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
    failed = _failure_examples(base, job_id, headers, set(final["errors"]))
    print_job_summary(final, failed, out)
    p = final["progress"]
    if final["status"] != "completed":
        return EXIT_CODES["interrupted"] if final["status"] == "cancelled" else 3
    return EXIT_CODES["ok"] if p["completed"] == p["total"] else EXIT_CODES["failed_items"]


def _failure_examples(
    base: str, job_id: str, headers: dict[str, str], kinds: set[str]
) -> list[dict[str, Any]]:
    """The job's first failed item of each error kind in ``kinds`` (examples for the
    summary), reading its failed items a page at a time until every kind has one, the
    items end, or ``EXAMPLES_PAGES`` pages were read."""
    examples: dict[str, dict[str, Any]] = {}
    cursor: int | None = 0
    for _ in range(EXAMPLES_PAGES):
        if cursor is None or kinds <= examples.keys():
            break
        try:
            answer = requests.get(
                f"{base}/v1/jobs/{job_id}/items",
                params={"status": "failed", "limit": str(EXAMPLES_PAGE), "cursor": str(cursor)},
                headers=headers,
                timeout=30,
            )
            answer.raise_for_status()
            page = answer.json()
        except (requests.RequestException, ValueError):
            break  # the summary shows the counts, with the examples found so far
        for item in page["items"]:
            examples.setdefault(str(item.get("error_kind")), item)
        cursor = page["next_cursor"]
    return list(examples.values())


def print_job_summary(job: dict[str, Any], failed: list[dict[str, Any]], out: TextIO) -> None:
    """The end of ``submit --follow``, as ``run``'s summary: the counts, failures by kind
    (each with an example url and reason, from ``failed``), the hosts.

    Args:
        job: ``GET /v1/jobs/{id}``.
        failed: some of the job's failed items (``GET /v1/jobs/{id}/items?status=failed``).
        out: where to print.
    """
    p = job["progress"]
    print(
        f"job {job['job_id']} {job['status']}: {p['completed']} completed, {p['failed']} "
        f"failed, {p['skipped']} skipped of {p['total']}",
        file=out,
    )
    if job.get("error"):
        print(f"error: {job['error']}", file=out)
    examples: dict[str, dict[str, Any]] = {}
    for item in failed:
        examples.setdefault(str(item.get("error_kind")), item)
    kinds = sorted(job["errors"].items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [
        {"error_kind": k, "count": n, "example_url": examples.get(k, {}).get("url")}
        for k, n in kinds
    ]
    print_error_kinds(rows, out)
    reasons = [(k, examples[k].get("error")) for k, _ in kinds if examples.get(k, {}).get("error")]
    if reasons:
        print("\n  why (the first item of each kind):", file=out)
        for kind, reason in reasons:
            print(f"    {kind}: {reason}", file=out)
    print_hosts(job.get("hosts") or {}, out)
    out.flush()


class ProgressLines:
    """Not a terminal: a line per status change, and a progress line at most every
    ``every`` seconds of ``clock`` (the first one at once)."""

    def __init__(self, job_id: str, out: TextIO, clock: Clock, every: float = PROGRESS_EVERY):
        self.job_id = job_id
        self.out = out
        self.clock = clock
        self.every = every
        self.next_at: float | None = None

    def event(self, kind: str, event: dict[str, Any]) -> None:
        """One event of the job's stream."""
        if kind == "status":
            self._line(f"{event['status']}" + (f": {event['error']}" if event.get("error") else ""))
        elif kind == "progress":
            now = self.clock.now()
            if self.next_at is None or now >= self.next_at:
                self.next_at = now + self.every
                self._line(_progress_text(event))

    def _line(self, text: str) -> None:
        print(f"job {self.job_id} {text}", file=self.out, flush=True)


def _progress_text(p: dict[str, Any]) -> str:
    """``running: 120/500 done (24.0 %), 3 failed, 1.2 MiB at 300.0 KiB/s, ETA 0:42``."""
    done = p["completed"] + p["failed"] + p["skipped"]
    eta = p.get("eta_s")
    tail = f", ETA {_duration(eta)}" if eta is not None else ""
    return (
        f"progress: {done}/{p['total']} done ({p['percent']:.1f} %), {p['failed']} failed, "
        f"{human_bytes(p['bytes'])} at {human_bytes(p['bytes_per_s'])}/s{tail}"
    )


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def _show(display: LiveDisplay, kind: str, event: dict[str, Any]) -> None:
    if kind == "progress" and "run" in event:
        display(RunProgress(**event["run"]))
        for host in event.get("hosts", []):
            display(HostStatus(**host))
    elif kind == "status" and event["status"] in ENDED:
        display(RunFinished(accepted=0, completed=0, failed=0, skipped=0, reason=event["status"]))
