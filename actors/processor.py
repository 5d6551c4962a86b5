"""The Processor: runs the configured ``BaseProcessor`` on each downloaded file.

Whatever the plugin raises becomes ``ProcessingFailed`` for that item; the actor itself
only crashes on a bug of its own, and the StateKeeper then hands its items to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from actors.child import ChildActor, ChildContext
from actors.control import tell
from messages import DownloadComplete, ProcessingComplete, ProcessingFailed
from messages.control import Batch, ProcessFiles
from runtime.core.inputs import fields_of
from runtime.core.logs import get_logger
from runtime.core.plugins import BaseProcessor, Downloaded, call_batch, failure

__all__ = ["Processor", "process_block"]

log = get_logger("processor")


class Processor(ChildActor):
    """One processor instance with its own plugin object."""

    kind = "processor"

    def __init__(self, *, child: ChildContext, plugin: BaseProcessor) -> None:
        super().__init__(child=child)
        self.plugin = plugin  # this instance's own

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        match message:
            case DownloadComplete():
                tell(self.state_keeper, process_block(self.plugin, self.worker, (message,))[0])
            case ProcessFiles(files=files):  # a block of files, answered with one batch
                replies = process_block(self.plugin, self.worker, files)
                tell(self.state_keeper, Batch(messages=tuple(replies)))
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))


def process_block(
    plugin: BaseProcessor, worker: str, block: Sequence[DownloadComplete]
) -> list[ProcessingComplete | ProcessingFailed]:
    """Run the plugin on a block of downloaded files (``process_batch``); what it raises
    for one file, or returns that is not a dict of plain values, is that item's failure."""
    files = [
        Downloaded(
            id=done.item.id,
            url=done.item.url,
            name=done.item.name,
            path=done.path,
            size=done.size,
            sha256=done.sha256,
            fields=fields_of(done.item),
        )
        for done in block
    ]
    results = call_batch(plugin.process_batch, files, "files")
    replies: list[ProcessingComplete | ProcessingFailed] = []
    for done, result in zip(block, results, strict=True):
        item_id = done.item.id
        try:
            if isinstance(result, BaseException):
                raise result
            if not isinstance(result, dict):
                raise TypeError(f"process() returned {type(result).__name__}, not a dict")
            msgpack.packb(result)  # the result must be able to cross a process boundary
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is the item's, not ours
            error = failure(exc)
            log.warning("processor failed", item_id=item_id, error=error)
            replies.append(ProcessingFailed(worker=worker, item_id=item_id, error=error))
            continue
        replies.append(ProcessingComplete(worker=worker, item_id=item_id, result=result))
    return replies
