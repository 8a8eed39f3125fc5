"""The resolver's read view of the state store, recording what each answer depended on.

DNS names are case-insensitive but the catalog keys services and nodes by their exact names, so lookups go
through case-folded maps (rebuilt only when the set of names changes: the store bumps
``table_index["services"]``/``["nodes"]`` on registrations, not on health updates).

Every read is recorded as a dependency: ("s", service, svc_index), ("n", node, nd_index), and for the
case-folded name lookups the tuple of names found. A cached answer stays valid while all of its
dependencies read the same, so churn on other services, or health flapping elsewhere, never evicts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from registry.prepared_query import PreparedQuery
from registry.state.store import StateStore
from registry.structs import Check, Node, Service

__all__ = ["FoldIndex", "RecordingView", "Dep", "deps_valid"]

Dep = tuple[str, str, Any]


class FoldIndex:
    """lower-cased name -> exact names, for services, Connect targets and nodes of one store."""

    def __init__(self) -> None:
        self.store: StateStore | None = None
        self._svc_at = -1
        self._node_at = -1
        self._services: dict[str, tuple[str, ...]] = {}
        self._connect: dict[str, tuple[str, ...]] = {}
        self._nodes: dict[str, tuple[str, ...]] = {}

    def _bind(self, store: StateStore) -> None:
        if store is not self.store:
            self.store = store
            self._svc_at = self._node_at = -1

    @staticmethod
    def _fold(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(name.lower(), []).append(name)
        return {k: tuple(sorted(v)) for k, v in out.items()}

    def services(self, store: StateStore, folded: str, connect: bool = False) -> tuple[str, ...]:
        self._bind(store)
        at = store.table_index.get("services", 0)
        if at != self._svc_at:
            self._services = self._fold(store.by_service_name)
            self._connect = self._fold(store.connect_by_target)
            self._svc_at = at
        return (self._connect if connect else self._services).get(folded, ())

    def nodes(self, store: StateStore, folded: str) -> tuple[str, ...]:
        self._bind(store)
        at = store.table_index.get("nodes", 0)
        if at != self._node_at:
            self._nodes = self._fold(store.nodes)
            self._node_at = at
        return self._nodes.get(folded, ())


class RecordingView:
    """What the resolver may read; each read adds to ``deps``."""

    def __init__(self, store: StateStore, folds: FoldIndex) -> None:
        self._store = store
        self._folds = folds
        self.deps: list[Dep] = []

    def service_names(self, folded: str, connect: bool = False) -> tuple[str, ...]:
        names = self._folds.services(self._store, folded, connect)
        self.deps.append(("C" if connect else "S", folded, names))
        return names

    def instances(self, name: str, connect: bool = False) -> list[tuple[Node, Service]]:
        self.deps.append(("s", name, self._store.svc_index(name)))
        return self._store.service_instances(name, connect)

    def prepared_query(self, id_or_name: str) -> PreparedQuery | None:
        """The query a name resolves to (rendered, for a template); depends on the whole query table."""
        self.deps.append(("t", "prepared_queries", self._store.table_index.get("prepared_queries", 0)))
        return self._store.pq_resolve(id_or_name)

    def query_instances(self, query: PreparedQuery, name: str, connect: bool) -> list[tuple[Node, Service]]:
        return self.instances(name, connect)

    def checks_for_instance(self, node: str, service_id: str) -> list[Check]:
        # Covered by the service's index: every check write touches the services it affects.
        return self._store.checks_for_instance(node, service_id)

    def node_names(self, folded: str) -> tuple[str, ...]:
        names = self._folds.nodes(self._store, folded)
        self.deps.append(("N", folded, names))
        return names

    def node(self, name: str) -> Node | None:
        self.deps.append(("n", name, self._store.nd_index(name)))
        return self._store.nodes.get(name)

    def all_nodes(self) -> list[Node]:
        """For reverse lookups only: depends on the whole node table."""
        self.deps.append(("t", "nodes", self._store.table_index.get("nodes", 0)))
        return [self._store.nodes[n] for n in sorted(self._store.nodes)]

    def all_services(self) -> list[Service]:
        self.deps.append(("t", "services", self._store.table_index.get("services", 0)))
        out: list[Service] = []
        for node in sorted(self._store.services):
            svcs = self._store.services[node]
            out.extend(svcs[sid] for sid in sorted(svcs))
        return out


def deps_valid(deps: Iterable[Dep], store: StateStore, folds: FoldIndex) -> bool:
    for kind, key, expected in deps:
        if kind == "s":
            if store.svc_index(key) != expected:
                return False
        elif kind == "n":
            if store.nd_index(key) != expected:
                return False
        elif kind == "S" or kind == "C":
            if folds.services(store, key, kind == "C") != expected:
                return False
        elif kind == "N":
            if folds.nodes(store, key) != expected:
                return False
        elif kind == "t":
            if store.table_index.get(key, 0) != expected:
                return False
        else:  # pragma: no cover - a dependency kind this function does not know is never valid
            return False
    return True
