"""The sessions table and the lock-delays of released keys (Consul's agent/consul/state/session.go).

``registry.sessions`` holds the rules; this module holds the rows: a session per ID, indexes by node, by
linked check and by held key, and each released key's lock-delay deadline. Lock-delays are decided
against ``clock_ns``, the largest ``Time`` any applied command carried, never against a local clock.
"""

from __future__ import annotations

from dataclasses import replace

from registry import sessions as sess_rules
from registry.sessions import Session
from registry.state.base import StoreBase, StoreError
from registry.state.topics import T_SESSIONS, WatchSet


class SessionTable(StoreBase):
    def advance_clock(self, now_ns: int) -> None:
        """The FSM passes each command's ``Time``; the store's clock never goes backwards. It is the time
        of the last entry applied, refused or not, so it is not part of a command's rollback."""
        if now_ns > self.clock_ns:
            self.clock_ns = now_ns

    def _index_session(self, s: Session) -> None:
        self._index_add(self._sessions_by_node, s.node, s.id)
        for cid in s.check_ids():
            self._index_add(self._sessions_by_check, (s.node, cid), s.id)

    def session_create(self, s: Session) -> None:
        """Consul's sessionCreateTxn: the node must exist and every linked check exist and not be critical."""
        if s.id in self.sessions:
            raise StoreError(f"Session '{s.id}' already exists", 500)
        if s.node not in self.nodes:
            raise StoreError("Missing node registration", 500)
        node_checks = self.checks.get(s.node, {})
        for cid in s.check_ids():
            chk = node_checks.get(cid)
            if chk is None:
                raise StoreError(f"Missing check '{cid}' registration", 500)
            if sess_rules.invalidated_by_check(chk.status):
                raise StoreError(f"Check '{cid}' is in {chk.status} state", 500)
        tx = self._write()
        row = replace(s, create_index=tx.index, modify_index=tx.index)
        tx.put(self.sessions, s.id, row)
        self._index_session(row)
        self._bump("sessions", T_SESSIONS)

    def session_destroy(self, sid: str) -> bool:
        """Invalidate a session: delete it, release or delete the keys it holds, start their lock-delay
        (from ``clock_ns``). Unknown IDs are a no-op, as in Consul."""
        tx = self._write()
        s = tx.pop(self.sessions, sid)
        if s is None:
            return False
        self._bump("sessions", T_SESSIONS)
        self._pq_delete_session_queries(sid)  # Consul deletes the prepared queries bound to the session
        self._index_discard(self._sessions_by_node, s.node, sid)
        for cid in s.check_ids():
            self._index_discard(self._sessions_by_check, (s.node, cid), sid)
        now = self.clock_ns
        # Forget lock-delays that are over, so the table does not grow without bound.
        for key in [k for k, until in self.lock_delays.items() if until <= now]:
            tx.pop(self.lock_delays, key)
        delay = sess_rules.lock_delay_ns(s)
        for key in sorted(tx.pop(self._keys_by_session, sid) or ()):
            entry = self.kv.get(key)
            if entry is None or entry.session != sid:
                continue
            if s.behavior == sess_rules.BEHAVIOR_DELETE:
                self.kv_delete(key)
            else:
                tx.put(self.kv, key, replace(entry, session="", modify_index=tx.index))
                self._kv_touch(key)
            if delay > 0:
                tx.put(self.lock_delays, key, now + delay)
        return True

    def _invalidate_check_sessions(self, node: str, check_id: str) -> None:
        for sid in sorted(self._sessions_by_check.get((node, check_id), ())):
            self.session_destroy(sid)

    # ------------------------------------------------------------------ reads

    def session_get(self, sid: str, ws: WatchSet | None = None) -> tuple[int, Session | None]:
        """One session (Consul's SessionGet), watched and indexed as the sessions table."""
        idx = self.table_index["sessions"]
        if ws is not None:
            ws.saw(T_SESSIONS, idx)
        return idx, self.sessions.get(sid)

    def session_list(self, node: str | None = None, ws: WatchSet | None = None) -> tuple[int, list[Session]]:
        """All sessions, or one node's (Consul's SessionList / NodeSessions), as ``session_get``."""
        idx = self.table_index["sessions"]
        if ws is not None:
            ws.saw(T_SESSIONS, idx)
        if node is None:
            rows = [self.sessions[sid] for sid in sorted(self.sessions)]
        else:
            rows = [self.sessions[sid] for sid in sorted(self._sessions_by_node.get(node, ()))]
        return idx, rows

    def lock_delay_until(self, key: str) -> int | None:
        return self.lock_delays.get(key)
