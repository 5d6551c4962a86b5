"""Compacting a JSONL file larger than memory: the last line per id wins, kept in the
order ids were first seen (the manifest after a resumed run). The lines pass through a
scratch SQLite table next to the file, so memory stays flat whatever its length."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path

__all__ = ["compact_jsonl"]


def compact_jsonl(path: Path) -> None:
    """Rewrite a JSONL manifest keeping the last line per id, in first-seen order."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        db = sqlite3.connect(Path(tmp) / "compact.sqlite3")
        db.execute("CREATE TABLE m (id TEXT PRIMARY KEY, pos INTEGER, text TEXT)")
        with path.open(encoding="utf-8") as fh:
            for pos, text in enumerate(fh):
                try:
                    key = str(json.loads(text)["id"])
                except (ValueError, KeyError, TypeError):
                    key = f"\x00unparsable:{pos}"  # keep lines we cannot read, untouched
                db.execute(
                    "INSERT INTO m VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET text=excluded.text",
                    (key, pos, text),
                )
        out = path.with_name(path.name + ".compact")
        with out.open("w", encoding="utf-8") as fh:
            for (text,) in db.execute("SELECT text FROM m ORDER BY pos"):
                fh.write(text)
        db.close()
        os.replace(out, path)
