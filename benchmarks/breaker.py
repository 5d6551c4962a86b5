"""The breaker benchmark: a few always-failing URLs among many healthy ones on one host.

    python benchmarks/breaker.py [--healthy 500] [--bad 10] [--out DIR]

Serves ``--healthy`` files of 20 KB and ``--bad`` URLs that always answer 503 from one
local server (127.0.0.1, one ``host:port``), and runs ``runtime.Pipeline`` with the
default config (real clock, real HTTP) on three batches: the healthy files alone, the bad
URLs spread evenly through the list, and the bad URLs first. Prints one JSON line per
batch: wall time, the host's breaker state and how often it opened, and the failed items
by error kind.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from runtime import Config, Pipeline
from runtime.fileserver import LocalFileServer


def batch(server: LocalFileServer, healthy: int, bad: int, order: str) -> list[dict[str, str]]:
    """The entries of one batch: healthy files with the bad urls placed by ``order``."""
    good = [{"id": f"ok{i}", "url": server.url(f"/ok{i}.bin")} for i in range(healthy)]
    broken = [{"id": f"bad{i}", "url": server.url(f"/bad{i}.bin")} for i in range(bad)]
    if order == "healthy only":
        return good
    if order == "bad first":
        return broken + good
    step = max(1, healthy // max(bad, 1))
    out = list(good)
    for n, entry in enumerate(broken):
        out.insert(min(len(out), (n + 1) * step + n), entry)
    return out


def run(root: Path, entries: list[dict[str, str]]) -> dict[str, Any]:
    """One run with the default config; what it took and what the breaker did."""
    config = Config.from_mapping(
        {"output": {"dir": "out"}, "state": {"dir": "state"}, "log": {"level": "warning"}},
        base_dir=root,
    )
    kinds: collections.Counter[str] = collections.Counter()

    def on_event(message: Any) -> None:
        if getattr(message, "status", None) == "failed":
            kinds[message.error_kind] += 1

    start = time.perf_counter()
    with Pipeline(config, on_event=on_event) as pipeline:
        pipeline.submit(entries)
        summary = pipeline.wait()
    wall = time.perf_counter() - start
    (host,) = summary.stats["hosts"].values()
    return {
        "wall_s": round(wall, 1),
        "completed": summary.finished.completed,
        "failed_by_kind": dict(kinds),
        "breaker": host["breaker"],
        "times_opened": host["times_opened"],
    }


def main() -> None:
    """Run the three batches and print their results."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--healthy", type=int, default=500)
    parser.add_argument("--bad", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(1)
    files = {f"/ok{i}.bin": rng.randbytes(20_000) for i in range(args.healthy)}
    files.update({f"/bad{i}.bin": b"never served" for i in range(args.bad)})
    always = {f"/bad{i}.bin": 10**9 for i in range(args.bad)}
    with LocalFileServer(files, fail_first=always) as server:
        for order in ("healthy only", "bad spread", "bad first"):
            with tempfile.TemporaryDirectory() as tmp:
                result = run(Path(tmp), batch(server, args.healthy, args.bad, order))
            print(json.dumps({"batch": order, **result}), flush=True)


if __name__ == "__main__":
    main()
