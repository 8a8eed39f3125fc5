"""When a link to a peer is presumed stalled: a pure policy over what the Raft core already knows.

Each server reaches each peer over one long-lived outbound stream (``registry.raft.transport``). When the
path between them drops packets silently (a dead switch port, a dropping firewall), nothing fails: the
bytes wait in the socket for TCP's retransmission, whose interval doubles (0.2 s, 0.4 s, 0.8 s...) for as
long as the path is down. After the path comes back, the queued bytes, and every fresh heartbeat behind
them, wait for the next of those backed-off retransmissions, so a heal would cost about as long as the
outage lasted. Raft notices the silence long before TCP gives up: a leader sends every follower a
heartbeat each tick and hears an answer within a tick or two; a follower hears its leader every tick.

A peer is *silent* when

- we lead and have heard nothing from it for ``stall_ticks`` (the core's ``PeerStatus.ticks_since_heard``);
  or
- we do not lead and have heard nothing from the last leader we followed for ``stall_ticks`` (the core's
  ``ticks_since_leader_contact``; it keeps counting while we campaign, when the core has forgotten who led).

The link to a silent peer is *reset* (its connection and everything queued on it dropped, then redialled;
Raft resends whatever still matters) when bytes are outstanding on it, sent and not acknowledged at the TCP
level, so the stream is what is stuck and not merely the peer's process, and the connection has lived at
least ``stall_ticks``, so every new connection gets a whole window to prove itself and a flapping path costs
at most one reconnect per window. Both ends apply the rule to their own outbound stream, and a silent peer
means one of the two directions is broken: whichever of them holds unacknowledged bytes is the stuck one.

What this does not see (a stream whose peer we still hear, say a follower whose replies are stuck while
the leader's heartbeats arrive) the kernel catches: the transport sets ``TCP_USER_TIMEOUT`` on every
connection, so bytes unacknowledged for ``user_timeout_ticks`` abort it whatever Raft knows.

``stall_ticks`` is one (minimum) election timeout: a follower that has heard nothing that long starts to
campaign anyway, and a leader that has heard from no quorum that long steps down (CheckQuorum), so a link
quiet for that long is broken as far as Raft is concerned. ``user_timeout_ticks`` is the longest election
timeout: on a healthy path bytes are acknowledged within milliseconds by the peer's kernel (whatever its
process is doing), and a second leaves room for two lost retransmissions on a lossy one.

Pure: no IO and no clock. The driver applies it once per tick (never per message); the simulator
(``tests/raft/sim.py``) applies the same functions to its modelled streams.
"""

from __future__ import annotations

from dataclasses import dataclass

from registry.raft.node import Role, Status

__all__ = ["LinkPolicy"]


@dataclass(frozen=True, slots=True)
class LinkPolicy:
    stall_ticks: int = 10
    user_timeout_ticks: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.stall_ticks <= self.user_timeout_ticks:
            raise ValueError("need 1 <= stall_ticks <= user_timeout_ticks")

    @staticmethod
    def for_election(election_tick: int) -> LinkPolicy:
        """The policy for a core whose (minimum) election timeout is ``election_tick`` ticks."""
        return LinkPolicy(stall_ticks=election_tick, user_timeout_ticks=2 * election_tick)

    @staticmethod
    def followed(leader_id: str | None, own_id: str, last: str | None) -> str | None:
        """The last leader this server followed, from the leader it knows now (``Status.leader_id``) and the
        one remembered from earlier ticks: the core forgets its leader when it starts to campaign, but the
        link to it may be what is stalled."""
        return leader_id if leader_id is not None and leader_id != own_id else last

    def silent_peers(self, status: Status, last_leader: str | None) -> tuple[str, ...]:
        """The peers this server expects to hear from and has not, for ``stall_ticks``."""
        if status.role is Role.LEADER:
            return tuple(p for p, ps in status.peers.items() if ps.ticks_since_heard >= self.stall_ticks)
        if last_leader is not None and last_leader != status.id \
                and status.ticks_since_leader_contact >= self.stall_ticks:  # fmt: skip
            return (last_leader,)
        return ()

    def should_reset(self, outstanding: bool, connected_ticks: float) -> bool:
        """Whether to drop the link to a silent peer: something on it is unacknowledged, and the connection
        is old enough to have been acknowledged if the path worked."""
        return outstanding and connected_ticks >= self.stall_ticks
