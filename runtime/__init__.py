"""conveyor's runtime: the core the actors use (``runtime.core``) and the host around them.

The host — the command line, the embedding API (``Pipeline``), displays, reports — sits
above the actors; the core sits below them. Every public name is
imported lazily (PEP 562), so ``import runtime.core.config`` loads no actor and no pykka,
and ``import runtime`` next to nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any


def _check_own_packages() -> None:
    """Fail at once, and clearly, when another distribution shadows a sibling package.

    conveyor installs the top-level packages ``runtime``, ``messages`` and ``actors``.
    Distributions with those names exist; one installed beside conveyor overwrites or
    shadows its files, which would otherwise surface as a baffling ``cannot import name``.
    """
    for name in ("messages", "actors"):
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        try:
            ours = origin is not None and "__conveyor_package__" in origin.read_text("utf-8")
        except OSError:
            ours = False
        if ours:
            continue
        where = f"found at {origin.parent}" if origin is not None else "not found"
        from importlib import metadata  # (slow to import: only when it goes wrong)

        others = [d for d in metadata.packages_distributions().get(name, []) if d != "conveyor"]
        owner = f", installed by {', '.join(sorted(set(others)))}" if others else ""
        raise ImportError(
            f"conveyor needs its own top-level package {name!r}, but the {name!r} on the "
            f"import path is not conveyor's ({where}{owner}). Another distribution uses "
            f"the same name: uninstall it, or give conveyor a virtual environment of its own."
        )


_check_own_packages()

if TYPE_CHECKING:  # for type checkers only: at run time these come from __getattr__
    from runtime.core.clock import Clock, SystemClock
    from runtime.core.config import Config
    from runtime.core.configfile import load_config
    from runtime.core.errors import (
        EXIT_CODES,
        ConfigError,
        ConveyorError,
        FetchError,
        HTTPStatusError,
        InputError,
        SupervisionError,
    )
    from runtime.core.filedata import FileData
    from runtime.core.plugins import (
        BasePostProcessor,
        BasePreProcessor,
        BaseProcessor,
        Downloaded,
        PluginContext,
    )
    from runtime.pipeline import Pipeline, RunSummary

    __version__: str

_LAZY = {
    "Clock": "runtime.core.clock",
    "SystemClock": "runtime.core.clock",
    "Config": "runtime.core.config",
    "load_config": "runtime.core.configfile",
    "EXIT_CODES": "runtime.core.errors",
    "ConfigError": "runtime.core.errors",
    "ConveyorError": "runtime.core.errors",
    "FetchError": "runtime.core.errors",
    "HTTPStatusError": "runtime.core.errors",
    "InputError": "runtime.core.errors",
    "SupervisionError": "runtime.core.errors",
    "BasePostProcessor": "runtime.core.plugins",
    "BasePreProcessor": "runtime.core.plugins",
    "FileData": "runtime.core.filedata",
    "BaseProcessor": "runtime.core.plugins",
    "Downloaded": "runtime.core.plugins",
    "PluginContext": "runtime.core.plugins",
    "Pipeline": "runtime.pipeline",
    "RunSummary": "runtime.pipeline",
}
"""Every public name, imported on first use: ``import runtime`` (and so the command
line's ``--version``) loads none of them."""


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib import metadata

        try:
            value: Any = metadata.version("conveyor")
        except metadata.PackageNotFoundError:  # run from a checkout that is not installed
            value = "0+unknown"
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'runtime' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EXIT_CODES",
    "BasePostProcessor",
    "BasePreProcessor",
    "BaseProcessor",
    "Clock",
    "Config",
    "ConfigError",
    "ConveyorError",
    "Downloaded",
    "FetchError",
    "FileData",
    "HTTPStatusError",
    "InputError",
    "Pipeline",
    "PluginContext",
    "RunSummary",
    "SupervisionError",
    "SystemClock",
    "__version__",
    "load_config",
]
