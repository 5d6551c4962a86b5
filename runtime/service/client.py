"""``python -m runtime submit``: send a list of files to a job service, follow the job."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from messages import HostStatus, RunFinished, RunProgress
from runtime.core.errors import InputError
from runtime.core.inputs import iter_raw_entries
from runtime.display import LiveDisplay, ProgressLogger
from runtime.pipeline import EXIT_CODES

__all__ = ["read_sse", "submit_file"]


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
) -> int:
    """Submit ``path``'s entries as one job; return an exit code like ``run``'s."""
    items: list[Any] = []
    try:
        for line, entry, error in iter_raw_entries(Path(path)):
            if error is not None:
                print(f"conveyor: {path}: line {line}: {error}", file=sys.stderr)
                return EXIT_CODES["bad_input"]
            items.append(entry)
    except InputError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
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
        print(f"conveyor: cannot reach {base}: {exc}", file=sys.stderr)
        return EXIT_CODES["run_error"]
    if answer.status_code != 202:
        print(
            f"conveyor: the server refused the job ({answer.status_code}): {answer.text}",
            file=sys.stderr,
        )
        return EXIT_CODES["bad_input"]
    job = answer.json()
    print(job["job_id"])
    for bad in job["invalid_items"]:
        print(f"conveyor: item {bad['index']}: {bad['error']}", file=sys.stderr)
    if not follow:
        return EXIT_CODES["ok"]
    return _follow(base, job["job_id"], headers)


def _follow(base: str, job_id: str, headers: dict[str, str]) -> int:
    """Show the job's progress with ``run``'s display until it ends."""
    display: Any = LiveDisplay() if sys.stderr.isatty() else ProgressLogger()
    if isinstance(display, LiveDisplay):
        display.start()
    last = 0
    status = "queued"
    try:
        while status not in ("completed", "failed", "cancelled"):
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
                        status = _show(display, kind, json.loads(data), status)
            except requests.RequestException as exc:
                print(f"conveyor: the event stream broke ({exc}); reconnecting", file=sys.stderr)
            if status not in ("completed", "failed", "cancelled"):
                status = requests.get(
                    f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30
                ).json()["status"]
    finally:
        if isinstance(display, LiveDisplay):
            display.stop()
    final = requests.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
    p = final["progress"]
    print(
        f"job {job_id} {final['status']}: {p['completed']} completed, {p['failed']} failed, "
        f"{p['skipped']} skipped of {p['total']}"
    )
    if final["status"] != "completed":
        return EXIT_CODES["interrupted"] if final["status"] == "cancelled" else 3
    return EXIT_CODES["ok"] if p["completed"] == p["total"] else EXIT_CODES["failed_items"]


def _show(display: Any, kind: str, event: dict[str, Any], status: str) -> str:
    if kind == "progress" and "run" in event:
        display(RunProgress(**event["run"]))
        for host in event.get("hosts", []):
            display(HostStatus(**host))
    elif kind == "status":
        status = str(event["status"])
        if status in ("completed", "failed", "cancelled"):
            display(RunFinished(accepted=0, completed=0, failed=0, skipped=0, reason=status))
    return status
