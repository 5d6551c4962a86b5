"""The floor plan: the core loads no actor, and a foreign package shadowing one of
conveyor's top-level packages is named at once instead of failing obscurely later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def python(
    code: str, cwd: Path, extra_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = None
    if extra_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(extra_path)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_importing_the_core_loads_no_actor_and_no_pykka(tmp_path: Path) -> None:
    """``import runtime.core.config`` (and ``runtime`` itself) stay below the actors."""
    result = python(
        "import sys, runtime, runtime.core.config, runtime.core.store, runtime.core.scheduler\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pykka', 'actors'))\n"
        "print(loaded)",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_lazy_names_still_import(tmp_path: Path) -> None:
    """``from runtime import Pipeline`` and the documented plugin paths keep working."""
    result = python(
        "from runtime import Pipeline, EXIT_CODES, BaseProcessor\n"
        "from runtime.plugins import JsonlManifest, ChecksumProcessor\n"
        "import runtime\n"
        "print(Pipeline.__module__, EXIT_CODES['ok'], 'Pipeline' in dir(runtime))",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["runtime.pipeline", "0", "True"]


def test_a_foreign_messages_package_is_named_clearly(tmp_path: Path) -> None:
    """Another ``messages`` earlier on the path: importing conveyor says which one and
    what to do, instead of ``cannot import name 'Demand'``."""
    foreign = tmp_path / "site" / "messages"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text('"""Somebody else\'s messages."""\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    result = python("import runtime", cwd=elsewhere, extra_path=tmp_path / "site")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: conveyor needs its own top-level package 'messages'")
    assert str(foreign) in last
    assert "virtual environment" in last
    clean = python("import runtime", cwd=elsewhere)
    assert clean.returncode == 0, clean.stderr


def test_every_package_is_installed() -> None:
    """``pyproject.toml`` lists its packages one by one: a new package missing there would
    work from a checkout (and an editable install) and be left out of a real one."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("actors", "messages", "runtime")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed
