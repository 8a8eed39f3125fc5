"""What every table of the state store shares: its data, the write transaction, and the store's error.

Consul's ``state.Store`` is one type whose methods live in one file per table (catalog.go, kvs.go,
session.go, config_entry.go...), all writing through one memdb transaction. Proconsul's ``StateStore``
is shaped the same way: one class per table in its own module (``catalog``, ``kvs``, ``session_table``,
``tables``), each subclassing ``StoreBase``, combined in ``store.StateStore``. Rows and indexes are plain
attributes, so the hot read paths (HTTP discovery, DNS) read a dict, not a property.
"""

from __future__ import annotations

from typing import Any

from registry.sessions import Session
from registry.state.topics import Topic
from registry.state.transaction import Savepoint, Transaction
from registry.structs import Check, KVEntry, Node, Service


class StoreError(Exception):
    """A command the store refuses; nothing was written. ``status`` is the HTTP status to answer with
    (Consul answers the session and lock refusals, which are RPC errors there, with 500)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StoreBase:
    def __init__(self) -> None:
        # catalog
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, Service]] = {}  # node -> service id -> row
        self.checks: dict[str, dict[str, Check]] = {}  # node -> check id -> row
        self.by_service_name: dict[str, set[tuple[str, str]]] = {}  # name -> {(node, service id)}
        self.connect_by_target: dict[str, set[tuple[str, str]]] = {}  # dest name -> {(node, service id)}
        self.service_index: dict[str, int] = {}  # service name -> last index touching it (or its health)
        self.node_index: dict[str, int] = {}  # node name -> last index touching it
        # Sorted (node, service) instances per service name, derived from the rows above and dropped
        # whenever the service's topic is touched: a blocking query re-run by thousands of woken watchers
        # reads it in O(1).
        self._instances: dict[tuple[str, bool], tuple[tuple[Node, Service], ...]] = {}
        # KV and tombstones
        self.kv: dict[str, KVEntry] = {}
        self._kv_keys: list[str] = []  # sorted, for prefix scans
        self._tombstones: dict[str, int] = {}  # deleted key -> delete index (keeps prefix indexes monotonic)
        self._tomb_keys: list[str] = []
        # sessions and lock-delays
        self.sessions: dict[str, Session] = {}
        self.lock_delays: dict[str, int] = {}  # key -> unix ns before which no other session may acquire it
        self.clock_ns = 0  # the latest command time seen (see store's module docstring)
        self._sessions_by_node: dict[str, set[str]] = {}
        self._sessions_by_check: dict[tuple[str, str], set[str]] = {}  # (node, check ID) -> session IDs
        self._keys_by_session: dict[str, set[str]] = {}
        # generic tables (CA state, config entries) keyed by (table, key)
        self.tables: dict[str, dict[str, Any]] = {}
        # indexes
        self.index = 0  # last applied log index
        self.table_index: dict[str, int] = {"nodes": 0, "services": 0, "checks": 0, "kvs": 0, "sessions": 0}
        self._tx: Transaction | None = None
        self._idx = 0  # the log index being applied (rows are stamped with it)

    # ------------------------------------------------------------------ the write transaction

    def begin(self, index: int) -> None:
        """Start applying the log entry at ``index``: every write until ``commit`` is one transaction."""
        if index <= self.index:
            raise StoreError(f"log index {index} is not after the store's index {self.index}")
        self._tx = Transaction(index)
        self._idx = index

    def commit(self) -> tuple[set[Topic], set[str]]:
        """Finish the current command; return (topics touched, KV keys touched)."""
        tx = self._write()
        self.index = tx.index
        self._tx = None
        return tx.topics, tx.kv_keys

    def savepoint(self) -> Savepoint:
        """A point inside the current command to roll back to (a KV transaction's operations)."""
        return self._write().savepoint()

    def rollback(self, to: Savepoint | None = None) -> None:
        """Undo every write since ``to`` (or the whole command) in every table, with what it touched."""
        self._write().rollback(to)
        self._instances.clear()  # derived: rebuilt on the next read

    def _write(self) -> Transaction:
        tx = self._tx
        if tx is None:
            raise RuntimeError("store write outside begin/commit")
        return tx

    def _bump(self, table: str, topic: Topic) -> None:
        tx = self._write()
        tx.put(self.table_index, table, tx.index)
        tx.topics.add(topic)

    def _index_add(self, index: dict[Any, set[Any]], key: Any, member: Any) -> None:
        """Add to a secondary index (key -> set of members), journaled."""
        tx = self._write()
        members = index.get(key)
        if members is None:
            members = set()
            tx.put(index, key, members)
        tx.add(members, member)

    def _index_discard(self, index: dict[Any, set[Any]], key: Any, member: Any) -> None:
        """Remove from a secondary index, dropping the key when its set empties, journaled."""
        members = index.get(key)
        if members is None:
            return
        tx = self._write()
        tx.discard(members, member)
        if not members:
            tx.pop(index, key)

    # ------------------------------------------------------------------ writes one table asks of another

    def session_destroy(self, sid: str) -> bool:
        raise NotImplementedError  # session_table.SessionTable

    def _invalidate_check_sessions(self, node: str, check_id: str) -> None:
        raise NotImplementedError  # session_table.SessionTable

    def kv_delete(self, key: str) -> None:
        raise NotImplementedError  # kvs.KVTable

    def _kv_touch(self, key: str) -> None:
        raise NotImplementedError  # kvs.KVTable

    def _pq_delete_session_queries(self, sid: str) -> None:
        raise NotImplementedError  # query_table.PreparedQueryTable

    def coordinates_delete_node(self, node: str) -> None:
        raise NotImplementedError  # coordinate_table.CoordinateTable
