"""A run in a fresh process that prints its peak RSS: the leak check of test_memory.

``python -m tests.memory_probe DIR ITEMS BAD``: ITEMS entries of one dead host and BAD
unusable lines, streamed from an NDJSON file through the simulated transport (every
request answers 503, so the host's breaker gives up and the rest fail ``host_down``).
Prints one JSON line: the run's counts and ``maxrss_kib`` (``resource``'s peak RSS).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from runtime import Config, Pipeline


def main(root: Path, items: int, bad: int) -> None:
    """Write the input, run it, print the counts and the peak RSS."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "in.ndjson"
    with path.open("w") as fh:
        for i in range(items):
            fh.write(f'{{"id": "i{i}", "url": "http://dead.test/{i}.bin"}}\n')
        for _ in range(bad):
            fh.write("{not json\n")
    config = Config.from_mapping(
        {
            "input": {"path": str(path)},
            "output": {"dir": "out"},
            "state": {"dir": "state"},
            "simulate": {"failure_rate": 1.0},
            "retry": {"backoff_initial": 0.0, "max_attempts": 2},
            "circuit": {"reset_timeout": 0.001, "give_up_after": 2},
            "log": {"level": "error"},
        },
        base_dir=root,
    )
    events = 0
    with Pipeline(config, simulate=True) as pipeline:
        for _ in pipeline.events():
            events += 1
        summary = pipeline.wait()
    f = summary.finished
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"accepted": f.accepted, "failed": f.failed, "events": events,
                      "maxrss_kib": peak}))  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
