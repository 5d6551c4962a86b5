"""Helpers shared by the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.core.config import Config

ENGINE = "curl"
"""The download engine ``make_config`` sets (the robustness tests run with each)."""


CHECKSUM = "runtime.plugins:ChecksumProcessor"
"""A processor that runs (the default one is skipped): reads each file back."""


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
    data["download"]["engine"] = ENGINE
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


ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 120


def run_cli(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``python -m runtime ARGS`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "runtime", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        **kwargs,
    )


def start_cli(*args: str | Path, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m runtime ARGS`` in the background, stdout and stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
