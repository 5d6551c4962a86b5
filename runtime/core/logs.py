"""Logging for the library (never configured here) and the CLI's structlog setup."""

from __future__ import annotations

import logging
import sys
from typing import Any


def _import_structlog() -> Any:
    """Import structlog without the rich it would pull in (~40 ms of start-up, with attrs)
    for tracebacks conveyor does not use: its console renderer prints plain ones, its JSON
    lines carry the formatted ``exception``. When rich is loaded already (the live
    display), structlog finds and uses it as usual."""
    if "rich" in sys.modules:
        import structlog
    else:
        sys.modules["rich"] = None  # type: ignore[assignment]  # "not installed", for now
        try:
            import structlog
        finally:
            del sys.modules["rich"]
    return structlog


structlog = _import_structlog()

__all__ = ["Grumble", "configure_cli_logging", "get_logger"]


def get_logger(name: str) -> Any:
    """Return a structlog logger; the host's structlog configuration decides the output."""
    return structlog.get_logger(f"conveyor.{name}")


class Grumble:
    """A problem that may last (Redis away): said when it starts, then once every
    ``every`` seconds with how long it has lasted, and once more when it is over —
    not once per retry."""

    def __init__(self, logger: Any, event: str, *, every: float = 30.0) -> None:
        self.logger = logger
        self.event = event
        self.every = every
        self.since: float | None = None
        self.said = 0.0

    def failed(self, now: float, **fields: Any) -> None:
        """The problem is (still) there at ``now`` (a monotonic clock's seconds)."""
        if self.since is None:
            self.since = self.said = now
            self.logger.warning(self.event, **fields)
        elif now - self.said >= self.every:
            self.said = now
            self.logger.warning(self.event, lasting_s=round(now - self.since), **fields)

    def over(self, now: float) -> None:
        """It works again."""
        if self.since is not None:
            self.logger.info(f"{self.event}: fine again", after_s=round(now - self.since, 1))
            self.since = None


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write.

    The live display redirects ``sys.stderr`` while it runs so log lines appear above it;
    a logger holding the original stream would scribble over the display instead.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_cli_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for the command line: console on a TTY, JSON lines otherwise.

    Only the CLI calls this; an embedding program keeps its own logging setup.
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        # WriteLogger writes a line and its newline at once: another thread's line (a
        # `conveyor: ...` note) can never land between them, as it could with print.
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    # Standard logging (plugins' loggers, and pykka reporting a crashed actor) goes to the
    # same lines, at the same level; libraries' chatter only from warnings up.
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    threshold = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(threshold)
    for noisy in ("urllib3", "requests", "asyncio", "pykka", "multipart", "httpx"):
        logging.getLogger(noisy).setLevel(max(threshold, logging.WARNING))


class _ToStructlog(logging.Handler):
    """Hands a standard-library log record to structlog (its logger's name as
    ``logger``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a plugin's bad format arguments
            message = str(record.msg)
        extra: dict[str, Any] = {"logger": record.name}
        if record.exc_info:
            extra["exc_info"] = record.exc_info
        structlog.get_logger().log(record.levelno, message, **extra)
