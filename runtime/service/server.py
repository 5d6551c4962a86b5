"""``python -m runtime serve``: the job service on uvicorn, with its manager around it."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TextIO

import uvicorn

from runtime.core.config import Config
from runtime.core.errors import ConveyorError
from runtime.core.lock import StateLock
from runtime.core.logs import get_logger
from runtime.service.app import Hub, create_app, wrap_limits
from runtime.service.jobs import JobManager
from runtime.service.jobstore import SQLiteJobStore

__all__ = ["check_bind", "serve"]

log = get_logger("service")

SHUTDOWN_GRACE = 5.0
"""Seconds running transfers get when the service stops (their jobs resume at the next
start)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(config: Config) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises:
        ConveyorError: a non-loopback ``service.host`` and no ``service.token``.
    """
    s = config.service
    if not s.token and not is_loopback(s.host):
        raise ConveyorError(
            f"refusing to listen on {s.host} without a token: set service.token (or the "
            "environment variable CONVEYOR_SERVICE_TOKEN), or listen on 127.0.0.1"
        )


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGINT/SIGTERM after it stopped (the service
    still has its pipelines to stop then), and ending the event streams at once when
    asked to stop (they would otherwise hold the shutdown until they are cancelled)."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        self.hub.close()


def serve(config: Config, out: TextIO | None = None) -> int:
    """Run the service until SIGINT/SIGTERM; return the exit code.

    Prints ``conveyor service listening on http://HOST:PORT`` once it accepts requests.
    """
    out = out or sys.stderr
    s = config.service
    check_bind(config)
    data_dir = Path(s.data_dir)
    lock = StateLock.acquire(data_dir)  # one service per data directory
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((s.host.strip("[]"), s.port))
    except OSError as exc:
        sock.close()
        lock.release()
        raise ConveyorError(f"cannot listen on {s.host}:{s.port}: {exc.strerror}") from exc
    sock.listen(512)
    port = sock.getsockname()[1]
    store = SQLiteJobStore(data_dir)
    manager = JobManager(config, store)
    hub = Hub()
    app = create_app(manager, config, hub)
    server = _Server(
        uvicorn.Config(
            wrap_limits(app, config),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            ws="websockets-sansio",
        ),
        hub,
    )
    manager.start()
    host = f"[{s.host}]" if ":" in s.host else s.host
    if not s.token:
        print(
            "conveyor service: no service.token is set: anyone who can reach this address "
            "(any user of this machine) can submit, read and delete jobs; set "
            "CONVEYOR_SERVICE_TOKEN to require a token",
            file=out,
            flush=True,
        )
    print(
        f"conveyor service listening on http://{host}:{port} (data in {data_dir})",
        file=out,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        print(
            "conveyor service stopping: running jobs resume at the next start", file=out, flush=True
        )
        manager.shutdown(SHUTDOWN_GRACE)
        store.close()
        sock.close()
        lock.release()
    return 0
