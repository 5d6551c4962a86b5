"""The scale benchmark: big item lists through the real actors on the simulated transport.

    python benchmarks/scale.py                    # every variant, 1,000,000 items each
    python benchmarks/scale.py --items 100000 --limit 20 --only flat,restart

Generates the inputs in a temporary directory (``/dev/shm`` when there is one), runs each
variant in its own process tree — persistence on, the simulated transport, the default
processor and post-processor — and prints one markdown table (and ``--json`` writes the
raw figures). Peak RSS is summed over the run's processes, sampled every 10 ms with psutil.
A run stops gracefully after ``--limit`` seconds (unfinished items stay pending, as after
Ctrl-C); rates are over the time the run had.

Variants (settings other than the defaults are named in the table):

- ``flat``: flat names over 97 hosts, in process: items/s, first grant, peak RSS;
- ``restart``: the same state opened again: seconds to the first grant;
- ``real``: names in 1,000 subdirectories over 1,000 hosts, all defaults, from the CLI
  with ``--simulate-downloads``;
- ``ingest``: flat names, 50 hosts, ``processes = 2``, ``mailbox = 8``: input lines
  accepted per second while the run goes on;
- ``validate``: ``python -m runtime validate`` on the flat 50-host list;
- ``hosts``: 10,000 hosts with ``per_host = 2``, one of them holding 30 % of the items and
  answering 429 with ``Retry-After: 60``, against the same run where it answers 200:
  the other hosts' items per second.

``python benchmarks/scale.py one CONFIG --limit S [--blocked HOST] [--total N]`` is a
single in-process run (what the variants call); it prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20


# -- one run, in this process ---------------------------------------------------------


def one(config_path: str, limit: float, blocked: str, total: int) -> None:
    """Run one pipeline in this process and print what it did as one JSON line."""
    sys.path.insert(0, str(ROOT))
    from messages import DownloadStarted, Outcome, RunProgress
    from runtime import Pipeline
    from runtime.core.configfile import load_config

    config = load_config(config_path)
    first: list[float] = []
    done = [0, 0]  # terminal this run, of them not of the blocked host
    accepted_at: list[float] = []
    last_accepted = [0]
    t0 = time.perf_counter()
    marker = f"//{blocked}/" if blocked else None

    def on_event(message: Any) -> None:
        if not first and isinstance(message, DownloadStarted):
            first.append(time.perf_counter() - t0)
        elif isinstance(message, Outcome):
            done[0] += 1
            if marker is None or marker not in message.url:
                done[1] += 1
        elif isinstance(message, RunProgress):
            last_accepted[0] = message.accepted
            if total and not accepted_at and message.accepted >= total:
                accepted_at.append(time.perf_counter() - t0)

    pipeline = Pipeline(config, simulate=True, on_event=on_event)
    pipeline.start()
    try:
        summary = pipeline.wait(limit or None)
    except TimeoutError:
        pipeline.stop(grace=5.0, reason="benchmark limit")
        summary = pipeline.wait()
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "first_grant_s": first[0] if first else None,
                "terminal": done[0],
                "terminal_healthy": done[1],
                "accepted": summary.finished.accepted,
                "all_accepted_s": accepted_at[0] if accepted_at else None,
                "accepted_per_s": (
                    total / accepted_at[0] if accepted_at else last_accepted[0] / elapsed
                ),
                "pending": summary.finished.pending,
                "elapsed_s": elapsed,
                "items_per_s": done[0] / elapsed,
                "healthy_per_s": done[1] / elapsed,
            }
        ),
        flush=True,
    )


# -- measuring a process tree ---------------------------------------------------------


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(argv: list[str], *, interrupt_after: float = 0.0) -> dict[str, Any]:
    """Run ``argv`` (SIGINT after ``interrupt_after`` s); wall time, peak tree RSS, output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if interrupt_after:
        try:
            proc.wait(interrupt_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return {
        "wall_s": wall,
        "rss_mib": peak[0] / MiB,
        "code": proc.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace")[-1500:],
    }


def _json_line(m: dict[str, Any]) -> dict[str, Any]:
    lines = [ln for ln in m["stdout"].splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"the run printed no result (exit {m['code']}): {m['stderr']}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- inputs and configs ---------------------------------------------------------------


def write_list(path: Path, items: int, hosts: int, *, dirs: int = 0, heavy: int = 0) -> None:
    """``items`` entries over ``hosts`` hosts; ``heavy`` tenths of them on ``heavy.test``."""
    with path.open("w") as fh:
        for i in range(items):
            host = "heavy.test" if i % 10 < heavy else f"h{i % hosts}.test"
            if dirs:  # names given, in subdirectories (each checked against the others)
                fh.write(f'{{"url": "http://{host}/f{i}.bin", "name": "d{i % dirs}/f{i}.bin"}}\n')
            else:
                fh.write(f'{{"url": "http://{host}/f{i}.bin"}}\n')


def write_config(folder: Path, lst: Path, extra: str = "", simulate: str = "") -> Path:
    cfg = folder / "conveyor.toml"
    cfg.write_text(
        f'[input]\npath = "{lst}"\n[output]\ndir = "{folder}/out"\n'
        f'[state]\ndir = "{folder}/state"\n[log]\nlevel = "warning"\n'
        f"[simulate]\nmin_size = 64\nmax_size = 64\n{simulate}{extra}"
    )
    return cfg


def _one(cfg: Path, limit: float, blocked: str = "", total: int = 0) -> list[str]:
    argv = [sys.executable, str(HERE / "scale.py"), "one", str(cfg), "--limit", str(limit)]
    if blocked:
        argv += ["--blocked", blocked]
    if total:
        argv += ["--total", str(total)]
    return argv


def _terminal(state: Path) -> tuple[int, int]:
    """Items terminal, and items accepted, in a run's state."""
    db = sqlite3.connect(f"file:{state / 'state.sqlite3'}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT count(*) FILTER (WHERE status IN ('completed','failed','skipped')), "
            "count(*) FROM items"
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        db.close()


# -- the variants ---------------------------------------------------------------------


def run_all(work: Path, items: int, limit: float, only: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {"items": items, "limit_s": limit}
    flat = work / "flat"
    flat.mkdir()
    write_list(flat / "items.ndjson", items, 97)
    if only & {"flat", "restart"}:
        cfg = write_config(flat, flat / "items.ndjson")
        m = measure(_one(cfg, limit))
        results["flat"] = {**_json_line(m), "rss_mib": m["rss_mib"]}
        print("flat", results["flat"], file=sys.stderr)
        if "restart" in only:
            m = measure(_one(cfg, 10.0))
            results["restart"] = {**_json_line(m), "rss_mib": m["rss_mib"]}
            print("restart", results["restart"], file=sys.stderr)
    if "real" in only:
        real = work / "real"
        real.mkdir()
        write_list(real / "items.ndjson", items, 1000, dirs=1000)
        cfg = real / "conveyor.toml"
        cfg.write_text(
            f'[input]\npath = "{real}/items.ndjson"\n[output]\ndir = "{real}/out"\n'
            f'[state]\ndir = "{real}/state"\n'
        )
        argv = [sys.executable, "-m", "runtime", "run", str(cfg), "--simulate-downloads"]
        m = measure(argv, interrupt_after=limit)
        done, accepted = _terminal(real / "state")
        results["real"] = {
            "terminal": done,
            "items_per_s": done / limit,
            "accepted": accepted,
            "lines_per_s": accepted / limit,
            "rss_mib": m["rss_mib"],
            "code": m["code"],
        }
        print("real", results["real"], file=sys.stderr)
    if only & {"ingest", "validate"}:
        fifty = work / "fifty"
        fifty.mkdir()
        write_list(fifty / "items.ndjson", items, 50)
        if "ingest" in only:
            extra = "[download]\nprocesses = 2\nmailbox = 8\n"
            cfg = write_config(fifty, fifty / "items.ndjson", extra)
            m = measure(_one(cfg, limit, total=items))
            results["ingest"] = {**_json_line(m), "rss_mib": m["rss_mib"]}
            print("ingest", results["ingest"], file=sys.stderr)
        if "validate" in only:
            cfg = fifty / "validate.toml"
            cfg.write_text(f'[input]\npath = "{fifty}/items.ndjson"\n')
            m = measure([sys.executable, "-m", "runtime", "validate", str(cfg)])
            results["validate"] = {"wall_s": m["wall_s"], "rss_mib": m["rss_mib"],
                                   "code": m["code"]}  # fmt: skip
            print("validate", results["validate"], file=sys.stderr)
    if "hosts" in only:
        many = work / "hosts"
        many.mkdir()
        write_list(many / "items.ndjson", items, 10_000, heavy=3)
        for key, throttle in (("hosts_blocked", True), ("hosts_open", False)):
            folder = many / key
            folder.mkdir()
            sim = 'throttle_hosts = ["heavy.test"]\nthrottle_retry_after = 60\n' if throttle else ""
            cfg = write_config(folder, many / "items.ndjson", "[download]\nper_host = 2\n", sim)
            m = measure(_one(cfg, limit, blocked="heavy.test"))
            results[key] = {**_json_line(m), "rss_mib": m["rss_mib"]}
            print(key, results[key], file=sys.stderr)
    return results


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def table(r: dict[str, Any]) -> str:
    n = r["items"]
    rows = ["| measure | result | target |", "|---|---:|---:|"]
    if "flat" in r:
        f = r["flat"]
        rows += [
            f"| {n:,} items (97 hosts), in process, defaults: items/s | {_f(f['items_per_s'])} "
            "| ≥ 20,000 |",
            f"| peak RSS, all processes, during that run (MiB) | {_f(f['rss_mib'], 1)} | ≤ 150 |",
            f"| first grant after start (s) | {_f(f['first_grant_s'], 2)} | ≤ 1 |",
        ]
    if "restart" in r:
        rows.append(
            f"| restart on that state → first grant (s) | {_f(r['restart']['first_grant_s'], 2)} "
            "| ≤ 1 |"
        )
    if "real" in r:
        rows.append(
            f"| names in 1,000 subdirectories, 1,000 hosts, all defaults, CLI "
            f"`--simulate-downloads`, {_f(r['limit_s'])} s: items/s "
            f"| {_f(r['real']['items_per_s'])} | ≥ 20,000 |"
        )
        rows.append(
            f"| the same run: input lines accepted per second "
            f"| {_f(r['real']['lines_per_s'])} | ≥ 100,000 |"
        )
        rows.append(
            f"| the same run: peak RSS, all processes (MiB) | {_f(r['real']['rss_mib'])} | ≤ 150 |"
        )
    if "ingest" in r:
        i = r["ingest"]
        rows.append(
            "| ingest while the run goes on (50 hosts, `processes = 2`, `mailbox = 8`): "
            f"lines/s | {_f(i['accepted_per_s'])} (all in after {_f(i['all_accepted_s'], 1)} s) "
            "| ≥ 100,000 |"
        )
    if "validate" in r:
        v = r["validate"]
        rows.append(
            f"| `validate` on {n:,} lines (50 hosts): seconds, peak RSS | "
            f"{_f(v['wall_s'], 1)} s, {_f(v['rss_mib'], 0)} MiB | ≤ 10 s, flat |"
        )
    if "hosts_blocked" in r and "hosts_open" in r:
        b, o = r["hosts_blocked"]["healthy_per_s"], r["hosts_open"]["healthy_per_s"]
        rows.append(
            "| 10,000 hosts, `per_host = 2`, 30 % of the items on one host answering 429 "
            f"(60 s): other hosts' items/s, blocked vs. not | {_f(b)} vs. {_f(o)} = "
            f"{b / o if o else 0:.2f}x | ≥ 0.8x |"
        )
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        parser = argparse.ArgumentParser(prog="scale.py one")
        parser.add_argument("config")
        parser.add_argument("--limit", type=float, default=0.0)
        parser.add_argument("--blocked", default="")
        parser.add_argument("--total", type=int, default=0)
        args = parser.parse_args(sys.argv[2:])
        one(args.config, args.limit, args.blocked, args.total)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--only", default="flat,restart,real,ingest,validate,hosts")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="conveyor-scale-", dir=base) as tmp:
        results = run_all(Path(tmp), args.items, args.limit, set(args.only.split(",")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
