"""Replicated Connect state: the CA, config entries (service mesh kinds) and intention operations.

Everything here runs inside ``FSM.apply``: it must be deterministic (no clock, no randomness: the
proposer puts generated keys, IDs and timestamps into the command) and it validates the whole command
before the first write, raising ``StoreError`` to refuse it.

Tables (generic store tables, watch topic ``(table,)``):

- ``connect-ca``      key ``state``: ``ca.provider.to_msgpack_dict`` of the one ``CAState``. It holds
                      the active root's private key, exactly as Consul's replicated CA state does; no
                      API output is built from this dict, only from the decoded ``CAState``.
- ``config-entries``  key ``<kind>/<namespace>/<name>``: the entry in Consul's JSON shape, with
                      ``CreateIndex`` / ``ModifyIndex`` stamped from the log: ``service-intentions``
                      (``registry.intentions``) and the kinds of ``registry.configentry``
                      (service-defaults, proxy-defaults, service-resolver, -splitter, -router).

Commands (``registry.commands``; ``register_commands`` adds their apply functions to the FSM):

- ``CASet``              replaces the CA state if the table's index is still ``prev`` (0 = only if there
                         is no state yet), so two leaders' (or two operators') concurrent rotations
                         cannot both land.
- ``ConfigEntryUpsert``, ``ConfigEntryDelete``: Consul's config entry writes, with or without CAS. A
                         write (or delete) of a kind that takes part in discovery chains is refused when
                         any chain it touches would no longer compile (``discoverychain.validate_write``),
                         as Consul's state store refuses it (validateProposedConfigEntryInGraph).
- ``IntentionWrite``, ``IntentionDelete``, ``IntentionDeleteExact``: the legacy and exact intention
                         endpoints, applied to the destination's ``service-intentions`` entry as Consul
                         does since 1.9.

``StateViews`` gives readers the decoded CA state and the intention index, rebuilt only when the
table they come from changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ca import provider
from ca.provider import CAState
from registry import commands as c
from registry import configentry, discoverychain
from registry.gocompat import go_quote
from registry.intentions import (
    DEFAULT_NAMESPACE,
    Intention,
    IntentionError,
    IntentionIndex,
    build_index,
    compute_precedence,
    config_entries_to_intentions,
    normalize_permissions,
    validate_config_entry,
)
from registry.state.store import StateStore, StoreError, WatchSet

if TYPE_CHECKING:
    from registry.fsm import FSM

TABLE_CA = "connect-ca"
CA_KEY = "state"
TABLE_CONFIG = "config-entries"
TOPIC_CA = (TABLE_CA,)
TOPIC_CONFIG = (TABLE_CONFIG,)

CMD_CA_SET = c.CASet.TYPE
CMD_CONFIG_ENTRY = c.ConfigEntryUpsert.TYPE
CMD_INTENTION = c.IntentionWrite.TYPE

KIND_SERVICE_INTENTIONS = "service-intentions"
# Config entry kinds this agent stores. Others are refused with a clear message instead of being
# stored unvalidated (a gateway entry nobody acts on is worse than none).
SUPPORTED_KINDS = (KIND_SERVICE_INTENTIONS, *configentry.KINDS)

# Canonical spellings of service-intentions keys; JSON decoding is case-insensitive, as Go's is.
_ENTRY_KEYS = {k.lower(): k for k in ("Kind", "Name", "Namespace", "Partition", "Meta", "Sources")}
_SOURCE_KEYS = {
    k.lower(): k
    for k in (
        "Name", "Namespace", "Partition", "Peer", "Action", "Permissions", "Precedence", "Type",
        "Description", "LegacyID", "LegacyMeta", "LegacyCreateTime", "LegacyUpdateTime",
    )
}  # fmt: skip


_SOURCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "Name": str, "Namespace": str, "Action": str, "Type": str, "Description": str, "LegacyID": str,
    "LegacyCreateTime": str, "LegacyUpdateTime": str, "Precedence": int, "LegacyMeta": dict,
    "Permissions": list, "Partition": str, "Peer": str,
}  # fmt: skip
_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "Name": str, "Namespace": str, "Partition": str, "Meta": dict, "Sources": list,
}  # fmt: skip


def _check_types(d: Mapping[str, Any], types: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    # Wrong JSON types are the caller's mistake (400), not something to trip over later (500).
    for key, want in types.items():
        value = d.get(key)
        if value is not None and not isinstance(value, want):
            kind = {str: "a string", int: "an integer", dict: "an object", list: "a list"}.get(want, "valid")  # type: ignore[call-overload]
            raise ConfigEntryError(f"{where}{key} must be {kind}")
    for key in ("Meta", "LegacyMeta"):
        meta = d.get(key)
        if isinstance(meta, dict) and not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ConfigEntryError(f"{where}{key} must be a map of strings")


class ConfigEntryError(ValueError):
    """A config entry (or a request about one) that cannot be accepted; worded for the API caller."""


def register_commands(fsm: FSM) -> None:
    """Add the apply functions of the Connect commands to an FSM's dispatch table."""
    fsm.register(c.CASet, apply_ca_set)
    fsm.register(c.ConfigEntryUpsert, apply_config_entry_upsert)
    fsm.register(c.ConfigEntryDelete, apply_config_entry_delete)
    fsm.register(c.IntentionWrite, apply_intention_write)
    fsm.register(c.IntentionDelete, apply_intention_delete)
    fsm.register(c.IntentionDeleteExact, apply_intention_delete_exact)


