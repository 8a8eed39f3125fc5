"""The agent's place in the LAN gossip pool, and the leader's catalog kept in step with the pool.

Consul's agents do not tell the servers they are alive: every agent is a member of one Serf LAN pool (here
``registry.gossip``, on the ``serf_lan`` port), and the leader turns membership *changes* into catalog
writes (Consul's ``leader.go`` reconcile): a member alive is registered with ``serfHealth`` passing, a
failed one gets ``serfHealth`` critical ("Agent not live or unreachable"), a left or reaped one is
deregistered. Where Consul proposes one Raft entry per member, ``CatalogReconciler`` gathers the changes
of an adaptive window (``BatchWindow``) into one ``MemberBatch`` entry, so a hundred machines failing
together, their failures detected over several seconds, cost a handful of entries.

``LanPool`` owns the gossip driver of one agent: its tags (Consul's: role, dc, id, port, build, vsn...),
joining (``retry_join`` / ``start_join`` addresses are Serf addresses, host or host:port with 8301 by
default; an address that turns out to be a server's RPC port is asked for its Serf address, so configs
written for earlier Proconsul versions keep working), the member list in Consul's JSON, force-leave, and
Serf's ``local.snapshot`` in the data dir (the members last known, rejoined on a restart unless the agent
left; ``rejoin_after_leave`` rejoins even then).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from registry import CONSUL_VERSION
from registry.commands import Deregister, MemberBatch, Register
from registry.config import Config, ConfigError
from registry.gocompat import go_quote, parse_duration_ns
from registry.gossip import Address, EventKind, Member, MemberEvent, MemberState
from registry.gossip.config import GossipConfig
from registry.gossip.driver import EventStream, GossipDriver, parse_address
from registry.state.store import StateStore
from registry.structs import (
    CONSUL_SERVICE,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    SERF_CHECK_ID,
    SERF_CHECK_NAME,
    Check,
    Service,
)
from registry.structs import Node as CatalogNode

__all__ = [
    "SERF_ALIVE_OUTPUT",
    "SERF_FAILED_OUTPUT",
    "STATUS_ALIVE",
    "STATUS_LEAVING",
    "STATUS_LEFT",
    "STATUS_FAILED",
    "BatchWindow",
    "CatalogReconciler",
    "LanPool",
    "gossip_config",
    "validate_gossip_config",
    "member_json",
    "member_tags",
    "read_snapshot",
]

log = structlog.get_logger("proconsul.membership")

# Consul's texts for the serfHealth check (agent/structs: SerfCheckAliveOutput, SerfCheckFailedOutput).
SERF_ALIVE_OUTPUT = "Agent alive and reachable"
SERF_FAILED_OUTPUT = "Agent not live or unreachable"
# Serf's MemberStatus as /v1/agent/members reports it.
STATUS_ALIVE, STATUS_LEAVING, STATUS_LEFT, STATUS_FAILED = 1, 2, 3, 4
_STATUS = {MemberState.ALIVE: STATUS_ALIVE, MemberState.SUSPECT: STATUS_ALIVE, MemberState.DEAD: STATUS_FAILED,
           MemberState.LEFT: STATUS_LEFT}  # fmt: skip

SNAPSHOT_PATH = ("serf", "local.snapshot")  # Serf's snapshot, under the data dir, as Consul keeps it
SNAPSHOT_EVERY = 1.0  # seconds: membership changes are written to the snapshot at most this often
RECONCILE_INTERVAL = 60.0  # Consul's reconcile_interval: the leader's full pass over the member list
RECONCILE_SLICE = 500  # members compared with the catalog between two turns of the event loop
REAP_GRACE = 30.0  # the local pool runs this long before its absence of a member is trusted (one push-pull)
# The batch window (BatchWindow): open at least BATCH_MIN_OPEN after its first change, closed once no change
# came for BATCH_QUIET, and at the latest BATCH_MAX_OPEN after its first change or at MAX_BATCH members.
BATCH_MIN_OPEN = 1.0
BATCH_QUIET = 0.3
BATCH_MAX_OPEN = 3.0
MAX_BATCH = 512  # operations per entry
# How long a join address has to answer a push-pull as a gossip address before it is also asked, as a server
# RPC port, for its gossip address (a local push-pull answers in milliseconds).
JOIN_HEDGE = 0.5


def member_tags(cfg: Config, acls: bool) -> dict[str, str]:
    """The tags an agent gossips, Consul's (agent/consul/server_serf.go, client_serf.go): a server is
    recognised by ``role=consul`` and reached on ``port``, its RPC port."""
    tags = {"acls": "1" if acls else "0", "build": f"{CONSUL_VERSION}:proconsul", "dc": cfg.datacenter,
            "id": cfg.node_id, "role": "consul" if cfg.server else "node", "segment": "", "vsn": "2",
            "vsn_max": "3", "vsn_min": "2"}  # fmt: skip
    if cfg.server:
        tags.update({"port": str(cfg.ports.server), "raft_vsn": "3", "ft_fs": "1", "ft_si": "1"})
        if cfg.bootstrap_expect:
            tags["expect"] = str(cfg.bootstrap_expect)
        if cfg.bootstrap:
            tags["bootstrap"] = "1"
    return tags


def member_json(m: Member, status: int | None = None) -> dict[str, Any]:
    """One member as Consul's /v1/agent/members shows it (api.AgentMember)."""
    return {
        "Name": m.name, "Addr": m.addr.host, "Port": m.addr.port, "Tags": dict(m.tags),
        "Status": _STATUS[m.state] if status is None else status, "ProtocolMin": 1, "ProtocolMax": 5,
        "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    }  # fmt: skip


# ---------------------------------------------------------------------- gossip_lan

# Consul's ``gossip_lan`` keys (agent/config: GossipLANConfig) and what each sets in the pool's GossipConfig.
GOSSIP_DURATIONS = ("gossip_interval", "probe_interval", "probe_timeout")
GOSSIP_COUNTS = ("gossip_nodes", "suspicion_mult", "retransmit_mult")
# The fixed minimum suspicion timeout (GossipConfig.suspicion_timeout_cap) per unit of suspicion_mult: the 4 s
# default is memberlist's suspicion_mult (4) times its 1 s probe interval in a small pool.  A configured
# suspicion_mult scales it, so ``suspicion_mult = 6`` waits 6 s as it would in a small memberlist pool.
SUSPICION_SECONDS_PER_MULT = 1.0


def _gossip_block(cfg: Config, key: str) -> tuple[dict[str, float], dict[str, int]]:
    """One ``gossip_lan`` / ``gossip_wan`` block's values: durations in seconds and counts, with Consul's
    units (Go durations such as "200ms"; whole numbers), each refused with the key's name when malformed."""
    block = cfg.extra.get(key) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"{key} must be a map, e.g. {{probe_interval = \"1s\"}}")
    durations: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, raw in block.items():
        where = f"{key}.{name}"
        if name in GOSSIP_DURATIONS:
            # Consul's field is a string read with Go's time.ParseDuration: a bare number (HCL's 5, JSON's 5)
            # is "missing unit", not nanoseconds.
            text = raw if isinstance(raw, str) else str(raw)
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                raise ConfigError(f"{where} must be a duration such as \"500ms\", got {raw!r}")
            try:
                value = parse_duration_ns(text.strip()) / 1e9
            except ValueError as exc:
                raise ConfigError(f"{where}: invalid duration: {go_quote(text)}: {exc}") from None
            if value <= 0:
                # Consul reads a zero gossip_interval as "no gossip beyond piggybacking"; here a query's
                # timeout is a multiple of it, so a pool without it could not answer keyring operations.
                raise ConfigError(f"{where} must be a positive duration such as \"500ms\", got {raw!r}")
            durations[name] = value
        elif name in GOSSIP_COUNTS:
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
                raise ConfigError(f"{where} must be a whole number of at least 1, got {raw!r}")
            counts[name] = raw
        else:
            raise ConfigError(f"invalid config key {where}")
    return durations, counts


