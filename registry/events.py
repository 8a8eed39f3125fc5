"""User events: what one is, who it is for, and the last ones an agent has seen (pure: no IO, no clock).

Consul's user events (agent/user_event.go) carry a name, an opaque payload and three optional regular
expressions -- on the node name, on the agent's services, and on those services' tags -- and travel by
gossip. Each agent keeps the last 256 events whose filters it passes in a ring buffer, which is what
``/v1/event/list`` reads; its ``X-Consul-Index`` is not a Raft index but a 64-bit number folded from the
newest listed event's ID (``uuidToUint64`` in agent/event_endpoint.go), so a blocking list wakes when the
newest event changes.

Proconsul has no gossip yet: an event is committed to a bounded replicated ring (``registry.events_ring``)
and every agent follows that ring. Everything in this module is independent of how the event travels: the
event value, Consul's validation and size rules, the filters an agent applies, and the agent's buffer.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from registry.filtering.regexp import go_regexp

__all__ = [
    "AGENT_BUFFER_SIZE", "EVENT_VERSION", "EventBuffer", "EventError", "UserEvent", "check_size", "id_to_index",
    "list_index", "should_process", "validate_event",
]  # fmt: skip

EVENT_VERSION = 1  # Consul's userEventMaxVersion
AGENT_BUFFER_SIZE = 256  # Consul's agent keeps the last 256 events it received
USER_EVENT_SIZE_LIMIT = 512  # serf's default UserEventSizeLimit, which Consul keeps
SERF_NAME_PREFIX = "consul:event:"  # Consul's userEventName: the serf event's name for a user event


class EventError(ValueError):
    """An event refused, with Consul's text and the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class UserEvent:
    """Consul's ``UserEvent``: ``ltime`` is the event's Lamport time, set when it is delivered (0 in the
    answer to a fire, as Consul's)."""

    id: str
    name: str
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""
    version: int = EVENT_VERSION
    ltime: int = 0

    def to_json(self) -> dict[str, Any]:
        """The HTTP shape: Go's ``[]byte`` payload is base64 (null when absent), fields in Consul's order."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Payload": base64.b64encode(self.payload).decode() if self.payload is not None else None,
            "NodeFilter": self.node_filter,
            "ServiceFilter": self.service_filter,
            "TagFilter": self.tag_filter,
            "Version": self.version,
            "LTime": self.ltime,
        }

    def to_wire(self) -> dict[str, Any]:
        """The replicated form (msgpack-ready; the payload stays bytes)."""
        return {"ID": self.id, "Name": self.name, "Payload": self.payload, "NodeFilter": self.node_filter,
                "ServiceFilter": self.service_filter, "TagFilter": self.tag_filter, "Version": self.version,
                "LTime": self.ltime}  # fmt: skip

    @classmethod
    def from_wire(cls, raw: Any) -> UserEvent:
        """Trusts nothing: a malformed map raises ``EventError``."""
        if not isinstance(raw, dict):
            raise EventError("event must be a map")
        strs = {}
        for key in ("ID", "Name", "NodeFilter", "ServiceFilter", "TagFilter"):
            v = raw.get(key) or ""
            if not isinstance(v, str):
                raise EventError(f"event {key} must be a string")
            strs[key] = v
        payload = raw.get("Payload")
        if payload is not None and not isinstance(payload, bytes):
            raise EventError("event Payload must be bytes")
        version, ltime = raw.get("Version", EVENT_VERSION), raw.get("LTime", 0)
        for key, v in (("Version", version), ("LTime", ltime)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise EventError(f"event {key} must be a non-negative integer")
        if not strs["ID"] or not strs["Name"]:
            raise EventError("event needs an ID and a Name")
        return cls(strs["ID"], strs["Name"], payload, strs["NodeFilter"], strs["ServiceFilter"], strs["TagFilter"],
                   version, ltime)  # fmt: skip


def validate_event(name: str, node_filter: str, service_filter: str, tag_filter: str) -> None:
    """Consul's ``validateUserEventParams``, with its texts."""
    if not name:
        raise EventError("User event missing name")
    if tag_filter and not service_filter:
        raise EventError("Cannot provide tag filter without service filter")
    for label, pattern in (("node", node_filter), ("service", service_filter), ("tag", tag_filter)):
        if pattern:
            try:
                go_regexp(pattern)
            except ValueError as exc:
                raise EventError(f"Invalid {label} filter: {exc}") from None


