"""The state of a run: every item, pending or finished, and what was learnt of its hosts.

- ``protocol``: what a store is (``Store``, ``StoreView``) — the contract;
- ``admission``: which input entries become items, under which names;
- ``recheck``: whether finished items' files are still in place, and deleting the ones
  not kept (``output.keep``);
- ``sqlite``: the durable store (``state.sqlite3``), its schema and migrations;
- ``memory``: a store that keeps nothing between runs;
- ``view``: the read-only look at a SQLite state that ``status`` and the service take;
- ``compact``: the last line per id of a JSONL file larger than memory (the manifest).

``open_store`` builds the store a configuration asks for.
"""

from __future__ import annotations

from pathlib import Path

from runtime.core.config import Config
from runtime.core.store.admission import Admission
from runtime.core.store.memory import MemoryStore
from runtime.core.store.protocol import (
    TERMINAL,
    IngestResult,
    NewItem,
    Store,
    StoreError,
    StoreView,
)
from runtime.core.store.recheck import discard, recheck, refuse_foreign_files, sweep_unkept
from runtime.core.store.sqlite import PENDING_OF_SQL, SQLiteStore
from runtime.core.store.view import (
    NoStateError,
    SQLiteView,
    open_view,
    state_exists,
    state_file,
)

__all__ = [
    "PENDING_OF_SQL",
    "TERMINAL",
    "Admission",
    "IngestResult",
    "MemoryStore",
    "NewItem",
    "NoStateError",
    "SQLiteStore",
    "SQLiteView",
    "Store",
    "StoreError",
    "StoreView",
    "discard",
    "open_store",
    "open_view",
    "recheck",
    "refuse_foreign_files",
    "state_exists",
    "state_file",
    "sweep_unkept",
]


def open_store(config: Config, *, lanes: bool = True) -> Store:
    """The store of ``config.state`` (``backend``, ``dir``).

    ``lanes``: sort pending items into the lanes of ``download.large_threshold`` (a run);
    without, the state keeps the threshold it was written with (``retry``, ``recheck``).

    Raises:
        StoreError: the state cannot be opened (the message names its directory).
    """
    threshold = config.download.large_threshold if lanes else None
    if config.state.backend == "memory":
        return MemoryStore(large_threshold=threshold)
    return SQLiteStore(Path(config.state.dir), large_threshold=threshold)
