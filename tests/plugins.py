"""Plugins used by the tests through ``package.module:Class`` specs."""

from __future__ import annotations

from typing import Any

from messages import Outcome
from runtime.plugins import BasePostProcessor, BaseProcessor, Downloaded


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
