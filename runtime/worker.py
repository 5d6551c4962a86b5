"""``python -m runtime worker``: a node of a cluster batch (see the README's Cluster).

It joins a batch a coordinator (``run`` with ``cluster.redis``) opened on a Redis,
downloads what the coordinator grants it into its own output directory, and ends when
the batch ends — or, with ``keep_running``, waits for the next batch of that name.
SIGINT or SIGTERM leaves the batch: the coordinator puts its items back to pending.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from actors.node import run_node
from runtime.core.clock import SystemClock
from runtime.core.config import Config
from runtime.core.errors import EXIT_CODES, ConfigError
from runtime.core.logs import get_logger
from runtime.core.streams import StreamLink, redacted, valid_node_name
from runtime.pipeline import default_transports

__all__ = ["run_worker"]

log = get_logger("worker")


def run_worker(
    *,
    redis_url: str,
    batch: str | None,
    name: str | None,
    overrides: Mapping[str, tuple[str, str]],
    keep_running: bool = False,
    simulate: bool = False,
    configure_logs: Callable[[Config], None] | None = None,
) -> int:
    """Serve batches as a node; return the exit code. ``configure_logs`` is called with
    the node's settings once they are read (the command line's logging)."""
    try:
        config = Config.from_mapping(
            {}, source="command line", base_dir=Path.cwd(), environ=os.environ,
            overrides=overrides,
        )  # fmt: skip
        if configure_logs is not None:
            configure_logs(config)
        base = name or socket.gethostname().split(".")[0]
        if not valid_node_name(base) or len(base) > 56:
            raise ConfigError(
                f"--name must be letters, digits, '.', '_' or '-' (56 at most), got {base!r}"
            )
        discovered = batch is None
        link = StreamLink.connect(redis_url, batch or "")
        link.client.ping()  # (a wrong address or password is said here, once)
        batch = batch or _the_open_batch(link, redacted(redis_url))
        link = StreamLink(link.client, batch)
        Path(config.output.dir).mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    except Exception as exc:  # noqa: BLE001 - redis-py's and the file system's errors
        print(f"conveyor: cannot join the cluster at {redacted(redis_url)}: {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_CODES["bad_input"]
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    clock = SystemClock()
    while True:
        node = f"{base}-{secrets.token_hex(3)}"
        print(f"conveyor: node {node} joins batch {batch!r}; files go to {config.output.dir}",
              file=sys.stderr)  # fmt: skip
        end = run_node(link=link, node=node, config=config,
                       transport_factory=default_transports(config, clock, simulate=simulate),
                       clock=clock, stop=stop)  # fmt: skip
        print(f"conveyor: node {node} stops: {end.reason}", file=sys.stderr)
        unfinished = end.ended is not None and end.ended != "done"
        if unfinished:  # (Ctrl-C, a job timeout, an error: the coordinator will resume it)
            print("conveyor: the coordinator stopped before the batch was done; its items "
                  "stay pending for its next run" + (", which this node waits for"
                  if keep_running else ""), file=sys.stderr)  # fmt: skip
        if signalled or not (keep_running or end.rejoin):
            break
        stop.clear()
        if discovered and not end.rejoin:  # the next batch, whichever opens
            found = _wait_for_a_batch(link, stop)
            if found is None:
                break
            batch, link = found, StreamLink(link.client, found)
    link.client.close()
    return EXIT_CODES["interrupted"] if signalled or unfinished else EXIT_CODES["ok"]


def _wait_for_a_batch(link: StreamLink, stop: threading.Event) -> str | None:
    """(``--keep-running`` without ``--batch``) The next batch opened on this Redis, once
    it is the only one open; None if stopped meanwhile."""
    print("conveyor: waiting for the next batch to open", file=sys.stderr)
    while not stop.wait(1.0):
        try:
            batches: set[str] = {b.decode() for b in link.client.smembers("conveyor:batches")}
        except Exception as exc:  # noqa: BLE001 - Redis away: keep waiting
            log.warning("cannot reach the cluster's Redis", error=str(exc))
            continue
        if len(batches) == 1:
            return batches.pop()
    return None


def _the_open_batch(link: StreamLink, url: str) -> str:
    """The one batch open on this Redis (without ``--batch``)."""
    batches: list[str] = sorted(b.decode() for b in link.client.smembers("conveyor:batches"))
    if len(batches) == 1:
        return batches[0]
    if not batches:
        raise ConfigError(
            f"no batch is open on {url}: give --batch NAME (the coordinator logs it as "
            "'cluster batch open')"
        )
    raise ConfigError(f"several batches are open on {url}: give --batch, one of {batches}")
