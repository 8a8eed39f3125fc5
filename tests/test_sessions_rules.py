"""Sessions and locks without IO: the rules module, the store's session table, and the FSM applying
``session`` and ``kv`` lock commands deterministically (time only from the commands)."""

from __future__ import annotations

import msgpack
import pytest

from registry import sessions as rules
from registry.fsm import FSM, CommandError, encode_command
from registry.sessions import NS, SessionError, build_session

# ---------------------------------------------------------------------- rules


def test_build_session_defaults_match_consul() -> None:
    s = build_session(None, "id1", "node1")
    assert (s.node, s.lock_delay, s.behavior, s.ttl) == ("node1", 15 * NS, "release", "")
    assert s.node_checks == ("serfHealth",) and s.service_checks == ()
    j = s.to_json()
    assert list(j) == ["ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks",
                       "CreateIndex", "ModifyIndex"]  # fmt: skip
    assert j["ServiceChecks"] is None


def test_build_session_checks_and_lock_delay_forms() -> None:
    # Naming Checks (any case) replaces the serfHealth default; an empty list removes it.
    assert build_session({"checks": []}, "i", "n").node_checks == ()
    s = build_session({"Checks": ["a"], "NodeChecks": ["b", "a"], "ServiceChecks": [{"ID": "c"}]}, "i", "n")
    assert s.node_checks == ("a", "b") and s.service_checks == (("c", ""),) and s.check_ids() == ("a", "b", "c")
    assert build_session({"NodeChecks": ["x"]}, "i", "n").node_checks == ("serfHealth", "x")
    # Numbers under 1000 are seconds; larger numbers are nanoseconds; strings are Go durations.
    assert build_session({"LockDelay": 5}, "i", "n").lock_delay == 5 * NS
    assert build_session({"LockDelay": 2_000_000_000}, "i", "n").lock_delay == 2 * NS
    assert build_session({"lockdelay": "250ms"}, "i", "n").lock_delay == 250_000_000
    with pytest.raises(SessionError) as err:
        build_session({"LockDelay": "soon"}, "i", "n")
    assert err.value.status == 400 and err.value.message.startswith("Request decode failed: ")


def test_a_lock_delay_number_is_go_s_float64_turned_duration() -> None:
    """Found by the HTTP fuzzer: a LockDelay beyond int64 made the session's log entry unencodable (500).
    Consul decodes the number as a float64 and converts it to a Duration: beyond int64 that is int64's
    minimum (amd64), which the seconds fixup then multiplies, wrapping as Go's int64 does, to 0."""
    for huge in (47_002_501_920_065_863_680, -47_002_501_920_065_863_680, 2**63 - 1):
        assert build_session({"LockDelay": huge}, "i", "n").lock_delay == 0
    assert build_session({"LockDelay": 2**62}, "i", "n").lock_delay == 2**62
    # -1000 s in ns is under 1000, so taken as seconds: -10^21 ns, which wraps in int64.
    wrapped = (-1000 * NS * NS + 2**63) % 2**64 - 2**63
    assert build_session({"LockDelay": -1000 * NS}, "i", "n").lock_delay == wrapped
    assert build_session({"LockDelay": 0.5}, "i", "n").lock_delay == 0  # truncated, then seconds
    for inf in (1e400, 10**400):  # no float64 holds it: Go's decoder refuses the number
        with pytest.raises(SessionError) as err:
            build_session({"LockDelay": inf}, "i", "n")
        assert err.value.status == 400


def test_build_session_errors_use_consuls_words() -> None:
    with pytest.raises(SessionError, match=r"^Invalid Behavior setting 'keep'$"):
        build_session({"Behavior": "keep"}, "i", "n")
    with pytest.raises(SessionError) as err:
        build_session({"TTL": "5s"}, "i", "n")
    assert err.value.message == "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"
    assert err.value.status == 500
    with pytest.raises(SessionError, match=r"^Session TTL 'x' invalid"):
        build_session({"TTL": "x"}, "i", "n")
    build_session({"TTL": "0s"}, "i", "n")  # zero means no TTL
    build_session({"TTL": "24h"}, "i", "n")
    with pytest.raises(SessionError):
        build_session({"TTL": "25h"}, "i", "n")
    assert build_session({"TTL": "2s"}, "i", "n", ttl_min_s=1.0).ttl_seconds() == 2.0


