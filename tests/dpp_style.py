"""Plugins written as download-pipeline-processor documents them: duck-typed classes
built with ``debug=``, logging through ``self.log``, reading an entry's extra fields as
attributes. Nothing here imports conveyor. ``DPP_RECORD`` names the JSONL file the
post-processor appends to (one line per call, flushed)."""

from __future__ import annotations

import json
import os
from typing import Any


class Processor:
    """What that project's base class does: keep ``debug``, make ``log``."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug


class TagPreProcessor(Processor):
    """Marks the file as seen; fails entries whose ``kind`` is ``bad-pre``."""

    def pre_process(self, file_data: Any) -> Any:
        if file_data.kind == "bad-pre":
            raise ValueError(f"cannot pre-process {file_data.name}")
        file_data.pre_seen = True
        return file_data


class SpeakerProcessor(Processor):
    """Returns what it saw; fails entries whose ``kind`` is ``bad-process``. Samples how
    many files are in the download directory as it runs (``disk``)."""

    def process(self, file_data: Any) -> Any:
        self.log.debug(f"processing {file_data.name}")
        if file_data.kind == "bad-process":
            raise RuntimeError(f"cannot process {file_data.name}")
        on_disk = len(os.listdir(file_data.local_path.parent))
        return {
            "speaker": file_data.speaker,
            "pre_seen": file_data.pre_seen,
            "size": file_data.local_path.stat().st_size,
            "disk": on_disk,
            "debug": self.debug,
        }


class StagePostProcessor(Processor):
    """Records every file, failed ones by stage; fails entries of kind ``bad-post``
    (after recording them)."""

    def post_process(self, result: Any, file_data: Any) -> None:
        record = {
            "id": file_data.id,
            "name": file_data.name,
            "speaker": file_data.additional_fields.get("speaker"),
            "result": result,
            "stage": file_data.error.stage if file_data.has_error else None,
            "error": str(file_data.error.error) if file_data.has_error else None,
            "debug": self.debug,
        }
        with open(os.environ["DPP_RECORD"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if file_data.additional_fields.get("kind") == "bad-post":
            raise RuntimeError("cannot record this one")
