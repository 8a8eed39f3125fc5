"""Autopilot's decisions, as a pure core: the configuration, each server's health, the cluster's failure
tolerance, and which dead servers may be removed.

This follows hashicorp/raft-autopilot, which Consul runs on its leader:

- A server is healthy (``ServerState.isHealthy``) when the leader knows its log (the leader's last index and
  term are not 0), its node status is ``alive``, its last contact with the leader is within
  ``LastContactThreshold``, its last term is the leader's and it trails the leader's last index by no more
  than ``MaxTrailingLogs``. ``StableSince`` moves only when ``Healthy`` changes.
- ``FailureTolerance`` is the number of healthy voters beyond a quorum of all voters (0 when there are not
  more healthy voters than the quorum needs).
- Dead-server cleanup (``pruneDeadServers`` / ``adjudicateRemoval``): failed non-voters go first, then
  failed voters; a potential voter is removed only when what remains is at least ``MinQuorum``, and no more
  than ``(potential voters - 1) // 2`` voters go in one round, so a removal never costs the quorum.

Where Consul learns a server's node status from Serf (a failed member), Proconsul's servers have no gossip
layer: a server's status is ``failed`` once the leader has heard nothing from it over Raft for longer than
``LastContactThreshold + ServerStabilizationTime`` (Raft's heartbeats are the failure detector; the
stabilization time is the grace Serf's suspicion timeout gives before a member is declared failed), and
``alive`` otherwise. Times come in as arguments (seconds on a monotonic clock, ``now``); nothing here reads a
clock or does IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from registry.gocompat import format_duration_ns, parse_duration_ns

NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

NODE_ALIVE = "alive"
NODE_FAILED = "failed"
NODE_LEFT = "left"

STATUS_LEADER = "leader"
STATUS_VOTER = "voter"
STATUS_NON_VOTER = "non-voter"


class AutopilotConfigError(ValueError):
    """A configuration that cannot be accepted; the message is the reason Consul's decoder would give."""