def _log_index(store: StateStore) -> int:
    # The index of the entry being applied (set by StateStore.begin); rows are stamped with it.
    return int(store._idx)


# ---------------------------------------------------------------------- CA state


def ca_raw(store: StateStore) -> dict[str, Any] | None:
    return store.tables.get(TABLE_CA, {}).get(CA_KEY)


def ca_index(store: StateStore) -> int:
    """The log index of the last CA state write (0 if there is none): the CAS token for ``Prev``."""
    return store.table_index.get(TABLE_CA, 0) if ca_raw(store) is not None else 0


def _stamp_ca(old: Mapping[str, Any] | None, new: dict[str, Any], idx: int) -> dict[str, Any]:
    """Give roots and the configuration Create/ModifyIndex from the log, keeping the old values for
    whatever did not change (so a prune does not look like a change of every root)."""
    out = dict(new)
    old_roots = {r["id"]: r for r in old["roots"]} if old else {}
    roots = []
    for r in new["roots"]:
        r = dict(r)
        before = old_roots.get(r["id"])
        if before is None:
            r["create_index"] = r["modify_index"] = idx
        else:
            r["create_index"] = before["create_index"]
            same = all(r[k] == before.get(k) for k in r if k not in ("create_index", "modify_index"))
            r["modify_index"] = before["modify_index"] if same else idx
        roots.append(r)
    out["roots"] = roots
    if old is None:
        out["config_create_index"] = out["config_modify_index"] = idx
    else:
        out["config_create_index"] = old["config_create_index"]
        out["config_modify_index"] = (
            old["config_modify_index"] if old["config"] == new["config"] else idx
        )
    return out


def apply_ca_set(store: StateStore, cmd: c.CASet) -> bool:
    raw, prev = cmd.state, cmd.prev
    try:
        provider.from_msgpack_dict(raw)
    except (provider.CAError, provider.CAConfigError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"invalid CA state: {exc}") from None
    old = ca_raw(store)
    if prev != ca_index(store):
        return False  # lost a race with another writer: the proposer re-reads and retries
    if old is not None and old["cluster_id"] != raw["cluster_id"]:
        raise StoreError("the CA's cluster ID cannot change once the CA is initialized")
    store.table_put(TABLE_CA, CA_KEY, _stamp_ca(old, raw, _log_index(store)))
    return True


# ---------------------------------------------------------------------- config entries


