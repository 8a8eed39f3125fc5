"""The prepared-queries table (Consul's agent/consul/state/prepared_query.go).

Rows by ID, with indexes Consul's schema declares: by name (unique, case-insensitive), by template name
prefix (unique: one template per name, the empty name included) and by session (a query bound to a session
is deleted with it, as Consul's session invalidation deletes the queries it owns). A template's compiled
form is kept beside its row, rebuilt on write and on load, so resolving a name never parses the template.

Resolving an ID or a name follows ``PreparedQueryResolve``: an ID first (a template may not be run by ID),
then an exact name, then the longest template prefix of the name; a template is rendered for the name.
One watch topic, ``("prepared_queries",)``, with the table's index.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from registry import commands as c
from registry.gocompat import go_quote
from registry.prepared_query import CompiledTemplate, PreparedQuery, QueryError, compile_template, is_uuid
from registry.state.base import StoreBase, StoreError
from registry.state.topics import WatchSet

TABLE = "prepared_queries"
T_QUERIES = (TABLE,)


class PreparedQueryTable(StoreBase):
    def __init__(self) -> None:
        super().__init__()
        self.prepared_queries: dict[str, PreparedQuery] = {}  # ID -> row
        self._pq_names: dict[str, str] = {}  # lower-cased name -> ID
        self._pq_templates: dict[str, CompiledTemplate] = {}  # ID -> compiled template
        self._pq_prefixes: list[str] = []  # sorted lower-cased names of templates
        self._pq_prefix_ids: dict[str, str] = {}  # lower-cased template name -> ID
        self._pq_by_session: dict[str, set[str]] = {}
        self.table_index[TABLE] = 0

    # ------------------------------------------------------------------ writes

    def pq_set(self, query: PreparedQuery) -> None:
        """Consul's preparedQuerySetTxn: refuses a name another query has, a second template with the same
        name, a name that is another query's ID, and a session that does not exist."""
        if not query.id:
            raise StoreError("Missing Query ID")
        existing = self.prepared_queries.get(query.id)
        lname = query.name.lower()
        if query.name:
            other = self._pq_names.get(lname)
            if other is not None and other != query.id:
                raise StoreError(f"name '{query.name}' aliases an existing query name")
        elif query.is_template:
            other = self._pq_prefix_ids.get("")
            if other is not None and other != query.id:
                raise StoreError("a query template with an empty name already exists")
        if is_uuid(query.name) and query.name.lower() in self._pq_ids_lower():
            raise StoreError(f"name '{query.name}' aliases an existing query ID")
        if query.session and query.session not in self.sessions:
            raise StoreError(f"invalid session {go_quote(query.session)}")  # Consul's %#v
        compiled = None
        if query.is_template:
            try:
                compiled = compile_template(query)
            except QueryError as exc:
                raise StoreError(f"failed compiling template: {exc.message}") from None
        tx = self._write()
        if existing is not None:
            self._pq_unindex(existing)
            row = replace(query, create_index=existing.create_index, modify_index=tx.index)
        else:
            row = replace(query, create_index=tx.index, modify_index=tx.index)
        if compiled is not None:
            compiled = CompiledTemplate(row, compiled.pieces, compiled.regexp)
        tx.put(self.prepared_queries, row.id, row)
        self._pq_index(row, compiled)
        self._pq_bump()

    def pq_delete(self, query_id: str) -> bool:
        """Consul's preparedQueryDeleteTxn: an unknown ID is a no-op."""
        tx = self._write()
        row = tx.pop(self.prepared_queries, query_id)
        if row is None:
            return False
        self._pq_unindex(row)
        self._pq_bump()
        return True

    def _pq_delete_session_queries(self, sid: str) -> None:
        """A session was invalidated: the queries bound to it go with it."""
        for qid in sorted(self._pq_by_session.get(sid, ())):
            self.pq_delete(qid)

    def _pq_ids_lower(self) -> set[str]:
        return {qid.lower() for qid in self.prepared_queries}

    def _pq_bump(self) -> None:
        tx = self._write()
        tx.put(self.table_index, TABLE, tx.index)
        tx.topics.add(T_QUERIES)

    def _pq_index(self, row: PreparedQuery, compiled: CompiledTemplate | None) -> None:
        tx = self._write()
        lname = row.name.lower()
        if row.name:
            tx.put(self._pq_names, lname, row.id)
        if compiled is not None:
            tx.put(self._pq_templates, row.id, compiled)
            tx.put(self._pq_prefix_ids, lname, row.id)
            tx.insort(self._pq_prefixes, lname)
        if row.session:
            self._index_add(self._pq_by_session, row.session, row.id)

    def _pq_unindex(self, row: PreparedQuery) -> None:
        tx = self._write()
        lname = row.name.lower()
        if row.name and self._pq_names.get(lname) == row.id:
            tx.pop(self._pq_names, lname)
        if tx.pop(self._pq_templates, row.id) is not None:
            tx.pop(self._pq_prefix_ids, lname)
            tx.remove_sorted(self._pq_prefixes, lname)
        if row.session:
            self._index_discard(self._pq_by_session, row.session, row.id)

    # ------------------------------------------------------------------ reads

    def pq_get(self, query_id: str, ws: WatchSet) -> PreparedQuery | None:
        """Consul's PreparedQueryGet: one query by its ID, watched as the table."""
        ws.saw(T_QUERIES, self.table_index[TABLE])
        return self.prepared_queries.get(query_id)

    def pq_list(self, ws: WatchSet) -> list[PreparedQuery]:
        """Consul's PreparedQueryList: every query, by ID."""
        ws.saw(T_QUERIES, self.table_index[TABLE])
        rows = self.prepared_queries
        return [rows[qid] for qid in sorted(rows)]

    def pq_resolve(self, id_or_name: str, segment: str = "", ws: WatchSet | None = None) -> PreparedQuery | None:
        """Consul's PreparedQueryResolve: by ID, else by exact name, else by the longest template prefix; a
        template comes back rendered for the name. Raises ``QueryError`` for an empty name and for a
        template asked for by ID."""
        if ws is not None:
            ws.saw(T_QUERIES, self.table_index[TABLE])
        if not id_or_name:
            raise QueryError("Missing Query ID")
        if is_uuid(id_or_name):
            row = self.prepared_queries.get(id_or_name) or self.prepared_queries.get(id_or_name.lower())
            if row is not None:
                if row.is_template:
                    raise QueryError("prepared query templates can only be resolved up by name, not by ID")
                return row
        lname = id_or_name.lower()
        qid = self._pq_names.get(lname)
        if qid is None:
            qid = self._pq_longest_prefix(lname)
        if qid is None:
            return None
        row = self.prepared_queries[qid]
        compiled = self._pq_templates.get(qid)
        if compiled is None:
            return row
        return compiled.render(id_or_name, segment)

    def _pq_longest_prefix(self, lname: str) -> str | None:
        prefixes = self._pq_prefixes
        # Every prefix of the name that is a template's name; the longest wins.
        best: str | None = None
        for n in range(len(lname), -1, -1):
            candidate = lname[:n]
            i = bisect.bisect_left(prefixes, candidate)
            if i < len(prefixes) and prefixes[i] == candidate:
                best = candidate
                break
        return None if best is None else self._pq_prefix_ids[best]

    # ------------------------------------------------------------------ snapshots

    def pq_dump(self) -> list[dict[str, Any]]:
        return [self.prepared_queries[qid].to_json() for qid in sorted(self.prepared_queries)]

    def pq_load(self, rows: list[Any]) -> None:
        """Rows from a snapshot (the table's index comes with the others), checked as a command's
        (templates compiled here, once)."""
        for raw in rows:
            q = PreparedQuery.from_json(raw)
            self.prepared_queries[q.id] = q
        self._pq_rebuild()

    def _pq_rebuild(self) -> None:
        self._pq_names.clear()
        self._pq_templates.clear()
        self._pq_prefix_ids.clear()
        self._pq_by_session.clear()
        for q in self.prepared_queries.values():
            lname = q.name.lower()
            if q.name:
                self._pq_names[lname] = q.id
            if q.is_template:
                self._pq_templates[q.id] = compile_template(q)
                self._pq_prefix_ids[lname] = q.id
            if q.session:
                self._pq_by_session.setdefault(q.session, set()).add(q.id)
        self._pq_prefixes = sorted(self._pq_prefix_ids)


# ---------------------------------------------------------------------- apply functions


def _set(store: PreparedQueryTable, cmd: c.PreparedQuerySet) -> str:
    if cmd.op == "update" and cmd.query.id not in store.prepared_queries:
        raise StoreError(f"Cannot modify non-existent prepared query: '{cmd.query.id}'", 404)
    if cmd.op == "create" and cmd.query.id in store.prepared_queries:
        raise StoreError(f"Prepared query '{cmd.query.id}' already exists")
    store.pq_set(cmd.query)
    return cmd.query.id


def _delete(store: PreparedQueryTable, cmd: c.PreparedQueryDelete) -> bool:
    return store.pq_delete(cmd.id)


PQ_DISPATCH: dict[type, Callable[[Any, Any], Any]] = {
    c.PreparedQuerySet: _set,
    c.PreparedQueryDelete: _delete,
}
