"""The ``conveyor`` / ``python -m runtime`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.core.errors import EXIT_CODES, FAILURE_KINDS, ConveyorError

if TYPE_CHECKING:
    from runtime.core.config import Config

# What a command needs is imported when it runs: ``--version`` and ``--help`` load no
# actor, no HTTP engine, no store and no service (and start in a few tens of ms).

__all__ = ["check_input", "main"]


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for (reading the
    package metadata costs more than the rest of the command line's start-up)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        import runtime

        print(f"conveyor {runtime.__version__}")
        parser.exit()


_EPILOG = """\
exit codes:
  0    every accepted item completed
  1    the run finished but some items failed or were skipped
  2    bad config or input (the message names the file, line or key)
  3    the run ended on an internal error (a child kept crashing)
  130  interrupted (SIGINT/SIGTERM or the job stopped early); run again to resume
"""


def _port(text: str) -> int:
    """A TCP port number for argparse (1-65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65535")
    return port


class _RecheckAction(argparse.Action):
    """``--recheck`` (size), ``--recheck=full``; ``--recheck CONFIG`` keeps CONFIG."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        value = values if isinstance(values, str) else "size"
        if value not in ("size", "full"):
            if getattr(namespace, "recheck_config", None) is None:
                namespace.recheck_config = value  # `run --recheck conveyor.toml`
                value = "size"
            else:
                parser.error(f"--recheck takes nothing or 'full', got {value!r}")
        setattr(namespace, self.dest, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Download large batches of files through an actor pipeline "
        "that resumes where it stopped.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
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
    run.add_argument(
        "config",
        nargs="?",
        help="TOML config file (see the README's config reference); optional with --input",
    )
    run.set_defaults(recheck_config=None)
    quick = run.add_argument_group(
        "without a config file (or over it)",
        "These override the config file's values; CONVEYOR_<SECTION>_<KEY> environment "
        "variables override both. Paths given here are relative to the current directory.",
    )
    quick.add_argument("--input", metavar="FILE", help="the list of files (input.path)")
    quick.add_argument(
        "--output", metavar="DIR", help="where files land (output.dir; default ./downloads)"
    )
    quick.add_argument(
        "--state",
        metavar="DIR",
        help="the resumable state (state.dir; without a config: <output>.state)",
    )
    quick.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config key, e.g. --set download.concurrency=64 (repeatable)",
    )
    dpp = run.add_argument_group(
        "as download-pipeline-processor takes them",
        "Its flags, onto conveyor's keys (see the README: Coming from "
        "download-pipeline-processor). Its plugin classes run unchanged.",
    )
    dpp.add_argument("--files", metavar="FILE", help="the list of files (= --input)")
    for stage in ("pre-processor", "processor", "post-processor"):
        key = stage.replace("-", "_")
        dpp.add_argument(
            f"--{stage}", metavar="PKG:CLASS", help=f"the {stage} class (processing.{key})"
        )
    dpp.add_argument(
        "--processing-limit", type=int, metavar="N", help="processors at once (processing.workers)"
    )
    dpp.add_argument(
        "--download-queue-size",
        type=int,
        metavar="N",
        help="downloaded files waiting for processing before downloads pause (processing."
        "backlog, together with --pre-processing-queue-size)",
    )
    dpp.add_argument(
        "--pre-processing-queue-size",
        type=int,
        metavar="N",
        help="added to processing.backlog: pre-processing runs in the processor, just before it",
    )
    dpp.add_argument(
        "--download-cache",
        metavar="DIR",
        help="download into DIR and delete each file once its outcome is recorded "
        '(output.dir = DIR with output.keep = "none"; --set output.keep=failed keeps the '
        "files whose processing failed, as download-pipeline-processor does)",
    )
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
    run.add_argument(
        "--quiet",
        action="store_true",
        help="no live progress (neither the TTY display nor the periodic progress log line)",
    )
    run.add_argument(
        "--events",
        metavar="FILE",
        help="write every pipeline event as numbered NDJSON to FILE ('-' for stdout; the "
        "summary then goes to stderr)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="N",
        help="serve Prometheus metrics on http://127.0.0.1:N/metrics during the run",
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="first put failed items back to pending (see the retry-failed command)",
    )
    run.add_argument(
        "--kind", help="with --retry-failed: only items that failed with this error kind"
    )
    run.add_argument(
        "--recheck",
        nargs="?",
        const="size",
        action=_RecheckAction,
        metavar="full",
        help="first check that every completed item's file is still in the output directory "
        "with its recorded size (--recheck=full: and sha256); put missing or changed ones "
        "back to pending (a changed file is removed) so this run downloads them again",
    )
    status = sub.add_parser(
        "status",
        help="show what a running or finished run has done",
        description="Read a run's state (without disturbing a live run) and show counts by "
        "status, failures by error kind with an example url, and per-host statistics.",
    )
    status.add_argument("target", metavar="CONFIG|STATE_DIR", help="a config file or a state dir")
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    retry = sub.add_parser(
        "retry-failed",
        help="put failed items back to pending for the next run",
        description="Put the failed items of CONFIG's state (all, or those of one error kind) "
        "back to pending, so the next `run` tries them again from scratch. Rejected input "
        "entries (invalid_entry) stay failed: fix the input instead.",
    )
    retry.add_argument("config", help="TOML config file")
    retry.add_argument("--kind", help="only items that failed with this error kind")
    validate = sub.add_parser(
        "validate",
        help="check the config and the whole input; download nothing",
        description="Load CONFIG and read its whole input list: report every bad entry with "
        "its line number. Exit code 0 when everything is usable, 1 when some entries are "
        "bad, 2 when the config or the input file cannot be used at all.",
    )
    validate.add_argument("config", help="TOML config file")
    serve = sub.add_parser(
        "serve",
        help="run the job service: submit batches over HTTP, follow them live",
        description="Serve the job API (see the README's Service section) and a dashboard at "
        "/. Jobs, their files and their state live under service.data_dir; jobs that were "
        "running when the service stopped resume when it starts again. Listening on any "
        "address but loopback needs a token (service.token or CONVEYOR_SERVICE_TOKEN).",
    )
    serve.add_argument(
        "config",
        nargs="?",
        help="TOML config file: [service] and the jobs' [download], [retry], … defaults (optional)",
    )
    serve.add_argument("--host", help="address to listen on (service.host; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (service.port; default 8080; 0: any free)")
    serve.add_argument("--data-dir", metavar="DIR", help="service.data_dir")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any config key (repeatable)",
    )
    serve.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="log format (default: console on a TTY, JSON lines otherwise)",
    )
    worker = sub.add_parser(
        "worker",
        help="be a node of a cluster batch: download what its coordinator grants",
        description="Join a batch that a coordinator (run with cluster.redis) opened on a "
        "Redis, download what it grants into this machine's output directory, and stop "
        "when the batch ends. SIGINT/SIGTERM leaves the batch (its items go back to "
        "pending). Exit code 0 when the batch ended done, 130 when it stopped short or the "
        "node was interrupted, 2 when it cannot join. See the README's Cluster section.",
    )
    worker.add_argument(
        "--redis", required=True, metavar="URL",
        help="redis://[:PASSWORD@]HOST:PORT/DB, rediss://… (TLS; ?ssl_ca_certs=FILE for "
        "your own CA) or unix://PATH",
    )  # fmt: skip
    worker.add_argument("--batch", help="the batch to join (default: the one open on that Redis)")
    worker.add_argument("--name", help="this node's name (default: the host name)")
    worker.add_argument(
        "--output", metavar="DIR", help="where files land (output.dir; default ./downloads)"
    )
    worker.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="this node's settings, e.g. --set download.concurrency=64 (repeatable)",
    )
    worker.add_argument(
        "--keep-running", action="store_true", help="after a batch ends, wait for the next"
    )
    worker.add_argument(
        "--simulate-downloads", action="store_true", help="the offline transport of [simulate]"
    )
    worker.add_argument("--debug", action="store_true", help="log at debug level")
    worker.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="log format (default: console on a TTY, JSON lines otherwise)",
    )
    submit = sub.add_parser(
        "submit",
        help="submit a list of files to a running job service",
        description="Send the entries of URL_LIST (JSON or NDJSON, as for `run`) to a job "
        "service as one job and print its id; with --follow, show its progress live until "
        "it ends (exit code as for `run`).",
    )
    submit.add_argument("url_list", metavar="URL_LIST", help="JSON or NDJSON list of files")
    submit.add_argument(
        "--server",
        default="http://127.0.0.1:8080",
        help="the service's base url (default: http://127.0.0.1:8080)",
    )
    submit.add_argument("--token", help="bearer token (default: $CONVEYOR_SERVICE_TOKEN)")
    submit.add_argument("--follow", action="store_true", help="follow the job until it ends")
    submit.add_argument("--callback-url", help="url the job's summary is POSTed to at the end")
    submit.add_argument(
        "--idempotency-key", help="resubmitting with the same key makes no second job"
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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args)
    except BrokenPipeError:
        # The reader went away (``status | head``): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from runtime.core.configfile import load_config
    from runtime.core.logs import configure_cli_logging

    if args.command == "demo":
        from runtime.demo import run_demo

        configure_cli_logging("warning", args.log_format or "auto")
        return run_demo(args.dir, args.files)
    if args.command == "status":
        return _status(args.target, as_json=args.json)
    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "worker":
        return _worker(parser, args)
    if args.command == "submit":
        from runtime.service.client import submit_file

        return submit_file(args.url_list, server=args.server,
                           token=args.token or os.environ.get("CONVEYOR_SERVICE_TOKEN", ""),
                           follow=args.follow, callback_url=args.callback_url,
                           idempotency_key=args.idempotency_key)  # fmt: skip
    if args.command == "run" and args.kind is not None and not args.retry_failed:
        parser.error("--kind only works together with --retry-failed")
    kind = getattr(args, "kind", None)
    if kind is not None and kind not in FAILURE_KINDS:
        print(
            f"conveyor: unknown error kind {kind!r}; known kinds: {', '.join(FAILURE_KINDS)}",
            file=sys.stderr,
        )
        return EXIT_CODES["bad_input"]
    try:
        run = args.command == "run"
        config = _run_config(parser, args) if run else load_config(args.config)
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    if args.command == "retry-failed":
        return _retry_failed(config, args.kind)
    if args.command == "validate":
        return _validate(config)
    problem = _input_problem(config)
    if problem is not None:
        print(f"conveyor: {problem}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    level = "debug" if args.debug else config.log.level
    configure_cli_logging(level, args.log_format or config.log.format)
    if args.retry_failed and _retry_failed(config, args.kind) != 0:
        return EXIT_CODES["bad_input"]
    from runtime.foreground import run_pipeline

    return run_pipeline(
        config,
        simulate=args.simulate_downloads,
        quiet=args.quiet,
        events=args.events,
        metrics_port=args.metrics_port,
        recheck=args.recheck,
        state_hint=args.config is None,
    )


def _settings(parser: argparse.ArgumentParser, given: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``--set SECTION.KEY=VALUE`` flags as config overrides (value, who set it)."""
    settings: dict[str, tuple[str, str]] = {}
    for setting in given:
        key, sep, value = setting.partition("=")
        if not sep or "." not in key:
            parser.error(f"--set takes SECTION.KEY=VALUE, got {setting!r}")
        settings[key.strip()] = (value, f"--set {key.strip()}")
    return settings


def _worker(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``worker``: join a cluster batch as a node."""
    from runtime.core.logs import configure_cli_logging
    from runtime.worker import run_worker

    overrides: dict[str, tuple[str, str]] = {}
    if args.output is not None:
        overrides["output.dir"] = (str(Path(args.output).resolve()), "--output")
    overrides.update(_settings(parser, args.set))

    def configure_logs(config: Config) -> None:  # (once the node's settings are read)
        level = "debug" if args.debug else config.log.level
        configure_cli_logging(level, args.log_format or config.log.format)

    return run_worker(redis_url=args.redis, batch=args.batch, name=args.name,
                      overrides=overrides, keep_running=args.keep_running,
                      simulate=args.simulate_downloads, configure_logs=configure_logs)  # fmt: skip


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``serve``: the config file (optional), the flags, the environment; then serve."""
    from runtime.core.config import Config
    from runtime.core.configfile import load_config
    from runtime.core.logs import configure_cli_logging
    from runtime.core.pluginload import check_plugins
    from runtime.service.server import serve  # FastAPI and uvicorn load only for this

    overrides: dict[str, tuple[str, str]] = {}
    for flag, key in (("host", "service.host"), ("port", "service.port")):
        if getattr(args, flag) is not None:
            overrides[key] = (str(getattr(args, flag)), f"--{flag}")
    if args.data_dir is not None:
        overrides["service.data_dir"] = (str(Path(args.data_dir).resolve()), "--data-dir")
    overrides.update(_settings(parser, args.set))
    try:
        if args.config is None:
            config = Config.from_mapping({}, source="command line", environ=os.environ,
                                         overrides=overrides)  # fmt: skip
        else:
            config = load_config(args.config, overrides=overrides, need_input=False)
        check_plugins(config)
        configure_cli_logging(config.log.level, args.log_format or config.log.format)
        return serve(config)
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]


def _run_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The config of ``run``: the file (if any), then the flags, then the environment."""
    from runtime.core.configfile import config_from_flags, load_config

    if args.recheck_config is not None:
        if args.config is not None:
            parser.error(f"--recheck takes nothing or 'full', got {args.recheck_config!r}")
        args.config = args.recheck_config
    settings = _settings(parser, args.set)
    overrides = _flag_overrides(parser, args, settings) | settings  # (--set over the flags)
    if args.config is None:
        if "input.path" not in overrides:
            parser.error("give a config file or --input FILE (or --files FILE)")
        return config_from_flags(overrides)
    return load_config(args.config, overrides=overrides)


def _flag_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, given: dict[str, tuple[str, str]]
) -> dict[str, tuple[str, str]]:
    """The keys ``run``'s own flags set; two flags for one key are an error."""
    overrides: dict[str, tuple[str, str]] = {}

    def put(key: str, value: str, flag: str) -> None:
        if key in overrides:
            parser.error(f"{flag} and {overrides[key][1]} both set {key}: give one")
        overrides[key] = (value, flag)

    paths = (("input", "input.path"), ("files", "input.path"), ("output", "output.dir"),
             ("state", "state.dir"), ("download_cache", "output.dir"))  # fmt: skip
    for flag, key in paths:
        value = getattr(args, flag)
        if value is not None:
            put(key, str(Path(value).resolve()), "--" + flag.replace("_", "-"))
    if args.download_cache is not None:
        keep = given.get("output.keep", ("none", ""))[0].strip().strip("\"'")
        if keep == "all":
            parser.error("--download-cache keeps no file, but --set output.keep=all keeps all")
        put("output.keep", "none", "--download-cache")  # (--set output.keep=failed wins)
    for stage in ("pre_processor", "processor", "post_processor"):
        if getattr(args, stage) is not None:
            put(f"processing.{stage}", getattr(args, stage), "--" + stage.replace("_", "-"))
    if args.processing_limit is not None:
        put("processing.workers", str(args.processing_limit), "--processing-limit")
    queues = [
        q for q in (args.download_queue_size, args.pre_processing_queue_size) if q is not None
    ]
    if queues:
        if any(q <= 0 for q in queues):
            parser.error("--download-queue-size and --pre-processing-queue-size must be above 0")
        flags = "--download-queue-size" if args.download_queue_size is not None else ""
        if args.pre_processing_queue_size is not None:
            flags = " + ".join(f for f in (flags, "--pre-processing-queue-size") if f)
        put("processing.backlog", str(sum(queues)), flags)
    if args.debug:
        put("log.level", "debug", "--debug")
    return overrides


def _input_problem(config: Config) -> str | None:
    """Why the input file cannot be read at all (checked before anything is created)."""
    try:
        with Path(config.input.path).open("rb"):
            pass
    except IsADirectoryError:
        return f"{config.input.path}: cannot open input: it is a directory"
    except OSError as exc:
        return f"{config.input.path}: cannot open input: {exc.strerror}"
    return None


def _state_dir_of(target: str) -> Path:
    from runtime.core.configfile import load_config

    path = Path(target)
    if path.is_dir():
        return path
    return Path(load_config(path).state.dir)


def _status(target: str, *, as_json: bool) -> int:
    from runtime.report import print_status, read_report

    try:
        report = read_report(_state_dir_of(target))
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_status(report, sys.stdout)
    return 0


def _retry_failed(config: Config, kind: str | None) -> int:
    from runtime.core.lock import StateLock
    from runtime.core.store import open_store
    from runtime.report import plural, read_run

    state_dir = Path(config.state.dir)
    try:
        read_run(state_dir)  # a clear error when there is no state yet
        with StateLock.acquire(state_dir):
            store = open_store(config, lanes=False)
            try:
                count = store.retry_failed(kind)
            finally:
                store.close()
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    items = plural(count, "item") + (f" with error kind {kind}" if kind else " that failed")
    print(
        f"conveyor: {items} {'is' if count == 1 else 'are'} pending again; `run` will try "
        f"{'it' if count == 1 else 'them'}",
        file=sys.stderr,
    )
    if kind == "invalid_entry":
        print("conveyor: rejected input entries stay failed: fix the input", file=sys.stderr)
    return 0


def check_input(config: Config) -> tuple[int, list[tuple[int, str]]]:
    """Read the whole input through the same ingest a run uses, into a scratch store.

    So ``validate`` and ``run`` can never disagree on which entries are bad (duplicate
    ids, clashing names, unusable entries): there is one implementation of the rules.

    Returns:
        The number of entries, and ``(line, reason)`` of each bad one, in line order.

    Raises:
        InputError: the input cannot be read at all.
    """
    from runtime.core.inputs import iter_batches
    from runtime.core.store import Admission, SQLiteStore

    bad: list[tuple[int, str]] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="conveyor-validate-") as scratch:
        store = SQLiteStore(Path(scratch), scratch=True)
        admission = Admission(store)
        try:
            for batch in iter_batches(Path(config.input.path), config.input.format):
                result = admission.ingest(batch.items, batch.rejected, batch.derived_name_ids)
                bad.extend((_line_of(o.id), o.error or "") for o in result.rejected)
                total += len(batch.items) + len(batch.rejected)
        finally:
            store.close()
    bad.sort()
    return total, bad


