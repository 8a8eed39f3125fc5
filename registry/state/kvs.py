"""The KV table and its tombstones (Consul's agent/consul/state/kvs.go and tombstone GC).

Keys are kept in a sorted list beside the rows, so a prefix read is two bisections. A deleted key leaves
a tombstone holding its delete index until the leader reaps it, so that a prefix's index never goes
backwards when the key that carried it is deleted (Consul's graveyard). Held locks are indexed by
session, so invalidating a session finds its keys without a scan.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from registry import sessions as sess_rules
from registry.gocompat import go_quote
from registry.state.base import StoreBase, StoreError
from registry.state.topics import KV_PREFIX, WatchSet
from registry.structs import KVEntry


def prefix_range(keys: list[str], prefix: str) -> tuple[int, int]:
    """The slice of a sorted key list holding exactly the keys that start with ``prefix``."""
    lo = bisect.bisect_left(keys, prefix)
    if not prefix:
        return lo, len(keys)
    # Every key with the prefix sorts before prefix + U+10FFFF.
    hi = bisect.bisect_left(keys, prefix + "\U0010ffff", lo)
    return lo, hi


class KVTable(StoreBase):
    # ------------------------------------------------------------------ writes

    def _kv_touch(self, key: str) -> None:
        tx = self._write()
        tx.put(self.table_index, "kvs", tx.index)
        tx.kv_keys.add(key)

    def kv_set(self, key: str, value: bytes | None, flags: int) -> None:
        tx = self._write()
        old = self.kv.get(key)
        if old is None:
            tx.insort(self._kv_keys, key)
            self._drop_tombstone(key)
            entry = KVEntry(key, value, flags, create_index=tx.index, modify_index=tx.index)
        else:
            entry = replace(old, value=value, flags=flags, modify_index=tx.index)
        tx.put(self.kv, key, entry)
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
        tx = self._write()
        old = tx.pop(self.kv, key)
        if old is None:
            return
        self._unindex_held(old)
        tx.remove_sorted(self._kv_keys, key)
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
        lo, hi = prefix_range(self._kv_keys, prefix)
        doomed = self._kv_keys[lo:hi]
        if not doomed:
            return
        tx = self._write()
        tx.remove_sorted_range(self._kv_keys, lo, hi)
        for key in doomed:
            self._unindex_held(tx.pop(self.kv, key))
            self._add_tombstone(key)
            self._kv_touch(key)

    def _unindex_held(self, entry: KVEntry) -> None:
        if entry.session:
            self._index_discard(self._keys_by_session, entry.session, entry.key)

    def kv_lock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        """PUT ?acquire: take (or keep) the lock on ``key`` for ``session`` and write the value. False when
        another session holds it or the key's lock-delay has not passed (at ``clock_ns``)."""
        if not session:
            raise StoreError("missing session", 500)
        if session not in self.sessions:
            # Consul's kvsLockTxn: ``invalid session %#v`` (Go's quoting), an RPC error its HTTP layer answers
            # with 500.
            raise StoreError(f"invalid session {go_quote(session)}", 500)
        old = self.kv.get(key)
        if old is None or old.session != session:
            if sess_rules.in_lock_delay(self.lock_delays.get(key), self.clock_ns):
                return False
        outcome = sess_rules.acquire(old.session if old else None, old.lock_index if old else None, session)
        if not outcome.acquired:
            return False
        self.kv_set(key, value, flags)
        tx = self._write()
        entry = replace(self.kv[key], session=session, lock_index=outcome.lock_index, modify_index=tx.index)
        tx.put(self.kv, key, entry)
        self._index_add(self._keys_by_session, session, key)
        return True

    def kv_unlock(self, key: str, value: bytes | None, flags: int, session: str) -> bool:
        """PUT ?release: only the holder can release; the value is written, LockIndex kept."""
        if not session:
            raise StoreError("missing session", 500)
        old = self.kv.get(key)
        if not sess_rules.release(old.session if old else None, session):
            return False
        assert old is not None
        tx = self._write()
        self._unindex_held(old)
        tx.put(self.kv, key, replace(old, value=value, flags=flags, session="", modify_index=tx.index))
        self._kv_touch(key)
        return True

    def _add_tombstone(self, key: str) -> None:
        tx = self._write()
        if key not in self._tombstones:
            tx.insort(self._tomb_keys, key)
        tx.put(self._tombstones, key, tx.index)

    def _drop_tombstone(self, key: str) -> None:
        tx = self._write()
        if tx.pop(self._tombstones, key) is not None:
            tx.remove_sorted(self._tomb_keys, key)

    def reap_tombstones(self, up_to_index: int) -> None:
        """Forget tombstones written at or before ``up_to_index`` (the leader issues this periodically)."""
        keep = [k for k in self._tomb_keys if self._tombstones[k] > up_to_index]
        if len(keep) == len(self._tomb_keys):
            return
        tx = self._write()
        for key in self._tomb_keys:
            if self._tombstones[key] <= up_to_index:
                tx.pop(self._tombstones, key)
        tx.replace_list(self._tomb_keys, keep)

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _kv_range(keys: list[str], prefix: str) -> tuple[int, int]:
        return prefix_range(keys, prefix)

    def kv_get(self, key: str, ws: WatchSet | None = None) -> tuple[int, KVEntry | None]:
        """One key (Consul's KVSGet): its ModifyIndex, or for a missing key the largest of its tombstone
        and the KV table's index; watched as ("kv", key)."""
        ent = self.kv.get(key)
        if ent is not None:
            idx = ent.modify_index
        else:
            idx = max(self._tombstones.get(key, 0), self.table_index["kvs"])
        if ws is not None:
            ws.saw(("kv", key), idx)
        return idx, ent

    def kv_list(self, prefix: str, ws: WatchSet | None = None) -> tuple[int, list[KVEntry]]:
        """The keys under a prefix (Consul's KVSList): the index is the largest ModifyIndex or tombstone
        under it, else the KV table's; watched as ("kvp", prefix)."""
        lo, hi = prefix_range(self._kv_keys, prefix)
        entries = [self.kv[k] for k in self._kv_keys[lo:hi]]
        idx = max((e.modify_index for e in entries), default=0)
        tlo, thi = prefix_range(self._tomb_keys, prefix)
        for k in self._tomb_keys[tlo:thi]:
            idx = max(idx, self._tombstones[k])
        if idx == 0:
            idx = self.table_index["kvs"]
        if ws is not None:
            ws.saw((KV_PREFIX, prefix), idx)
        return idx, entries

    def kv_keys(self, prefix: str, separator: str, ws: WatchSet | None = None) -> tuple[int, list[str]]:
        """Key names under a prefix, up to the separator (Consul's KVSListKeys); as ``kv_list``."""
        idx, entries = self.kv_list(prefix, ws)
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
