"""What a run did, read from its state store: for ``status``, the summary and summary.json.

Everything is read through the store's read-only view (``runtime.core.store.open_view``),
so ``status`` can look at a live run without disturbing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from messages import HostStatus
from runtime.core.hosts import host_record, host_status
from runtime.core.store import StoreView, open_view, state_file

__all__ = [
    "breaker_text",
    "how_long",
    "human_bytes",
    "live_pid",
    "pid_alive",
    "plural",
    "print_cooldowns",
    "print_error_kinds",
    "print_hosts",
    "print_invalid_entries",
    "print_nodes",
    "print_status",
    "read_report",
    "read_run",
]

MAX_ROWS = 20
INVALID_EXAMPLES = 5
"""How many rejected input entries the summary and ``status`` show (``validate`` lists all)."""


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 item``, ``2 items``; ``many`` for irregular plurals (``entries``)."""
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def human_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def read_run(state_dir: Path) -> dict[str, Any]:
    """Only the facts about the run (state, pid, times), without scanning the items."""
    with open_view(state_dir) as view:
        return view.meta()


def live_pid(run: dict[str, Any]) -> int | None:
    """The pid of the run using this state, if it says it is running and still exists."""
    pid = run.get("pid")
    if run.get("run_state") == "running" and pid is not None and pid_alive(int(pid)):
        return int(pid)
    return None


def read_report(state_dir: Path) -> dict[str, Any]:
    """Counts by status, failures by error kind (with an example url), hosts, run facts.

    Raises:
        ConveyorError: there is no readable conveyor state in ``state_dir``.
    """

    with open_view(state_dir) as view:
        statuses = view.counts()
        kinds = view.failures_by_kind()
        invalid = next((n for k, n, _ in kinds if k == "invalid_entry"), 0)
        examples = _invalid_examples(view, invalid)
        hosts = {h: host_record(host_status(h, r)) for h, r in view.hosts().items()}
        meta = view.meta()
    items = {s: statuses.get(s, 0) for s in ("completed", "failed", "skipped")}
    items["pending"] = sum(n for s, n in statuses.items() if s not in items)
    return {
        "state": str(state_file(state_dir)),
        "items": items,
        "total": sum(statuses.values()),
        "error_kinds": [{"error_kind": k, "count": n, "example_url": u} for k, n, u in kinds],
        "invalid_entries": examples,
        "hosts": hosts,
        "run": meta,
    }


def _invalid_examples(view: StoreView, total: int) -> list[dict[str, Any]]:
    """The rejected input entries of the lowest lines (at most ``INVALID_EXAMPLES``).

    Items are stored in input order, rejected entries in their place, so the first
    rejected ones met walking the failed items (the status index) are the first lines.
    """
    found: list[dict[str, Any]] = []
    after = 0
    while len(found) < min(total, INVALID_EXAMPLES):
        page = view.items("failed", after, 1000)
        if not page:
            break
        after = page[-1]["seq"]
        found += [
            {"line": _line_of(r["id"]), "url": r["url"], "error": r["error"] or ""}
            for r in page
            if r["error_kind"] == "invalid_entry"
        ]
    return found[:INVALID_EXAMPLES]


def _line_of(item_id: str) -> int | None:
    """The input line of a rejected entry (its id is ``line:N``); None for a submitted one."""
    prefix, _, line = item_id.partition(":")
    return int(line) if prefix == "line" and line.isdigit() else None


def _table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)  # fmt: skip


def print_hosts(hosts: dict[str, dict[str, Any]], out: TextIO) -> None:
    """Per-host statistics (as the state keeps them), busiest first."""
    if not hosts:
        return
    rows = [("host", "attempts", "ok", "retries", "bytes", "breaker", "failures")]
    busiest = sorted((host_status(h, r) for h, r in hosts.items()),
                     key=lambda st: (-st.attempts, st.host))  # fmt: skip
    for st in busiest[:MAX_ROWS]:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(st.failures_by_kind.items()))
        rows.append((st.host, str(st.attempts), str(st.successes), str(st.retries),
                     human_bytes(st.bytes), breaker_text(st), failures or "-"))  # fmt: skip
    print("", file=out)
    _table(rows, out)
    if len(busiest) > MAX_ROWS:
        print(f"  ... and {len(busiest) - MAX_ROWS} more hosts", file=out)