# memberlist's DefaultWANConfig, the base a ``gossip_wan`` block is checked against (Consul's WAN defaults).
WAN_DEFAULTS = GossipConfig(probe_interval=5.0, probe_timeout=3.0, gossip_interval=0.5, gossip_nodes=4,
                            suspicion_mult=6)  # fmt: skip


def _build_gossip_config(cfg: Config, key: str, base: GossipConfig) -> GossipConfig:
    durations, counts = _gossip_block(cfg, key)
    fields: dict[str, float | int | None] = {**durations, **counts}
    if "suspicion_mult" in counts:
        fields["suspicion_timeout_cap"] = counts["suspicion_mult"] * SUSPICION_SECONDS_PER_MULT
    interval = durations.get("probe_interval", base.probe_interval)
    timeout = durations.get("probe_timeout", base.probe_timeout)
    if timeout >= interval:
        # memberlist would probe again before the last probe's ack could count; say which key to change.
        raise ConfigError(f"{key}.probe_timeout ({timeout:g}s) must be shorter than {key}.probe_interval "
                          f"({interval:g}s); the defaults are {base.probe_timeout:g}s and "
                          f"{base.probe_interval:g}s")  # fmt: skip
    try:
        return replace(base, **fields)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def gossip_config(cfg: Config) -> GossipConfig:
    """The LAN pool's timings: Proconsul's defaults (GossipConfig: memberlist's LAN values with the probe
    interval halved, docs/gossip.md) with the ``gossip_lan`` keys the configuration sets, as Consul hands
    its ``gossip_lan`` block to memberlist.  Raises ConfigError naming the key that is wrong."""
    return _build_gossip_config(cfg, "gossip_lan", GossipConfig())