@dataclass(frozen=True, slots=True)
class AutopilotConfig:
    """Consul's ``structs.AutopilotConfig``, with its defaults (``api.NewAutopilotConfiguration``).
    Durations are in nanoseconds, as Go's ``time.Duration``."""

    cleanup_dead_servers: bool = True
    last_contact_threshold_ns: int = 200_000_000
    max_trailing_logs: int = 250
    min_quorum: int = 0
    server_stabilization_time_ns: int = 10 * NS
    redundancy_zone_tag: str = ""
    disable_upgrade_migration: bool = False
    upgrade_version_tag: str = ""
    create_index: int = 0
    modify_index: int = 0

    @property
    def last_contact_threshold(self) -> float:
        return self.last_contact_threshold_ns / NS

    @property
    def server_stabilization_time(self) -> float:
        return self.server_stabilization_time_ns / NS

    def to_api(self) -> dict[str, Any]:
        """The body of GET /v1/operator/autopilot/configuration (``api.AutopilotConfiguration``)."""
        return {
            "CleanupDeadServers": self.cleanup_dead_servers,
            "LastContactThreshold": format_duration_ns(self.last_contact_threshold_ns),
            "MaxTrailingLogs": self.max_trailing_logs,
            "MinQuorum": self.min_quorum,
            "ServerStabilizationTime": format_duration_ns(self.server_stabilization_time_ns),
            "RedundancyZoneTag": self.redundancy_zone_tag,
            "DisableUpgradeMigration": self.disable_upgrade_migration,
            "UpgradeVersionTag": self.upgrade_version_tag,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def to_wire(self) -> dict[str, Any]:
        """The msgpack form kept in the Raft log and the store (durations as nanoseconds)."""
        return {
            "CleanupDeadServers": self.cleanup_dead_servers,
            "LastContactThreshold": self.last_contact_threshold_ns,
            "MaxTrailingLogs": self.max_trailing_logs,
            "MinQuorum": self.min_quorum,
            "ServerStabilizationTime": self.server_stabilization_time_ns,
            "RedundancyZoneTag": self.redundancy_zone_tag,
            "DisableUpgradeMigration": self.disable_upgrade_migration,
            "UpgradeVersionTag": self.upgrade_version_tag,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> AutopilotConfig:
        """Read the stored form back; durations are nanoseconds there, so this is ``from_api`` on integers."""
        return from_api(raw, base=cls())


_BOOL_FIELDS = {"CleanupDeadServers": "cleanup_dead_servers", "DisableUpgradeMigration": "disable_upgrade_migration"}
_UINT_FIELDS = {"MaxTrailingLogs": "max_trailing_logs", "MinQuorum": "min_quorum",
                "CreateIndex": "create_index", "ModifyIndex": "modify_index"}  # fmt: skip
_STR_FIELDS = {"RedundancyZoneTag": "redundancy_zone_tag", "UpgradeVersionTag": "upgrade_version_tag"}
_DURATION_FIELDS = {"LastContactThreshold": "last_contact_threshold_ns",
                    "ServerStabilizationTime": "server_stabilization_time_ns"}  # fmt: skip


def _duration_ns(value: Any, name: str) -> int:
    """Consul's ``api.ReadableDuration``: a quoted Go duration, or a bare number of nanoseconds."""
    if isinstance(value, bool):
        raise AutopilotConfigError(f"json: cannot unmarshal bool into Go struct field .{name} of type "
                                   f"api.ReadableDuration")  # fmt: skip
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_duration_ns(value)
        except ValueError as exc:
            raise AutopilotConfigError(str(exc)) from None
    raise AutopilotConfigError(f"json: cannot unmarshal {type(value).__name__} into Go struct field .{name} of "
                               f"type api.ReadableDuration")  # fmt: skip


def from_api(body: Mapping[str, Any], base: AutopilotConfig | None = None) -> AutopilotConfig:
    """Decode a PUT body the way Consul does: start from the defaults (``api.NewAutopilotConfiguration``),
    take every field the body names (keys matched case-insensitively, as Go's JSON decoder does), ignore
    unknown ones. Raises ``AutopilotConfigError`` with the decoder's reason for a value of the wrong type."""
    out = base if base is not None else AutopilotConfig()
    changes: dict[str, Any] = {}
    folded = {k.lower(): k for group in (_BOOL_FIELDS, _UINT_FIELDS, _STR_FIELDS, _DURATION_FIELDS) for k in group}
    for key, value in body.items():
        name = folded.get(str(key).lower())
        if name is None or value is None:
            continue
        if name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise AutopilotConfigError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                                           f"AutopilotConfiguration.{name} of type bool")  # fmt: skip
            changes[_BOOL_FIELDS[name]] = value
        elif name in _UINT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AutopilotConfigError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                                           f"AutopilotConfiguration.{name} of type uint64")  # fmt: skip
            if value >= 2**64:  # Go's decoder names the number it could not fit
                raise AutopilotConfigError(f"json: cannot unmarshal number {value} into Go struct field "
                                           f"AutopilotConfiguration.{name} of type uint64")  # fmt: skip
            changes[_UINT_FIELDS[name]] = value
        elif name in _STR_FIELDS:
            if not isinstance(value, str):
                raise AutopilotConfigError(f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                                           f"AutopilotConfiguration.{name} of type string")  # fmt: skip
            changes[_STR_FIELDS[name]] = value
        else:
            changes[_DURATION_FIELDS[name]] = _duration_ns(value, name)
    return replace(out, **changes)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


CONFIG_KEYS = {"cleanup_dead_servers": "CleanupDeadServers", "last_contact_threshold": "LastContactThreshold",
               "max_trailing_logs": "MaxTrailingLogs", "min_quorum": "MinQuorum",
               "server_stabilization_time": "ServerStabilizationTime", "redundancy_zone_tag": "RedundancyZoneTag",
               "disable_upgrade_migration": "DisableUpgradeMigration",
               "upgrade_version_tag": "UpgradeVersionTag"}  # fmt: skip


