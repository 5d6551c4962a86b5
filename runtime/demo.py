"""``python -m runtime demo``: the real pipeline against generated files on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path

from runtime.core.configfile import load_config
from runtime.core.errors import ConveyorError
from runtime.core.lock import StateLock
from runtime.fileserver import LocalFileServer
from runtime.foreground import run_pipeline

__all__ = ["run_demo"]


MARK = ".conveyor-demo"
"""Marks a directory the demo created; only such a directory is ever cleaned by it."""
_OWN = frozenset({MARK, "files.ndjson", "conveyor.toml", "downloads", "state"})


def _claim(root: Path) -> str | None:
    """Make ``root`` the demo's directory; return why it cannot be, or None.

    The demo deletes its earlier output and state before it starts (the server's port
    changes every time), so it refuses a directory that holds anything it did not create.
    """
    if root.exists() and not root.is_dir():
        return f"{root} exists and is not a directory"
    entries = set(os.listdir(root)) if root.exists() else set()
    if entries and MARK not in entries:
        return (
            f"{root} is not empty and was not created by the demo; "
            "pick a new or empty directory with --dir"
        )
    foreign = sorted(entries - _OWN)
    if foreign:
        return (
            f"{root} holds files the demo did not create ({', '.join(foreign[:5])}); "
            "pick a new or empty directory with --dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARK).write_text("made by `python -m runtime demo`; safe to delete\n")
    return None


def _write_demo(root: Path, server: LocalFileServer, files: dict[str, bytes]) -> Path:
    with (root / "files.ndjson").open("w") as fh:
        for path, body in files.items():
            entry = {
                "id": path.strip("/"),
                "url": server.url(path),
                "name": path.strip("/"),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            fh.write(json.dumps(entry) + "\n")
        fh.write(json.dumps({"id": "missing", "url": server.url("/missing.bin")}) + "\n")
        fh.write('{"url": "ftp://example.invalid/not-http.bin"}\n')
    config = root / "conveyor.toml"
    config.write_text(
        '[input]\npath = "files.ndjson"\n\n[output]\ndir = "downloads"\n\n'
        '[state]\ndir = "state"\n\n[download]\nconcurrency = 16\n\n'
        "[retry]\nmax_attempts = 3\nbackoff_initial = 0.05\n\n"
        "[circuit]\nreset_timeout = 2.0\n"
    )
    return config


def run_demo(directory: str, count: int) -> int:
    """Serve ``count`` generated files (every 7th fails once first) and download them."""
    rng = random.Random(7)
    files = {f"/file-{i:04d}.bin": rng.randbytes(rng.randint(1_000, 200_000)) for i in range(count)}
    flaky = {path: 1 for i, path in enumerate(files) if i % 7 == 3}
    root = Path(directory).resolve()
    try:
        problem = _claim(root)
        if problem is None:
            with StateLock.acquire(root / "state"):  # not while another demo runs there
                for stale in ("downloads", "state"):  # the server's port changes: start afresh
                    shutil.rmtree(root / stale, ignore_errors=True)
    except (OSError, ConveyorError) as exc:
        problem = str(exc)
    if problem is not None:
        print(f"conveyor: demo: {problem}", file=sys.stderr)
        return 2
    with LocalFileServer(files, fail_first=flaky) as server:
        config = load_config(_write_demo(root, server, files), environ={})
        print(
            f"demo: serving {count} files on {server.base_url} ({len(flaky)} of them fail "
            f"once before they succeed), plus one missing file and one ftp:// entry "
            f"that fail on purpose",
            file=sys.stderr,
        )
        print(
            f"demo: config {root / 'conveyor.toml'}; files land in {config.output.dir}",
            file=sys.stderr,
        )
        code = run_pipeline(config)
    print(f"demo: manifest {config.manifest_path} (one JSON line per item)", file=sys.stderr)
    failed = _failed_ids(config.manifest_path)
    if code == 1 and failed == {"missing", f"line:{count + 2}"}:
        print(
            "demo: OK - every file arrived and verified; the two deliberate failures "
            "are in the manifest",
            file=sys.stderr,
        )
        return 0
    print(f"demo: unexpected result (exit code {code}, failed: {sorted(failed)})", file=sys.stderr)
    return code or 1


def _failed_ids(manifest: Path) -> set[str]:
    with manifest.open() as fh:
        return {rec["id"] for rec in map(json.loads, fh) if rec["status"] != "completed"}
