"""One write transaction over every table of the state store, with an undo journal.

Consul applies each log entry in one memdb write transaction and aborts it when the command fails, so a
refused or failing command leaves every table as it was (agent/consul/fsm: ``tx.Abort`` unless
``tx.Commit``). The store's tables are plain dicts, sets and sorted lists; every mutation during a
transaction goes through one of the methods here, which journal how to undo it. ``rollback`` undoes the
journal in reverse order back to a savepoint (a KV transaction, /v1/txn) or to the start (a failed
command), rows, secondary indexes and index maps alike. Writes also record the watch topics and KV keys
they touched; a rollback forgets those recorded after the savepoint, so nothing is left to notify.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from registry.state.topics import Topic

_MISSING: Any = object()

# Journal entry kinds (first item of each entry).
_DICT = 0  # (kind, dict, key, old value or _MISSING)
_SET_ADDED = 1  # (kind, set, item): undo discards it
_SET_REMOVED = 2  # (kind, set, item): undo adds it back
_LIST_INSERTED = 3  # (kind, sorted list, item): undo removes it
_LIST_REMOVED = 4  # (kind, sorted list, item): undo inserts it back
_LIST_REPLACED = 5  # (kind, list, its old contents)


@dataclass(frozen=True, slots=True)
class Savepoint:
    """Where ``Transaction.rollback`` returns to: the journal length and what had been touched."""

    depth: int
    topics: frozenset[Topic]
    kv_keys: frozenset[str]


class Transaction:
    """The write in progress: the log index it stamps, what it touched, and how to undo it."""

    __slots__ = ("index", "topics", "kv_keys", "_undo")

    def __init__(self, index: int) -> None:
        self.index = index
        self.topics: set[Topic] = set()
        self.kv_keys: set[str] = set()
        self._undo: list[tuple[Any, ...]] = []

    # ------------------------------------------------------------------ journaled mutations

    def put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        self._undo.append((_DICT, table, key, table.get(key, _MISSING)))
        table[key] = value

    def pop(self, table: dict[Any, Any], key: Any) -> Any:
        """Remove ``key`` and return its value (None when absent, which journals nothing)."""
        old = table.pop(key, _MISSING)
        if old is _MISSING:
            return None
        self._undo.append((_DICT, table, key, old))
        return old

    def add(self, members: set[Any], item: Any) -> None:
        if item not in members:
            members.add(item)
            self._undo.append((_SET_ADDED, members, item))

    def discard(self, members: set[Any], item: Any) -> None:
        if item in members:
            members.discard(item)
            self._undo.append((_SET_REMOVED, members, item))

    def insort(self, keys: list[str], item: str) -> None:
        bisect.insort(keys, item)
        self._undo.append((_LIST_INSERTED, keys, item))

    def remove_sorted(self, keys: list[str], item: str) -> None:
        del keys[bisect.bisect_left(keys, item)]
        self._undo.append((_LIST_REMOVED, keys, item))

    def remove_sorted_range(self, keys: list[str], lo: int, hi: int) -> None:
        for item in keys[lo:hi]:
            self._undo.append((_LIST_REMOVED, keys, item))
        del keys[lo:hi]

    def replace_list(self, keys: list[str], new: list[str]) -> None:
        """Replace a sorted list's contents in one step (cheaper than one removal per item)."""
        self._undo.append((_LIST_REPLACED, keys, keys[:]))
        keys[:] = new

    # ------------------------------------------------------------------ savepoints

    def savepoint(self) -> Savepoint:
        return Savepoint(len(self._undo), frozenset(self.topics), frozenset(self.kv_keys))

    def rollback(self, to: Savepoint | None = None) -> None:
        """Undo every mutation since ``to`` (or since the transaction began), newest first."""
        depth = to.depth if to is not None else 0
        undo = self._undo
        while len(undo) > depth:
            entry = undo.pop()
            kind = entry[0]
            if kind == _DICT:
                _, table, key, old = entry
                if old is _MISSING:
                    table.pop(key, None)
                else:
                    table[key] = old
            elif kind == _SET_ADDED:
                entry[1].discard(entry[2])
            elif kind == _SET_REMOVED:
                entry[1].add(entry[2])
            elif kind == _LIST_INSERTED:
                keys, item = entry[1], entry[2]
                del keys[bisect.bisect_left(keys, item)]
            elif kind == _LIST_REMOVED:
                bisect.insort(entry[1], entry[2])
            else:
                entry[1][:] = entry[2]
        if to is None:
            self.topics, self.kv_keys = set(), set()
        else:
            self.topics, self.kv_keys = set(to.topics), set(to.kv_keys)
