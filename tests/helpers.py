"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.config import Config


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """A config rooted in tmp_path with quick commits and the given section overrides."""
    data: dict[str, dict[str, Any]] = {
        "output": {"dir": "out"},
        "state": {"dir": "state", "persist_interval": 0.05},
        "download": {"workers": 3, "mailbox": 2},
        "processing": {"workers": 2},
        "supervisor": {"shutdown_grace": 5.0},
        "retry": {"backoff_initial": 0.0},
        "circuit": {"reset_timeout": 0.02},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Config.from_mapping(data, base_dir=tmp_path)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [json.loads(line) for line in fh]


def files_outside(root: Path, allowed: list[Path]) -> list[str]:
    """Every file under root that is not under one of the allowed directories."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if not any(p.is_relative_to(a) for a in allowed):
                found.append(str(p))
    return found
