"""The Processor: runs the configured ``BaseProcessor`` on each downloaded file.

Whatever the plugin raises becomes ``ProcessingFailed`` for that item; the actor itself
only crashes on a bug of its own, and the StateKeeper then hands its items to another.
"""

from __future__ import annotations

from typing import Any

import msgpack
import structlog

from actors.child import ChildActor, ChildContext
from actors.control import tell
from messages import DownloadComplete, ProcessingComplete, ProcessingFailed
from messages.control import Batch, ProcessFiles
from runtime.core.logs import get_logger
from runtime.core.plugins import BaseProcessor, Downloaded

__all__ = ["Processor", "process_one"]

log = get_logger("processor")


class Processor(ChildActor):
    """One processor instance with its own plugin object."""

    kind = "processor"

    def __init__(
        self,
        *,
        child: ChildContext,
        plugin: BaseProcessor,
    ) -> None:
        super().__init__(child=child)
        self.plugin = plugin

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        match message:
            case DownloadComplete():
                with structlog.contextvars.bound_contextvars(item_id=message.item.id):
                    tell(self.state_keeper, self._process(message))
            case ProcessFiles(files=files):  # a block of files, answered with one batch
                replies = []
                for done in files:
                    with structlog.contextvars.bound_contextvars(item_id=done.item.id):
                        replies.append(self._process(done))
                tell(self.state_keeper, Batch(messages=tuple(replies)))
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))

    def _process(self, done: DownloadComplete) -> ProcessingComplete | ProcessingFailed:
        return process_one(self.plugin, self.worker, done)


def process_one(
    plugin: BaseProcessor, worker: str, done: DownloadComplete
) -> ProcessingComplete | ProcessingFailed:
    """Run the plugin on one downloaded file; its exception is the item's failure."""
    item = done.item
    downloaded = Downloaded(
        id=item.id,
        url=item.url,
        name=item.name,
        path=done.path,
        size=done.size,
        sha256=done.sha256,
    )
    try:
        result = plugin.process(downloaded)
        if not isinstance(result, dict):
            raise TypeError(f"process() returned {type(result).__name__}, not a dict")
        msgpack.packb(result)  # the result must be able to cross a process boundary
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is the item's, not ours
        log.info("processor failed", error=f"{type(exc).__name__}: {exc}")
        return ProcessingFailed(
            worker=worker, item_id=item.id, error=f"{type(exc).__name__}: {exc}"
        )
    return ProcessingComplete(worker=worker, item_id=item.id, result=result)