def validate_gossip_config(cfg: Config) -> None:
    """A config validator (``registry.agent.agent.CONFIG_VALIDATORS``): ``gossip_lan`` and ``gossip_wan``
    are checked alike (a malformed ``gossip_wan`` is refused as Consul refuses it, though without a WAN
    pool its values change nothing)."""
    gossip_config(cfg)
    _build_gossip_config(cfg, "gossip_wan", WAN_DEFAULTS)


# ---------------------------------------------------------------------- the snapshot


def read_snapshot(path: Path) -> tuple[list[str], bool]:
    """Serf's local.snapshot: the addresses of the members last known alive, and whether the agent left
    (a ``leave`` line after them)."""
    entries, left = _read_entries(path)
    return list(entries.values()), left


def _read_entries(path: Path) -> tuple[dict[str, str], bool]:
    """The snapshot's log replayed: member name -> address for those last recorded alive (``alive: <name>
    <addr>``, undone by ``not-alive: <name>``), and whether a ``leave`` came after the last of them."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}, False
    entries: dict[str, str] = {}
    left = False
    for line in lines:
        if line.startswith("alive: "):
            parts = line[len("alive: "):].rsplit(" ", 1)
            if len(parts) == 2:
                entries[parts[0]] = parts[1]
            left = False
        elif line.startswith("not-alive: "):
            entries.pop(line[len("not-alive: "):].strip(), None)
        elif line.strip() == "leave":
            left = True
    return entries, left


def _write_entries(path: Path, entries: dict[str, str], leave: bool) -> None:
    lines = [f"alive: {name} {addr}\n" for name, addr in entries.items()]
    if leave:
        lines.append("leave\n")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


_SNAPSHOT_ALIVE = (MemberState.ALIVE, MemberState.SUSPECT)
# The log is rewritten whole (compacted) once it holds this many lines more than twice the members alive.
SNAPSHOT_COMPACT_SLACK = 1024


class SnapshotLog:
    """Serf's local.snapshot kept as Serf keeps it: an append-only log of membership changes (``alive:``
    when a member joins or changes address, ``not-alive:`` when it fails or leaves, ``leave`` when this
    agent leaves), rewritten whole only once the log has grown past twice what it describes. A change
    costs its own line; rewriting the whole member list after every change cost a 10,000-member pool's
    servers tens of milliseconds of their event loop every second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alive: dict[str, str] = {}  # name -> address, as the file says once flushed
        self.left = False
        self._pending: list[str] = []
        self._lines = 0  # lines in the file

    def load(self) -> tuple[list[str], bool]:
        """What the file holds (the addresses to rejoin, and whether the agent had left); changes are
        appended to it from here on."""
        self.alive, self.left = _read_entries(self.path)
        try:
            self._lines = self.path.read_text().count("\n")
        except (OSError, UnicodeDecodeError):
            self._lines = 0
        return list(self.alive.values()), self.left

    def member(self, m: Member) -> None:
        if m.state in _SNAPSHOT_ALIVE:
            addr = _host_port(m.addr)
            if self.alive.get(m.name) != addr:
                self.alive[m.name] = addr
                self._pending.append(f"alive: {m.name} {addr}\n")
                self.left = False
        elif self.alive.pop(m.name, None) is not None:
            self._pending.append(f"not-alive: {m.name}\n")

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def flush(self, leave: bool = False) -> None:
        """Append what changed (and ``leave``), or write the whole snapshot when the log has grown too long."""
        if leave and not self.left:  # a leave, then the stop that follows it, record one
            self._pending.append("leave\n")
            self.left = True
        if not self._pending:
            return
        if self._lines + len(self._pending) > 2 * len(self.alive) + SNAPSHOT_COMPACT_SLACK:
            self._pending.clear()
            _write_entries(self.path, self.alive, self.left)
            self._lines = len(self.alive) + (1 if self.left else 0)
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("".join(self._pending))
        self._lines += len(self._pending)
        self._pending.clear()


