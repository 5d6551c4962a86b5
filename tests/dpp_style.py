"""Plugins written as download-pipeline-processor documents them: duck-typed classes
built with ``debug=``, logging through ``self.log``, reading an entry's extra fields as
attributes. Nothing here imports conveyor. ``DPP_RECORD`` names the JSONL file the
post-processor appends to (one line per call, flushed)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from typing import Any


class Processor:
    """What that project's base class does: keep ``debug``."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug


class TagPreProcessor(Processor):
    """Converts the file (a copy next to it, which the processor then reads) and marks it
    seen; fails entries whose ``kind`` is ``bad-pre``."""

    def pre_process(self, file_data: Any) -> Any:
        if file_data.kind == "bad-pre":
            raise ValueError(f"cannot pre-process {file_data.name}")
        converted = file_data.local_path.with_name(file_data.local_path.name + ".conv")
        shutil.copyfile(file_data.local_path, converted)
        file_data.local_path = converted
        file_data.pre_seen = True
        return file_data


class SpeakerProcessor(Processor):
    """Returns what it saw and sets a transcript; fails entries whose ``kind`` is
    ``bad-process``. Samples how many files are in the download directory as it runs
    (``disk``, and ``disk_converted`` of the pre-processor's copies)."""

    def process(self, file_data: Any) -> Any:
        self.log.debug(f"processing {file_data.name}")
        if file_data.kind == "bad-process":
            raise RuntimeError(f"cannot process {file_data.name}")
        file_data.transcript = f"said by {file_data.speaker}"
        names = os.listdir(file_data.local_path.parent)
        converted = sum(name.endswith(".conv") for name in names)
        return {
            "speaker": file_data.speaker,
            "pre_seen": file_data.pre_seen,
            "converted": file_data.local_path.name.endswith(".conv"),
            "size": file_data.local_path.stat().st_size,
            "disk": len(names) - converted,
            "disk_converted": converted,
            "debug": self.debug,
        }


class StagePostProcessor(Processor):
    """Records every file, failed ones by stage, in a SQLite database it opens when built
    (so it must be called in the thread that built it) and in ``DPP_RECORD``; fails
    entries of kind ``bad-post`` (after recording them)."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__(debug)
        self.db = sqlite3.connect(os.environ["DPP_RECORD"] + ".sqlite3")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT)")

    def post_process(self, result: Any, file_data: Any) -> None:
        self.db.execute("INSERT INTO seen VALUES (?)", (file_data.id,))
        self.db.commit()
        record = {
            "id": file_data.id,
            "name": file_data.name,
            "speaker": file_data.additional_fields.get("speaker"),
            "transcript": file_data.additional_fields.get("transcript"),
            "result": result,
            "stage": file_data.error.stage if file_data.has_error else None,
            "error": str(file_data.error.error) if file_data.has_error else None,
            "debug": self.debug,
        }
        with open(os.environ["DPP_RECORD"], "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if file_data.additional_fields.get("kind") == "bad-post":
            raise RuntimeError("cannot record this one")


class Built:
    """Counts how many times it is built (a class attribute, read by the test)."""

    count = 0

    def __init__(self, debug: bool = False) -> None:
        Built.count += 1

    def process(self, file_data: Any) -> Any:
        return file_data.local_path.parent  # a Path: not plain data
