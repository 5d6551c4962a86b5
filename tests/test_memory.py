"""Leak checks of the bounded design: memory stays flat as a dead host's items and bad
input lines grow. Each run is a fresh process (``tests.memory_probe``) that reports its own
peak RSS, so other tests cannot hide or inflate it. Generous margins: not a benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from messages import RunFinished
from runtime import Pipeline
from runtime.testing import Ok, ScriptedTransport
from tests.helpers import ROOT, make_config


def probe(root: Path, items: int, bad: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", str(root), str(items), str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_a_dead_host_and_bad_lines_do_not_grow_memory(tmp_path: Path) -> None:
    """200,000 items of a host that is down and 50,000 unusable lines end failed with a
    peak RSS within 25 MiB of a 1,000-item run (holding them all took ~55 MiB more)."""
    small = probe(tmp_path / "small", 1_000, 0)
    big = probe(tmp_path / "big", 200_000, 50_000)
    assert (big["accepted"], big["failed"]) == (250_000, 250_000)
    growth_mib = (big["maxrss_kib"] - small["maxrss_kib"]) / 1024
    assert growth_mib < 25, f"peak RSS grew by {growth_mib:.0f} MiB"


def test_events_wait_for_a_slow_reader_instead_of_piling_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``events()`` holds at most EVENTS_BUFFER events: an unread buffer pauses the run;
    reading on lets it finish with every event delivered, RunFinished last."""
    monkeypatch.setattr("runtime.pipeline.EVENTS_BUFFER", 10)
    urls = [f"http://files.test/{i}" for i in range(30)]
    transport = ScriptedTransport({u: [Ok(b"x")] for u in urls})
    pipeline = Pipeline(make_config(tmp_path), transport_factory=transport)
    events = pipeline.events()
    with pipeline:
        pipeline.submit([{"url": u, "id": str(i)} for i, u in enumerate(urls)])
        pipeline.close_input()
        with pytest.raises(TimeoutError):
            pipeline.wait(1.0)  # stuck behind the full buffer
        assert pipeline._events is not None
        assert pipeline._events.qsize() == 10
        seen = list(events)
        summary = pipeline.wait(60)
    assert summary.finished.completed == 30
    assert isinstance(seen[-1], RunFinished)
    assert sum(isinstance(e, RunFinished) for e in seen) == 1


def test_a_reader_that_stops_early_does_not_hold_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaking out of ``events()`` detaches it: the run finishes without a reader."""
    monkeypatch.setattr("runtime.pipeline.EVENTS_BUFFER", 5)
    urls = [f"http://files.test/{i}" for i in range(30)]
    transport = ScriptedTransport({u: [Ok(b"x")] for u in urls})
    with Pipeline(make_config(tmp_path), transport_factory=transport) as pipeline:
        events = pipeline.events()
        pipeline.submit([{"url": u, "id": str(i)} for i, u in enumerate(urls)])
        first = next(events)
        events.close()
        summary = pipeline.wait(60)
    assert first is not None
    assert summary.finished.completed == 30