def _host_port(a: Address) -> str:
    return f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}"


# ---------------------------------------------------------------------- the pool


# Asks a server's RPC port for its Serf LAN address ("host:port" of the RPC port -> the Serf address).
SerfLookup = Callable[[str], Awaitable[Address | None]]


class LanPool:
    """One agent's membership of the LAN pool: the gossip driver, joining and rejoining, the member list."""

    def __init__(self, driver: GossipDriver, *, retry_join: list[str], retry_interval: float, retry_max: int,
                 rejoin_after_leave: bool, data_dir: str | None, lookup: SerfLookup,
                 on_server: Callable[[str], None],
                 on_server_gone: Callable[[str], None] = lambda address: None) -> None:  # fmt: skip
        """``lookup`` asks an address for its Serf address over RPC (the fallback for a server RPC port
        given as a join address); ``on_server`` hears the RPC address (host:port) of every server member
        alive (a client agent's server list, a server's Raft peers to say hello to), ``on_server_gone``
        that of every server member the pool reports failed or left (Consul's client drops it from its
        router until it is seen alive again)."""
        self.driver = driver
        self._retry_join = list(retry_join)
        self._retry_interval = retry_interval
        self._retry_max = retry_max
        self._rejoin_after_leave = rejoin_after_leave
        self._snapshot = SnapshotLog(Path(data_dir).joinpath(*SNAPSHOT_PATH)) if data_dir else None
        self._lookup = lookup
        self._on_server = on_server
        self._on_server_gone = on_server_gone
        self._events: EventStream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._serf_of: dict[str, Address] = {}  # server RPC address -> its Serf address, once asked
        self.leaving = False
        self.started_at = 0.0
        self.address: Address | None = None
        self._rng = random.Random()

    async def start(self) -> Address:
        self.address = await self.driver.start()
        self.started_at = time.monotonic()
        self._events = self.driver.events()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._watch(self._events), name="gossip-watch"))
        previous: list[str] = []
        if self._snapshot is not None:
            addrs, left = self._snapshot.load()
            if left and not self._rejoin_after_leave:
                log.info("ignoring previous join, the agent left (rejoin_after_leave is off)")
            else:
                previous = addrs
        if previous:
            self._tasks.append(loop.create_task(self._rejoin(previous), name="gossip-rejoin"))
        if self._retry_join:
            self._tasks.append(loop.create_task(self._retry_join_loop(), name="gossip-retry-join"))
        for m in self.driver.members():
            self._note_server(m)
        return self.address

    async def stop(self) -> None:
        """Stop without a word to the pool (to the others this agent has failed), as a crash looks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._write_snapshot(leave=self.leaving)
        await self.driver.stop()

    async def leave(self) -> None:
        """Serf's graceful leave: gossip it (bounded wait), record it in the snapshot, stop."""
        self.leaving = True
        self._write_snapshot(leave=True)
        with contextlib.suppress(RuntimeError):
            await self.driver.leave()

    # ------------------------------------------------------------------ joining

    async def join(self, addresses: Iterable[str]) -> tuple[int, list[str]]:
        """Join through each address (Consul's JoinLAN): how many answered, and the errors of those that
        did not, in Consul's form ("Failed to join <addr>: <why>")."""
        joined = 0
        errors: list[str] = []
        for text in addresses:
            try:
                ok = await self._join_one(text)
            except ValueError as exc:
                errors.append(f"Failed to join {text}: {exc}")
                continue
            if ok:
                joined += 1
            else:
                errors.append(f"Failed to join {text}: no gossip member answered there")
        return joined, errors

    async def _join_one(self, text: str) -> bool:
        """Join through one address: a push-pull with it as a gossip address, and, should that fail or not
        have answered within ``JOIN_HEDGE``, at the same time a question to it as a server's RPC port (as
        earlier configs name servers; a bare host: its default 8300) for that server's gossip address. A
        push-pull to an RPC port may take a stream timeout to fail, so the question does not wait for it."""
        addr = parse_address(text)
        rpc = text.strip() if _has_port(text) else f"{_host_port(Address(addr.host, 8300))}"
        known = self._serf_of.get(rpc)
        if known is not None and known != addr:
            return await self._push_pull(known)  # asked before: a server's RPC port
        loop = asyncio.get_running_loop()
        gossip = loop.create_task(self._push_pull(addr))
        lookup: asyncio.Task[Address | None] | None = None
        try:
            await asyncio.wait({gossip}, timeout=JOIN_HEDGE)
            if gossip.done() and gossip.result():
                return True
            lookup = loop.create_task(self._lookup(rpc))
            pending: set[asyncio.Task[Any]] = {t for t in (gossip, lookup) if not t.done()}
            serf: Address | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if gossip in done and gossip.result():
                    return True
                if lookup in done:
                    serf = lookup.result()
                    if serf is not None and serf != addr:
                        break  # a server's RPC port: its push-pull (if still waiting) is abandoned
            if serf is None or serf == addr:
                return False
        finally:
            for task in (gossip, lookup):
                if task is not None and not task.done():
                    task.cancel()
        self._serf_of[rpc] = serf
        self._on_server(rpc)
        return await self._push_pull(serf)

    async def _push_pull(self, addr: Address) -> bool:
        try:
            return await self.driver.join([addr]) > 0
        except (OSError, TimeoutError, RuntimeError):
            return False

    async def _rejoin(self, addresses: list[str]) -> None:
        """Serf's handleRejoin: the snapshot's members in random order (so a fleet restarting together
        spreads over them), stopping at the first that answers. Each join is a push-pull that carries the
        whole member list both ways: joining every member of a 10,000-member snapshot would cost this agent
        and the pool ten thousand of them."""
        own = _host_port(self.address) if self.address is not None else ""
        targets = [a for a in dict.fromkeys(addresses) if a != own]
        self._rng.shuffle(targets)
        for text in targets:
            try:
                addr = parse_address(text)
            except ValueError:
                continue
            if await self._push_pull(addr):
                log.info("Re-joined to previously known node", node=text, known=len(targets))
                return
        if targets:
            log.warning("Failed to re-join any previously known node", known=len(targets))

    async def _retry_join_loop(self) -> None:
        """Consul's retry_join: try every address until one join succeeds, every ``retry_interval``, at most
        ``retry_max`` times (0: for ever)."""
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1 and self.driver.core.num_live > 1:
                log.info("Join cluster completed: joined by other members", cluster="LAN")
                return
            joined, errors = await self.join(self._retry_join)
            if joined:
                log.info("Join cluster completed. Synced with initial agents", cluster="LAN", num_agents=joined)
                return
            if self._retry_max and attempt >= self._retry_max:
                log.error("agent: max join retry exhausted, exiting", cluster="LAN")
                return
            log.warning("Join cluster failed, will retry", cluster="LAN", retry_interval=self._retry_interval,
                        error="; ".join(errors))  # fmt: skip
            await asyncio.sleep(self._retry_interval)

    # ------------------------------------------------------------------ views

    def members(self) -> list[dict[str, Any]]:
        out = []
        me = self.driver.name
        for m in sorted(self.driver.members(), key=lambda m: m.name):
            out.append(member_json(m, STATUS_LEAVING if m.name == me and self.leaving else None))
        return out

    def is_member(self, name: str) -> bool:
        return any(m.name == name for m in self.driver.members())

    def force_leave(self, name: str, prune: bool) -> bool:
        return self.driver.force_leave(name, prune)

    def member_ips(self) -> frozenset[str]:
        return frozenset(m.addr.host for m in self.driver.members() if m.state is not MemberState.LEFT)

    # ------------------------------------------------------------------ events

    async def _watch(self, events: EventStream) -> None:
        last = 0.0
        while True:
            event = await events.get(timeout=SNAPSHOT_EVERY)
            if event is not None:
                self._note_server(event.member)
                if self._snapshot is not None:
                    self._snapshot.member(event.member)
            now = time.monotonic()
            if self._snapshot is not None and self._snapshot.dirty and now - last >= SNAPSHOT_EVERY:
                last = now
                self._write_snapshot(leave=False)

    def _note_server(self, m: Member) -> None:
        port = m.tags.get("port", "")
        if m.tags.get("role") != "consul" or not port.isdigit():
            return
        address = _host_port(Address(m.addr.host, int(port)))
        if m.state in (MemberState.ALIVE, MemberState.SUSPECT):
            self._on_server(address)
        else:
            self._on_server_gone(address)

    def _write_snapshot(self, leave: bool) -> None:
        if self._snapshot is None:
            return
        try:
            self._snapshot.flush(leave=leave)
        except OSError as exc:
            log.warning("could not write the serf snapshot", error=str(exc))


