"""CPU time per stage, for the benchmarks (``benchmarks/bench.py`` reads it).

With ``CONVEYOR_CPU_LOG`` set to a file, every actor thread appends one JSON line when it
stops — its stage and the CPU time its thread used — and every process its total when
it ends. Off (the default), ``record`` only reads the environment.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["ENV", "record", "record_process"]

ENV = "CONVEYOR_CPU_LOG"


def _append(stage: str, seconds: float) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"stage": stage, "pid": os.getpid(), "cpu": seconds}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a measurement, never a reason to fail


def record(stage: str) -> None:
    """Record the CPU time of the calling thread under ``stage`` (call it as it ends)."""
    _append(stage, time.thread_time())


def record_process(stage: str) -> None:
    """Record the CPU time of the whole process (user + system) under ``stage``."""
    _append(stage, time.process_time())
