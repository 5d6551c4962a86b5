"""Plugins written for download-pipeline-processor, run as they are.

Such a plugin is a class with ``pre_process(file_data)``, ``process(file_data)`` or
``post_process(result, file_data)``, built with ``Class(debug=...)`` and logging through
``self.log``. conveyor recognises it by that method (it is not a subclass of conveyor's
base class) and wraps it in an adapter of this module, which hands it a ``FileData``:

- ``url``, ``id``, ``name``, ``local_path`` (a ``Path``; None when no file was kept or
  downloaded);
- ``additional_fields``: the entry's other keys, each also readable (and settable) as an
  attribute, ``file_data.speaker``;
- ``error``: None, or a ``FileError`` whose ``stage`` is ``download``, ``pre_process``,
  ``process`` or ``post_process`` and whose ``error`` is the exception; ``has_error`` and
  ``add_error(stage, error)``.

A processor's return value must be plain data (what JSON or msgpack can hold): it crosses
to the post-processor, maybe from another process, as the item's ``result`` —
``{"result": value}`` on the manifest line. The post-processor gets it back as it was,
with the plain values the processor set on its ``FileData`` (and a new ``local_path``),
and is called for failed items too, with ``result=None`` and ``error`` set (the
exception is a ``StageError`` holding conveyor's message and ``error_kind``). What the
pre-processor sets reaches the processor. ``log`` is a ``logging.Logger`` named after
the class (conveyor's logs show its lines).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

import msgpack

from messages import Outcome
from runtime.core.plugins import BasePostProcessor, BasePreProcessor, BaseProcessor, Downloaded

__all__ = [
    "DUCK_METHODS",
    "FileData",
    "FileError",
    "StageError",
    "build_duck",
    "duck_adapter",
]

STAGE_OF_KIND = {
    "pre_process_error": "pre_process",
    "processing_error": "process",
    "post_process_error": "post_process",
}
"""The stage a failed item's ``error_kind`` names; every other kind is ``download``."""


@dataclasses.dataclass(frozen=True, slots=True)
class FileError:
    """Where an item failed, and why."""

    stage: str
    """``download``, ``pre_process``, ``process`` or ``post_process``."""
    error: BaseException
    """The exception."""


class StageError(Exception):
    """A failure as conveyor recorded it: ``str()`` is its error text, ``kind`` its
    ``error_kind`` (``http_4xx``, ``processing_error``, …)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclasses.dataclass(eq=False)
class FileData:
    """One file as a download-pipeline-processor plugin sees it (see the module). A
    dataclass, as there: ``dataclasses.replace`` and ``asdict`` work on it."""

    url: str
    id: str | None = None
    name: str | None = None
    local_path: Path | None = None
    additional_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: FileError | None = None

    def __getattr__(self, key: str) -> Any:
        """An extra field of the entry, as an attribute."""
        if key in _OWN or key.startswith("__"):
            raise AttributeError(key)  # (not yet set: during copy or unpickling)
        try:
            return self.additional_fields[key]
        except KeyError:
            raise AttributeError(f"FileData has no field {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        """Set one of the attributes above, or else an extra field."""
        if key in _OWN:
            object.__setattr__(self, key, value)
        else:
            self.additional_fields[key] = value

    @property
    def has_error(self) -> bool:
        """Whether a stage failed for this file."""
        return self.error is not None

    def add_error(self, stage: str, error: BaseException) -> None:
        """Record that ``stage`` failed with ``error``."""
        self.error = FileError(stage, error)


_OWN = frozenset(f.name for f in dataclasses.fields(FileData))


def file_data_of(downloaded: Downloaded) -> FileData:
    """A downloaded file as a ``FileData``."""
    return FileData(
        url=downloaded.url,
        id=downloaded.id,
        name=downloaded.name,
        local_path=Path(downloaded.path),
        additional_fields=dict(downloaded.fields),
    )


def _raise_recorded(file_data: FileData) -> None:
    """A plugin that recorded its failure with ``add_error`` instead of raising."""
    if file_data.error is not None:
        error = file_data.error.error
        raise error if isinstance(error, Exception) else RuntimeError(str(error))


class DuckPreProcessor(BasePreProcessor):
    """Runs a class with ``pre_process(file_data) -> file_data``."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin

    def pre_process(self, downloaded: Downloaded) -> Downloaded:
        """Hand the plugin a ``FileData``; what it returns is what the processor gets."""
        out = self.plugin.pre_process(file_data_of(downloaded))
        if not isinstance(out, FileData):
            raise TypeError(f"pre_process() returned {type(out).__name__}, not the file_data")
        _raise_recorded(out)
        return dataclasses.replace(
            downloaded,
            path=str(out.local_path) if out.local_path is not None else downloaded.path,
            fields=dict(out.additional_fields),
        )


