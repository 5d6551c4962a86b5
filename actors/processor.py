"""The Processor: runs the configured ``BasePreProcessor`` (if any), then the
``BaseProcessor``, on each downloaded file.

Whatever a plugin raises becomes ``ProcessingFailed`` for that item (``pre_process_error``
or ``processing_error``: a file whose pre-processing failed is not processed); the actor itself
only crashes on a bug of its own, and the StateKeeper then hands its items to another.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from actors.child import ChildActor, ChildContext
from actors.control import tell
from messages import DownloadComplete, ProcessingComplete, ProcessingFailed
from messages.control import Batch, ProcessFiles, Started
from runtime.core.config import Config
from runtime.core.inputs import fields_of
from runtime.core.logs import get_logger
from runtime.core.plugins import (
    BasePreProcessor,
    BaseProcessor,
    Downloaded,
    call_batch,
    failure,
)

__all__ = ["PluginBuilder", "Processor", "process_block", "scratch_of"]

PluginBuilder = Callable[[], tuple[BaseProcessor, BasePreProcessor | None]]
"""Builds a processor actor's processor and pre-processor."""

log = get_logger("processor")


class Processor(ChildActor):
    """One processor instance with its own plugin object."""

    kind = "processor"

    def __init__(
        self, *, child: ChildContext, build: PluginBuilder, scratch: str | None = None
    ) -> None:
        """``build`` makes this instance's own processor and pre-processor (None: none);
        it runs in the actor's thread, where they will run (a plugin may hold what works
        in one thread only, such as a SQLite connection). ``scratch``: see
        ``process_block``."""
        super().__init__(child=child)
        self.build = build
        self.scratch = scratch
        self.plugin: BaseProcessor | None = None
        self.pre: BasePreProcessor | None = None
        self.start_error: Exception | None = None

    def on_start(self) -> None:
        """Build the plugins (a failure is answered to ``Started``)."""
        try:
            self.plugin, self.pre = self.build()
        except Exception as exc:  # noqa: BLE001 - the supervisor decides what it means
            self.start_error = exc

    def on_receive(self, message: Any) -> Any:
        """Dispatch one message."""
        if self.plugin is None:
            if isinstance(message, Started):
                return self.start_error
            raise RuntimeError(f"the processor could not be built: {self.start_error}")
        match message:
            case Started():
                return None
            case DownloadComplete():
                (reply,) = process_block(
                    self.plugin, self.worker, [message], self.pre, self.scratch
                )
                tell(self.state_keeper, reply)
            case ProcessFiles(files=files):  # a block of files, answered with one batch
                replies = process_block(self.plugin, self.worker, files, self.pre, self.scratch)
                tell(self.state_keeper, Batch(messages=tuple(replies)))
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))
        return None


def process_block(
    plugin: BaseProcessor,
    worker: str,
    block: Sequence[DownloadComplete],
    pre: BasePreProcessor | None = None,
    scratch: str | None = None,
) -> list[ProcessingComplete | ProcessingFailed]:
    """Run the pre-processor (``pre_process_batch``) and then the plugin
    (``process_batch``) on a block of downloaded files; what a stage raises for one file,
    or returns that is not what it should, is that item's failure at that stage. With
    ``scratch`` (the output directory, when files are not kept) the files the
    pre-processor made there are deleted once processed."""
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
    if pre is not None and scratch is not None:
        discard_derived(block, files, scratch)
    replies: list[ProcessingComplete | ProcessingFailed] = []
    for downloaded, result in zip(files, results, strict=True):
        item_id = downloaded.id
        try:
            if isinstance(result, BaseException):
                raise result
            if not isinstance(result, dict):
                raise TypeError(f"process() returned {type(result).__name__}, not a dict")
            _storable(result)  # the result must be able to cross a process boundary
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


def scratch_of(config: Config) -> str | None:
    """Where a pre-processor's files are deleted once processed (``process_block``)."""
    return None if config.output.keep == "all" else os.path.realpath(config.output.dir)


def _storable(result: dict[str, Any]) -> None:
    try:
        msgpack.packb(result)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            "process() returned what cannot be stored: plain data only (str, int, float, "
            f"bool, None, bytes, and lists and dicts of them): {exc}"
        ) from exc


def discard_derived(
    block: Sequence[DownloadComplete], files: Sequence[Downloaded], root: str
) -> None:
    """Delete the files a pre-processor made inside the output directory (``root``, real
    path) for files that are not kept (``output.keep``): they are not needed once
    processed, and a run that resumes makes them again."""
    downloaded = {done.item.id: done.path for done in block}
    for file in files:
        if file.path == downloaded.get(file.id):
            continue
        real = os.path.realpath(file.path)
        if real.startswith(root + os.sep):
            with contextlib.suppress(OSError):
                os.unlink(real)


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
