"""Generic tables: rows keyed by (table, key), for the Connect CA state and config entries.

Each table has one watch topic, ``(table,)``, and its own index; the Connect layer
(``registry.connect.state``) gives the rows their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from registry.state.base import StoreBase
from registry.state.topics import WatchSet

_NO_ROWS: Mapping[str, Any] = MappingProxyType({})


class GenericTables(StoreBase):
    def table_put(self, table: str, key: str, value: Any) -> None:
        tx = self._write()
        rows = self.tables.get(table)
        if rows is None:
            rows = {}
            tx.put(self.tables, table, rows)
        tx.put(rows, key, value)
        tx.put(self.table_index, table, tx.index)
        tx.topics.add((table,))

    def table_delete(self, table: str, key: str) -> None:
        rows = self.tables.get(table)
        if rows is None:
            return
        tx = self._write()
        if tx.pop(rows, key) is not None:
            tx.put(self.table_index, table, tx.index)
            tx.topics.add((table,))

    def table_rows(self, table: str, ws: WatchSet) -> Mapping[str, Any]:
        """Every row of a table, watched and indexed as the table."""
        ws.saw((table,), self.table_index.get(table, 0))
        return self.tables.get(table, _NO_ROWS)
