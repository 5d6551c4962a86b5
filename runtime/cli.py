"""The ``conveyor`` / ``python -m runtime`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from runtime.config import Config, load_config
from runtime.errors import ConveyorError
from runtime.logs import configure_cli_logging
from runtime.pipeline import EXIT_CODES, Pipeline, RunSummary

__all__ = ["main", "print_summary"]

_EPILOG = """\
exit codes:
  0    every accepted item completed
  1    the run finished but some items failed or were skipped
  2    bad config or input (the message names the file, line or key)
  3    the run ended on an internal error (a child kept crashing)
  130  interrupted (SIGINT/SIGTERM or the job stopped early); run again to resume
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Download large batches of files through an actor pipeline "
        "that resumes where it stopped.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="download every entry of the config's input list",
        description="Download every entry of the input list named in CONFIG, run each file "
        "through the processor and the post-processor, and record every outcome. "
        "Running the same config again resumes: completed items are not downloaded again.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", help="TOML config file (see the README's config reference)")
    run.add_argument(
        "--simulate-downloads",
        action="store_true",
        help="use the seeded offline transport of [simulate] instead of HTTP",
    )
    run.add_argument("--debug", action="store_true", help="log at debug level")
    run.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="log format (default: console on a TTY, JSON lines otherwise)",
    )
    demo = sub.add_parser(
        "demo",
        help="serve generated files on 127.0.0.1 and download them (offline)",
        description="Start a local HTTP server with generated files (some of them flaky), "
        "write a config for them and run the real pipeline against it.",
    )
    demo.add_argument(
        "--dir",
        default="conveyor-demo",
        help="directory for the demo's files, state and output (default: ./conveyor-demo)",
    )
    demo.add_argument("--files", type=int, default=200, help="number of files (default: 200)")
    demo.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="log format (default: console on a TTY, JSON lines otherwise)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from runtime.demo import run_demo

        configure_cli_logging("warning", args.log_format or "auto")
        return run_demo(args.dir, args.files)
    try:
        config = load_config(args.config)
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    level = "debug" if args.debug else config.log.level
    configure_cli_logging(level, args.log_format or config.log.format)
    return run_pipeline(config, simulate=args.simulate_downloads)


def run_pipeline(config: Config, *, simulate: bool = False, out: TextIO | None = None) -> int:
    """Run one pipeline in the foreground with signal handling; return the exit code."""
    out = out or sys.stdout
    pipeline = Pipeline(config, simulate=simulate)
    _install_signals(pipeline)
    try:
        pipeline.start()
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    summary = _wait(pipeline)
    print_summary(summary, out)
    return summary.exit_code


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
            print(
                f"conveyor: {signal.Signals(signum).name}: finishing in-flight items "
                "(send again to abort)",
                file=sys.stderr,
            )
            pipeline.stop()
        else:
            print("conveyor: aborted; state is as of the last commit", file=sys.stderr)
            os._exit(EXIT_CODES["interrupted"])

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def print_summary(summary: RunSummary, out: TextIO) -> None:
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
        ("downloaded", _human(f.bytes)),
        ("elapsed", f"{f.elapsed:.2f} s"),
        ("throughput", f"{_human(f.bytes / elapsed)}/s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("", file=out)
    print(f"conveyor run: {f.reason}", file=out)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", file=out)
    if summary.stats.get("retries"):
        print(f"  {'retries':<{width}}  {summary.stats['retries']}", file=out)
    _print_hosts(summary.stats.get("hosts") or {}, out)
    if summary.error:
        print(f"error: {summary.error}", file=out)
    out.flush()


MAX_HOST_ROWS = 20


def _print_hosts(hosts: dict[str, dict[str, Any]], out: TextIO) -> None:
    """Per-host statistics (all runs on this state), busiest first."""
    if not hosts:
        return
    header = ("host", "attempts", "ok", "retries", "bytes", "breaker", "failures")
    rows = []
    busiest = sorted(hosts.items(), key=lambda kv: (-kv[1].get("attempts", 0), kv[0]))
    for host, st in busiest[:MAX_HOST_ROWS]:
        failures = ", ".join(f"{k} {v}" for k, v in sorted(st.get("failures", {}).items()))
        breaker = st.get("breaker", "closed")
        if st.get("times_opened"):
            breaker += f" (opened {st['times_opened']}x)"
        rows.append(
            (
                host,
                str(st.get("attempts", 0)),
                str(st.get("successes", 0)),
                str(st.get("retries", 0)),
                _human(st.get("bytes", 0)),
                breaker,
                failures or "-",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("", file=out)
    for row in [header, *rows]:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    if len(busiest) > MAX_HOST_ROWS:
        print(f"  ... and {len(busiest) - MAX_HOST_ROWS} more hosts", file=out)


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    """The summary as plain data."""
    data = dataclasses.asdict(summary.finished)
    data.update(error_kind=summary.error_kind, error=summary.error, exit_code=summary.exit_code)
    return data
