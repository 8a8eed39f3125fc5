"""Timings of the gossip pool, and the formulas that scale them with its size.

The defaults are hashicorp/memberlist's ``DefaultLANConfig`` (the values Consul's LAN pool runs with) with
deliberate changes: ``suspicion_timeout_cap``, and the probe interval halved (with the probe timeout, and
the suspicion multiplier doubled to keep the suspicion timeouts); docs/gossip.md explains each value and
why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "GossipConfig",
    "suspicion_timeout",
    "retransmit_limit",
    "push_pull_interval",
    "query_timeout",
    "PUSH_PULL_SCALE_THRESHOLD",
]

# memberlist's pushPullScaleThreshold: up to this many members the push-pull interval is not scaled.
PUSH_PULL_SCALE_THRESHOLD = 32


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """The knobs of one member's protocol engine.  Times are in seconds.

    memberlist's names and defaults (config.go ``DefaultLANConfig``) unless noted; Serf's where the field
    is Serf's (reconnect and reap).
    """

    # Not memberlist's 1 s and 500 ms: half.  A dead member is noticed only when someone probes it, and of
    # k members dying together the last waits about ln(k) probe intervals for its first probe; at 1 s the
    # last of 100 is declared 15 s after the kill, at 500 ms within 10 s (docs/gossip.md, "Many failures
    # at once").  It costs one more ping and ack a second per member, still constant in the pool's size.
    probe_interval: float = 0.5  # ProbeInterval: one random member probed per interval
    probe_timeout: float = 0.25  # ProbeTimeout: wait this long for a direct ack before asking others
    indirect_checks: int = 3  # IndirectChecks: members asked to ping-req a silent target
    retransmit_mult: int = 4  # RetransmitMult: a broadcast is sent retransmit_mult * ceil(log10(n+1)) times
    suspicion_mult: int = 4  # SuspicionMult: suspicion_mult * max(1, log10(n)) * probe_interval
    suspicion_max_timeout_mult: int = 6  # SuspicionMaxTimeoutMult: unconfirmed suspicion lasts up to 6x
    # Not memberlist's: the minimum suspicion timeout, fixed.  memberlist's formula multiplies log10(n) by
    # the *probe* interval, giving 16 s at 10,000 members, though a suspect learns of its suspicion on the
    # next probe (the buddy system) and a refutation spreads in log(n) *gossip* rounds of 200 ms.  At its
    # 1 s probe interval the formula gives 4 s up to 10 members; this keeps those 4 s at any size and any
    # probe interval (the halved interval would otherwise shorten it to 2 s in small pools, where a member
    # paused 3 s must still have time to refute).  A confirmed failure is declared within ~8 s at any size;
    # an unconfirmed one still waits suspicion_max_timeout_mult times longer.  None restores memberlist's
    # formula.  (At least one probe interval.)
    suspicion_timeout_cap: float | None = 4.0
    awareness_max_multiplier: int = 8  # AwarenessMaxMultiplier: Lifeguard's health score ranges 0..7
    gossip_interval: float = 0.2  # GossipInterval
    gossip_nodes: int = 3  # GossipNodes
    gossip_to_the_dead_time: float = 30.0  # GossipToTheDeadTime
    push_pull_interval: float = 30.0  # PushPullInterval, scaled by push_pull_interval()
    tcp_pings: bool = True  # !DisableTcpPings: a TCP ping to the target alongside the indirect probes
    udp_buffer_size: int = 1400  # UDPBufferSize: the largest packet we send (a safe MTU)
    dead_node_reclaim_time: float = 30.0  # DeadNodeReclaimTime: Consul's agent sets 30 s
    # Not memberlist's: a wake-up later than this past a due timer means the process did not run (GC,
    # SIGSTOP, a starved event loop).  Lifeguard's point: a member that was not running must not accuse
    # others, so in-flight probes are abandoned and running suspicion timers are extended by the stall.
    stall_tolerance: float = 0.5
    reconnect_interval: float = 30.0  # Serf's ReconnectInterval: try to reach a failed member again
    reconnect_timeout: float = 72 * 3600.0  # Serf's ReconnectTimeout: forget a failed member after this
    tombstone_timeout: float = 24 * 3600.0  # Serf's TombstoneTimeout: forget a left member after this
    tcp_timeout: float = 10.0  # TCPTimeout: a stream exchange (push-pull, TCP ping) must finish in this
    query_timeout_mult: int = 16  # Serf's QueryTimeoutMult: a query's default timeout, see query_timeout()
    # Not memberlist's: how a large pool answers a join.  memberlist answers every joiner's push-pull with
    # its whole member list, and every joiner's retry_join names the servers, so each join cost each server
    # a list of the whole pool (O(n) per join, O(n^2) for a fleet joining).  Beyond 2 * join_sample live
    # members the answer is the member itself and join_sample random live members; the joiner then
    # exchanges full state once with a random member it learned, so the whole list comes from a random
    # member, not from the seed.  0: memberlist's full answer.
    join_sample: int = 32

    def __post_init__(self) -> None:
        timings = (self.probe_interval, self.probe_timeout, self.gossip_interval, self.push_pull_interval,
                   self.reconnect_interval, self.tcp_timeout, self.stall_tolerance)  # fmt: skip
        if not all(t > 0 for t in timings):
            raise ValueError("every interval and timeout must be positive")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("probe_timeout must be shorter than probe_interval")
        if self.indirect_checks < 0 or self.gossip_nodes < 1 or self.retransmit_mult < 1:
            raise ValueError("indirect_checks >= 0, gossip_nodes >= 1 and retransmit_mult >= 1 are required")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1 or self.awareness_max_multiplier < 1:
            raise ValueError("suspicion multipliers and awareness_max_multiplier must be at least 1")
        if self.suspicion_timeout_cap is not None and self.suspicion_timeout_cap <= 0:
            raise ValueError("suspicion_timeout_cap must be positive or None")
        if self.join_sample < 0:
            raise ValueError("join_sample must be 0 (full answers) or positive")
        if not 576 <= self.udp_buffer_size <= 65000:
            raise ValueError("udp_buffer_size must be between 576 and 65000 bytes")

    @classmethod
    def memberlist_lan(cls) -> GossipConfig:
        """memberlist's DefaultLANConfig exactly, for comparisons."""
        return cls(probe_interval=1.0, probe_timeout=0.5, suspicion_mult=4, suspicion_timeout_cap=None,
                   stall_tolerance=1e9)  # fmt: skip

    def suspicion_min(self, n: int) -> float:
        """The suspicion timeout with every expected confirmation in (Lifeguard's minimum)."""
        if self.suspicion_timeout_cap is not None:
            return max(self.suspicion_timeout_cap, self.probe_interval)
        return suspicion_timeout(self.suspicion_mult, n, self.probe_interval)


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """memberlist util.go ``suspicionTimeout``: suspicion_mult * max(1, log10(max(1, n))) * interval."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """memberlist util.go ``retransmitLimit``: retransmit_mult * ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def query_timeout(gossip_interval: float, mult: int, n: int) -> float:
    """Serf's DefaultQueryTimeout: gossip_interval * QueryTimeoutMult * ceil(log10(n + 1)), long enough for
    a query to reach every member and the answers to come back (3.2 s up to 9 members, 6.4 s to 99,
    12.8 s at 1,000 and more)."""
    return gossip_interval * mult * max(1, math.ceil(math.log10(n + 1)))


def push_pull_interval(interval: float, n: int) -> float:
    """memberlist util.go ``pushPullScale``: beyond 32 members, one more interval per doubling."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1.0
    return multiplier * interval