def entry_key(kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{kind}/{namespace or DEFAULT_NAMESPACE}/{name}"


def _canonical(raw: Mapping[str, Any], names: Mapping[str, str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        canon = names.get(str(key).lower())
        if canon is None:
            continue  # unknown fields are ignored, as Consul's decoder ignores them
        if canon in out:
            raise ConfigEntryError(f"{where}: field {canon!r} given more than once")
        out[canon] = value
    return out


def normalize_entry(raw: Any) -> dict[str, Any]:
    """Canonical, validated form of a config entry body (``Kind`` and ``Name`` required).

    ``service-intentions``: keys matched case-insensitively, ``Precedence`` recomputed for each
    source, CreateIndex/ModifyIndex dropped (the store stamps them). Raises ConfigEntryError."""
    if not isinstance(raw, Mapping):
        raise ConfigEntryError("Request decoding failed: config entry must be a JSON object")
    kind_value = next((v for k, v in raw.items() if str(k).lower() == "kind"), None)
    if not isinstance(kind_value, str) or not kind_value:
        raise ConfigEntryError("Request decoding failed: Payload does not contain a Kind key")
    kind = kind_value.lower()
    if kind in configentry.KINDS:
        try:
            return configentry.parse_entry(raw)
        except configentry.ConfigEntryError as exc:
            raise ConfigEntryError(str(exc)) from None
    if kind not in SUPPORTED_KINDS:
        raise ConfigEntryError(
            f"config entry kind {kind_value!r} is not supported by this agent: "
            f"supported kinds are {', '.join(SUPPORTED_KINDS)}"
        )
    entry = _canonical(raw, _ENTRY_KEYS, "config entry")
    _check_types(entry, _ENTRY_TYPES, "")
    entry["Kind"] = kind
    if entry.get("Partition") not in (None, "", "default"):
        raise ConfigEntryError("Partitions are an Enterprise feature: only the default partition exists")
    entry.pop("Partition", None)
    ns = entry.get("Namespace") or DEFAULT_NAMESPACE
    if ns != DEFAULT_NAMESPACE:
        entry["Namespace"] = ns
    else:
        entry.pop("Namespace", None)
    meta = entry.get("Meta")
    if meta is not None and (
        not isinstance(meta, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise ConfigEntryError("Meta must be a map of strings")
    if not meta:
        entry.pop("Meta", None)
    sources = entry.get("Sources")
    if not isinstance(sources, list):
        sources = []
    canon_sources = []
    for i, src in enumerate(sources):
        if not isinstance(src, Mapping):
            raise ConfigEntryError(f"Sources[{i}] must be an object")
        s = _canonical(src, _SOURCE_KEYS, f"Sources[{i}]")
        _check_types(s, _SOURCE_TYPES, f"Sources[{i}].")
        if any(not isinstance(p, Mapping) for p in s.get("Permissions") or ()):
            raise ConfigEntryError(f"Sources[{i}].Permissions must be a list of objects")
        if s.get("Partition") not in (None, "", "default") or s.get("Peer"):
            raise ConfigEntryError(f"Sources[{i}]: partitions and peers are not supported")
        s.pop("Partition", None)
        s.pop("Peer", None)
        if (s.get("Namespace") or DEFAULT_NAMESPACE) == DEFAULT_NAMESPACE:
            s.pop("Namespace", None)
        for opt in ("Description", "LegacyID", "LegacyCreateTime", "LegacyUpdateTime", "Action"):
            if opt in s and not s[opt]:
                del s[opt]
        if not s.get("Permissions"):
            s.pop("Permissions", None)
        else:
            s["Permissions"] = normalize_permissions(s["Permissions"])
        if not s.get("LegacyMeta"):
            s.pop("LegacyMeta", None)
        s["Type"] = s.get("Type") or "consul"
        canon_sources.append(s)
    entry["Sources"] = canon_sources
    try:
        validate_config_entry(entry)
        for s in canon_sources:
            s["Precedence"] = compute_precedence(
                s.get("Namespace") or DEFAULT_NAMESPACE, s["Name"], ns, entry["Name"]
            )
        # Building the intentions checks every field the model checks (Meta sizes, L7 rules...).
        config_entries_to_intentions([entry])
    except IntentionError as exc:
        raise ConfigEntryError(str(exc)) from None
    return entry


def get_entry(
    store: StateStore, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE, ws: WatchSet | None = None
) -> dict[str, Any] | None:
    """One config entry (Consul's ConfigEntry); with a watch set, watched as the config entries table."""
    rows = store.table_rows(TABLE_CONFIG, ws) if ws is not None else store.tables.get(TABLE_CONFIG, {})
    return rows.get(entry_key(kind, name, namespace))


def list_entries(store: StateStore, kind: str, ws: WatchSet | None = None) -> list[dict[str, Any]]:
    """The entries of one kind (Consul's ConfigEntriesByKind), as ``get_entry``."""
    prefix = f"{kind}/"
    rows = store.table_rows(TABLE_CONFIG, ws) if ws is not None else store.tables.get(TABLE_CONFIG, {})
    return [rows[k] for k in sorted(rows) if k.startswith(prefix)]


def config_index(store: StateStore) -> int:
    return store.table_index.get(TABLE_CONFIG, 0)


def _put_entry(store: StateStore, entry: dict[str, Any]) -> None:
    key = entry_key(entry["Kind"], entry["Name"], entry.get("Namespace", DEFAULT_NAMESPACE))
    old = store.tables.get(TABLE_CONFIG, {}).get(key)
    idx = _log_index(store)
    row = dict(entry)
    row["CreateIndex"] = old["CreateIndex"] if old else idx
    row["ModifyIndex"] = idx
    store.table_put(TABLE_CONFIG, key, row)


def _delete_entry(store: StateStore, kind: str, name: str, namespace: str) -> None:
    store.table_delete(TABLE_CONFIG, entry_key(kind, name, namespace))


def apply_config_entry_upsert(store: StateStore, cmd: c.ConfigEntryUpsert) -> bool:
    try:
        entry = normalize_entry(cmd.entry)
    except ConfigEntryError as exc:
        raise StoreError(str(exc)) from None
    existing = get_entry(store, entry["Kind"], entry["Name"], entry.get("Namespace", DEFAULT_NAMESPACE))
    if cmd.cas:
        current = existing["ModifyIndex"] if existing else 0
        if current != cmd.index:
            return False
    if entry["Kind"] == KIND_SERVICE_INTENTIONS:
        _check_unique_legacy_ids(store, entry)
        _check_l7_protocols(store, [entry])
    else:
        _validate_graph(store, entry["Kind"], entry["Name"], entry)
        _check_l7_protocols_after(store, entry["Kind"], entry["Name"], entry)
    _put_entry(store, entry)
    return True


def _service_protocol(store: StateStore, name: str, namespace: str = DEFAULT_NAMESPACE,
                      proposed: tuple[str, str, dict[str, Any] | None] | None = None) -> str:  # fmt: skip
    """Consul's protocolForService: the service's ``service-defaults`` Protocol, else the global
    ``proxy-defaults`` ``Config.protocol``, else "tcp"; ``proposed`` (kind, name, entry or None for a
    delete) stands in for what is stored."""

    def entry(kind: str, n: str, ns: str) -> Mapping[str, Any] | None:
        if proposed is not None and proposed[0] == kind and proposed[1] == n:
            return proposed[2]
        return get_entry(store, kind, n, ns)

    protocol = configentry.proxy_protocol(entry(configentry.PROXY_DEFAULTS, configentry.PROXY_GLOBAL,
                                                DEFAULT_NAMESPACE)) or "tcp"  # fmt: skip
    defaults = entry(configentry.SERVICE_DEFAULTS, name, namespace)
    if defaults is not None and defaults.get("Protocol"):
        protocol = str(defaults["Protocol"])
    return protocol


def service_protocol(store: StateStore, name: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The protocol a service speaks in the mesh (Consul's protocolForService; see ``_service_protocol``)."""
    return _service_protocol(store, name, namespace)


def _check_l7_protocols(store: StateStore, entries: list[Mapping[str, Any]],
                        proposed: tuple[str, str, dict[str, Any] | None] | None = None) -> None:  # fmt: skip
    """Refuse intentions with L7 ``Permissions`` on a destination whose protocol is not HTTP-like, as
    Consul's validateProposedConfigEntryInServiceGraph does (wildcard destinations are not checked:
    they cannot carry permissions)."""
    for e in entries:
        ns = e.get("Namespace") or DEFAULT_NAMESPACE
        if e["Name"] == "*" or ns == "*" or not any(s.get("Permissions") for s in e.get("Sources") or ()):
            continue
        protocol = _service_protocol(store, e["Name"], ns, proposed)
        if not configentry.is_http_like(protocol):
            raise StoreError(f"service {go_quote(e['Name'])} has protocol {go_quote(protocol)}, "
                             "which is incompatible with L7 intentions permissions")  # fmt: skip


def _check_l7_protocols_after(store: StateStore, kind: str, name: str, proposed: dict[str, Any] | None) -> None:
    """A service-defaults or proxy-defaults change (``proposed``; None for a delete) must leave every
    L7 intention on an HTTP-like service: Consul re-checks the service's intentions (all of them for the
    global proxy-defaults)."""
    if kind == configentry.SERVICE_DEFAULTS:
        entries = [e for e in list_entries(store, KIND_SERVICE_INTENTIONS) if e["Name"] == name]
    elif kind == configentry.PROXY_DEFAULTS and name == configentry.PROXY_GLOBAL:
        entries = list_entries(store, KIND_SERVICE_INTENTIONS)
    else:
        return
    _check_l7_protocols(store, entries, (kind, name, proposed))


def _validate_graph(store: StateStore, kind: str, name: str, proposed: dict[str, Any] | None) -> None:
    """Refuse a write that leaves a discovery chain uncompilable (Consul's
    validateProposedConfigEntryInGraph), with the compiler's text."""
    rows = store.tables.get(TABLE_CONFIG, {})

    def lookup(k: str, n: str) -> dict[str, Any] | None:
        return rows.get(entry_key(k, n))

    chain_entries = [rows[key] for key in rows if key.split("/", 1)[0] in configentry.CHAIN_KINDS]
    try:
        discoverychain.validate_write(lookup, chain_entries, kind, name, proposed)
    except discoverychain.ChainError as exc:
        raise StoreError(str(exc)) from None


def apply_config_entry_delete(store: StateStore, cmd: c.ConfigEntryDelete) -> bool:
    existing = get_entry(store, cmd.kind, cmd.name, cmd.namespace)
    if cmd.cas:
        # Consul: a CAS delete with index 0 never deletes; a missing entry cannot match.
        if existing is None or cmd.index == 0 or existing["ModifyIndex"] != cmd.index:
            return False
    if existing is not None and cmd.kind in configentry.KINDS:
        _validate_graph(store, cmd.kind, cmd.name, None)
        _check_l7_protocols_after(store, cmd.kind, cmd.name, None)
    _delete_entry(store, cmd.kind, cmd.name, cmd.namespace)
    return True


def _check_unique_legacy_ids(store: StateStore, entry: Mapping[str, Any]) -> None:
    """A legacy intention ID names one source across all entries; refuse a second owner."""
    ids = [s["LegacyID"] for s in entry["Sources"] if s.get("LegacyID")]
    if not ids:
        return
    if len(ids) != len(set(ids)):
        raise StoreError("LegacyID values must be unique")
    mine = entry_key(entry["Kind"], entry["Name"], entry.get("Namespace", DEFAULT_NAMESPACE))
    wanted = set(ids)
    for key, other in store.tables.get(TABLE_CONFIG, {}).items():
        if key == mine or other.get("Kind") != KIND_SERVICE_INTENTIONS:
            continue
        for s in other["Sources"]:
            if s.get("LegacyID") in wanted:
                raise StoreError(f"intention ID {s['LegacyID']!r} is already used by {other['Name']!r}")


# ---------------------------------------------------------------------- intentions (legacy + exact)


def _source_matches(src: Mapping[str, Any], ns: str, name: str) -> bool:
    return (
        (src.get("Namespace") or DEFAULT_NAMESPACE).lower() == ns.lower()
        and src["Name"].lower() == name.lower()
    )


def find_legacy(store: StateStore, ixn_id: str) -> tuple[dict[str, Any], int] | None:
    """The service-intentions entry and source position holding legacy intention ``ixn_id``."""
    if not ixn_id:
        return None
    for entry in list_entries(store, KIND_SERVICE_INTENTIONS):
        for i, src in enumerate(entry["Sources"]):
            if src.get("LegacyID") == ixn_id:
                return entry, i
    return None


def _new_entry(ns: str, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"Kind": KIND_SERVICE_INTENTIONS, "Name": name, "Sources": []}
    if ns != DEFAULT_NAMESPACE:
        entry["Namespace"] = ns
    return entry


def _source_from(ixn: Intention, *, legacy_id: str, created: str, updated: str) -> dict[str, Any]:
    src: dict[str, Any] = {"Name": ixn.source_name}
    if ixn.source_ns != DEFAULT_NAMESPACE:
        src["Namespace"] = ixn.source_ns
    if ixn.action:
        src["Action"] = ixn.action
    if ixn.permissions:
        src["Permissions"] = [dict(p) for p in ixn.permissions]
    src["Type"] = ixn.source_type
    if ixn.description:
        src["Description"] = ixn.description
    if legacy_id:
        src["LegacyID"] = legacy_id
        if ixn.meta:
            src["LegacyMeta"] = dict(ixn.meta)
        src["LegacyCreateTime"] = created
        src["LegacyUpdateTime"] = updated
    return src


def _write_sources(store: StateStore, entry: dict[str, Any], sources: list[dict[str, Any]]) -> None:
    if not sources:
        _delete_entry(store, KIND_SERVICE_INTENTIONS, entry["Name"], entry.get("Namespace", DEFAULT_NAMESPACE))
        return
    new = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}
    new["Sources"] = sources
    try:
        new = normalize_entry(new)
    except ConfigEntryError as exc:
        raise StoreError(str(exc)) from None
    _check_l7_protocols(store, [new])
    _put_entry(store, new)


def _duplicate_error(ixn: Intention) -> StoreError:
    return StoreError(f"duplicate intention found: {ixn}")


def apply_intention_write(store: StateStore, cmd: c.IntentionWrite) -> Any:
    op, ixn, now = cmd.op, cmd.intention, cmd.now
    dst = get_entry(store, KIND_SERVICE_INTENTIONS, ixn.destination_name, ixn.destination_ns)
    dst = copy.deepcopy(dst) if dst is not None else _new_entry(ixn.destination_ns, ixn.destination_name)
    sources = list(dst["Sources"])
    pos = next((i for i, s in enumerate(sources) if _source_matches(s, ixn.source_ns, ixn.source_name)), None)
    if op == "create":
        ixn_id = cmd.id
        if pos is not None:
            raise _duplicate_error(ixn)
        if find_legacy(store, ixn_id) is not None:
            raise StoreError(f"intention ID {ixn_id!r} already exists")
        sources.append(_source_from(ixn, legacy_id=ixn_id, created=now, updated=now))
        _write_sources(store, dst, sources)
        return ixn_id
    if op == "upsert":
        # PUT /exact: replace the rule for this pair, keeping a legacy ID and creation time.
        old = sources[pos] if pos is not None else {}
        new_src = _source_from(
            ixn,
            legacy_id=old.get("LegacyID", ""),
            created=old.get("LegacyCreateTime", now),
            updated=now,
        )
        if old.get("LegacyMeta"):
            new_src["LegacyMeta"] = old["LegacyMeta"]
        if pos is None:
            sources.append(new_src)
        else:
            sources[pos] = new_src
        _write_sources(store, dst, sources)
        return True
    # update by legacy ID: the pair may move to another destination entry.
    ixn_id = cmd.id
    found = find_legacy(store, ixn_id)
    if found is None:
        raise StoreError(f"Cannot modify non-existent intention: '{ixn_id}'")
    old_entry, old_pos = found
    old_src = old_entry["Sources"][old_pos]
    same_entry = old_entry["Name"] == dst["Name"] and old_entry.get("Namespace") == dst.get("Namespace")
    if pos is not None and not (same_entry and pos == old_pos):
        raise _duplicate_error(ixn)
    new_src = _source_from(ixn, legacy_id=ixn_id, created=old_src.get("LegacyCreateTime", now), updated=now)
    if same_entry:
        sources[old_pos] = new_src
        _write_sources(store, dst, sources)
    else:
        remaining = [s for i, s in enumerate(old_entry["Sources"]) if i != old_pos]
        # Validate the destination side first so a refused move leaves both entries untouched.
        sources.append(new_src)
        probe = {k: v for k, v in dst.items() if k not in ("CreateIndex", "ModifyIndex")}
        probe["Sources"] = sources
        try:
            _check_l7_protocols(store, [normalize_entry(probe)])
        except ConfigEntryError as exc:
            raise StoreError(str(exc)) from None
        _write_sources(store, copy.deepcopy(old_entry), remaining)
        _write_sources(store, dst, sources)
    return True


def apply_intention_delete(store: StateStore, cmd: c.IntentionDelete) -> bool:
    found = find_legacy(store, cmd.id)
    if found is None:
        raise StoreError(f"Cannot delete non-existent intention: '{cmd.id}'")
    entry, pos = found
    _write_sources(store, copy.deepcopy(entry), [s for i, s in enumerate(entry["Sources"]) if i != pos])
    return True


def apply_intention_delete_exact(store: StateStore, cmd: c.IntentionDeleteExact) -> bool:
    entry = get_entry(store, KIND_SERVICE_INTENTIONS, cmd.destination_name, cmd.destination_ns)
    if entry is None:
        return True  # deleting what is not there is a no-op, as in Consul
    kept = [s for s in entry["Sources"] if not _source_matches(s, cmd.source_ns, cmd.source_name)]
    if len(kept) != len(entry["Sources"]):
        _write_sources(store, copy.deepcopy(entry), kept)
    return True


# ---------------------------------------------------------------------- cached read views


class StateViews:
    """Decoded views of the Connect tables, rebuilt only when their table changes.

    One instance per agent (no module-level caches): the decoded CA state and the intention index are
    derived values, keyed by the exact stored object (a write always stores a new object, and a
    snapshot restore builds a new store with new objects).
    """

    def __init__(self) -> None:
        self._ca_raw: object = None
        self._ca: CAState | None = None
        self._ixn_table: object = None
        self._ixn_index = -1
        self._ixn: IntentionIndex = build_index(())
        self._ixn_list: list[Intention] = []

    def ca(self, store: StateStore, ws: WatchSet | None = None) -> CAState | None:
        """The decoded CA state (Consul's CARoots/CAConfig read it); with a watch set, watched as the
        CA table at ``ca_index``."""
        if ws is not None:
            ws.saw(TOPIC_CA, ca_index(store))
        raw = ca_raw(store)
        if raw is None:
            return None
        if raw is not self._ca_raw:
            self._ca = provider.from_msgpack_dict(raw)
            self._ca_raw = raw
        return self._ca

    def _refresh_intentions(self, store: StateStore) -> None:
        # Holding the table itself (not its id) means a restored store can never be mistaken for
        # the old one, even if the allocator hands out the same address.
        table = store.tables.get(TABLE_CONFIG)
        index = config_index(store)
        if table is self._ixn_table and index == self._ixn_index:
            return
        entries = list_entries(store, KIND_SERVICE_INTENTIONS)
        self._ixn_list = config_entries_to_intentions(entries)
        self._ixn = build_index(self._ixn_list)
        self._ixn_table, self._ixn_index = table, index

    def intentions(self, store: StateStore, ws: WatchSet | None = None) -> IntentionIndex:
        """The intention index for matching; with a watch set, watched as the config entries table
        (intentions are service-intentions config entries, as in Consul since 1.9)."""
        if ws is not None:
            ws.saw(TOPIC_CONFIG, config_index(store))
        self._refresh_intentions(store)
        return self._ixn

    def intention_list(self, store: StateStore, ws: WatchSet | None = None) -> list[Intention]:
        """All intentions in evaluation order (highest precedence first), watched as ``intentions``."""
        if ws is not None:
            ws.saw(TOPIC_CONFIG, config_index(store))
        self._refresh_intentions(store)
        return self._ixn_list


StoreGetter = Callable[[], StateStore]
