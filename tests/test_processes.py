"""Worker processes: ``download.processes`` and ``processing.mode = "process"``.

Real worker processes (spawned), a real HTTP server, the real requests transport.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from messages import DownloadStarted
from runtime import ConveyorError, Pipeline
from runtime.pipeline import RunSummary
from runtime.testing import FaultServer, ScriptedTransport, body_of, capture_logs
from tests.helpers import CHECKSUM, make_config, read_manifest
from tests.plugins import CrashOnceTransportFactory

TIMEOUT = 120
PROCESSES = {"download": {"processes": 2}, "processing": {"mode": "process"}}


def entries(server: FaultServer) -> list[dict[str, Any]]:
    found = [{"id": f"ok{i}", "url": server.url(f"/ok/ok{i}.bin?size={1000 + i}")}
             for i in range(60)]  # fmt: skip
    found += [
        {"id": "gone", "url": server.url("/status/404/gone.bin")},
        {"id": "flaky", "url": server.url("/fail-first/2/503/flaky.bin")},
        {"id": "boom-1", "url": server.url("/ok/boom-1.bin")},  # the processor raises
        {"id": "bad-sum", "url": server.url("/ok/bad-sum.bin"), "sha256": "0" * 64},
        {"id": "gz", "url": server.url("/gzip/gz.bin?size=5000")},
    ]
    return found


def comparable(config: Any) -> list[tuple[Any, ...]]:
    out = Path(config.output.dir)
    return sorted(
        (
            r["id"],
            r["status"],
            r["error_kind"],
            r["size"],
            r["sha256"],
            r["attempts"],
            str(Path(r["path"]).relative_to(out)) if r["path"] else "",
            tuple(sorted(r["result"].items())),
        )
        for r in read_manifest(config.manifest_path)
    )


def run(config: Any, items: list[dict[str, Any]], **kwargs: Any) -> RunSummary:
    with Pipeline(config, **kwargs) as pipeline:
        pipeline.submit(items)
        return pipeline.wait(TIMEOUT)


def test_process_mode_gives_the_same_results_as_thread_mode(tmp_path: Path) -> None:
    settings: dict[str, Any] = {
        "retry": {"max_attempts": 3},
        "processing": {"processor": "tests.plugins:FailingProcessor"},
    }
    results = []
    for mode, extra in (("threads", {}), ("processes", PROCESSES)):
        sections = {k: {**settings.get(k, {}), **extra.get(k, {})} for k in {*settings, *extra}}
        config = make_config(tmp_path / mode, **sections)
        with FaultServer() as server:
            summary = run(config, entries(server))
        assert summary.finished.accepted == 65
        results.append(comparable(config))
    assert results[0] == results[1]
    statuses = {r[0]: (r[1], r[2]) for r in results[1]}
    assert statuses["gone"] == ("failed", "http_4xx")
    assert statuses["flaky"] == ("completed", None)
    assert statuses["boom-1"] == ("failed", "processing_error")
    assert statuses["bad-sum"] == ("failed", "checksum_mismatch")


def worker_pids(prefix: str) -> list[int]:
    return [p.pid for p in multiprocessing.active_children()
            if p.name.startswith(prefix) and p.pid is not None]  # fmt: skip


def test_a_killed_downloader_process_is_replaced_and_its_items_redone(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, download={"processes": 2, "workers": 4, "mailbox": 2, "min_speed": 1}
    )
    started = threading.Event()
    count = [0]

    def on_event(message: Any) -> None:
        if isinstance(message, DownloadStarted):
            count[0] += 1
            if count[0] >= 4:
                started.set()

    with FaultServer() as server, capture_logs() as logs:
        items = [{"id": f"d{i}", "url": server.url(f"/drip/d{i}.bin?size=60000&rate=20000")}
                 for i in range(16)]  # fmt: skip
        with Pipeline(config, on_event=on_event) as pipeline:
            pipeline.submit(items)
            assert started.wait(TIMEOUT)
            victims = worker_pids("conveyor-downloaders-0")
            assert len(victims) == 1
            os.kill(victims[0], signal.SIGKILL)
            summary = pipeline.wait(TIMEOUT)
    assert summary.exit_code == 0
    assert summary.finished.completed == 16
    for i in range(16):
        assert (Path(config.output.dir) / f"d{i}.bin").read_bytes() == body_of(f"d{i}.bin", 60000)
    lost = [e for e in logs if e.get("event") == "worker process lost"]
    assert len(lost) == 1
    assert "signal 9" in lost[0]["error"]
    assert any(e.get("event") == "worker process restarted" for e in logs)
    assert multiprocessing.active_children() == []


def test_a_crashing_downloader_in_a_worker_process_is_restarted(tmp_path: Path) -> None:
    config = make_config(tmp_path, download={"processes": 2, "workers": 2})
    factory = CrashOnceTransportFactory(config, str(tmp_path / "crashed"))
    with FaultServer() as server, capture_logs() as logs:
        summary = run(
            config,
            [
                {"id": "crash-me", "url": server.url("/ok/crash-me.bin")},
                {"id": "fine", "url": server.url("/ok/fine.bin")},
            ],
            transport_factory=factory,
        )
    assert summary.exit_code == 0
    records = {r["id"]: r for r in read_manifest(config.manifest_path)}
    assert (records["crash-me"]["status"], records["crash-me"]["attempts"]) == ("completed", 2)
    crashes = [e for e in logs if e.get("event") == "child crashed"]
    assert len(crashes) == 1
    assert "a bug in the transport" in crashes[0]["error"]


def test_a_killed_processor_process_is_replaced(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        processing={"mode": "process", "workers": 2, "processor": CHECKSUM},
    )
    with FaultServer() as server, capture_logs() as logs, Pipeline(config) as pipeline:
        victims = worker_pids("conveyor-processor-")
        assert len(victims) == 2
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        pipeline.submit([{"id": f"f{i}", "url": server.url(f"/ok/f{i}.bin")}
                         for i in range(20)])  # fmt: skip
        summary = pipeline.wait(TIMEOUT)
    assert summary.exit_code == 0
    records = read_manifest(config.manifest_path)
    assert {r["status"] for r in records} == {"completed"}
    assert all(r["result"]["size"] == 10000 for r in records)
    crashes = [e for e in logs if e.get("event") == "child crashed"]
    assert 1 <= len(crashes) <= 2
    assert all("processor process" in e["error"] for e in crashes)


def test_processes_need_a_picklable_transport(tmp_path: Path) -> None:
    config = make_config(tmp_path, download={"processes": 1})
    with pytest.raises(ConveyorError, match=r"download\.processes needs a transport factory"):
        Pipeline(config, transport_factory=ScriptedTransport({})).start()