def test_lock_rules() -> None:
    assert rules.acquire(None, None, "a") == rules.LockOutcome(True, 1)  # new key
    assert rules.acquire("", 3, "a") == rules.LockOutcome(True, 4)  # free key: a new acquisition
    assert rules.acquire("a", 4, "a") == rules.LockOutcome(True, 4)  # the holder again: same LockIndex
    assert not rules.acquire("b", 4, "a").acquired
    assert rules.release("a", "a") and not rules.release("b", "a") and not rules.release("", "a")
    assert not rules.release(None, "a")
    assert rules.in_lock_delay(100, 99) and not rules.in_lock_delay(100, 100) and not rules.in_lock_delay(None, 5)
    s = build_session({"LockDelay": "90s"}, "i", "n")
    assert rules.lock_delay_ns(s) == 60 * NS  # capped as Consul caps it
    assert rules.invalidated_by_check("critical") and not rules.invalidated_by_check("warning")


# ---------------------------------------------------------------------- FSM + store


class Log:
    """Applies commands to an FSM in index order, as a log would."""

    def __init__(self) -> None:
        self.fsm = FSM()
        self.index = 0
        self.entries: list[bytes] = []

    def apply(self, cmd: dict) -> object:
        self.index += 1
        data = encode_command(cmd)
        self.entries.append(data)
        return self.fsm.apply(self.index, data)

    @property
    def store(self):  # noqa: ANN201
        return self.fsm.store


