"""The state store: catalog (nodes, services, checks), KV, sessions and generic tables.

Only the FSM writes to it, one command at a time, each stamped with its log index: ``begin(index)``, the
command's writes, then ``commit()`` (or ``rollback()`` first, when the command is refused or fails, which
leaves every table exactly as it was). Every write records which watch topics it touched; every read
given a ``WatchSet`` adds the topics it looked at and the index it reports, and the blocking-query layer
sleeps on exactly those (a write to service ``db`` never wakes a watcher of ``web``; a KV write wakes
watchers of that key and of its prefixes only). Topics are listed in ``registry.state.topics``.

The tables live in their own modules (``catalog``, ``kvs``, ``session_table``, ``tables``, ``acl_table``,
``query_table``, ``coordinate_table``) over one
``Transaction`` (``transaction``), as Consul's state store spreads one Store over catalog.go, kvs.go,
session.go. ``clock_ns`` is the store's notion of now: the largest ``Time`` any applied command carried
(the proposer stamps it), so lock-delays are decided the same way on every server and never by a local
clock.
"""

from __future__ import annotations

from typing import Any

from registry.state.acl_table import ACLTable
from registry.state.base import StoreError
from registry.state.catalog import CatalogTable
from registry.state.coordinate_table import CoordinateTable
from registry.state.kvs import KVTable
from registry.state.query_table import PreparedQueryTable
from registry.state.session_table import SessionTable
from registry.state.tables import GenericTables
from registry.state.topics import T_CHECKS, T_NODES, T_SERVICES, Topic, WatchSet

__all__ = ["StateStore", "StoreError", "T_CHECKS", "T_NODES", "T_SERVICES", "Topic", "WatchSet"]


class StateStore(CatalogTable, KVTable, SessionTable, CoordinateTable, GenericTables, ACLTable, PreparedQueryTable):
    # ------------------------------------------------------------------ snapshots

    def to_snapshot(self) -> dict[str, Any]:
        """A msgpack-ready dump of everything (for Raft snapshots and `proconsul snapshot save`)."""
        from registry.state import codec

        return codec.dump_store(self)

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> StateStore:
        from registry.state import codec

        return codec.load_store(cls(), data)

    def rebuild_indexes(self) -> None:
        """Derive every secondary index from the rows (after loading a snapshot)."""
        self.by_service_name.clear()
        self.connect_by_target.clear()
        self._instances.clear()
        for node_services in self.services.values():
            for svc in node_services.values():
                key = (svc.node, svc.id)
                self.by_service_name.setdefault(svc.service, set()).add(key)
                if (t := svc.connect_target) is not None:
                    self.connect_by_target.setdefault(t, set()).add(key)
        self._kv_keys = sorted(self.kv)
        self._tomb_keys = sorted(self._tombstones)
        self._sessions_by_node.clear()
        self._sessions_by_check.clear()
        self._keys_by_session.clear()
        for s in self.sessions.values():
            self._sessions_by_node.setdefault(s.node, set()).add(s.id)
            for cid in s.check_ids():
                self._sessions_by_check.setdefault((s.node, cid), set()).add(s.id)
        for e in self.kv.values():
            if e.session:
                self._keys_by_session.setdefault(e.session, set()).add(e.key)
