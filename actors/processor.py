"""The Processor: runs the configured ``BasePreProcessor`` (if any), then the
``BaseProcessor``, on each downloaded file.

Whatever a plugin raises becomes ``ProcessingFailed`` for that item (``pre_process_error``
or ``processing_error``: a file whose pre-processing failed is not processed); the actor itself
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
from runtime.core.plugins import (
    BasePreProcessor,
    BaseProcessor,
    Downloaded,
    call_batch,
    failure,
)

__all__ = ["Processor", "process_block"]

log = get_logger("processor")


class Processor(ChildActor):
    """One processor instance with its own plugin object."""

    kind = "processor"

    def __init__(
        self, *, child: ChildContext, plugin: BaseProcessor, pre: BasePreProcessor | None = None
    ) -> None:
        super().__init__(child=child)
        self.plugin = plugin  # this instance's own
        self.pre = pre  # and its own pre-processor

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        match message:
            case DownloadComplete():
                reply = process_block(self.plugin, self.worker, (message,), self.pre)[0]
                tell(self.state_keeper, reply)
            case ProcessFiles(files=files):  # a block of files, answered with one batch
                replies = process_block(self.plugin, self.worker, files, self.pre)
                tell(self.state_keeper, Batch(messages=tuple(replies)))
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))


def process_block(
    plugin: BaseProcessor,
    worker: str,
    block: Sequence[DownloadComplete],
    pre: BasePreProcessor | None = None,
) -> list[ProcessingComplete | ProcessingFailed]:
    """Run the pre-processor (``pre_process_batch``) and then the plugin
    (``process_batch``) on a block of downloaded files; what a stage raises for one file,
    or returns that is not what it should, is that item's failure at that stage."""
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
    failed: dict[str, ProcessingFailed] = {}
    if pre is not None:
        files = _pre_process(pre, worker, files, failed)
    results = call_batch(plugin.process_batch, files, "files")
    replies: list[ProcessingComplete | ProcessingFailed] = []
    for downloaded, result in zip(files, results, strict=True):
        item_id = downloaded.id
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
    if not failed:
        return replies
    by_id = {reply.item_id: reply for reply in replies} | failed
    return [by_id[done.item.id] for done in block]  # in the block's order


def _pre_process(
    pre: BasePreProcessor,
    worker: str,
    files: list[Downloaded],
    failed: dict[str, ProcessingFailed],
) -> list[Downloaded]:
    """The files the processor gets; the others are added to ``failed``."""
    passed: list[Downloaded] = []
    outs = call_batch(pre.pre_process_batch, files, "files")
    for downloaded, out in zip(files, outs, strict=True):
        if isinstance(out, Downloaded) and out.id == downloaded.id:
            passed.append(out)
            continue
        if isinstance(out, BaseException):
            exc = out
        elif isinstance(out, Downloaded):
            exc = ValueError(f"pre_process() returned the file of another item ({out.id!r})")
        else:
            exc = TypeError(f"pre_process() returned {type(out).__name__}, not a Downloaded")
        error = failure(exc)
        log.warning("pre-processor failed", item_id=downloaded.id, error=error)
        failed[downloaded.id] = ProcessingFailed(
            worker=worker, item_id=downloaded.id, error=error, error_kind="pre_process_error"
        )
    return passed
