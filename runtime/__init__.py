"""conveyor's runtime: the core the actors use (``runtime.core``) and the host around them.

The host — the command line, the embedding API (``Pipeline``), displays, reports — sits
above the actors; the core sits below them. ``Pipeline`` and the run's exit codes are
imported lazily (PEP 562), so ``import runtime.core.config`` loads no actor and no pykka.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata as _metadata
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
        others = [d for d in _metadata.packages_distributions().get(name, []) if d != "conveyor"]
        owner = f", installed by {', '.join(sorted(set(others)))}" if others else ""
        raise ImportError(
            f"conveyor needs its own top-level package {name!r}, but the {name!r} on the "
            f"import path is not conveyor's ({where}{owner}). Another distribution uses "
            f"the same name: uninstall it, or give conveyor a virtual environment of its own."
        )


_check_own_packages()

from runtime.core.clock import Clock, SystemClock  # noqa: E402 - after the check above
from runtime.core.config import Config, load_config  # noqa: E402
from runtime.core.errors import (  # noqa: E402
    ConfigError,
    ConveyorError,
    FetchError,
    HTTPStatusError,
    InputError,
    SupervisionError,
)
from runtime.core.plugins import (  # noqa: E402
    BasePostProcessor,
    BaseProcessor,
    Downloaded,
    PluginContext,
)

if TYPE_CHECKING:  # for type checkers only: at run time these come from __getattr__
    from runtime.pipeline import EXIT_CODES, Pipeline, RunSummary

try:
    __version__ = _metadata.version("conveyor")
except _metadata.PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "0+unknown"

_LAZY = {"EXIT_CODES": "runtime.pipeline", "Pipeline": "runtime.pipeline",
         "RunSummary": "runtime.pipeline"}  # fmt: skip
"""Names whose modules start actors: imported on first use only."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EXIT_CODES",
    "BasePostProcessor",
    "BaseProcessor",
    "Clock",
    "Config",
    "ConfigError",
    "ConveyorError",
    "Downloaded",
    "FetchError",
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