def register(log: Log, node: str = "n1", status: str = "passing", t: int = 0, extra: list | None = None) -> None:
    checks = [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": status}] + (extra or [])
    assert log.apply({"Type": "register", "Node": node, "Address": "10.0.0.1", "Checks": checks, "Time": t}) is True


def create(log: Log, sid: str, t: int = 0, **body: object) -> object:
    s = build_session(body, sid, "n1")
    return log.apply({"Type": "session", "Op": "create", "Session": s.to_command(), "Time": t})


def lock(log: Log, key: str, sid: str, t: int, value: bytes = b"v", verb: str = "lock") -> object:
    return log.apply({"Type": "kv", "Verb": verb, "Key": key, "Value": value, "Session": sid, "Time": t})


def test_create_refusals_and_info() -> None:
    log = Log()
    r = create(log, "s1")
    assert isinstance(r, CommandError) and (r.message, r.status) == ("Missing node registration", 500)
    register(log, status="critical")
    r = create(log, "s1")
    assert isinstance(r, CommandError) and r.message == "Check 'serfHealth' is in critical state"
    r = create(log, "s1", Checks=["nope"])
    assert isinstance(r, CommandError) and r.message == "Missing check 'nope' registration"
    assert create(log, "s2", Checks=[]) == "s2"
    idx, s = log.store.session_get("s2")
    assert s is not None and s.create_index == idx == log.index


def test_acquire_release_lock_index_and_contention() -> None:
    log = Log()
    register(log)
    assert create(log, "a") == "a" and create(log, "b") == "b"
    assert lock(log, "k", "a", 1) is True
    e = log.store.kv["k"]
    assert (e.session, e.lock_index) == ("a", 1)
    assert lock(log, "k", "a", 2, b"v2") is True  # re-acquire: value updated, LockIndex unchanged
    assert (log.store.kv["k"].lock_index, log.store.kv["k"].value) == (1, b"v2")
    assert lock(log, "k", "b", 3) is False  # contention
    assert lock(log, "k", "b", 4, verb="unlock") is False  # only the holder releases
    assert lock(log, "k", "a", 5, b"v3", verb="unlock") is True
    e = log.store.kv["k"]
    assert (e.session, e.lock_index, e.value) == ("", 1, b"v3")
    assert lock(log, "k", "b", 6) is True and log.store.kv["k"].lock_index == 2
    r = lock(log, "k", "zzz", 7)
    assert isinstance(r, CommandError) and (r.message, r.status) == ('invalid session "zzz"', 500)
    r = lock(log, "k", "", 7)
    assert isinstance(r, CommandError) and r.message == "missing session"
    # A plain set keeps the lock (Consul's kvsSetTxn keeps the session).
    log.apply({"Type": "kv", "Verb": "set", "Key": "k", "Value": b"plain", "Time": 8})
    assert log.store.kv["k"].session == "b"


def test_destroy_releases_with_lock_delay_from_command_time() -> None:
    log = Log()
    register(log)
    create(log, "a", LockDelay="10s")
    create(log, "b")
    assert lock(log, "k", "a", 100 * NS) is True
    before = log.store.kv["k"].modify_index
    log.apply({"Type": "session", "Op": "destroy", "ID": "a", "Time": 200 * NS})
    e = log.store.kv["k"]
    assert (e.session, e.value, e.lock_index) == ("", b"v", 1) and e.modify_index > before
    assert "a" not in log.store.sessions
    assert lock(log, "k", "b", 205 * NS) is False  # inside the 10 s lock-delay
    assert lock(log, "k", "b", 210 * NS) is True and log.store.kv["k"].lock_index == 2
    # Destroying an unknown session succeeds (Consul: idempotent).
    assert log.apply({"Type": "session", "Op": "destroy", "ID": "nope", "Time": 0}) is True


def test_store_clock_never_goes_back() -> None:
    log = Log()
    register(log, t=500 * NS)
    create(log, "a", LockDelay="10s")
    create(log, "b")
    lock(log, "k", "a", 501 * NS)
    log.apply({"Type": "session", "Op": "destroy", "ID": "a", "Time": 502 * NS})
    # A proposer with a clock far behind does not get around the delay.
    assert lock(log, "k", "b", 1) is False
    assert log.store.clock_ns == 502 * NS


def test_behavior_delete_and_invalidation_by_check_node_and_deregister() -> None:
    log = Log()
    register(log, extra=[{"CheckID": "web", "Name": "web", "Status": "passing"}])
    create(log, "del", Behavior="delete", Checks=["web"])
    create(log, "rel")
    lock(log, "d1", "del", 1)
    lock(log, "d2", "del", 1)
    lock(log, "r", "rel", 1)
    # The linked check goes critical through the agent's fast path: the session is invalidated.
    log.apply({"Type": "check.update", "Node": "n1", "CheckID": "web", "Status": "critical", "Time": 2})
    assert "del" not in log.store.sessions and "d1" not in log.store.kv and "d2" not in log.store.kv
    assert "rel" in log.store.sessions
    # Deregistering a linked check invalidates too.
    log.apply({"Type": "register", "Node": "n1", "Check": {"CheckID": "web2", "Name": "w", "Status": "passing"}})
    create(log, "c2", Checks=["web2"])
    log.apply({"Type": "deregister", "Node": "n1", "CheckID": "web2", "Time": 3})
    assert "c2" not in log.store.sessions
    # Deregistering the node invalidates all its sessions (and releases their keys first).
    log.apply({"Type": "deregister", "Node": "n1", "Time": 4})
    assert log.store.sessions == {} and log.store.kv["r"].session == ""


def test_sessions_survive_snapshot_and_replicas_agree() -> None:
    log = Log()
    register(log, t=10)
    create(log, "a", TTL="30s", Name="lock", ServiceChecks=[])
    create(log, "b", LockDelay="5s")
    lock(log, "k", "b", 20)
    lock(log, "k2", "a", 21)
    log.apply({"Type": "session", "Op": "destroy", "ID": "b", "Time": 30})
    # A second server applying the same entries ends in the same state, byte for byte.
    other = FSM()
    for i, data in enumerate(log.entries, start=1):
        other.apply(i, data)
    assert other.snapshot() == log.fsm.snapshot()
    restored = FSM()
    restored.restore(log.fsm.snapshot())
    st = restored.store
    assert st.sessions == log.store.sessions and st.lock_delays == log.store.lock_delays
    assert st.clock_ns == 30 and st.table_index["sessions"] == log.store.table_index["sessions"]
    # Indexes were rebuilt: destroying "a" on the restored store releases k2.
    restored.apply(log.index + 1, encode_command({"Type": "session", "Op": "destroy", "ID": "a", "Time": 40}))
    assert st.kv["k2"].session == ""
    # A snapshot from before sessions existed still loads.
    old = msgpack.unpackb(log.fsm.snapshot(), raw=False, strict_map_key=False)
    for key in ("sessions", "lock_delays", "clock_ns"):
        del old[key]
    FSM().restore(msgpack.packb(old, use_bin_type=True))
