"""Run one pipeline in the foreground: the display, signals, the summary at the end.

Shared by ``python -m runtime run`` and the demo (which is why it is not in ``cli``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from runtime.core.config import Config
from runtime.core.errors import ConveyorError
from runtime.display import LiveDisplay, ProgressLogger
from runtime.events import EventStream, continue_events_file, fan_out
from runtime.pipeline import EXIT_CODES, Pipeline, RunSummary
from runtime.report import (
    human_bytes,
    plural,
    print_error_kinds,
    print_hosts,
    print_invalid_entries,
    print_nodes,
    read_report,
)

if TYPE_CHECKING:
    from runtime.metrics import Metrics

__all__ = ["plural", "print_summary", "run_pipeline", "summary_dict"]


def run_pipeline(
    config: Config,
    *,
    simulate: bool = False,
    out: TextIO | None = None,
    quiet: bool = False,
    events: str | None = None,
    metrics_port: int | None = None,
    recheck: str | None = None,
    state_hint: bool = False,
) -> int:
    """Run one pipeline in the foreground with signal handling; return the exit code.

    ``state_hint``: once the run has started (never when it could not), say where its
    state is and that the same command resumes it (for a run without a config file).
    """
    out = out or (sys.stderr if events == "-" else sys.stdout)
    stream: EventStream | None = None
    if events == "-":
        stream = EventStream(sys.stdout)
    elif events:
        try:
            stream = continue_events_file(Path(events), Path(config.state.dir))
        except (OSError, ConveyorError) as exc:
            print(f"conveyor: cannot write the events to {events}: {exc}", file=sys.stderr)
            return EXIT_CODES["bad_input"]
    metrics: Metrics | None = None
    if metrics_port is not None:
        from runtime.metrics import Metrics  # prometheus_client loads only for this

        metrics = Metrics()
        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            print(f"conveyor: cannot serve metrics on port {metrics_port}: {exc}",
                  file=sys.stderr)  # fmt: skip
            if stream is not None:
                stream.close()
            return EXIT_CODES["bad_input"]
    display: LiveDisplay | None = None
    progress: Any = None
    if not quiet:
        if sys.stderr.isatty():
            display = LiveDisplay(large_threshold=config.download.large_threshold)
        else:
            progress = ProgressLogger()
    pipeline = Pipeline(config, simulate=simulate, recheck=recheck,
                        on_event=fan_out(display, progress, stream, metrics))  # fmt: skip
    _install_signals(pipeline)
    try:
        pipeline.start()
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        if stream is not None:  # nothing started: let go of the events file and the port
            stream.close()
        if metrics is not None:
            metrics.stop()
        return EXIT_CODES["bad_input"]
    if state_hint:
        _note(f"state in {config.state.dir} (run the same command again to resume)")
    if pipeline.rechecked is not None:
        _note(f"recheck: {_recheck_text(*pipeline.rechecked, full=recheck == 'full')}")
    if display is not None:
        display.start()
    try:
        summary = _wait(pipeline)
    finally:
        if display is not None:
            display.stop()
        if stream is not None:
            stream.close()
        if metrics is not None:
            metrics.stop()
    report = _final_report(config, summary)
    if summary.finished.accepted == 0 and summary.error is None:
        print(f"conveyor: {config.input.path} has no entries; nothing to do", file=sys.stderr)
    print_summary(summary, out, report)
    return summary.exit_code


def _note(text: str) -> None:
    """``conveyor: TEXT`` on stderr as one write: the actors' log lines share the stream
    (``print`` writes the newline separately, and a log line could land in between)."""
    sys.stderr.write(f"conveyor: {text}\n")
    sys.stderr.flush()


def _recheck_text(checked: int, pending: list[str], *, full: bool) -> str:
    """What ``--recheck`` found: how many files were missing or changed, or that none was."""
    if pending:
        return (
            f"{plural(checked, 'file')} checked, {len(pending)} missing or changed, pending again"
        )
    if not checked:
        return "no kept files of completed items to check"
    what = f"all {checked} completed files are" if checked > 1 else "the 1 completed file is"
    return f"{what} in place ({'size and sha256' if full else 'size'} checked)"


def _final_report(config: Config, summary: RunSummary) -> dict[str, Any] | None:
    """Read the store once more and write ``<state.dir>/summary.json``."""
    state_dir = Path(config.state.dir)
    try:
        report = read_report(state_dir)
    except ConveyorError:
        return None  # the run never opened its state (it failed to start)
    report["this_run"] = summary_dict(summary)
    report["this_run"]["stats"] = {k: v for k, v in summary.stats.items() if k != "hosts"}
    try:
        (state_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"conveyor: cannot write {state_dir / 'summary.json'}: {exc}", file=sys.stderr)
    return report


def _wait(pipeline: Pipeline) -> RunSummary:
    while True:
        try:
            return pipeline.wait(timeout=0.5)
        except TimeoutError:
            continue


def _install_signals(pipeline: Pipeline) -> None:
    """First SIGINT/SIGTERM: graceful stop. Second: abort at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    signals_seen = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            _note(f"{signal.Signals(signum).name}: finishing in-flight items (send again to abort)")
            pipeline.stop()
        else:
            _note("aborted; state is as of the last commit")
            os._exit(EXIT_CODES["interrupted"])

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def print_summary(summary: RunSummary, out: TextIO, report: dict[str, Any] | None = None) -> None:
    """Print the end-of-run table."""
    f = summary.finished
    rows: list[tuple[str, Any]] = [
        ("accepted", f.accepted),
        ("completed", f.completed),
        ("failed", f.failed),
        ("skipped", f.skipped),
    ]
    if f.pending:
        rows.append(("pending (next run)", f.pending))
    elapsed = max(f.elapsed, 1e-9)
    rows += [
        ("downloaded", human_bytes(f.bytes)),
        ("elapsed", f"{f.elapsed:.2f} s"),
        ("throughput", f"{human_bytes(f.bytes / elapsed)}/s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("", file=out)
    print(f"conveyor run: {f.reason}", file=out)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)
    if summary.stats.get("retries"):
        print(f"  {'retries':<{width}}  {summary.stats['retries']}", file=out)
    if report is not None:
        print_error_kinds(report["error_kinds"], out)
        print_invalid_entries(report, out)
    print_hosts(summary.stats.get("hosts") or {}, out)
    print_nodes(summary.stats.get("nodes") or [], out)
    if summary.error:
        print(f"error: {summary.error}", file=out)
    out.flush()


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    """The summary as plain data."""
    data = dataclasses.asdict(summary.finished)
    data.update(error_kind=summary.error_kind, error=summary.error, exit_code=summary.exit_code)
    return data