def from_agent_config(block: Mapping[str, Any]) -> AutopilotConfig:
    """The agent config's ``autopilot { cleanup_dead_servers = ... }`` block (Consul's snake_case keys),
    which seeds the cluster's configuration when a leader finds none stored. Unknown keys are refused."""
    unknown = sorted(set(block) - set(CONFIG_KEYS))
    if unknown:
        raise AutopilotConfigError(f"autopilot: unknown key(s) {', '.join(unknown)}")
    return from_api({CONFIG_KEYS[k]: v for k, v in block.items()})


# ---------------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the leader knows of one server of the Raft configuration. ``last_contact`` is seconds since the
    leader last heard from it (0 for the leader itself); ``last_index`` the highest log index it is known to
    hold, ``last_term`` that entry's term."""

    id: str
    name: str
    address: str
    voter: bool
    leader: bool
    last_contact: float
    last_index: int
    last_term: int
    version: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """The leader's view at one moment: its own last log index and term, and every server it knows."""

    leader_id: str
    last_index: int
    last_term: int
    servers: Sequence[ServerFacts]


@dataclass(frozen=True, slots=True)
class ServerState:
    facts: ServerFacts
    node_status: str
    healthy: bool
    stable_since: float  # on the caller's clock (the ``now`` the health was computed with)

    @property
    def status(self) -> str:
        if self.facts.leader:
            return STATUS_LEADER
        return STATUS_VOTER if self.facts.voter else STATUS_NON_VOTER

    @property
    def voter(self) -> bool:
        return self.facts.voter or self.facts.leader


@dataclass(frozen=True, slots=True)
class State:
    healthy: bool
    failure_tolerance: int
    leader: str
    voters: tuple[str, ...]
    servers: Mapping[str, ServerState]
    first_state_time: float


def node_status(config: AutopilotConfig, facts: ServerFacts) -> str:
    """Serf's view of a member, stood in for by Raft's: failed once silent past the threshold plus the
    stabilization time (see the module docstring)."""
    if facts.leader:
        return NODE_ALIVE
    silent_for = config.last_contact_threshold + config.server_stabilization_time
    return NODE_FAILED if facts.last_contact > silent_for else NODE_ALIVE


def is_healthy(config: AutopilotConfig, facts: ServerFacts, status: str, leader_term: int, leader_index: int) -> bool:
    """raft-autopilot's ``ServerState.isHealthy``, condition for condition."""
    if leader_index == 0 or leader_term == 0:
        return False
    if status != NODE_ALIVE:
        return False
    if facts.last_contact > config.last_contact_threshold or facts.last_contact < 0:
        return False
    if facts.last_term != leader_term:
        return False
    return facts.last_index + config.max_trailing_logs >= leader_index


def required_quorum(voters: int) -> int:
    return voters // 2 + 1


def next_state(config: AutopilotConfig, cluster: ClusterFacts, previous: State | None, now: float) -> State:
    """The next autopilot state (raft-autopilot's ``nextStateWithInputs``): each server's health, with
    ``StableSince`` carried over from ``previous`` unless its health changed; overall health; the voters,
    leader first then healthy before unhealthy, longest stable first; the failure tolerance."""
    servers: dict[str, ServerState] = {}
    for facts in cluster.servers:
        status = node_status(config, facts)
        healthy = is_healthy(config, facts, status, cluster.last_term, cluster.last_index)
        before = previous.servers.get(facts.id) if previous is not None else None
        since = before.stable_since if before is not None and before.healthy == healthy else now
        servers[facts.id] = ServerState(facts, status, healthy, since)
    voters = [s for s in servers.values() if s.voter]
    healthy_voters = sum(1 for s in voters if s.healthy)
    tolerance = max(0, healthy_voters - required_quorum(len(voters)))
    voters.sort(key=lambda s: (not s.facts.leader, not s.healthy, s.stable_since if s.healthy else -s.stable_since,
                               s.facts.id))  # fmt: skip
    return State(
        healthy=all(s.healthy for s in servers.values()),
        failure_tolerance=tolerance,
        leader=cluster.leader_id,
        voters=tuple(s.facts.id for s in voters),
        servers=servers,
        first_state_time=previous.first_state_time if previous is not None else now,
    )