def _line_of(reject_id: str) -> int:
    """The input line of a rejected entry (its id is ``line:N``)."""
    _, _, line = reject_id.partition(":")
    return int(line) if line.isdigit() else 0


def _validate(config: Config) -> int:
    """Check every entry of the input; print the bad ones with their lines."""
    from runtime.core.pluginload import check_plugins
    from runtime.report import plural

    path = Path(config.input.path)
    if not config.input.path:
        print("conveyor: the config has no input.path", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    try:
        check_plugins(config)
        total, bad = check_input(config)
    except ConveyorError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    print(f"{path}: {plural(total, 'entry', 'entries')}, {total - len(bad)} usable, {len(bad)} bad")
    if not total:
        print("  the input has no entries: a run would download nothing")
    for _, error in bad[:200]:
        print(f"  {error}")
    if len(bad) > 200:
        print(f"  ... and {len(bad) - 200} more")
    d = config.download
    per_host = d.per_host if d.per_host else "any number"
    if config.cluster.redis and not config.cluster.local_downloads:
        print(f"downloads: none here (cluster.local_downloads = false): each node's own, at "
              f"most {per_host} per host over all nodes")  # fmt: skip
    else:
        print(
            f"downloads: {d.concurrency} at once ({plural(d.workers, 'downloader')} of "
            f"{d.mailbox}, engine {d.engine}), at most "
            f"{d.per_host if d.per_host else 'any number'} per host"
        )
    if config.cluster.redis and not _check_cluster(config):
        return EXIT_CODES["bad_input"]
    return 0 if not bad else 1


def _check_cluster(config: Config) -> bool:
    """(validate) Whether the cluster's Redis answers; say where nodes join."""
    from actors.supervisor import batch_name
    from runtime.core.streams import StreamLink, explained, join_hint, redacted

    url, batch = redacted(config.cluster.redis), batch_name(config)
    try:
        link = StreamLink.connect(config.cluster.redis, batch, timeout=5.0)
        try:
            link.client.ping()
            owner = link.client.get(link.owner_key)
        finally:
            link.client.close()
    except Exception as exc:  # noqa: BLE001 - redis-py's errors, said as they are
        print(f"conveyor: cannot reach the cluster's Redis at {url}: "
              f"{explained(exc, config.cluster.redis)}", file=sys.stderr)  # fmt: skip
        return False
    c = config.cluster
    print(f"cluster: batch {batch!r} on {url} (answers); nodes join with: "
          f"{join_hint(batch, url)}; node_timeout {c.node_timeout:g} s, "
          f"max_deliveries {c.max_deliveries}, the coordinator "
          f"{'downloads too' if c.local_downloads else 'does not download'}")  # fmt: skip
    if owner is not None:
        print(f"  the batch is open now (coordinator {owner.decode(errors='replace')})")
    return True
