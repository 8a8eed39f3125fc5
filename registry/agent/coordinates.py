"""Network coordinates between the agents and the servers: what agents send, and how servers batch it.

Consul's flow, kept here:

* Every agent sends its own LAN coordinate to the servers (``Coordinate.Update``) every
  ``sync_coordinate_interval_min`` (15 s), or less often in a large cluster: the interval is scaled so that
  the whole cluster sends ``sync_coordinate_rate_target`` (64) updates a second, plus a random stagger
  (agent/agent.go sendCoordinate with lib.RateScaledInterval and lib.RandomStagger). An agent whose
  token may not ``node:write`` itself is told so in its log, once per attempt, as Consul warns "Coordinate
  update blocked by ACLs".
* ``Coordinate.Update`` on a server refuses a coordinate that is not valid ("invalid coordinate") or whose
  dimensionality differs from the server's own ("incompatible coordinate"), checks ``node:write`` on the
  node, and keeps only the latest update per node and segment in memory (forwarded to the leader first,
  as Consul's ForwardRPC does for this write).
* The leader applies what it holds every ``consul.coordinate.update_period`` (5 s) as
  ``CoordinateBatchUpdate`` entries of at most ``update_batch_size`` (128) updates, at most
  ``update_max_batches`` (5) of them; the rest is dropped with a warning (agent/consul/coordinate_endpoint.go
  batchApplyUpdates). Thousands of agents cost a handful of Raft entries every 5 s, never one per agent.

The coordinate an agent sends comes from a narrow source given by the composition root,
``Callable[[], Coordinate | None]`` (the gossip driver's Vivaldi client; None: nothing measured, nothing
sent).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from registry.acl.errors import ACLError, PermissionDenied
from registry.acl.resolver import TokenResolver
from registry.commands import CommandError, CoordinateBatchUpdate, CoordinateUpdate
from registry.config import Config, ConfigError
from registry.consensus import Consensus, NotLeaderError, RPCError
from registry.coordinate import Coordinate, CoordinateConfig
from registry.gocompat import DurationError, parse_duration
from registry.raft.rpc import RPCRouter

log = structlog.get_logger("proconsul.coordinate")

RPC_UPDATE = "Coordinate.Update"
INVALID = "invalid coordinate"
INCOMPATIBLE = "incompatible coordinate"
DISABLED = "Coordinate support disabled"

CoordinateSource = Callable[[], Coordinate | None]


@dataclass(frozen=True, slots=True)
class CoordinateSettings:
    """Consul's coordinate knobs, with its defaults: ``disable_coordinates``, ``sync_coordinate_interval_min``,
    ``sync_coordinate_rate_target``, and the servers' ``consul { coordinate { update_period,
    update_batch_size, update_max_batches } }``."""

    disabled: bool = False
    sync_interval_min: float = 15.0
    sync_rate_target: float = 64.0
    update_period: float = 5.0
    update_batch_size: int = 128
    update_max_batches: int = 5

    @classmethod
    def from_config(cls, cfg: Config) -> CoordinateSettings:
        extra = cfg.extra
        disabled = extra.get("disable_coordinates", False)
        if not isinstance(disabled, bool):
            raise ConfigError(f"disable_coordinates must be true or false, got {disabled!r}")
        block = extra.get("consul") or {}
        coordinate = block.get("coordinate") if isinstance(block, dict) else None
        coordinate = coordinate if isinstance(coordinate, dict) else {}
        out = cls(
            disabled=disabled,
            sync_interval_min=_duration(extra, "sync_coordinate_interval_min", 15.0),
            sync_rate_target=_positive(extra, "sync_coordinate_rate_target", 64.0),
            update_period=_duration(coordinate, "update_period", 5.0, "consul.coordinate."),
            update_batch_size=int(_positive(coordinate, "update_batch_size", 128, "consul.coordinate.", integer=True)),
            update_max_batches=int(_positive(coordinate, "update_max_batches", 5, "consul.coordinate.", integer=True)),
        )
        return out


def _duration(d: dict[str, Any], key: str, default: float, where: str = "") -> float:
    raw = d.get(key)
    if raw is None:
        return default
    try:
        value = parse_duration(raw, field=where + key)
    except DurationError as exc:
        raise ConfigError(str(exc)) from None
    if value <= 0:
        raise ConfigError(f"{where}{key} must be positive")
    return value


def _positive(d: dict[str, Any], key: str, default: float, where: str = "", *, integer: bool = False) -> float:
    raw = d.get(key)
    if raw is None:
        return default
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(raw, bool) or not isinstance(raw, kinds) or raw <= 0:
        raise ConfigError(f"{where}{key} must be a positive {'integer' if integer else 'number'}, got {raw!r}")
    return raw


def validate_coordinate_config(cfg: Config) -> None:
    """A config validator (``registry.agent.agent.CONFIG_VALIDATORS``)."""
    CoordinateSettings.from_config(cfg)


def rate_scaled_interval(rate: float, minimum: float, n: int) -> float:
    """Consul's lib.RateScaledInterval: the interval at which ``n`` nodes together send ``rate`` a second,
    never below ``minimum``."""
    if rate <= 0:
        return minimum
    return max(minimum, n / rate)


def random_stagger(interval: float, rng: random.Random) -> float:
    """Consul's lib.RandomStagger: up to one more ``interval``, so agents do not send in step."""
    return rng.uniform(0, interval) if interval > 0 else 0.0


def validate_update(coord: Any, local: Coordinate | None) -> Coordinate:
    """The checks ``Coordinate.Update`` makes before it accepts a coordinate, with Consul's texts."""
    if not isinstance(coord, dict):
        raise CommandError(INVALID)
    try:
        parsed = Coordinate.from_json(coord)
    except ValueError:
        raise CommandError(INVALID) from None
    reference = local if local is not None else Coordinate.origin(CoordinateConfig())
    if not reference.compatible(parsed):
        raise CommandError(INCOMPATIBLE)
    return parsed


