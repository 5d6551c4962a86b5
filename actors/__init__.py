"""conveyor's actors: one module per kind.

The classes are imported lazily (PEP 562): a worker process imports only the modules of
the actors it runs, not the StateKeeper, the ledger or the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers; at run time see __getattr__
    from actors.downloader import Downloader
    from actors.post_processor import PostProcessor
    from actors.processor import Processor
    from actors.state_keeper import StateKeeper
    from actors.supervisor import Supervisor

__conveyor_package__ = True
"""Marks this package as conveyor's (``runtime`` checks it: see ``_check_own_packages``)."""

__all__ = ["Downloader", "PostProcessor", "Processor", "StateKeeper", "Supervisor"]

_MODULES = {
    "Downloader": "actors.downloader",
    "PostProcessor": "actors.post_processor",
    "Processor": "actors.processor",
    "StateKeeper": "actors.state_keeper",
    "Supervisor": "actors.supervisor",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
