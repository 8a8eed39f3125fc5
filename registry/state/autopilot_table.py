"""The autopilot configuration table: one row, written through Raft, kept in snapshots.

Consul keeps its ``autopilot-config`` table in the state store (agent/consul/state/autopilot.go): one row,
``CreateIndex`` set when it is first written and ``ModifyIndex`` on every write, and a check-and-set write
that applies only when the row exists and its ``ModifyIndex`` is the one given. The row lives in the store's
generic tables (``registry.state.tables``), so snapshots carry it and a write wakes the readers of
``("autopilot-config",)``.
"""

from __future__ import annotations

from dataclasses import replace

from registry import commands as c
from registry.autopilot import AutopilotConfig
from registry.state.base import StoreBase
from registry.state.tables import GenericTables
from registry.state.topics import WatchSet

TABLE = "autopilot-config"
KEY = "config"


def autopilot_config(store: GenericTables, ws: WatchSet | None = None) -> AutopilotConfig | None:
    """The stored configuration, or None before a leader has written one."""
    rows = store.table_rows(TABLE, ws if ws is not None else WatchSet())
    raw = rows.get(KEY)
    return AutopilotConfig.from_wire(raw) if raw is not None else None


def apply_autopilot_set(store: GenericTables, cmd: c.AutopilotSetConfig) -> bool:
    """Consul's ``AutopilotSetConfig`` / ``AutopilotCASConfig``: a CAS write applies only when a row exists
    with that ``ModifyIndex`` (false otherwise); an initializing write (the leader seeding the agent's
    ``autopilot`` block) applies only when there is no row yet, so it never overwrites an operator's."""
    existing = autopilot_config(store)
    if cmd.cas and (existing is None or existing.modify_index != cmd.index):
        return False
    if cmd.init and existing is not None:
        return False
    idx = _log_index(store)
    row = replace(cmd.config, create_index=existing.create_index if existing is not None else idx, modify_index=idx)
    store.table_put(TABLE, KEY, row.to_wire())
    return True


def _log_index(store: StoreBase) -> int:
    return int(store._idx)  # the index of the entry being applied (set by StateStore.begin)