def _consul_encoding(event: UserEvent) -> bytes:
    """The event as Consul's agent encodes it into the serf payload (msgpack, its codec tags, empty
    optional fields left out), to count its size as serf does."""
    doc: dict[str, Any] = {"ID": event.id, "n": event.name}
    if event.payload:
        doc["p"] = event.payload
    for tag, value in (("nf", event.node_filter), ("sf", event.service_filter), ("tf", event.tag_filter)):
        if value:
            doc[tag] = value
    doc["v"] = event.version
    return msgpack.packb(doc, use_bin_type=True)


def check_size(event: UserEvent, limit: int = USER_EVENT_SIZE_LIMIT) -> None:
    """Serf's ``UserEvent`` size rule as a Consul event meets it: the serf event's name (the prefixed event
    name) plus its payload (the encoded ``UserEvent``) may not exceed the limit before encoding, nor the
    encoded serf message after."""
    encoded = _consul_encoding(event)
    serf_name = SERF_NAME_PREFIX + event.name
    if len(serf_name.encode()) + len(encoded) > limit:
        raise EventError(f"user event exceeds configured limit of {limit} bytes before encoding")
    message = b"\x08" + msgpack.packb({"LTime": 0, "Name": serf_name, "Payload": encoded, "CC": False},
                                      use_bin_type=True)  # fmt: skip
    if len(message) > limit:
        raise EventError(f"encoded user event exceeds configured limit of {limit} bytes after encoding")


def id_to_index(event_id: str) -> int:
    """Consul's ``uuidToUint64``: the UUID's first 64 bits XOR its last 64 bits. An ID that is not a UUID
    folds to 0 rather than failing (Consul's IDs always are)."""
    hexits = event_id.replace("-", "")
    try:
        value = int(hexits, 16)
    except ValueError:
        return 0
    if len(hexits) != 32:
        return 0
    return (value >> 64) ^ (value & 0xFFFF_FFFF_FFFF_FFFF)


def list_index(events: Sequence[UserEvent]) -> int:
    """``X-Consul-Index`` of an event list: the newest listed event's folded ID, or 1 when none is listed
    (Consul's: a non-zero index keeps a watch from spinning)."""
    return id_to_index(events[-1].id) if events else 1


def should_process(event: UserEvent, node_name: str, services: Iterable[tuple[str, Sequence[str]]]) -> bool:
    """Consul's ``shouldProcessUserEvent``: the node filter must match this agent's node name and, with a
    service filter, one of its services (by the key Consul's agent lists them under, the service ID) must
    match, with a tag matching the tag filter when there is one. Matching is Go's (unanchored search); a
    filter that does not compile matches nothing."""
    try:
        if event.node_filter and not go_regexp(event.node_filter).search(node_name):
            return False
        if not event.service_filter:
            return True
        service_re = go_regexp(event.service_filter)
        tag_re = go_regexp(event.tag_filter) if event.tag_filter else None
    except ValueError:
        return False
    for service_id, tags in services:
        if not service_re.search(service_id):
            continue
        if tag_re is None or any(tag_re.search(tag) for tag in tags):
            return True
    return False


class EventBuffer:
    """The agent's ring of the last ``size`` events it accepted, oldest first, each accepted once.

    ``add`` refuses an event whose ID it holds already, so a transport that delivers twice (a retried
    follow, a gossip rebroadcast) never shows one event twice. ``version`` moves on every accepted event:
    a blocking list compares it to decide whether to look again."""

    def __init__(self, size: int = AGENT_BUFFER_SIZE) -> None:
        self._size = size
        self._events: list[UserEvent] = []
        self._ids: set[str] = set()
        self.version = 0

    def add(self, event: UserEvent) -> bool:
        if event.id in self._ids:
            return False
        self._events.append(event)
        self._ids.add(event.id)
        if len(self._events) > self._size:
            dropped = self._events.pop(0)
            self._ids.discard(dropped.id)
        self.version += 1
        return True

    def events(self, name: str = "") -> list[UserEvent]:
        """The buffered events, oldest first; only those named ``name`` when it is given."""
        if not name:
            return list(self._events)
        return [e for e in self._events if e.name == name]

    def __len__(self) -> int:
        return len(self._events)
