"""The scale benchmark: a big NDJSON list through the real actors on the simulated transport.

    python benchmarks/scale.py CONFIG [--limit SECONDS]

Runs ``runtime.Pipeline(config, simulate=True)`` in this process (persistence on, the
default processors) and prints one JSON line: seconds from ``start()`` to the first
grant (the first ``DownloadStarted``), items that reached a terminal status, the
elapsed time and the rate. ``--limit`` stops the run gracefully after that many seconds
(unfinished items stay pending, as after Ctrl-C). The caller measures memory.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from messages import DownloadStarted, Outcome
from runtime import Pipeline
from runtime.core.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("config")
    parser.add_argument("--limit", type=float, default=0.0)
    args = parser.parse_args()
    config = load_config(args.config)
    first: list[float] = []
    done = [0]
    t0 = time.perf_counter()

    def on_event(message: Any) -> None:
        if not first and isinstance(message, DownloadStarted):
            first.append(time.perf_counter() - t0)
        elif isinstance(message, Outcome):
            done[0] += 1

    pipeline = Pipeline(config, simulate=True, on_event=on_event)
    pipeline.start()
    try:
        summary = pipeline.wait(args.limit or None)
    except TimeoutError:
        pipeline.stop(grace=5.0, reason="benchmark limit")
        summary = pipeline.wait()
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "first_grant_s": first[0] if first else None,
                "terminal_this_run": done[0],
                "accepted": summary.finished.accepted,
                "pending": summary.finished.pending,
                "elapsed_s": elapsed,
                "items_per_s": done[0] / elapsed,
            }
        )
    )


if __name__ == "__main__":
    main()