def breaker_text(st: HostStatus) -> str:
    """A host's breaker for people: its state, its window's failure rate, why it opened.

    ``closed, 2 % of last 50 failed`` or ``open: 62 % of last 50 failed (connection 31);
    opened 2x``.
    """
    if st.breaker == "closed":
        rate = f"{st.window_failures / max(st.window, 1):.0%}".replace("%", " %")
        text = f"closed, {rate} of last {st.window} failed" if st.window else st.breaker
    else:
        text = f"{st.breaker}: {st.breaker_reason}" if st.breaker_reason else st.breaker
    if st.times_opened:
        text += f"; opened {st.times_opened}x"
    return text


def print_nodes(nodes: list[dict[str, Any]], out: TextIO, now: float | None = None) -> None:
    """A cluster's nodes: name, address, in flight, done, seconds since last heard of
    (as of ``now``, Unix time, when given: ``status`` read later; else as recorded)."""
    if not nodes:
        return
    print("", file=out)
    rows = [("node", "address", "in flight", "done", "last seen")]
    for n in nodes:
        ago = n.get("last_seen_s", 0)
        if now is not None and n.get("last_seen_at"):
            ago = max(0.0, now - n["last_seen_at"])
        seen = f"{how_long(ago)} ago"
        if n.get("lost"):
            seen = "left" if n.get("left") else "lost"
        rows.append((str(n.get("node", "?")), str(n.get("address", "")),
                     str(n.get("in_flight", 0)), str(n.get("done", 0)), seen))  # fmt: skip
    _table(rows, out)


def print_error_kinds(kinds: list[dict[str, Any]], out: TextIO) -> None:
    """Failed items by error kind, each with an example url."""
    if not kinds:
        return
    rows = [("error kind", "items", "example")]
    rows += [(k["error_kind"], str(k["count"]), k["example_url"] or "-") for k in kinds[:MAX_ROWS]]
    print("", file=out)
    _table(rows, out)


def _invalid_count(report: dict[str, Any]) -> int:
    """How many failed items are rejected input entries (``invalid_entry``)."""
    return sum(k["count"] for k in report["error_kinds"] if k["error_kind"] == "invalid_entry")


def print_invalid_entries(report: dict[str, Any], out: TextIO) -> None:
    """The first few rejected input entries, each with its line and reason."""
    examples = report.get("invalid_entries") or []
    if not examples:
        return
    total = _invalid_count(report)
    if total > len(examples):
        head = f"{len(examples)} of {total} invalid entries (`validate` lists all):"
    else:
        head = "invalid entries:"
    print(f"\n  {head}", file=out)
    for entry in examples:
        print(f"    {entry['error']}", file=out)


def print_cooldowns(
    hosts: dict[str, dict[str, Any]], out: TextIO, now: float | None = None
) -> None:
    """Hosts paused by a Retry-After right now, with the end of the pause and its cause."""
    now = time.time() if now is None else now
    kept = (host_status(h, r) for h, r in sorted(hosts.items()))
    paused = [st for st in kept if st.cooldown_until > now]
    for st in paused[:MAX_ROWS]:
        left = st.cooldown_until - now
        print(
            f"\npaused   {st.host} for {left:.0f} s more (until {_when(st.cooldown_until)}): "
            f"{st.cooldown_reason or 'cool-down'}",
            file=out,
        )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (and is not this one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def how_long(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``5 min``, ``3.2 h``, ``2.1 days``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def print_status(report: dict[str, Any], out: TextIO) -> None:
    """``python -m runtime status``: what a running or finished run has done."""
    run = report["run"]
    state = run.get("run_state", "unknown")
    pid = live_pid(run)
    if state == "running" and pid is None:
        state = f"stopped without finishing (process {run.get('pid')} is gone); run again to resume"
    elif state == "running":
        state = f"running (pid {pid})"
    elif state == "finished":
        state = f"finished: {run.get('reason', '?')}"
    items = report["items"]
    print(f"state    {report['state']}", file=out)
    print(f"run      {state}", file=out)
    print(f"started  {_when(run.get('started_at'))}   last commit "
          f"{_when(run.get('last_commit_at'))}", file=out)  # fmt: skip
    print("", file=out)
    rows = [("status", "items")] + [(k, str(items[k])) for k in
                                     ("completed", "failed", "skipped", "pending")]  # fmt: skip
    rows.append(("total", str(report["total"])))
    _table(rows, out)
    print_error_kinds(report["error_kinds"], out)
    print_invalid_entries(report, out)
    print_hosts(report["hosts"], out)
    print_cooldowns(report["hosts"], out)
    print_nodes(run.get("nodes") or [], out, now=time.time())
    # retry-failed leaves rejected entries failed (the input must change): no hint for them
    if items["failed"] > _invalid_count(report):
        print("\nput failed items back for the next run: python -m runtime retry-failed CONFIG "
              "[--kind KIND]", file=out)  # fmt: skip
