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
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from actors.cluster import ENDED_KEPT
from actors.node import run_node
from runtime.core.clock import SystemClock
from runtime.core.config import Config
from runtime.core.errors import EXIT_CODES, ConfigError
from runtime.core.logs import Grumble, get_logger
from runtime.core.streams import StreamLink, explained, redacted, valid_node_name
from runtime.pipeline import default_transports
from runtime.report import how_long

__all__ = ["run_worker"]

log = get_logger("worker")

NODE_KEYS = ("download.", "simulate.", "log.", "output.dir", "output.if_exists")
"""The settings a node uses (``--set``); the others are the coordinator's."""


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
                f"--name must be ASCII letters, digits, '.', '_' or '-' (56 at most), got {base!r}"
            )
        for key, (_, flag) in overrides.items():
            if not key.startswith(NODE_KEYS):
                log.warning(f"{flag} has no effect on a node (only download.*, simulate.*, "
                            "log.*, output.dir and output.if_exists do; the rest is the "
                            "coordinator's)")  # fmt: skip
        discovered = batch is None
        link = StreamLink.connect(redis_url, batch or "")
        link.client.ping()  # (a wrong address or password is said here, once)
        if batch is None:
            batch = _the_open_batch(link, redacted(redis_url), keep_running)
        Path(config.output.dir).mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    except Exception as exc:  # noqa: BLE001 - redis-py's and the file system's errors
        print(f"conveyor: cannot join the cluster at {redacted(redis_url)}: "
              f"{explained(exc, redis_url)}", file=sys.stderr)  # fmt: skip
        return EXIT_CODES["bad_input"]
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    clock = SystemClock()
    code = EXIT_CODES["ok"]
    if batch is None:  # (--keep-running, and no batch is open yet)
        batch = _wait_for_a_batch(link, stop)
    rejoining = False
    while batch is not None:
        link = StreamLink(link.client, batch)
        over = _ended(link)
        if over is not None and rejoining and not keep_running:
            # It was lost while the batch ended without it: nothing is left to do.
            print(f"conveyor: batch {batch!r} has ended ({over[0]}) without this node",
                  file=sys.stderr)  # fmt: skip
            code = _exit_for(over[0])
            break
        if over is not None:  # (a name used again: its next run will open it)
            print(f"conveyor: batch {batch!r} ended ({over[0]}) {over[1]} ago; this node "
                  "waits for its next run (Ctrl-C to stop)", file=sys.stderr)  # fmt: skip
        node = f"{base}-{secrets.token_hex(3)}"
        print(f"conveyor: node {node} joins batch {batch!r}; files go to {config.output.dir}",
              file=sys.stderr)  # fmt: skip
        end = run_node(link=link, node=node, config=config,
                       transport_factory=default_transports(config, clock, simulate=simulate),
                       clock=clock, stop=stop)  # fmt: skip
        print(f"conveyor: node {node} stops: {end.reason}", file=sys.stderr)
        code = _exit_for(end.ended)
        if (
            code != EXIT_CODES["ok"]
        ):  # (Ctrl-C, a job timeout, an error: the coordinator will resume it)
            print("conveyor: the coordinator stopped before the batch was done; its items "
                  "stay pending for its next run" + (", which this node waits for"
                  if keep_running else ""), file=sys.stderr)  # fmt: skip
        if signalled or not (keep_running or end.rejoin):
            break
        rejoining = end.rejoin
        stop.clear()
        if discovered and not end.rejoin:  # the next batch, whichever opens
            batch = _wait_for_a_batch(link, stop)
    link.client.close()
    return EXIT_CODES["interrupted"] if signalled else code


def _exit_for(ended: str | None) -> int:
    """A node's exit code for a batch that ended so (None: it did not end)."""
    return EXIT_CODES["interrupted"] if ended not in (None, "done") else EXIT_CODES["ok"]


def _ended(link: StreamLink) -> tuple[str, str] | None:
    """How the batch ended and how long ago, when it did and no coordinator has opened
    it again."""
    why, owner = link.client.mget(link.ended_key, link.owner_key)
    if why is None or owner is not None:
        return None
    left = int(link.client.ttl(link.ended_key))  # (the marker lives a day)
    return why.decode(errors="replace"), how_long(ENDED_KEPT - left if left > 0 else 0)


def _wait_for_a_batch(link: StreamLink, stop: threading.Event) -> str | None:
    """(``--keep-running`` without ``--batch``) The next batch opened on this Redis, once
    it is the only one open; None if stopped meanwhile."""
    print("conveyor: waiting for the next batch to open", file=sys.stderr)
    unreachable = Grumble(log, "cannot reach the cluster's Redis")
    while not stop.wait(1.0):
        try:
            batches: set[str] = {b.decode() for b in link.client.smembers("conveyor:batches")}
        except Exception as exc:  # noqa: BLE001 - Redis away: keep waiting
            unreachable.failed(time.monotonic(), error=str(exc))
            continue
        unreachable.over(time.monotonic())
        if len(batches) == 1:
            return batches.pop()
    return None


def _the_open_batch(link: StreamLink, url: str, wait: bool) -> str | None:
    """The one batch open on this Redis (without ``--batch``); None when there is none
    yet and ``wait`` (``--keep-running``) says to wait for one."""
    batches: list[str] = sorted(b.decode() for b in link.client.smembers("conveyor:batches"))
    if len(batches) == 1:
        return batches[0]
    if not batches and wait:
        return None
    if not batches:
        raise ConfigError(
            f"no batch is open on {url}: give --batch NAME (the coordinator logs it as "
            "'cluster batch open'), or --keep-running to wait for one"
        )
    raise ConfigError(f"several batches are open on {url}: give --batch, one of {batches}")
