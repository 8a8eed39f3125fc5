"""What the Raft server reports as it works, for whoever watches it (the application's metrics).

hashicorp/raft emits its telemetry (``raft.apply``, ``raft.commitTime``, ``raft.fsm.apply``,
``raft.state.leader``...) straight into go-metrics' global registry. This library imports nothing of the
application and keeps no global state, so it reports the same facts through this small seam instead: the
server is handed an ``Observer`` (``NO_OBSERVER`` by default) and calls it where hashicorp/raft records a
metric. Every call is cheap and synchronous, made from the Raft loop; an observer must not block or raise.
Durations are in seconds; the observer converts them to whatever unit it reports.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_OBSERVER", "Observer", "RPCObserver"]


class Observer(Protocol):
    def role_changed(self, role: str) -> None:
        """The server entered ``role`` ("leader", "candidate", "follower"): hashicorp/raft's
        ``raft.state.<role>`` counters."""

    def proposed(self, entries: int) -> None:
        """The leader appended ``entries`` proposals to its log (``raft.apply``)."""

    def committed(self, seconds: float) -> None:
        """On the leader, one proposal committed ``seconds`` after it was appended (``raft.commitTime``)."""

    def fsm_applied(self, seconds: float) -> None:
        """One entry took ``seconds`` to apply to the state machine (``raft.fsm.apply``)."""

    def leader_contact(self, peer: str, seconds: float) -> None:
        """On the leader, checking its lease: ``peer`` was last heard from ``seconds`` ago
        (``raft.leader.lastContact``)."""

    def replicated(self, peer: str, entries: int, seconds: float | None) -> None:
        """On the leader, ``peer`` acknowledged ``entries`` log entries; ``seconds`` is the round trip of
        the AppendEntries that carried the oldest of them, when known (``raft.replication.appendEntries``
        ``.logs`` and ``.rpc``)."""

    def snapshot_taken(self, seconds: float) -> None:
        """A snapshot was written and the log compacted (``raft.snapshot.takeSnapshot``)."""


class RPCObserver(Protocol):
    def request(self, method: str) -> None:
        """The server port received a call (Consul's ``rpc.request``)."""

    def request_error(self, method: str) -> None:
        """A call was answered with an error (Consul's ``rpc.request_error``)."""


class _Nothing:
    """Observes nothing: the default, so the server never asks whether it is watched."""

    def role_changed(self, role: str) -> None:
        return None

    def proposed(self, entries: int) -> None:
        return None

    def committed(self, seconds: float) -> None:
        return None

    def fsm_applied(self, seconds: float) -> None:
        return None

    def leader_contact(self, peer: str, seconds: float) -> None:
        return None

    def replicated(self, peer: str, entries: int, seconds: float | None) -> None:
        return None

    def snapshot_taken(self, seconds: float) -> None:
        return None

    def request(self, method: str) -> None:
        return None

    def request_error(self, method: str) -> None:
        return None


NO_OBSERVER = _Nothing()
