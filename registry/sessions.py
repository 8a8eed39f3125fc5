"""Sessions and KV locks: the rules, with no IO and no clock.

Consul's model (agent/consul/state/session.go, kvs.go): a session belongs to a node and is linked to some
of that node's checks (``serfHealth`` unless the caller says otherwise). It is *invalidated* -- deleted --
when it is destroyed, when its TTL runs out (the leader's timer), when its node is deregistered, or when a
linked check goes critical or is deregistered. Invalidation releases every key the session holds
(``Behavior: release``: Session cleared, value and LockIndex kept) or deletes them (``delete``), and starts
each key's lock-delay: for ``LockDelay`` after the invalidation no other session can acquire the key.

Everything time-dependent takes the time as an argument. In the FSM that time comes from the command being
applied (the proposer stamps it), never from a clock, so every server decides the same way.

This module holds the decisions; ``StateStore`` holds the rows and calls these; ``registry.api.session``
turns request bodies into commands with ``build_session``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.gocompat import DurationError, format_duration, go_quote, parse_duration
from registry.structs import SERF_CHECK_ID

NS = 1_000_000_000
BEHAVIOR_RELEASE = "release"
BEHAVIOR_DELETE = "delete"
DEFAULT_LOCK_DELAY_NS = 15 * NS
MAX_LOCK_DELAY_NS = 60 * NS  # Consul's structs.MaxLockDelay: longer delays are honoured only up to this
LOCK_DELAY_SECONDS_BELOW = 1000  # a LockDelay under 1000 (ns) is taken as seconds, as Consul does
DEFAULT_TTL_MIN_S = 10.0  # Consul's session_ttl_min default
TTL_MAX_S = 24 * 3600.0  # structs.SessionTTLMax
TTL_MULTIPLIER = 2  # structs.SessionTTLMultiplier: the leader invalidates after TTL * 2

TOPIC_SESSIONS = ("sessions",)


class SessionError(ValueError):
    """A session request Consul refuses; ``status`` is the HTTP status Consul answers it with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    name: str
    node: str
    lock_delay: int  # nanoseconds, as Consul's JSON shows it
    behavior: str
    ttl: str
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[tuple[str, str], ...] = ()  # (check ID, namespace)
    create_index: int = 0
    modify_index: int = 0

    def check_ids(self) -> tuple[str, ...]:
        """Every check the session is linked to (all on its node), as Consul's Session.CheckIDs()."""
        return self.node_checks + tuple(cid for cid, _ in self.service_checks)

    def ttl_seconds(self) -> float:
        """The TTL in seconds; 0 for a session without one."""
        if self.ttl in ("", "0", "0s", "0m", "0h"):
            return 0.0
        try:
            return parse_duration(self.ttl, field="TTL")
        except DurationError:
            return 0.0

    def to_command(self) -> dict[str, Any]:
        return {
            "ID": self.id, "Name": self.name, "Node": self.node, "LockDelay": self.lock_delay,
            "Behavior": self.behavior, "TTL": self.ttl, "NodeChecks": list(self.node_checks),
            "ServiceChecks": [{"ID": cid, "Namespace": ns} for cid, ns in self.service_checks],
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Consul's JSON for a session (structs.Session)."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": self.lock_delay,
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": list(self.node_checks) if self.node_checks else None,
            "ServiceChecks": [{"ID": cid, "Namespace": ns} for cid, ns in self.service_checks]
            if self.service_checks
            else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


# ---------------------------------------------------------------------- request body -> session


def _key(body: Mapping[str, Any], name: str) -> str | None:
    """The body's spelling of a field (Go's JSON decoding matches names case-insensitively)."""
    low = name.lower()
    for k in body:
        if isinstance(k, str) and k.lower() == low:
            return k
    return None


def parse_lock_delay(value: Any) -> int:
    """A LockDelay from a request body, in nanoseconds: a Go duration string or a number of nanoseconds;
    values under 1000 count as seconds (Consul's FixupLockDelay, for callers who send ``15``)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SessionError(f"Request decode failed: LockDelay: cannot use {value!r} as a duration", 400)
    if isinstance(value, str):
        try:
            ns = round(parse_duration(value, field="LockDelay", allow_negative=True) * NS)
        except DurationError:
            raise SessionError(f"Request decode failed: time: invalid duration {go_quote(value)}", 400) from None
    else:
        # Go's JSON decoding reads the number as a float64 and converts it to a Duration (int64): a value
        # beyond int64 converts to its minimum (amd64), and the seconds fixup below wraps as int64 does.
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise SessionError("Request decode failed: LockDelay: number out of range", 400)
        ns = int(f) if -_INT64 <= f < _INT64 else -_INT64
    if ns < LOCK_DELAY_SECONDS_BELOW:
        ns = _wrap_int64(ns * NS)
    return ns


_INT64 = 1 << 63


def _wrap_int64(value: int) -> int:
    """Go's int64 arithmetic: the result modulo 2^64, as a signed value."""
    return (value + _INT64) % (1 << 64) - _INT64


def validate_ttl(ttl: str, ttl_min_s: float = DEFAULT_TTL_MIN_S) -> None:
    """Consul's Session.Apply TTL check; its error texts (answered with 500, as any RPC error)."""
    if ttl == "":
        return
    try:
        seconds = parse_duration(ttl, field="TTL", allow_negative=True)
    except DurationError:
        raise SessionError(f"Session TTL '{ttl}' invalid: time: invalid duration {go_quote(ttl)}") from None
    if seconds != 0 and (seconds < ttl_min_s or seconds > TTL_MAX_S):
        raise SessionError(
            f"Invalid Session TTL '{round(seconds * NS)}', must be between "
            f"[{format_duration(ttl_min_s)}={format_duration(TTL_MAX_S)}]"
        )


def _str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SessionError(f"Request decode failed: {field}: expected a list of strings", 400)
    return list(value)


def build_session(body: Any, session_id: str, default_node: str, ttl_min_s: float = DEFAULT_TTL_MIN_S) -> Session:
    """A /v1/session/create body (or None) -> the session to create, with Consul's defaults: this agent's
    node, ``serfHealth`` unless the body names ``Checks`` (an empty list removes it), lock-delay 15s,
    behavior ``release``, no TTL. ``Checks`` (deprecated) and ``NodeChecks`` are both node checks."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise SessionError("Request decode failed: expected a JSON object", 400)
    k = _key(body, "Name")
    name = body.get(k, "") if k else ""
    k = _key(body, "Node")
    node = (body.get(k) if k else None) or default_node
    k = _key(body, "Behavior")
    behavior = (body.get(k) if k else None) or BEHAVIOR_RELEASE
    k = _key(body, "TTL")
    ttl = (body.get(k) if k else None) or ""
    for field, v in (("Name", name), ("Node", node), ("Behavior", behavior), ("TTL", ttl)):
        if not isinstance(v, str):
            raise SessionError(f"Request decode failed: {field}: expected a string, got {type(v).__name__}", 400)
    k = _key(body, "LockDelay")
    lock_delay = parse_lock_delay(body[k]) if k and body[k] is not None else DEFAULT_LOCK_DELAY_NS
    k = _key(body, "Checks")
    checks = _str_list(body[k], "Checks") if k else [SERF_CHECK_ID]
    k = _key(body, "NodeChecks")
    node_checks = _str_list(body.get(k) if k else None, "NodeChecks")
    k = _key(body, "ServiceChecks")
    raw_svc = body.get(k) if k else None
    service_checks: list[tuple[str, str]] = []
    if raw_svc is not None:
        if not isinstance(raw_svc, list):
            raise SessionError("Request decode failed: ServiceChecks: expected a list", 400)
        for sc in raw_svc:
            if not isinstance(sc, dict):
                raise SessionError("Request decode failed: ServiceChecks: expected a list of objects", 400)
            ik, nk = _key(sc, "ID"), _key(sc, "Namespace")
            cid, ns = sc.get(ik, "") if ik else "", (sc.get(nk) or "") if nk else ""
            if not isinstance(cid, str) or not isinstance(ns, str):
                raise SessionError("Request decode failed: ServiceChecks: ID and Namespace must be strings", 400)
            service_checks.append((cid, ns))
    if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
        raise SessionError(f"Invalid Behavior setting '{behavior}'")
    validate_ttl(ttl, ttl_min_s)
    merged: list[str] = []
    for cid in checks + node_checks:
        if cid not in merged:
            merged.append(cid)
    return Session(session_id, name, node, lock_delay, behavior, ttl, tuple(merged), tuple(service_checks))


def session_from_command(d: Any) -> Session:
    """The canonical session dict of a ``session`` command -> a row (raises SessionError if malformed)."""
    if not isinstance(d, dict):
        raise SessionError("Session must be an object", 400)
    try:
        sid, name, node, behavior, ttl = (str(d["ID"]), str(d.get("Name") or ""), str(d["Node"]),
                                          str(d.get("Behavior") or BEHAVIOR_RELEASE), str(d.get("TTL") or ""))  # fmt: skip
        lock_delay = int(d.get("LockDelay") or 0)
        node_checks = tuple(str(c) for c in d.get("NodeChecks") or ())
        service_checks = tuple((str(c["ID"]), str(c.get("Namespace") or "")) for c in d.get("ServiceChecks") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise SessionError(f"malformed session: {exc!r}", 400) from None
    if not sid:
        raise SessionError("Missing session ID", 400)
    if not node:
        raise SessionError("Must provide Node")
    if behavior not in (BEHAVIOR_RELEASE, BEHAVIOR_DELETE):
        raise SessionError(f"Invalid session behavior: {behavior}")
    return Session(sid, name, node, lock_delay, behavior, ttl, node_checks, service_checks)


# ---------------------------------------------------------------------- lock rules


def lock_delay_ns(session: Session) -> int:
    """How long the keys of an invalidated session stay unavailable to other sessions (capped at 60s)."""
    return max(0, min(session.lock_delay, MAX_LOCK_DELAY_NS))


def in_lock_delay(delay_until_ns: int | None, now_ns: int) -> bool:
    """True while a key's lock-delay forbids acquiring it."""
    return delay_until_ns is not None and now_ns < delay_until_ns


@dataclass(frozen=True, slots=True)
class LockOutcome:
    acquired: bool
    lock_index: int = 0


def acquire(holder: str | None, lock_index: int | None, session_id: str) -> LockOutcome:
    """?acquire on a key whose current holder is ``holder`` ("" = unlocked, None = no such key): the holder
    re-acquiring keeps the LockIndex; a new holder increments it (1 for a new key); anyone else loses."""
    if holder is None:
        return LockOutcome(True, 1)
    if holder == session_id:
        return LockOutcome(True, lock_index or 0)
    if holder:
        return LockOutcome(False)
    return LockOutcome(True, (lock_index or 0) + 1)


def release(holder: str | None, session_id: str) -> bool:
    """?release succeeds only for the session that holds the key."""
    return holder is not None and holder != "" and holder == session_id


def invalidated_by_check(status: str) -> bool:
    """A linked check in this status invalidates the session (Consul: critical only)."""
    return status == "critical"
