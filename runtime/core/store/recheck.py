"""Recheck: are the files of finished items still what the state says they are?

``run --recheck`` looks at every completed or skipped item's file in the output directory
before a run: a missing one, or one of another size (or, with ``full``, another sha256),
puts its item back to pending, and a changed file is removed so that it is downloaded
again rather than taken as already in place. Nothing outside the output directory is
ever touched.

With ``output.keep`` other than ``all``, files are deleted once their outcome is
committed (``discard``), and a run that starts deletes what an interrupted one meant to
(``sweep_unkept``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from runtime.core.errors import ConveyorError
from runtime.core.logs import get_logger
from runtime.core.store.protocol import Store

__all__ = ["discard", "recheck", "refuse_foreign_files", "sweep_unkept"]

log = get_logger("state")


def recheck(store: Store, out_dir: Path, full: bool = False) -> tuple[int, list[str]]:
    """Put completed and skipped items whose file is gone or changed back to pending;
    committed before returning.

    Returns:
        How many files were checked, and the ids put back to pending.
    """
    kept = store.kept_files()
    bad = []
    for item_id, name, size, sha in kept:
        path = out_dir / name
        if not _file_matches(path, size, sha, full):
            bad.append(item_id)
            # A changed file would be taken as already in place: remove it, so the item
            # is downloaded again (a directory in its place is left alone).
            if _inside(path.parent, out_dir):  # never touch a file outside the output
                with contextlib.suppress(IsADirectoryError, FileNotFoundError):
                    path.unlink()
    store.requeue(bad)
    store.commit()
    return len(kept), bad


def discard(paths: list[str]) -> int:
    """Delete the files of committed outcomes that are not kept (``output.keep``); one
    already gone is fine. Returns how many could not be deleted (each is logged)."""
    failed = 0
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed += 1
            log.warning("cannot delete a file that is not kept", path=path, error=str(exc))
    return failed


def sweep_unkept(store: Store, out_dir: Path, statuses: tuple[str, ...], parts: bool) -> int:
    """Delete what an interrupted run meant to delete: the files of items recorded as not
    kept since the last mark (see ``Store.unkept_since_sweep``), and with ``parts`` their
    partial files; then move the mark. Only when the state's files were last kept in
    ``out_dir`` (an ``output.dir`` that changed holds other files). Returns how many."""
    here = os.path.realpath(out_dir)
    if not statuses:
        store.set_meta(output_dir=here)
        return 0
    names, newest = store.unkept_since_sweep(statuses)
    swept = 0
    if store.get_meta("output_dir") in (None, here):
        for name in names:
            paths = (out_dir / name, out_dir / (name + ".part")) if parts else (out_dir / name,)
            for path in paths:
                if _inside(path.parent, out_dir) and _regular(path):
                    try:
                        path.unlink()
                        swept += 1
                    except OSError as exc:
                        log.warning("cannot delete a file that is not kept", path=str(path),
                                    error=str(exc))  # fmt: skip
    store.set_meta(output_dir=here, discarded_through=newest)
    store.commit()
    return swept


def refuse_foreign_files(store: Store, out_dir: Path, state_dir: Path) -> None:
    """With ``output.keep`` other than ``all``, a new state needs an output directory
    without files: conveyor would take a file already at an item's name for its download,
    process it and delete it.

    Raises:
        ConveyorError: naming the directory and one of its entries.
    """
    if store.get_meta("run_no") is not None:
        return  # a run on this state came before: the files there are its own
    state = os.path.realpath(state_dir)
    try:
        with os.scandir(out_dir) as entries:
            for entry in entries:
                if os.path.realpath(entry.path) != state:
                    raise ConveyorError(
                        f"{out_dir} (output.dir) is not empty ({entry.name!r} is there): with "
                        "output.keep other than 'all' conveyor deletes the files it processes, "
                        "and would take a file already at an item's name for its download; "
                        "give an empty or new directory"
                    )
    except FileNotFoundError:
        return


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _inside(folder: Path, root: Path) -> bool:
    """Whether ``folder`` resolves (symlinks included) to ``root`` or below it."""
    real, real_root = os.path.realpath(folder), os.path.realpath(root)
    return real == real_root or real.startswith(real_root + os.sep)


def _file_matches(path: Path, size: int | None, sha256: str | None, full: bool) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (and ``sha256`` when ``full``)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
        return False
    if not full or sha256 is None:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256
