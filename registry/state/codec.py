"""Store rows <-> msgpack-ready values, for snapshots. Decoding validates every field it reads."""

from __future__ import annotations

from typing import Any

from registry.sessions import Session, SessionError, session_from_command
from registry.structs import Check, KVEntry, Node, Service

FORMAT_VERSION = 1


class SnapshotFormatError(ValueError):
    pass


def node_values(n: Node) -> list[Any]:
    return [n.id, n.node, n.address, n.datacenter, n.tagged_addresses, n.meta, n.create_index, n.modify_index]


def service_values(s: Service) -> list[Any]:
    return [
        s.node, s.id, s.service, s.kind, list(s.tags), s.address, s.tagged_addresses, s.meta, s.port,
        list(s.weights), s.enable_tag_override, s.proxy, s.connect, s.create_index, s.modify_index, s.locality,
    ]  # fmt: skip


def check_values(c: Check) -> list[Any]:
    return [
        c.node, c.check_id, c.name, c.status, c.notes, c.output, c.service_id, c.service_name,
        list(c.service_tags), c.type, c.interval, c.timeout, c.definition, c.create_index, c.modify_index,
    ]  # fmt: skip


def _kv(e: KVEntry) -> list[Any]:
    return [e.key, e.value, e.flags, e.session, e.lock_index, e.create_index, e.modify_index]


def _session(x: Session) -> list[Any]:
    return [x.to_command(), x.create_index, x.modify_index]


def session_row(r: list[Any]) -> Session:
    from dataclasses import replace

    try:
        row = session_from_command(r[0])
    except SessionError as exc:
        raise SnapshotFormatError(f"malformed session: {exc}") from None
    return replace(row, create_index=int(r[1]), modify_index=int(r[2]))


def node_row(r: list[Any]) -> Node:
    return Node(str(r[0]), str(r[1]), str(r[2]), str(r[3]), dict(r[4]), dict(r[5]), int(r[6]), int(r[7]))


def service_row(r: list[Any]) -> Service:
    return Service(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), tuple(r[4]), str(r[5]), dict(r[6]), dict(r[7]),
        int(r[8]), (int(r[9][0]), int(r[9][1])), bool(r[10]), r[11], r[12], int(r[13]), int(r[14]),
        dict(r[15]) if len(r) > 15 and r[15] else None,  # snapshots written before Locality have 15 fields
    )  # fmt: skip


def check_row(r: list[Any]) -> Check:
    return Check(
        str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]), str(r[7]),
        tuple(r[8]), str(r[9]), str(r[10]), str(r[11]), dict(r[12]), int(r[13]), int(r[14]),
    )  # fmt: skip


def dump_store(store: Any) -> dict[str, Any]:
    return {
        "v": FORMAT_VERSION,
        "index": store.index,
        "table_index": dict(store.table_index),
        "service_index": dict(store.service_index),
        "node_index": dict(store.node_index),
        "nodes": [node_values(n) for n in store.nodes.values()],
        "services": [service_values(s) for ss in store.services.values() for s in ss.values()],
        "checks": [check_values(c) for cs in store.checks.values() for c in cs.values()],
        "kv": [_kv(e) for e in store.kv.values()],
        "tombstones": dict(store._tombstones),
        "tables": store.tables,
        # Added with sessions; absent from older snapshots (loaded as empty).
        "sessions": [_session(x) for x in store.sessions.values()],
        "lock_delays": dict(store.lock_delays),
        "clock_ns": store.clock_ns,
        # Added with ACLs; absent from older snapshots (loaded as empty).
        "acl": store.acl_dump(),
        # Added with prepared queries; absent from older snapshots (loaded as empty).
        "prepared_queries": store.pq_dump(),
    }


def load_store(store: Any, data: dict[str, Any]) -> Any:
    try:
        if data.get("v") != FORMAT_VERSION:
            raise SnapshotFormatError(f"unsupported snapshot format {data.get('v')!r}")
        store.index = int(data["index"])
        store.table_index.update({str(k): int(v) for k, v in data["table_index"].items()})
        store.service_index = {str(k): int(v) for k, v in data["service_index"].items()}
        store.node_index = {str(k): int(v) for k, v in data["node_index"].items()}
        for r in data["nodes"]:
            n = node_row(r)
            store.nodes[n.node] = n
        for r in data["services"]:
            s = service_row(r)
            store.services.setdefault(s.node, {})[s.id] = s
        for r in data["checks"]:
            c = check_row(r)
            store.checks.setdefault(c.node, {})[c.check_id] = c
        for r in data["kv"]:
            value = r[1]
            if value is not None and not isinstance(value, bytes):
                raise SnapshotFormatError("KV value must be bytes or nil")
            e = KVEntry(str(r[0]), value, int(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]))
            store.kv[e.key] = e
        store._tombstones = {str(k): int(v) for k, v in data["tombstones"].items()}
        store.tables = {str(t): dict(rows) for t, rows in data["tables"].items()}
        for r in data.get("sessions") or []:
            x = session_row(r)
            store.sessions[x.id] = x
        store.lock_delays = {str(k): int(v) for k, v in (data.get("lock_delays") or {}).items()}
        store.clock_ns = int(data.get("clock_ns") or 0)
        acl = data.get("acl") or {}
        if not isinstance(acl, dict):
            raise SnapshotFormatError("acl must be a map")
        store.acl_load(acl)
        queries = data.get("prepared_queries") or []
        if not isinstance(queries, list):
            raise SnapshotFormatError("prepared_queries must be a list")
        store.pq_load(queries)
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # ACLObjectError is a ValueError
        if isinstance(exc, SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"malformed snapshot: {exc!r}") from exc
    store.rebuild_indexes()
    return store