def _has_port(text: str) -> bool:
    text = text.strip()
    return text.count(":") == 1 or (text.startswith("[") and "]:" in text)


# ---------------------------------------------------------------------- the leader's side


class BatchWindow:
    """When the leader closes a batch of membership changes: the arithmetic only, time as an argument.

    Consul's leader proposes one Raft entry per member change as its reconcileCh delivers them; here the
    changes are gathered.  A fixed window (close one second after the first change) turns a burst of
    failures that the pool detects over ten seconds (every dead member waits for its first probe, the last
    of a hundred about ln(100) probe intervals) into ten entries, one a second.  This window stays open
    while changes keep arriving: it closes when it has been open ``min_open`` and nothing new came for
    ``quiet`` (the burst has paused), or ``max_open`` after its first change (a long burst still reaches
    the catalog in steps of at most that), or once it holds ``max_ops`` members (one entry's worth).  A
    single failure therefore reaches the catalog ``min_open`` after the pool declares it, as before.
    """

    def __init__(self, *, min_open: float = BATCH_MIN_OPEN, quiet: float = BATCH_QUIET,
                 max_open: float = BATCH_MAX_OPEN, max_ops: int = MAX_BATCH) -> None:  # fmt: skip
        if not 0 < min_open <= max_open or quiet <= 0 or max_ops < 1:
            raise ValueError("0 < min_open <= max_open, quiet > 0 and max_ops >= 1 are required")
        self.min_open, self.quiet, self.max_open, self.max_ops = min_open, quiet, max_open, max_ops
        self.opened: float | None = None  # when the first change of the open batch came
        self.last = 0.0  # when its latest change came
        self.size = 0

    def add(self, now: float, size: int) -> None:
        """A change came at ``now``; the batch now holds ``size`` members."""
        if self.opened is None:
            self.opened = now
        self.last = now
        self.size = size

    def close(self) -> None:
        self.opened, self.size = None, 0

    def due(self, now: float) -> bool:
        """Whether the open batch should be written now (never when none is open)."""
        return self.wait(now) == 0.0

    def wait(self, now: float) -> float | None:
        """Seconds until the open batch is due if nothing else arrives (0 when due), None when none is open."""
        if self.opened is None:
            return None
        if self.size >= self.max_ops:
            return 0.0
        at = min(max(self.opened + self.min_open, self.last + self.quiet), self.opened + self.max_open)
        return max(0.0, at - now)


