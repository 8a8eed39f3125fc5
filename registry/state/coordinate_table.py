"""The network-coordinates table: each node's Vivaldi coordinate per network segment.

Consul keeps a ``coordinates`` table keyed by (node, segment) (agent/consul/state/coordinate.go), written
only by ``CoordinateBatchUpdate`` -- the servers' batches of what agents sent -- and cleaned up with the
node: deleting a node deletes its coordinates. An update for a node the catalog does not know is dropped
silently (it was sent before the node registered; the next one fixes it), and one that is not a valid
coordinate is skipped. The table's index moves with every batch, as Consul's ``index`` row does.

Rows live in the store's generic tables (``registry.state.tables``), one per node: ``{segment: coordinate
in Consul's JSON form}``, so snapshots carry them and every write is journaled by the one transaction.
Reads watch ``("coordinates",)`` and report the table's index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from registry import commands as c
from registry.coordinate import Coordinate
from registry.state.tables import GenericTables
from registry.state.topics import WatchSet

TABLE = "coordinates"
TOPIC = (TABLE,)


class CoordinateTable(GenericTables):
    def coordinates_delete_node(self, node: str) -> None:
        """A node's coordinates go with it (Consul's deleteNodeTxn)."""
        rows = self.tables.get(TABLE)
        if rows is not None and node in rows:
            self.table_delete(TABLE, node)

    def coordinate_batch_update(self, updates: tuple[c.CoordinateUpdate, ...]) -> None:
        tx = self._write()
        rows = self.tables.get(TABLE, {})
        pending: dict[str, dict[str, Any]] = {}
        for u in updates:
            if u.node not in self.nodes or not u.coord.is_valid():
                continue
            row = pending.get(u.node)
            if row is None:
                row = pending[u.node] = dict(rows.get(u.node) or {})
            row[u.segment] = u.coord.to_json()
        for node, row in pending.items():
            self.table_put(TABLE, node, row)
        tx.put(self.table_index, TABLE, tx.index)
        tx.topics.add(TOPIC)

    def coordinate_rows(self, ws: WatchSet) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every (node, segment, coordinate JSON), by node then segment (Consul's id index order)."""
        rows = self.table_rows(TABLE, ws)
        for node in sorted(rows, key=lambda n: (n.lower(), n)):
            row = rows[node]
            for segment in sorted(row):
                yield node, segment, row[segment]

    def coordinate_set(self, node: str, ws: WatchSet | None = None) -> dict[str, Coordinate]:
        """A node's coordinates by segment ({} when it has none). Unwatched unless ``ws`` is given: the
        ``?near`` sort reads them as Consul's does, outside the query's watch set."""
        rows = self.table_rows(TABLE, ws) if ws is not None else self.tables.get(TABLE, {})
        row = rows.get(node)
        if not row:
            return {}
        out = {}
        for segment, raw in row.items():
            try:
                out[segment] = Coordinate.from_json(raw)
            except ValueError:
                continue  # a row no decoder accepts is skipped, never fatal to a read
        return out

    def coordinate_lookup(self) -> Callable[[str], dict[str, Coordinate]]:
        """``coordinate_set`` for many nodes in one answer, each node decoded once."""
        memo: dict[str, dict[str, Coordinate]] = {}

        def lookup(node: str) -> dict[str, Coordinate]:
            found = memo.get(node)
            if found is None:
                found = memo[node] = self.coordinate_set(node)
            return found

        return lookup


def apply_coordinate_batch(store: CoordinateTable, cmd: c.CoordinateBatchUpdate) -> bool:
    """Consul's ``applyCoordinateBatchUpdate``: upsert the batch in one transaction."""
    store.coordinate_batch_update(cmd.updates)
    return True
