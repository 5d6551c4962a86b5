"""Pre-processor, processor and post-processor plugins, and the built-in ones.

A plugin is named ``package.module:Class`` in the config and built with the keyword
arguments of ``processing.<stage>_options`` (see ``runtime.core.pluginload``, which also
runs classes written for download-pipeline-processor through ``runtime.core.filedata``).

- ``BasePreProcessor.pre_process(downloaded) -> Downloaded``: runs on every downloaded
  file just before the processor, in the same actor; what it raises fails the item
  ``pre_process_error`` and the processor does not see it.
- ``BaseProcessor.process(downloaded) -> dict``: runs on every downloaded file, in one of
  ``processing.workers`` processor actors. Whatever it raises fails that item only. The
  actor calls ``process_batch`` with blocks of files; its default calls ``process``.
- ``BasePostProcessor``: ``open(context)``, ``post_process(outcome)``, ``close()``; one
  instance sees every terminal outcome (completed, failed or skipped), in order, in blocks
  through ``post_process_batch`` (whose default calls ``post_process`` for each).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from messages import OUTCOME_FIELDS, Outcome
from runtime.core.store.compact import compact_jsonl

__all__ = [
    "BasePostProcessor",
    "BasePreProcessor",
    "BaseProcessor",
    "ChecksumProcessor",
    "Downloaded",
    "JsonlManifest",
    "NullPostProcessor",
    "NullProcessor",
    "PluginContext",
    "call_batch",
    "failure",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Downloaded:
    """A file that is verified and in place, as a processor sees it."""

    id: str
    """The item's id."""
    url: str
    """Where it came from."""
    name: str
    """Its name inside the output directory."""
    path: str
    """Absolute path of the file."""
    size: int
    """Bytes in the file."""
    sha256: str
    """Digest computed while downloading."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The entry's other keys (beyond ``url``, ``id``, ``name``, ``sha256``, ``size``), as
    the input gave them: what the file is about."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginContext:
    """Where a post-processor may write."""

    output_dir: Path
    """The run's output directory."""
    state_dir: Path
    """The run's state directory."""
    manifest: Path
    """The configured manifest path."""


class BaseProcessor:
    """Turn a downloaded file into a result dict (JSON-like values only)."""

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        """Process one file; raise to fail this item."""
        raise NotImplementedError

    def process_batch(self, files: Sequence[Downloaded]) -> list[dict[str, Any] | Exception]:
        """Process a block of files (up to 32), one result per file, in order: a result
        dict, or the exception that fails that file.

        The default calls ``process`` for each; override it to work on a whole block at
        once (one database round trip, one model call on a batch).
        """
        results: list[dict[str, Any] | Exception] = []
        for downloaded in files:
            try:
                results.append(self.process(downloaded))
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is the item's
                results.append(exc)
        return results


class BasePreProcessor:
    """Prepare a downloaded file for the processor (convert, split, look something up)."""

    def pre_process(self, downloaded: Downloaded) -> Downloaded:
        """Return the file the processor gets (``dataclasses.replace`` of ``downloaded``
        with another ``path`` or more ``fields``, or ``downloaded`` itself); raise to fail
        this item."""
        raise NotImplementedError

    def pre_process_batch(self, files: Sequence[Downloaded]) -> list[Downloaded | Exception]:
        """Pre-process a block of files, one answer per file, in order: the file for the
        processor, or the exception that fails it. The default calls ``pre_process``."""
        results: list[Downloaded | Exception] = []
        for downloaded in files:
            try:
                results.append(self.pre_process(downloaded))
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is the item's
                results.append(exc)
        return results


class BasePostProcessor:
    """Record every terminal outcome: the single serialisation point of a run."""

    def open(self, context: PluginContext) -> None:
        """Prepare before the first outcome (open files, connections)."""

    def post_process(self, outcome: Outcome) -> None:
        """Record one outcome; raise to fail this item."""
        raise NotImplementedError

    def post_process_batch(self, outcomes: Sequence[Outcome]) -> list[Exception | None]:
        """Record a block of outcomes (up to 512), in order; for each, None or the
        exception that fails that item. ``flush`` follows each block.

        The default calls ``post_process`` for each; override it to write a block at once.
        """
        errors: list[Exception | None] = []
        for outcome in outcomes:
            try:
                self.post_process(outcome)
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is the item's
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def flush(self) -> None:
        """Make the outcomes recorded so far durable.

        Called after each batch, before the StateKeeper is told they were recorded (and
        then commits them as terminal); raise to fail the whole batch.
        """

    def close(self) -> None:
        """Flush and release after the last outcome."""