class CatalogReconciler:
    """On the leader: the pool's membership changes as catalog writes, batched (Consul's leaderLoop with
    reconcileCh, and its periodic full reconcile)."""

    def __init__(self, *, events: EventStream, members: Callable[[], list[Member]],
                 store: Callable[[], StateStore], propose: Callable[[MemberBatch], Awaitable[Any]],
                 is_leader: Callable[[], bool], datacenter: str, local_name: str,
                 pool_age: Callable[[], float], window: BatchWindow | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``window`` decides when a batch is written (``BatchWindow``'s defaults unless given); ``clock``
        is the time it is measured in."""
        self._events = events
        self._members = members
        self._store = store
        self._propose = propose
        self._is_leader = is_leader
        self._dc = datacenter
        self._local = local_name
        self._pool_age = pool_age
        self._window = window if window is not None else BatchWindow()
        self._clock = clock
        self._pending: dict[str, tuple[EventKind, Member]] = {}
        self._dropped = events.dropped  # the stream's lost events already accounted for
        self._resync = False  # events were lost (or a full pass failed): the next write is a full pass
        self.entries = 0  # MemberBatch entries proposed (for tests and the benchmark)
        self.full_passes = 0  # full reconcile passes written (leadership, the periodic pass, a lost event)

    async def run(self) -> None:
        leading = False
        next_full = 0.0
        while True:
            wait = self._window.wait(self._clock())
            event = await self._events.get(timeout=1.0 if wait is None else max(wait, 0.001))
            now = self._clock()
            if event is not None:
                self._add(event, now)
            if self._events.dropped != self._dropped:
                # The stream overflowed (this loop fell more than its size behind, as a join wave of ten
                # thousand can make it): the lost changes are known only to the member list, so the next
                # write is the full pass over it, which leaves the catalog exactly as the pool is.
                log.warning("membership events were lost, reconciling every member",
                            lost=self._events.dropped - self._dropped)  # fmt: skip
                self._dropped = self._events.dropped
                self._resync = True
            if self._window.opened is not None and not self._window.due(now):
                continue  # the batch is still gathering
            if not self._is_leader():
                leading = False
                self._resync = False  # leadership gained later starts with a full pass anyway
                self._pending.clear()
                self._window.close()
                continue
            if not leading or now >= next_full or self._resync:
                # Leadership gained, the periodic pass, or lost events: every member, and the nodes no
                # member is for.  The events still queued are older than the member list read after them,
                # so they are discarded rather than replayed over the pass.
                leading = True
                next_full = now + RECONCILE_INTERVAL
                self._discard_queued()
                self._resync = False
                self._pending.clear()
                self._window.close()
                self.full_passes += 1
                if not await self._apply(await self.full_ops()):
                    self._resync = True
                    await asyncio.sleep(1.0)
            elif self._pending:
                pending, self._pending = self._pending, {}
                self._window.close()
                ops = [op for kind, m in pending.values() if (op := self.member_op(kind, m)) is not None]
                if not await self._apply(ops):
                    for name, item in pending.items():
                        self._pending.setdefault(name, item)
                    await asyncio.sleep(1.0)

    def _add(self, event: MemberEvent, now: float) -> None:
        if event.kind in (EventKind.SUSPECT, EventKind.ALIVE):
            return  # a suspicion changes nothing in the catalog (Serf does not even report it)
        self._pending[event.member.name] = (event.kind, event.member)
        self._window.add(now, len(self._pending))

    def _discard_queued(self) -> None:
        self._events.discard()
        self._dropped = self._events.dropped

    async def _apply(self, ops: list[Register | Deregister]) -> bool:
        for i in range(0, len(ops), MAX_BATCH):
            chunk = tuple(ops[i:i + MAX_BATCH])
            try:
                await self._propose(MemberBatch(chunk))
            except Exception as exc:  # noqa: BLE001 - leadership lost mid-write: the next leader reconciles
                log.warning("could not apply membership changes", error=str(exc), operations=len(chunk))
                return False
            self.entries += 1
            log.debug("membership changes applied", operations=len(chunk))
        return True

    async def full_ops(self) -> list[Register | Deregister]:
        """Consul's reconcile: every member against the catalog, then (once the local pool has run long
        enough to know everyone) the catalog's members that the pool no longer has (reconcileReaped).
        ``RECONCILE_SLICE`` members at a time, letting the event loop run between slices: at 10,000 members
        the pass is tens of milliseconds of work, which in one piece would hold up every request (a KV
        write, a Raft message) that arrived meanwhile."""
        members = self._members()
        ops: list[Register | Deregister] = []
        for i in range(0, len(members), RECONCILE_SLICE):
            if i:
                await asyncio.sleep(0)
            ops.extend(op for m in members[i:i + RECONCILE_SLICE] if (op := self.member_op(_kind(m), m)) is not None)
        if self._pool_age() >= REAP_GRACE:
            known = {m.name for m in members}
            store = self._store()
            for name in sorted(store.nodes):
                if name in known or name == self._local or SERF_CHECK_ID not in store.checks.get(name, {}):
                    continue
                ops.append(Deregister(name))
        return ops

    def member_op(self, kind: EventKind, m: Member) -> Register | Deregister | None:
        """The catalog write a member's state calls for, or None when the catalog already says it."""
        if m.tags.get("dc", self._dc) != self._dc:
            return None
        store = self._store()
        node = store.nodes.get(m.name)
        if kind in (EventKind.LEFT, EventKind.REAP) or m.state is MemberState.LEFT:
            if node is None or m.name == self._local:
                return None
            return Deregister(m.name)
        serf = store.checks.get(m.name, {}).get(SERF_CHECK_ID)
        if kind is EventKind.FAILED or m.state is MemberState.DEAD:
            if serf is not None and serf.status == HEALTH_CRITICAL:
                return None
            return self._register(m, node, HEALTH_CRITICAL, SERF_FAILED_OUTPUT, None)
        service = None
        port = m.tags.get("port", "")
        if m.tags.get("role") == "consul" and port.isdigit():
            service = Service(node=m.name, id=CONSUL_SERVICE, service=CONSUL_SERVICE, port=int(port))
        current = store.services.get(m.name, {}).get(CONSUL_SERVICE)
        if (node is not None and node.address == m.addr.host and serf is not None and serf.status == HEALTH_PASSING
                and (service is None or (current is not None and current.port == service.port))):  # fmt: skip
            return None
        return self._register(m, node, HEALTH_PASSING, SERF_ALIVE_OUTPUT, service)

    def _register(self, m: Member, node: CatalogNode | None, status: str, output: str,
                  service: Service | None) -> Register:  # fmt: skip
        host = m.addr.host
        same = node is not None and node.address == host
        row = node if same and node is not None else CatalogNode(
            id=m.tags.get("id", "") if node is None else node.id, node=m.name, address=host, datacenter=self._dc,
            tagged_addresses={"lan": host, "lan_ipv4": host, "wan": host, "wan_ipv4": host},
            meta={"consul-network-segment": ""} if node is None else dict(node.meta),
        )  # fmt: skip
        check = Check(node=m.name, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=status, output=output)
        return Register(row, service, (check,), skip_node_update=same)


def _kind(m: Member) -> EventKind:
    return {MemberState.ALIVE: EventKind.JOIN, MemberState.SUSPECT: EventKind.JOIN, MemberState.DEAD: EventKind.FAILED,
            MemberState.LEFT: EventKind.LEFT}[m.state]  # fmt: skip