class CoordinateUpdates:
    """A server's ``Coordinate.Update`` and, on the leader, the batches it applies every update period."""

    def __init__(self, *, settings: CoordinateSettings, consensus: Consensus, acl: TokenResolver,
                 propose: Callable[[CoordinateBatchUpdate], Awaitable[Any]], local: CoordinateSource) -> None:  # fmt: skip
        self.settings = settings
        self._consensus = consensus
        self._acl = acl
        self._propose = propose
        self._local = local
        # (node, segment) -> the latest update; swapped out whole at each flush (Consul's c.updates).
        self.pending: dict[tuple[str, str], CoordinateUpdate] = {}
        self.discarded = 0  # updates dropped over the batch limit since start (for tests and logs)

    def register_rpc(self, router: RPCRouter) -> None:
        router.register(RPC_UPDATE, self._rpc_update, leader=True)

    async def submit(self, node: str, segment: str, coord: Any, token: str) -> None:
        """Accept one update on this server: enqueued here when it leads, else forwarded to the leader.
        Raises ``CommandError`` (bad coordinate), ``ACLError`` (no ``node:write``) or ``RPCError``."""
        validate_update(coord, self._local())  # answered here, in Consul's words, before any forwarding
        if self._consensus.is_leader():
            await self._accept(node, segment, coord, token)
            return
        args = {"Node": node, "Segment": segment, "Coord": coord, "Token": token}
        await self._consensus.call_leader(RPC_UPDATE, args, 10.0)

    async def _accept(self, node: str, segment: str, coord: Any, token: str) -> None:
        parsed = validate_update(coord, self._local())
        authz = await self._acl.resolve(token)
        if not authz.node_write(node):
            raise PermissionDenied(authz.accessor_id, "node", "write", node)
        if node:  # Consul accepts a nameless update and its FSM drops it (no such node): dropped here
            self.pending[(node, segment)] = CoordinateUpdate(node, segment, parsed)

    async def _rpc_update(self, args: Any) -> Any:
        if not isinstance(args, dict):
            raise RPCError(f"{RPC_UPDATE} needs {{Node, Segment, Coord, Token}}", 400)
        node, segment, token = args.get("Node"), args.get("Segment") or "", args.get("Token") or ""
        if not isinstance(node, str) or not isinstance(segment, str) or not isinstance(token, str):
            raise RPCError(f"{RPC_UPDATE}: Node, Segment and Token must be strings", 400)
        if not self._consensus.is_leader():
            raise RPCError("not the leader", 503)
        try:
            await self._accept(node, segment, args.get("Coord"), token)
        except CommandError as exc:
            raise RPCError(exc.message, exc.status) from None
        except ACLError as exc:
            raise RPCError(str(exc), 403) from None
        return True

    def take_batches(self) -> list[CoordinateBatchUpdate]:
        """What to apply now: the pending updates in batches, over the limit dropped (and logged)."""
        pending, self.pending = self.pending, {}
        s = self.settings
        limit = s.update_batch_size * s.update_max_batches
        updates = list(pending.values())
        if len(updates) > limit:
            dropped = len(updates) - limit
            self.discarded += dropped
            log.warning("Discarded coordinate updates", number_discarded=dropped)
            updates = updates[:limit]
        size = s.update_batch_size
        return [CoordinateBatchUpdate(tuple(updates[i : i + size])) for i in range(0, len(updates), size)]

    async def flush(self) -> int:
        """Apply what is pending (on the leader); the number of entries written."""
        if not self.pending:
            return 0
        if not self._consensus.is_leader():
            self.pending = {}  # a former leader's updates: the agents send again to the new one
            return 0
        written = 0
        for batch in self.take_batches():
            try:
                await self._propose(batch)
                written += 1
            except (CommandError, NotLeaderError, RPCError) as exc:
                log.warning("Batch update failed", error=str(exc))
                break
        return written

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.update_period)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next period tries again
                log.exception("coordinate batch update failed")


class CoordinateSender:
    """An agent's loop sending its own coordinate to the servers (Consul's sendCoordinate)."""

    def __init__(self, *, settings: CoordinateSettings, node_name: Callable[[], str], source: CoordinateSource,
                 cluster_size: Callable[[], int], send: Callable[[dict[str, Any]], Awaitable[Any]],
                 token: Callable[[], str], rng: random.Random | None = None) -> None:  # fmt: skip
        self.settings = settings
        self._node_name = node_name
        self._source = source
        self._cluster_size = cluster_size
        self._send = send
        self._token = token
        self._rng = rng or random.Random()
        self.sent = 0

    def next_interval(self) -> float:
        s = self.settings
        interval = rate_scaled_interval(s.sync_rate_target, s.sync_interval_min, self._cluster_size())
        return interval + random_stagger(interval, self._rng)

    async def send_once(self) -> bool:
        """Send the current coordinate (the default segment); False when there is none or it failed."""
        coord = self._source()
        if coord is None:
            return False
        token = self._token()
        args = {"Node": self._node_name(), "Segment": "", "Coord": coord.to_json(), "Token": token}
        try:
            await self._send(args)
        except (ACLError, RPCError) as exc:
            if isinstance(exc, ACLError) or exc.status == 403:
                log.warning("Coordinate update blocked by ACLs", node=self._node_name())
            else:
                log.error("Coordinate update error", error=str(exc))
            return False
        except (CommandError, NotLeaderError, OSError, TimeoutError) as exc:
            log.error("Coordinate update error", error=str(exc))
            return False
        self.sent += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.next_interval())
            await self.send_once()
