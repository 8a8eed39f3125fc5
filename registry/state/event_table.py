"""The ring of recent user events: the replicated stand-in for Consul's gossip of user events.

Consul broadcasts a user event over serf, which gives it a Lamport time and forgets it once gossiped; every
agent keeps its own last 256 (agent/user_event.go). Without gossip, the servers keep the last ``RING_SIZE``
fired events in one generic table (``registry.state.tables``): rows keyed by their Lamport time, which is
one more than the newest row's, so it only grows. The table never holds more than ``RING_SIZE`` rows: each
fire beyond that drops the oldest in the same transaction, and a snapshot carries at most that many.

Agents follow the ring (a blocking read of the table's topic) and keep the events meant for them; a
gossip transport can later take the ring's place without the agents' buffers or the HTTP API changing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from registry import commands as c
from registry.events import EventError, UserEvent
from registry.state.base import StoreError
from registry.state.tables import GenericTables
from registry.state.topics import WatchSet

TABLE = "user_events"
TOPIC = (TABLE,)
RING_SIZE = 256


def _key(ltime: int) -> str:
    return f"{ltime:020d}"  # sorts as the number does


def ring_last_ltime(store: GenericTables) -> int:
    """The Lamport time of the newest event in the ring (0 when none was ever fired)."""
    rows = store.tables.get(TABLE)
    return int(max(rows)) if rows else 0


def ring_after(store: GenericTables, after: int, ws: WatchSet) -> tuple[list[UserEvent], int]:
    """The events newer than ``after`` (oldest first) and the newest Lamport time, watched as the table."""
    rows = store.table_rows(TABLE, ws)
    if not rows:
        return [], 0
    keys = sorted(rows)
    last = int(keys[-1])
    out = []
    for key in keys:
        if int(key) > after:
            try:
                out.append(UserEvent.from_wire(rows[key]))
            except EventError:
                continue  # a row no decoder accepts is skipped, never fatal to a follower
    return out, last


def _fire(store: GenericTables, cmd: c.EventFire) -> int:
    """Append the event with the next Lamport time, dropping the oldest beyond ``RING_SIZE``; answers the
    event's Lamport time."""
    event = cmd.event
    if any(row.get("ID") == event.id for row in store.tables.get(TABLE, {}).values()):
        raise StoreError(f"user event {event.id} was already fired")
    ltime = ring_last_ltime(store) + 1
    wire = event.to_wire()
    wire["LTime"] = ltime
    store.table_put(TABLE, _key(ltime), wire)
    rows = store.tables[TABLE]
    while len(rows) > RING_SIZE:
        store.table_delete(TABLE, min(rows))
    return ltime


EVENT_DISPATCH: dict[type, Callable[[Any, Any], Any]] = {c.EventFire: _fire}
