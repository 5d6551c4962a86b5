"""Plugins used by the tests through ``package.module:Class`` specs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from messages import Outcome
from runtime.core.config import Config
from runtime.core.plugins import BasePostProcessor, BaseProcessor, Downloaded
from runtime.core.transport import RequestsTransport, Response, Transport


class FailingProcessor(BaseProcessor):
    """Raise for files whose name starts with ``boom``; report the size otherwise."""

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        if downloaded.name.startswith("boom"):
            raise ValueError(f"cannot process {downloaded.name}")
        return {"size": downloaded.size}


class ExplodingPostProcessor(BasePostProcessor):
    """Raise for outcomes whose id starts with ``pp-boom``."""

    def post_process(self, outcome: Outcome) -> None:
        if outcome.id.startswith("pp-boom"):
            raise RuntimeError("post-processing refused")


class BlockProcessor(BaseProcessor):
    """Works on whole blocks: records each block's size in every result; fails files
    whose name starts with ``boom``. (No ``process``: only blocks.)"""

    def process_batch(self, files: Sequence[Downloaded]) -> list[dict[str, Any] | Exception]:
        return [
            ValueError(f"cannot process {f.name}")
            if f.name.startswith("boom")
            else {"block": len(files), "size": f.size}
            for f in files
        ]


class BlockManifest(BasePostProcessor):
    """Records outcomes a block at a time into ``blocks`` (sizes) and ``ids``; refuses
    ids that start with ``pp-boom``."""

    blocks: ClassVar[list[int]] = []
    ids: ClassVar[list[str]] = []

    def post_process_batch(self, outcomes: Sequence[Outcome]) -> list[Exception | None]:
        BlockManifest.blocks.append(len(outcomes))
        BlockManifest.ids.extend(o.id for o in outcomes)
        return [RuntimeError("refused") if o.id.startswith("pp-boom") else None for o in outcomes]


class CrashOnceTransportFactory:
    """Requests transports whose first request for a url containing ``crash-me`` raises.

    "First" is remembered in a marker file, so it holds across worker processes; the
    factory is picklable, so ``download.processes`` can send it to them.
    """

    def __init__(self, config: Config, marker: str) -> None:
        self.config = config
        self.marker = marker

    def __call__(self) -> Transport:
        return _CrashOnce(RequestsTransport(self.config), Path(self.marker))


class _CrashOnce:
    def __init__(self, inner: RequestsTransport, marker: Path) -> None:
        self.inner = inner
        self.marker = marker

    def open(self, url: str, headers: Mapping[str, str]) -> Response:
        if "crash-me" in url and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("a bug in the transport")
        return self.inner.open(url, headers)

    def close(self) -> None:
        self.inner.close()


class FieldsProcessor(BaseProcessor):
    """Reports the ``speaker`` an entry named among its other keys (``Downloaded.fields``)."""

    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        return {"speaker": downloaded.fields.get("speaker")}