class DuckProcessor(BaseProcessor):
    """Runs a class with ``process(file_data) -> Any``; the value is kept as
    ``{"result": value}``, and what the plugin set on the ``FileData`` (plain values) or
    a new ``local_path`` as ``"file_data"``, for the post-processor."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        """Hand the plugin a ``FileData``; keep what it returns and what it set."""
        file_data = file_data_of(downloaded)
        value = self.plugin.process(file_data)
        _raise_recorded(file_data)
        result: dict[str, Any] = {"result": value}
        changes: dict[str, Any] = {}
        fields = {
            k: v
            for k, v in file_data.additional_fields.items()
            if not _same(downloaded.fields.get(k, _MISSING), v) and _storable(v)
        }
        if fields:
            changes["fields"] = fields
        if file_data.local_path is not None and str(file_data.local_path) != downloaded.path:
            changes["local_path"] = str(file_data.local_path)
        if changes:
            result["file_data"] = changes
        return result


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - (an array's ==, say): take it as changed
        return False


def _storable(value: Any) -> bool:
    try:
        msgpack.packb(value)
    except Exception:  # noqa: BLE001 - whatever msgpack refuses stays with the processor
        return False
    return True


class DuckPostProcessor(BasePostProcessor):
    """Runs a class with ``post_process(result, file_data)`` (or ``post_process(result)``)
    for every terminal item: ``result=None`` and ``file_data.error`` set for failed ones."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin
        params: list[inspect.Parameter] = []
        with contextlib.suppress(TypeError, ValueError):  # none to read: the current form
            params = list(inspect.signature(plugin.post_process).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.with_file_data = (
            not params or len(positional) != 1 or any(p.kind == p.VAR_POSITIONAL for p in params)
        )

    def post_process(self, outcome: Outcome) -> None:
        """Call the plugin with the processor's value and the item as a ``FileData``."""
        file_data = FileData(
            url=outcome.url,
            id=outcome.id,
            name=outcome.name,
            local_path=Path(outcome.path) if outcome.path else None,
            additional_fields=dict(outcome.fields),
        )
        changes = outcome.result.get("file_data")
        if isinstance(changes, dict):  # what the processor set on its FileData
            file_data.additional_fields.update(changes.get("fields") or {})
            if changes.get("local_path"):
                file_data.local_path = Path(changes["local_path"])
        result: Any = None
        if outcome.status == "failed":
            kind = outcome.error_kind or ""
            file_data.add_error(
                STAGE_OF_KIND.get(kind, "download"), StageError(kind, outcome.error or kind)
            )
        elif "result" in outcome.result:
            result = outcome.result["result"]
        elif outcome.result:
            result = outcome.result  # (a conveyor processor's dict)
        if self.with_file_data:
            self.plugin.post_process(result, file_data)
        else:
            self.plugin.post_process(result)


DUCK_METHODS: dict[type[Any], tuple[str, type[Any]]] = {
    BasePreProcessor: ("pre_process", DuckPreProcessor),
    BaseProcessor: ("process", DuckProcessor),
    BasePostProcessor: ("post_process", DuckPostProcessor),
}
"""For each conveyor base class: the method that makes a class a plugin of that stage
without subclassing it, and the adapter that runs it."""


def duck_adapter(cls: type[Any], base: type[Any]) -> type[Any] | None:
    """The adapter that runs ``cls`` as a plugin of ``base``'s stage, or None when it has
    no such method."""
    method, adapter = DUCK_METHODS[base]
    return adapter if callable(getattr(cls, method, None)) else None


def duck_arguments(cls: type[Any], options: dict[str, Any], debug: bool) -> dict[str, Any]:
    """``options``, with ``debug`` when the class takes it (as that project's do)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return dict(options)
    takes_debug = any(p.name == "debug" or p.kind == p.VAR_KEYWORD for p in params)
    return {"debug": debug, **options} if takes_debug else dict(options)


def build_duck(cls: type[Any], base: type[Any], options: dict[str, Any], debug: bool) -> Any:
    """Build ``cls`` as that project does (``debug=``, and a ``log`` if it has none) and
    wrap it for ``base``'s stage."""
    adapter = duck_adapter(cls, base)
    assert adapter is not None, f"{cls.__name__} is no plugin of {base.__name__}'s stage"
    plugin = cls(**duck_arguments(cls, options, debug))
    if getattr(plugin, "log", None) is None:
        try:
            plugin.log = logging.getLogger(cls.__name__)
        except AttributeError:
            raise TypeError(
                f"{cls.__name__} has no log and no room for one (__slots__ without 'log')"
            ) from None
    return adapter(plugin)
