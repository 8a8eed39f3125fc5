"""The state store: catalog (nodes, services, checks) and the key/value table.

Only the FSM writes to it, one command at a time, each stamped with its log index. Every write method
validates everything it needs *before* the first mutation, so a rejected command leaves the store exactly
as it was. Every write records which watch topics it touched; reads report which topics they looked at,
and the blocking-query layer sleeps on exactly those (a write to service ``db`` never wakes a watcher of
``web``; a KV write wakes watchers of that key and of its prefixes only).

Topics are small tuples:
  ("nodes",)            the node list           ("node", name)      one node, its services and checks
  ("services",)         the service-name list   ("svc", name)       instances of one service and their health
  ("checks",)           any check               ("kv", key)         one key
  ("kvp", prefix)       any key under a prefix  (table, ...)        tables added later (CA, intentions...)
  ("sessions",)         any session

Sessions (``registry.sessions`` holds the rules): a session row per ID, indexes by node, by linked check and
by held key, and each released key's lock-delay deadline. ``clock_ns`` is the store's notion of now: the
largest ``Time`` any applied command carried (the proposer stamps it), so lock-delays are decided the same
way on every server and never by a local clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from registry import sessions as sess_rules
from registry.sessions import Session
from registry.structs import (
    CHECK_STATUSES,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    Check,
    KVEntry,
    Node,
    Service,
)

Topic = tuple[Any, ...]
T_NODES: Topic = ("nodes",)
T_SERVICES: Topic = ("services",)
T_CHECKS: Topic = ("checks",)


class StoreError(Exception):
    """A command the store refuses; nothing was written. ``status`` is the HTTP status to answer with
    (Consul answers the session and lock refusals, which are RPC errors there, with 500)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class StateStore:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, Service]] = {}  # node -> service id -> row
        self.checks: dict[str, dict[str, Check]] = {}  # node -> check id -> row
        self.by_service_name: dict[str, set[tuple[str, str]]] = {}  # name -> {(node, service id)}
        self.connect_by_target: dict[str, set[tuple[str, str]]] = {}  # dest name -> {(node, service id)}
        self.kv: dict[str, KVEntry] = {}
        self._kv_keys: list[str] = []  # sorted, for prefix scans
        self._tombstones: dict[str, int] = {}  # deleted key -> delete index (keeps prefix indexes monotonic)
        self._tomb_keys: list[str] = []
        # Generic tables (CA state, intentions, config entries...) keyed by (table, key): later issues add them
        # without touching the catalog code.
        self.tables: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, Session] = {}
        self.lock_delays: dict[str, int] = {}  # key -> unix ns before which no other session may acquire it
        self.clock_ns = 0  # the latest command time seen (see the module docstring)
        self._sessions_by_node: dict[str, set[str]] = {}
        self._sessions_by_check: dict[tuple[str, str], set[str]] = {}  # (node, check ID) -> session IDs
        self._keys_by_session: dict[str, set[str]] = {}
        self.index = 0  # last applied log index
        self.table_index: dict[str, int] = {"nodes": 0, "services": 0, "checks": 0, "kvs": 0, "sessions": 0}
        self.service_index: dict[str, int] = {}  # service name -> last index touching it (or its health)
        self.node_index: dict[str, int] = {}  # node name -> last index touching it
        self._changed: set[Topic] = set()
        self._changed_kv: set[str] = set()
        # While a transaction runs: each KV key's row and tombstone as they were before its first change.
        self._kv_journal: dict[str, tuple[KVEntry | None, int | None]] | None = None
        self._kv_journal_state: tuple[int, set[Topic], set[str]] = (0, set(), set())

    # ------------------------------------------------------------------ write helpers

    def begin(self, index: int) -> None:
        if index <= self.index:
            raise StoreError(f"log index {index} is not after the store's index {self.index}")
        self._changed = set()
        self._changed_kv = set()
        self._idx = index

    def commit(self) -> tuple[set[Topic], set[str]]:
        """Finish the current command; return (topics touched, KV keys touched)."""
        self.index = self._idx
        changed, keys = self._changed, self._changed_kv
        self._changed, self._changed_kv = set(), set()
        return changed, keys

    def kv_savepoint(self) -> None:
        """Start journaling KV changes so ``kv_rollback`` can undo them (a transaction of KV operations).
        Only the KV table, its tombstones and the session-to-key index are journaled: KV verbs touch nothing
        else (they read sessions and lock-delays, never write them)."""
        self._kv_journal = {}
        self._kv_journal_state = (self.table_index["kvs"], set(self._changed), set(self._changed_kv))

    def kv_release(self) -> None:
        """Keep everything written since ``kv_savepoint``."""
        self._kv_journal = None

    def kv_rollback(self) -> None:
        """Undo every KV change since ``kv_savepoint``: rows, sorted key lists, tombstones, the held-key index,
        the KV table index and the record of touched keys, so nothing is left to notify."""
        journal = self._kv_journal
        if journal is None:
            raise RuntimeError("kv_rollback without kv_savepoint")
        self._kv_journal = None
        for key, (entry, tomb) in journal.items():
            current = self.kv.get(key)
            if current is not None:
                self._unindex_held(current)
            if entry is None:
                if current is not None:
                    del self.kv[key]
                    del self._kv_keys[bisect.bisect_left(self._kv_keys, key)]
            else:
                if current is None:
                    bisect.insort(self._kv_keys, key)
                self.kv[key] = entry
                if entry.session:
                    self._keys_by_session.setdefault(entry.session, set()).add(key)
            if tomb is None:
                self._drop_tombstone(key)
            else:
                if key not in self._tombstones:
                    bisect.insort(self._tomb_keys, key)
                self._tombstones[key] = tomb
        kvs_index, changed, changed_kv = self._kv_journal_state
        self.table_index["kvs"] = kvs_index
        self._changed, self._changed_kv = changed, changed_kv

    def _kv_save(self, key: str) -> None:
        journal = self._kv_journal
        if journal is not None and key not in journal:
            journal[key] = (self.kv.get(key), self._tombstones.get(key))

    def _touch_service(self, name: str) -> None:
        self.service_index[name] = self._idx
        self._changed.add(("svc", name))

    def _touch_node(self, node: str) -> None:
        self.node_index[node] = self._idx
        self._changed.add(("node", node))

    def _touch_all_services_of_node(self, node: str) -> None:
        for svc in self.services.get(node, {}).values():
            self._touch_service(svc.service)
            if (target := svc.connect_target) is not None:
                self._touch_service(target)

    def _bump(self, table: str, topic: Topic) -> None:
        self.table_index[table] = self._idx
        self._changed.add(topic)

    # ------------------------------------------------------------------ catalog writes

    def ensure_registration(
        self,
        node: Node,
        service: Service | None,
        checks: list[Check],
        skip_node_update: bool = False,
    ) -> None:
        """Catalog register: upsert the node, then the service, then the checks, as one write."""
        existing_node = self.nodes.get(node.node)
        # Validate everything first: no half-applied registrations.
        for chk in checks:
            if chk.node != node.node:
                raise StoreError(f"Check node {chk.node!r} does not match registration node {node.node!r}")
            if chk.status not in CHECK_STATUSES:
                raise StoreError(f"Invalid check status: '{chk.status}'")
            if chk.service_id:
                known = service is not None and service.id == chk.service_id
                if not known and chk.service_id not in self.services.get(node.node, {}):
                    raise StoreError(f"Missing service registration for check {chk.check_id!r}")
        if service is not None and service.node != node.node:
            raise StoreError("Service node does not match registration node")

        if existing_node is None or not (skip_node_update or existing_node.same_as(node)):
            self._put_node(node, existing_node)
        if service is not None:
            self._put_service(service)
        for chk in checks:
            self._put_check(chk)

    def _put_node(self, node: Node, existing: Node | None) -> None:
        create = existing.create_index if existing else self._idx
        self.nodes[node.node] = replace(node, create_index=create, modify_index=self._idx)
        self._bump("nodes", T_NODES)
        self._touch_node(node.node)
        self._touch_all_services_of_node(node.node)

    def _put_service(self, svc: Service) -> None:
        node_services = self.services.setdefault(svc.node, {})
        old = node_services.get(svc.id)
        if old is not None and old.same_as(svc):
            return
        row = replace(svc, create_index=old.create_index if old else self._idx, modify_index=self._idx)
        node_services[svc.id] = row
        key = (svc.node, svc.id)
        if old is not None:
            self._unindex_service(old)
            self._touch_service(old.service)
            if (t := old.connect_target) is not None:
                self._touch_service(t)
        self.by_service_name.setdefault(row.service, set()).add(key)
        if (target := row.connect_target) is not None:
            self.connect_by_target.setdefault(target, set()).add(key)
            self._touch_service(target)
        self._touch_service(row.service)
        self._touch_node(svc.node)
        self._bump("services", T_SERVICES)
        # Service checks carry the service's name and tags: keep them in step.
        if old is not None and (old.service != row.service or old.tags != row.tags):
            for cid, chk in list(self.checks.get(svc.node, {}).items()):
                if chk.service_id == svc.id:
                    self.checks[svc.node][cid] = replace(
                        chk, service_name=row.service, service_tags=row.tags, modify_index=self._idx
                    )
                    self._bump("checks", T_CHECKS)

    def _unindex_service(self, svc: Service) -> None:
        key = (svc.node, svc.id)
        names = self.by_service_name.get(svc.service)
        if names is not None:
            names.discard(key)
            if not names:
                del self.by_service_name[svc.service]
        if (target := svc.connect_target) is not None:
            targets = self.connect_by_target.get(target)
            if targets is not None:
                targets.discard(key)
                if not targets:
                    del self.connect_by_target[target]

    def _put_check(self, chk: Check) -> None:
        node_checks = self.checks.setdefault(chk.node, {})
        if chk.service_id:
            svc = self.services[chk.node][chk.service_id]
            chk = replace(chk, service_name=svc.service, service_tags=svc.tags)
        else:
            chk = replace(chk, service_name="", service_tags=())
        old = node_checks.get(chk.check_id)
        if old is not None and old.same_as(chk):
            return
        node_checks[chk.check_id] = replace(
            chk, create_index=old.create_index if old else self._idx, modify_index=self._idx
        )
        self._bump("checks", T_CHECKS)
        if sess_rules.invalidated_by_check(chk.status):
            self._invalidate_check_sessions(chk.node, chk.check_id)
        self._touch_node(chk.node)
        for c in (old, chk):
            if c is None:
                continue
            if c.service_id:
                svc = self.services.get(chk.node, {}).get(c.service_id)
                if svc is not None:
                    self._touch_service(svc.service)
                    if (t := svc.connect_target) is not None:
                        self._touch_service(t)
            else:
                self._touch_all_services_of_node(chk.node)

    def update_check_status(self, node: str, check_id: str, status: str, output: str) -> None:
        """The agent's fast path for a check result: only Status and Output change."""
        if status not in CHECK_STATUSES:
            raise StoreError(f"Invalid check status: '{status}'")
        old = self.checks.get(node, {}).get(check_id)
        if old is None:
            raise StoreError(f"Unknown check ID \"{check_id}\" on node \"{node}\"")
        if old.status == status and old.output == output:
            return
        self._put_check(replace(old, status=status, output=output))

    def delete_node(self, node: str) -> None:
        if node not in self.nodes:
            return
        for sid in sorted(self._sessions_by_node.get(node, ())):
            self.session_destroy(sid)
        self._touch_all_services_of_node(node)
        for svc in list(self.services.get(node, {}).values()):
            self._unindex_service(svc)
            self._bump("services", T_SERVICES)
        self.services.pop(node, None)
        if self.checks.pop(node, None):
            self._bump("checks", T_CHECKS)
        del self.nodes[node]
        self._bump("nodes", T_NODES)
        self._touch_node(node)

    def delete_service(self, node: str, service_id: str) -> None:
        svc = self.services.get(node, {}).get(service_id)
        if svc is None:
            return
        self._touch_service(svc.service)
        if (t := svc.connect_target) is not None:
            self._touch_service(t)
        self._unindex_service(svc)
        del self.services[node][service_id]
        if not self.services[node]:
            del self.services[node]
        node_checks = self.checks.get(node, {})
        for cid in [cid for cid, c in node_checks.items() if c.service_id == service_id]:
            del node_checks[cid]
            self._bump("checks", T_CHECKS)
            self._invalidate_check_sessions(node, cid)
        self._bump("services", T_SERVICES)
        self._touch_node(node)

    def delete_check(self, node: str, check_id: str) -> None:
        chk = self.checks.get(node, {}).get(check_id)
        if chk is None:
            return
        if chk.service_id:
            svc = self.services.get(node, {}).get(chk.service_id)
            if svc is not None:
                self._touch_service(svc.service)
                if (t := svc.connect_target) is not None:
                    self._touch_service(t)
        else:
            self._touch_all_services_of_node(node)
        del self.checks[node][check_id]
        self._bump("checks", T_CHECKS)
        self._touch_node(node)
        self._invalidate_check_sessions(node, check_id)

    # ------------------------------------------------------------------ KV writes

    def _kv_touch(self, key: str) -> None:
        self.table_index["kvs"] = self._idx
        self._changed_kv.add(key)

    def kv_set(self, key: str, value: bytes | None, flags: int) -> None:
        self._kv_save(key)
        old = self.kv.get(key)
        if old is None:
            bisect.insort(self._kv_keys, key)
            self._drop_tombstone(key)
            entry = KVEntry(key, value, flags, create_index=self._idx, modify_index=self._idx)
        else:
            entry = replace(old, value=value, flags=flags, modify_index=self._idx)
        self.kv[key] = entry
        self._kv_touch(key)

    def kv_cas(self, key: str, value: bytes | None, flags: int, index: int) -> bool:
        old = self.kv.get(key)
        if index == 0:
            if old is not None:
                return False
        elif old is None or old.modify_index != index:
            return False
        self.kv_set(key, value, flags)
        return True

    def kv_delete(self, key: str) -> None:
        self._kv_save(key)
        old = self.kv.pop(key, None)
        if old is None:
            return
        self._unindex_held(old)
        i = bisect.bisect_left(self._kv_keys, key)
        del self._kv_keys[i]
        self._add_tombstone(key)
        self._kv_touch(key)

    def kv_delete_cas(self, key: str, index: int) -> bool:
        old = self.kv.get(key)
        if old is None:
            return True  # Consul (kvsDeleteCASTxn): a key that is already gone counts as deleted, whatever index
        if old.modify_index != index:
            return False
        self.kv_delete(key)
        return True

    def kv_delete_tree(self, prefix: str) -> None:
        lo, hi = self._kv_range(self._kv_keys, prefix)
        doomed = self._kv_keys[lo:hi]
        if not doomed:
            return
        for key in doomed:
            self._kv_save(key)
        del self._kv_keys[lo:hi]
        for key in doomed:
            self._unindex_held(self.kv.pop(key))
            self._add_tombstone(key)
            self._kv_touch(key)

    def _unindex_held(self, entry: KVEntry) -> None:
        if entry.session:
            held = self._keys_by_session.get(entry.session)
            if held is not None:
                held.discard(entry.key)
                if not held:
                    del self._keys_by_session[entry.session]

    def kv_lock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        """PUT ?acquire: take (or keep) the lock on ``key`` for ``session`` and write the value. False when
        another session holds it or the key's lock-delay has not passed (at ``clock_ns``)."""
        if not session:
            raise StoreError("missing session", 500)
        if session not in self.sessions:
            raise StoreError(f'invalid session "{session}"', 500)
        old = self.kv.get(key)
        if old is None or old.session != session:
            if sess_rules.in_lock_delay(self.lock_delays.get(key), self.clock_ns):
                return False
        outcome = sess_rules.acquire(old.session if old else None, old.lock_index if old else None, session)
        if not outcome.acquired:
            return False
        self.kv_set(key, value, flags)
        entry = replace(self.kv[key], session=session, lock_index=outcome.lock_index, modify_index=self._idx)
        self.kv[key] = entry
        self._keys_by_session.setdefault(session, set()).add(key)
        return True

    def kv_unlock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        """PUT ?release: only the holder can release; the value is written, LockIndex kept."""
        if not session:
            raise StoreError("missing session", 500)
        old = self.kv.get(key)
        if not sess_rules.release(old.session if old else None, session):
            return False
        assert old is not None
        self._kv_save(key)
        self._unindex_held(old)
        self.kv[key] = replace(old, value=value, flags=flags, session="", modify_index=self._idx)
        self._kv_touch(key)
        return True

    # ------------------------------------------------------------------ sessions

    def advance_clock(self, now_ns: int) -> None:
        """The FSM passes each command's ``Time``; the store's clock never goes backwards."""
        if now_ns > self.clock_ns:
            self.clock_ns = now_ns

    def _index_session(self, s: Session) -> None:
        self._sessions_by_node.setdefault(s.node, set()).add(s.id)
        for cid in s.check_ids():
            self._sessions_by_check.setdefault((s.node, cid), set()).add(s.id)

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
        row = replace(s, create_index=self._idx, modify_index=self._idx)
        self.sessions[s.id] = row
        self._index_session(row)
        self._bump("sessions", sess_rules.TOPIC_SESSIONS)

    def session_destroy(self, sid: str) -> bool:
        """Invalidate a session: delete it, release or delete the keys it holds, start their lock-delay
        (from ``clock_ns``). Unknown IDs are a no-op, as in Consul."""
        s = self.sessions.pop(sid, None)
        if s is None:
            return False
        self._bump("sessions", sess_rules.TOPIC_SESSIONS)
        by_node = self._sessions_by_node.get(s.node)
        if by_node is not None:
            by_node.discard(sid)
            if not by_node:
                del self._sessions_by_node[s.node]
        for cid in s.check_ids():
            linked = self._sessions_by_check.get((s.node, cid))
            if linked is not None:
                linked.discard(sid)
                if not linked:
                    del self._sessions_by_check[(s.node, cid)]
        now = self.clock_ns
        # Forget lock-delays that are over, so the table does not grow without bound.
        for key in [k for k, until in self.lock_delays.items() if until <= now]:
            del self.lock_delays[key]
        delay = sess_rules.lock_delay_ns(s)
        for key in sorted(self._keys_by_session.pop(sid, ())):
            entry = self.kv.get(key)
            if entry is None or entry.session != sid:
                continue
            if s.behavior == sess_rules.BEHAVIOR_DELETE:
                self.kv_delete(key)
            else:
                self._kv_save(key)
                self.kv[key] = replace(entry, session="", modify_index=self._idx)
                self._kv_touch(key)
            if delay > 0:
                self.lock_delays[key] = now + delay
        return True

    def _invalidate_check_sessions(self, node: str, check_id: str) -> None:
        for sid in sorted(self._sessions_by_check.get((node, check_id), ())):
            self.session_destroy(sid)

    def session_get(self, sid: str) -> tuple[int, Session | None]:
        return self.table_index["sessions"], self.sessions.get(sid)

    def session_list(self, node: str | None = None) -> tuple[int, list[Session]]:
        if node is None:
            rows = [self.sessions[sid] for sid in sorted(self.sessions)]
        else:
            rows = [self.sessions[sid] for sid in sorted(self._sessions_by_node.get(node, ()))]
        return self.table_index["sessions"], rows

    def lock_delay_until(self, key: str) -> int | None:
        return self.lock_delays.get(key)

    def _add_tombstone(self, key: str) -> None:
        if key not in self._tombstones:
            bisect.insort(self._tomb_keys, key)
        self._tombstones[key] = self._idx

    def _drop_tombstone(self, key: str) -> None:
        if self._tombstones.pop(key, None) is not None:
            i = bisect.bisect_left(self._tomb_keys, key)
            del self._tomb_keys[i]

    def reap_tombstones(self, up_to_index: int) -> None:
        """Forget tombstones written at or before ``up_to_index`` (the leader issues this periodically)."""
        keep = [k for k in self._tomb_keys if self._tombstones[k] > up_to_index]
        if len(keep) != len(self._tomb_keys):
            self._tombstones = {k: self._tombstones[k] for k in keep}
            self._tomb_keys = keep

    # ------------------------------------------------------------------ generic tables

    def table_put(self, table: str, key: str, value: Any) -> None:
        self.tables.setdefault(table, {})[key] = value
        self.table_index[table] = self._idx
        self._changed.add((table,))

    def table_delete(self, table: str, key: str) -> None:
        if self.tables.get(table, {}).pop(key, None) is not None:
            self.table_index[table] = self._idx
            self._changed.add((table,))

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _kv_range(keys: list[str], prefix: str) -> tuple[int, int]:
        lo = bisect.bisect_left(keys, prefix)
        if not prefix:
            return lo, len(keys)
        # Every key with the prefix sorts before prefix + U+10FFFF.
        hi = bisect.bisect_left(keys, prefix + "\U0010ffff", lo)
        return lo, hi

    def kv_get(self, key: str) -> tuple[int, KVEntry | None]:
        ent = self.kv.get(key)
        if ent is not None:
            return ent.modify_index, ent
        return max(self._tombstones.get(key, 0), self.table_index["kvs"]), None

    def kv_list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        lo, hi = self._kv_range(self._kv_keys, prefix)
        entries = [self.kv[k] for k in self._kv_keys[lo:hi]]
        idx = max((e.modify_index for e in entries), default=0)
        tlo, thi = self._kv_range(self._tomb_keys, prefix)
        for k in self._tomb_keys[tlo:thi]:
            idx = max(idx, self._tombstones[k])
        if idx == 0:
            idx = self.table_index["kvs"]
        return idx, entries

    def kv_keys(self, prefix: str, separator: str) -> tuple[int, list[str]]:
        idx, entries = self.kv_list(prefix)
        if not separator:
            return idx, [e.key for e in entries]
        out: list[str] = []
        last = None
        plen = len(prefix)
        for e in entries:
            pos = e.key.find(separator, plen)
            k = e.key if pos < 0 else e.key[: pos + len(separator)]
            if k != last:
                out.append(k)
                last = k
        return idx, out

    def service_instances(self, name: str, connect: bool = False) -> list[tuple[Node, Service]]:
        """Instances of a service (or, with connect, the instances that accept Connect traffic for it),
        in a stable order: node name, then service ID."""
        keys = (self.connect_by_target if connect else self.by_service_name).get(name, ())
        out = []
        for node_name, sid in sorted(keys):
            out.append((self.nodes[node_name], self.services[node_name][sid]))
        return out

    def checks_for_instance(self, node: str, service_id: str) -> list[Check]:
        """Node-level checks first, then the instance's own checks, each ordered by check ID."""
        node_checks = self.checks.get(node)
        if not node_checks:
            return []
        return sorted(
            (c for c in node_checks.values() if c.service_id in ("", service_id)),
            key=lambda c: (c.service_id != "", c.check_id),
        )

    def svc_index(self, name: str) -> int:
        return max(self.service_index.get(name, 0), 1)

    def nd_index(self, name: str) -> int:
        return max(self.node_index.get(name, 0), 1)

    def service_names(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for name, keys in self.by_service_name.items():
            tags = out.setdefault(name, set())
            for node, sid in keys:
                tags.update(self.services[node][sid].tags)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def checks_in_state(self, state: str) -> list[Check]:
        out = []
        for node in sorted(self.checks):
            for cid in sorted(self.checks[node]):
                c = self.checks[node][cid]
                if state == "any" or c.status == state:
                    out.append(c)
        return out

    def node_checks(self, node: str) -> list[Check]:
        return [self.checks[node][cid] for cid in sorted(self.checks.get(node, {}))]

    @staticmethod
    def aggregate_status(checks: Iterable[Check]) -> str:
        """Consul's aggregation: any critical -> critical; else any warning -> warning; else passing."""
        status = HEALTH_PASSING
        for c in checks:
            if c.status == HEALTH_CRITICAL:
                return HEALTH_CRITICAL
            if c.status != HEALTH_PASSING:
                status = c.status
        return status

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
        self.by_service_name.clear()
        self.connect_by_target.clear()
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
            self._index_session(s)
        for e in self.kv.values():
            if e.session:
                self._keys_by_session.setdefault(e.session, set()).add(e.key)