class NullProcessor(BaseProcessor):
    """Do nothing with the file."""

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        """Return an empty result."""
        return {}


class ChecksumProcessor(BaseProcessor):
    """Read the file back and report its sha256 and size, as found on disk."""

    def __init__(self, chunk_size: int = 1 << 20) -> None:
        self.chunk_size = chunk_size

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        """Hash the file on disk; fail when it differs from what was downloaded."""
        digest = hashlib.sha256()
        size = 0
        with open(downloaded.path, "rb") as fh:
            while chunk := fh.read(self.chunk_size):
                digest.update(chunk)
                size += len(chunk)
        hexdigest = digest.hexdigest()
        if hexdigest != downloaded.sha256 or size != downloaded.size:
            raise ValueError(f"file on disk changed after download: {downloaded.path}")
        return {"sha256": hexdigest, "size": size}


class NullPostProcessor(BasePostProcessor):
    """Record nothing (the state store still has every outcome)."""

    def post_process(self, outcome: Outcome) -> None:
        """Drop the outcome."""


class JsonlManifest(BasePostProcessor):
    """Append one JSON line per terminal item to the manifest.

    Delivery is at-least-once: after a crash an item may be recorded again by the resumed
    run, and an item failed ``host_down`` is tried again if its host comes back. When the
    manifest already existed at ``open``, or a ``host_down`` line was written, ``close``
    compacts it to one line per id (the last one wins) without loading it into memory.
    """

    FIELDS = tuple(f for f in OUTCOME_FIELDS if f != "done_seq")
    """What a line holds: the outcome (its place in the state's record is the state's)."""

    def __init__(self, path: str = "") -> None:
        self.path_option = path
        self.path: Path | None = None
        self.fh: IO[str] | None = None
        self.resumed = False
        self.supersedable = False

    def open(self, context: PluginContext) -> None:
        """Open the manifest for appending."""
        self.path = Path(self.path_option) if self.path_option else context.manifest
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.resumed = self.path.exists() and self.path.stat().st_size > 0
        self.fh = self.path.open("a", encoding="utf-8")

    def post_process(self, outcome: Outcome) -> None:
        """Write the outcome's line."""
        assert self.fh is not None, "open() was not called"
        if outcome.error_kind == "host_down":
            self.supersedable = True  # its host may come back and the item end otherwise
        # Field by field, not dataclasses.asdict: that deep-copies every value and cost as
        # much as the rest of the post-processor together.
        record = {k: getattr(outcome, k) for k in self.FIELDS}
        if not record["fields"]:
            del record["fields"]  # (most entries have none: their lines stay as they were)
        if not record["node"]:
            del record["node"]  # (only a cluster's files are on another machine)
        self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Flush the written lines to the file."""
        if self.fh is not None:
            self.fh.flush()

    def close(self) -> None:
        """Close the file, compacting it when this run appended to an earlier one."""
        if self.fh is None:
            return
        self.fh.close()
        self.fh = None
        if (self.resumed or self.supersedable) and self.path is not None:
            compact_jsonl(self.path)


def call_batch(
    hook: Callable[[Sequence[Any]], Sequence[Any]], items: Sequence[Any], what: str
) -> list[Any]:
    """Call a plugin's batch hook (``process_batch``, ``post_process_batch``): one answer
    per item, or, when the hook raises or answers for another number of items, that
    exception for every item (a plugin's failure is its items', never the actor's)."""
    try:
        answers = list(hook(items))
        if len(answers) != len(items):
            raise TypeError(
                f"{hook.__name__}() returned {len(answers)} results for {len(items)} {what}"
            )
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is the items', not ours
        return [exc] * len(items)
    return answers


def failure(exc: BaseException) -> str:
    """A plugin's exception as an item's error: ``Type: message``."""
    return f"{type(exc).__name__}: {exc}"