def removals(config: AutopilotConfig, state: State) -> list[str]:
    """The servers dead-server cleanup removes now (raft-autopilot's ``pruneDeadServers``, with every known
    server a potential voter as its default ``StablePromoter`` makes them): failed non-voters first, then
    failed voters, each allowed by ``adjudicateRemoval``'s two rules -- never below ``MinQuorum`` potential
    voters, and at most ``(potential voters - 1) // 2`` voters in one round."""
    if not config.cleanup_dead_servers:
        return []
    failed = sorted((s for s in state.servers.values() if s.node_status != NODE_ALIVE), key=lambda s: s.facts.id)
    potential = len(state.servers)
    out: list[str] = []
    for group in ([s for s in failed if not s.voter], [s for s in failed if s.voter]):
        initial = potential
        removed = 0
        max_removal = (initial - 1) // 2
        for srv in group:
            if initial - removed - 1 < config.min_quorum:
                continue  # would leave fewer potential voters than MinQuorum
            if srv.voter and max_removal < 1:
                continue  # removing a majority of the voters is never safe
            max_removal -= 1
            removed += 1
            out.append(srv.facts.id)
        potential -= removed
    return out


# ---------------------------------------------------------------------- API shapes


def _rfc3339(epoch: float) -> str:
    """Go's time.Time JSON form in UTC, to the second (``StableSince.Round(time.Second).UTC()``)."""
    return (_EPOCH + timedelta(seconds=round(epoch))).strftime("%Y-%m-%dT%H:%M:%SZ")


def health_reply(state: State, wall_offset: float) -> dict[str, Any]:
    """The body of /v1/operator/autopilot/health (``api.OperatorHealthReply``). ``wall_offset`` turns the
    monotonic ``StableSince`` into wall-clock seconds."""
    servers = []
    for sid in _ordered(state):
        s = state.servers[sid]
        servers.append({
            "ID": s.facts.id, "Name": s.facts.name, "Address": s.facts.address, "SerfStatus": s.node_status,
            "Version": s.facts.version, "Leader": s.facts.leader,
            "LastContact": format_duration_ns(int(s.facts.last_contact * NS)), "LastTerm": s.facts.last_term,
            "LastIndex": s.facts.last_index, "Healthy": s.healthy, "Voter": s.voter,
            "StableSince": _rfc3339(s.stable_since + wall_offset),
        })  # fmt: skip
    return {"Healthy": state.healthy, "FailureTolerance": state.failure_tolerance, "Servers": servers}


def state_reply(state: State, wall_offset: float) -> dict[str, Any]:
    """The body of /v1/operator/autopilot/state (``api.AutopilotState``, Consul's community edition: no
    redundancy zones, read replicas or upgrade information)."""
    servers = {}
    for sid, s in state.servers.items():
        servers[sid] = {
            "ID": s.facts.id, "Name": s.facts.name, "Address": s.facts.address, "NodeStatus": s.node_status,
            "Version": s.facts.version, "LastContact": format_duration_ns(int(s.facts.last_contact * NS)),
            "LastTerm": s.facts.last_term, "LastIndex": s.facts.last_index, "Healthy": s.healthy,
            "StableSince": _rfc3339(s.stable_since + wall_offset), "ReadReplica": False, "Status": s.status,
            "Meta": dict(s.facts.meta), "NodeType": "voter",
        }  # fmt: skip
    return {"Healthy": state.healthy, "FailureTolerance": state.failure_tolerance, "OptimisticFailureTolerance": 0,
            "Servers": servers, "Leader": state.leader, "Voters": list(state.voters)}  # fmt: skip


def _ordered(state: State) -> list[str]:
    """Voters in the state's order, then the others by ID."""
    rest = sorted(sid for sid in state.servers if sid not in state.voters)
    return [*state.voters, *rest]
