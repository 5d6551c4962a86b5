"""Admission: which entries of a block of input become items, and under which name.

The rules, whatever the store:

- An id already stored from the same input line (or, for submitted entries, with the same
  url) is the same entry read again — a resumed run reading its input once more — and
  adds nothing. An id stored from another line is a duplicate: rejected.
- Two items never write the same file: a name another item holds, a name where another
  item's file needs a directory (``a`` for ``a/b``), or a name below another item's file
  is a clash. A name the entry gave is rejected; a derived one (from the url) is made
  unique with a suffix from the item's id.

The store answers the questions (``known_ids``, ``held_names``, ``names_below``) one
statement per block, and stores the answer (``add``). Most blocks of a long input are new,
so they are not asked about first: ``add`` is told they were not checked, and a block it
finds a taken id or name in is taken again the careful way, which stays on until a block
turns out new again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from messages import Rejected, WorkItem
from runtime.core.hosts import host_of
from runtime.core.inputs import MAX_FILE_NAME_BYTES, derive_name
from runtime.core.store.protocol import IngestResult, NewItem, Store, TakenError

__all__ = ["Admission"]

MAX_RENAMES = 100
"""A derived name still clashing after this many suffixes is rejected."""

_Holders = dict[str, tuple[str, int]]


def _rename(name: str, item_id: str, attempt: int) -> str:
    """Give a derived name that clashes a suffix from the item id (within the length limit)."""
    folder, slash, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    suffix = f"-{item_id[:12]}" + (f"-{attempt}" if attempt else "")
    tail = f"{suffix}.{ext}" if ext else suffix
    room = MAX_FILE_NAME_BYTES - len(tail.encode("utf-8"))
    stem = stem.encode("utf-8")[: max(room, 1)].decode("utf-8", "ignore")
    return f"{folder}{slash}{stem}{tail}"


def _who(holder: tuple[str, int]) -> str:
    item_id, line = holder
    return f"item {item_id!r} (line {line})" if line else f"item {item_id!r}"


def _duplicate(item: WorkItem, reason: str) -> Rejected:
    prefix = f"line {item.line}: " if item.line else ""
    key = f"line:{item.line}" if item.line else f"submit:{item.id}:{item.url}"
    return Rejected(id=key, line=item.line, url=item.url, name=item.name, error=prefix + reason)


class Admission:
    """Admits blocks of input into one store (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.optimistic = True
        """Whether the next block goes in without its ids and names looked up."""

    def ingest(
        self, items: Sequence[WorkItem], rejected: Sequence[Rejected], derived: Iterable[str]
    ) -> IngestResult:
        """Admit a block: new items become pending, bad entries terminal rejects.

        ``rejected``: entries the reader could not parse; ``derived``: the ids of the
        items whose name was derived from the url (renamed on a clash, not rejected).
        """
        derived_ids = set(derived)
        if self.optimistic and items:
            try:
                return self._admit(items, rejected, derived_ids, {}, {}, checked=False)
            except TakenError:
                self.optimistic = False
        known = self.store.known_ids([i.id for i in items])
        taken = self.store.held_names([i.name for i in items])
        self.optimistic = not known and not taken
        return self._admit(items, rejected, derived_ids, known, taken, checked=True)

    def _admit(
        self,
        items: Sequence[WorkItem],
        rejected: Sequence[Rejected],
        derived_ids: set[str],
        known: dict[str, tuple[int, str]],
        taken: _Holders,
        *,
        checked: bool,
    ) -> IngestResult:
        """``ingest`` with what the store holds of the block's ids (``known``) and names
        (``taken``), when ``checked``; else those are left to ``add``."""
        store = self.store
        id_counts = Counter(i.id for i in items)
        # What the names' checks need from the store, in one statement each per block
        # (not two queries per entry): stored files where a name needs a directory, and
        # stored files below a name.
        parents = {
            "/".join(parts[:k])
            for parts in (i.name.split("/") for i in items)
            for k in range(1, len(parts))
        }
        files_at = store.held_names(sorted(parents)) if parents else {}
        below = store.names_below([i.name for i in items])
        rows: list[NewItem] = []
        rejects = list(rejected)
        batch_dirs: set[str] = set()  # directories implied by this block's accepted names
        hosts: set[str] = set()
        large_hosts: set[str] = set()
        threshold = store.large_threshold
        for item in items:
            prior = known.get(item.id)
            if prior is not None:
                if prior[0] == item.line and (item.line > 0 or prior[1] == item.url):
                    continue  # the same entry read again (a resumed run)
                where = f"line {prior[0]}" if prior[0] else "an earlier submission"
                rejects.append(
                    _duplicate(item, f"duplicate id {item.id!r} (first seen on {where})")
                )
                continue
            name = item.name
            # Derived names are known by id; when two entries of the block share an id, the
            # one that *gave* its name is not derived, whatever the other line did.
            is_derived = item.id in derived_ids and (
                id_counts[item.id] == 1 or name == derive_name(item.url, item.id)
            )
            attempt = 0
            while (
                clash := self._clash(
                    name, taken, batch_dirs, files_at, below, renamed=name != item.name
                )
            ) is not None:
                if not is_derived or attempt >= MAX_RENAMES:
                    rejects.append(_duplicate(item, f"name {item.name!r} clashes with {clash}"))
                    name = ""
                    break
                name = _rename(item.name, item.id, attempt)
                attempt += 1
            if not name:
                continue
            known[item.id] = (item.line, item.url)
            taken[name] = (item.id, item.line)
            if "/" in name:
                parts = name.split("/")
                batch_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            key = host_of(item.url)
            hosts.add(key)
            large = item.size is not None and item.size > threshold
            if large:
                large_hosts.add(key)
            rows.append(
                NewItem(
                    item.id,
                    item.line,
                    item.url,
                    name,
                    item.sha256,
                    item.size,
                    key,
                    large,
                    item.fields or None,
                )
            )
        outcomes = store.add(_in_order(rows, rejects), checked=checked)
        return IngestResult(
            added=len(rows),
            rejected=tuple(outcomes),
            hosts=frozenset(hosts),
            large_hosts=frozenset(large_hosts),
        )

    def _clash(
        self,
        name: str,
        taken: _Holders,
        batch_dirs: set[str],
        files_at: _Holders,
        below: _Holders,
        *,
        renamed: bool,
    ) -> str | None:
        """What ``name`` collides with: another file of that name, a file where it needs a
        directory (``a`` for ``a/b``), or files below it (``a/b`` for ``a``); else None.

        ``taken``: names of stored files looked up for the block, and those it accepted;
        ``files_at``: stored files named like a directory of the block's names; ``below``:
        the block's names that stored items use as directories. A ``renamed`` name (a
        derived name made unique) was not looked up, so the store is asked directly.
        """
        if name in taken:
            return f"{_who(taken[name])}, which has the same name"
        if renamed and (holder := self.store.held_names([name]).get(name)) is not None:
            return f"{_who(holder)}, which has the same name"
        if name in batch_dirs:
            return "a directory of another item's path"
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            holder = taken.get(parent) or files_at.get(parent)
            if holder is not None:
                return f"{_who(holder)}, whose file {parent!r} is where a directory is needed"
        child = self.store.names_below([name]).get(name) if renamed else below.get(name)
        if child is not None:
            return f"{_who(child)}, stored below it as a directory"
        return None


def _in_order(rows: list[NewItem], rejects: list[Rejected]) -> Sequence[NewItem | Rejected]:
    """Admitted rows and rejected entries interleaved by input line, so that positions
    follow the input, rejected lines included (submitted entries, line 0, keep their
    order)."""
    if not rejects:
        return rows
    rejects.sort(key=lambda r: r.line)  # stable
    merged: list[NewItem | Rejected] = []
    start = 0
    for reject in rejects:
        end = start
        while end < len(rows) and rows[end].line < reject.line:
            end += 1
        merged += rows[start:end]
        merged.append(reject)
        start = end
    merged += rows[start:]
    return merged
