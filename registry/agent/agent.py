"""The agent: local services and checks, health checkers, anti-entropy, and the listeners.

The agent is the composition root: it builds the consensus (the single-node log in ``-dev``, Raft on a
server, the remote servers on a client), Connect, the HTTP API and the HTTP, HTTPS and DNS listeners
(``registry.agent.listeners``), handing each the narrow parts it needs -- a store reader, the consensus,
the config, the watch hub, a task spawner -- rather than the agent. In ``-dev`` the agent is also the
server, and every write still goes command -> log -> FSM -> store.
Shutdown order: stop accepting (HTTP and HTTPS, DNS), stop check monitors, drain the sync queue, close
sessions.
"""

from __future__ import annotations

import asyncio
import math
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from registry import logs
from registry.acl.authorizer import Authorizer
from registry.acl.errors import ACLError, PermissionDenied
from registry.acl.resolver import TokenResolver
from registry.agent.acl import ACLLeader, AgentTokens, ClientResolver, ServerResolver, acl_enabled
from registry.agent.alias import AliasMonitor, AliasNotifier, NodeSource, ServerHTTPNodes, StoreNodes
from registry.agent.autopilot import Autopilot, facts_from_view, single_server_view
from registry.agent.checks import (
    GRPCMonitor,
    H2PingMonitor,
    HTTPMonitor,
    Monitor,
    OSServiceMonitor,
    ScriptMonitor,
    StatusHandler,
    TCPMonitor,
    TTLMonitor,
    UDPMonitor,
)
from registry.agent.coordinates import (
    RPC_UPDATE,
    CoordinateSender,
    CoordinateSettings,
    CoordinateSource,
    CoordinateUpdates,
    validate_coordinate_config,
)
from registry.agent.events import AgentEvents, EventServer, LeaderRing, StoreRing
from registry.agent.forward import LeaderForwarder
from registry.agent.gossip_keys import (
    KEYRING_QUERIES,
    KeyringOps,
    gossip_codec,
    setup_keyring,
    validate_encrypt,
)
from registry.agent.listeners import APIServer, https_context, start_dns
from registry.agent.local import LocalCheck, LocalService
from registry.agent.membership import (
    STATUS_ALIVE,
    CatalogReconciler,
    LanPool,
    gossip_config,
    member_tags,
    validate_gossip_config,
)
from registry.agent.remote import RPC_CLIENT_APPLY
from registry.agent.router import full_sync_delay
from registry.agent.rpc_acl import CLIENT_COMMANDS, vet_client_command
from registry.agent.session_timers import SessionTimers
from registry.agent.telemetry import (
    HELP,
    CommandTimers,
    GossipMetrics,
    RaftMetrics,
    Telemetry,
    build_metrics,
    cert_not_after,
    raft_health,
    seconds_until,
)
from registry.agent.watches import AgentWatches, validate_watches
from registry.api.http import Api
from registry.api.routes import ROUTES
from registry.autopilot import AutopilotConfig, AutopilotConfigError, ClusterFacts, from_agent_config
from registry.commands import (
    CheckUpdate,
    Command,
    CommandError,
    Deregister,
    Proposer,
    Register,
)
from registry.commands import from_wire as command_from_wire
from registry.config import Config, ConfigError, ConfigValidator, join_address
from registry.connect.service import Connect
from registry.connect.service import validate_config as validate_connect_config
from registry.consensus import CommandResults, Consensus, LocalLog, NotLeaderError, RPCError
from registry.fsm import FSM
from registry.gossip import Address
from registry.gossip.codec import PacketCodec, PlainCodec
from registry.gossip.driver import GossipDriver
from registry.gossip.security import EncryptedCodec
from registry.logs import LogConfigError
from registry.logs import settings_from as log_settings
from registry.posture import (
    INSECURE_CHECK_ID,
    INSECURE_CHECK_NAME,
    check_output,
    insecure_reasons,
    require_secure,
)
from registry.raft.rpc import Caller, RPCRouter
from registry.registration import (
    CheckSpec,
    RegistrationRules,
    api_definition,
    build_check_registration,
    build_service_registration,
)
from registry.state.store import StateStore
from registry.structs import (
    CONSUL_SERVICE,
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_WARNING,
    NODE_MAINT_CHECK_ID,
    SERF_CHECK_ID,
    SERF_CHECK_NAME,
    SERVICE_MAINT_PREFIX,
    Check,
    Node,
    Service,
)
from registry.tls import (
    ReplaceableServerContext,
    https_server_context,
    load_tls_settings,
    reload_client_context,
    rpc_contexts,
    server_authorizer,
)
from registry.ui.app import build_ui
from registry.ui.pages import UI
from registry.ui.settings import content_path, ui_enabled, validate_ui
from registry.watch import WatchHub

if TYPE_CHECKING:
    from dns.server import DNSListener
    from registry.acl.resolver import TokenResolver
    from registry.agent.listeners import Listener
    from registry.logs import LogRouter
    from registry.raft.membership import ClusterView

log = structlog.get_logger("proconsul.agent")

CHECK_UPDATE_INTERVAL = 300.0  # output-only changes reach the catalog at most this often (Consul's default)
# The checks that probe something on an interval, by type (HTTP needs the agent's session, so is apart).
INTERVAL_MONITORS: dict[str, type[Monitor]] = {
    "tcp": TCPMonitor, "udp": UDPMonitor, "grpc": GRPCMonitor, "h2ping": H2PingMonitor,
    "os_service": OSServiceMonitor, "script": ScriptMonitor,
}  # fmt: skip


# Each member's answer to a keyring query also travels through this many random members (Serf's relay
# factor, which Consul's keyring endpoint takes as ?relay-factor): a rotation must hear from every member.
KEYRING_RELAY_FACTOR = 2


def _validate_tls(cfg: Config) -> None:
    """The ``tls`` block (or Consul's flat TLS keys): building the RPC contexts reads every file it names
    and refuses a wrong one (ConfigError) before anything listens."""
    rpc_contexts(cfg)


def autopilot_seed(cfg: Config) -> AutopilotConfig:
    """The agent config's ``autopilot`` block (Consul's keys), which a leader stores when none is stored."""
    block = cfg.extra.get("autopilot") or {}
    if not isinstance(block, dict):
        raise ConfigError("autopilot must be a map, e.g. {cleanup_dead_servers: true}")
    try:
        return from_agent_config(block)
    except AutopilotConfigError as exc:
        raise ConfigError(f"autopilot: {exc}") from None


def cfg_is_raft_server(cfg: Config) -> bool:
    """A server in a Raft cluster (not ``-dev``, whose log is its own leader, and not a client agent)."""
    return cfg.server and not cfg.dev


def _validate_logs(cfg: Config) -> None:
    """The logging keys (``log_file``, ``log_rotate_*``, ``enable_syslog``, ``syslog_facility``)."""
    try:
        log_settings(cfg.log_level, cfg.log_json, cfg.extra)
    except LogConfigError as exc:
        raise ConfigError(str(exc)) from None


# What ``config.validate`` checks beyond the keys themselves, from the parts that own each block; the CLI
# passes these when it builds the agent's Config.
# ``require_secure`` comes last: a malformed tls block gets its own message first.
CONFIG_VALIDATORS: tuple[ConfigValidator, ...] = (validate_connect_config, _validate_tls, autopilot_seed,
                                                  _validate_logs, validate_watches, validate_coordinate_config,
                                                  validate_encrypt, validate_ui, validate_gossip_config,
                                                  require_secure)  # fmt: skip


class Agent:
    def __init__(self, config: Config, acl: TokenResolver | None = None,
                 reload_config: Callable[[], Config] | None = None,
                 logs: LogRouter | None = None, coordinate_source: CoordinateSource | None = None) -> None:  # fmt: skip
        self.config = config
        self.log_router = logs  # where this process logs (registry.logs.configure); the monitor endpoint reads it
        # Builds the configuration again from the sources the agent started with (the CLI's files and
        # flags), for a reload; None: the agent has no sources to re-read (tests' in-process agents).
        self._reload_config = reload_config
        # TLS contexts a reload replaces (registry.tls): the server RPC port's, the one outgoing RPC
        # connections dial with, the HTTPS port's.
        self._rpc_tls: ReplaceableServerContext | None = None
        self._rpc_client_tls: ssl.SSLContext | None = None
        self._rpc_hostname: str | None = None  # the name outgoing RPC connections check (tls server_name)
        self._https_tls: ReplaceableServerContext | None = None
        self._api_server: APIServer | None = None
        self.ui: UI | None = None  # the web UI, when ui_config.enabled (registry/ui): a client of the HTTP API
        # The IDs of the services and checks defined in config files: a reload replaces these and leaves
        # the ones registered over the API alone, as Consul's reload does.
        self._config_services: set[str] = set()
        self._config_checks: set[str] = set()
        self._reloading = asyncio.Lock()
        self.hub = WatchHub()
        self.fsm = FSM(on_change=self.hub.notify, on_reset=self.hub.notify_all)
        # The one metrics registry (the telemetry block), its clock, and the Raft and RPC observer over it.
        self.metrics = build_metrics(config, time.time())
        self.telemetry = Telemetry(self.metrics)
        self.raft_metrics = RaftMetrics(self.metrics)
        # The server port's RPC methods: the Raft server, this agent and Connect each register theirs.
        self.rpc = RPCRouter(self.raft_metrics)
        self._register_rpc()
        self._leader_view: Callable[[], ClusterView | None] = _no_view  # the Raft leader's view, for autopilot
        self.consensus: Consensus = self._make_consensus()
        if cfg_is_raft_server(config):
            # A follower forwards to the leader the calls only the leader answers (Consul's srv.forward):
            # client agents send theirs to any server.
            self.forwarder: LeaderForwarder | None = LeaderForwarder(self.rpc, self.consensus)
            self.forwarder.install()
        else:
            self.forwarder = None
        # The time stamped into every command this agent proposes (lock-delays are decided from it in the
        # FSM); tests may replace it.
        self.wall_clock_ns = time.time_ns
        # The one way this agent writes: every command gets this agent's time and goes to the consensus.
        # A server times its catalog, KV, txn and session writes under Consul's names for them.
        self._command_timers = CommandTimers(self.metrics if not self.is_client else None)
        self.propose = self._timed(Proposer(lambda wire: self.consensus.propose(wire), lambda: self.wall_clock_ns()).propose)
        # ACL state: this agent's tokens, the resolver every enforcement point asks (HTTP, DNS, server RPC: a
        # server resolves from its replica, a client agent asks the servers; tests may hand one in), and on
        # servers the leader's ACL duties.
        self.acl_tokens = AgentTokens(config)
        self.acl_leader: ACLLeader | None = None
        self.acl: TokenResolver
        if acl is not None:
            self.acl = acl
        elif self.is_client:
            self.acl = ClientResolver(config=config, tokens=self.acl_tokens, call_leader=self.consensus.call_leader)
        else:
            server_acl = ServerResolver(config=config, tokens=self.acl_tokens, store=lambda: self.store, hub=self.hub)
            server_acl.register_rpc(self.rpc)
            self.acl = server_acl
        if not self.is_client:
            self.acl_leader = ACLLeader(is_leader=self.consensus.is_leader, store=lambda: self.store,
                                        propose=self.propose, tokens=self.acl_tokens,
                                        new_uuid=lambda: str(uuid.uuid4()))  # fmt: skip
        # User events: a server commits fired events to the replicated ring and serves it to client agents;
        # every agent follows the ring (its replica, or the leader's) and buffers the events meant for it.
        ring = StoreRing(lambda: self.store, self.hub)
        if not self.is_client:
            EventServer(acl=self.acl, propose=self.propose, ring=ring).register_rpc(self.rpc)
        self.events = AgentEvents(
            node_name=lambda: self.node_name,
            services=lambda: [(s.service.id, s.service.tags) for s in self.services.values()],
            call_leader=self.consensus.call_leader,
            source=LeaderRing(self.consensus.call_leader) if self.is_client else ring,
        )
        # The config's watch plans, run against this agent's own HTTP API once it listens.
        self.watches = AgentWatches(config)
        # Connect CA, leaf certificates, intentions (registers its FSM commands before any entry is replayed).
        self.connect = Connect(config=config, propose=self.propose, fsm=self.fsm, store=lambda: self.store,
                               consensus=self.consensus, hub=self.hub, rpc=self.rpc, checks=self, spawn=self._spawn,
                               is_client=self.is_client, acl=self.acl, agent_token=self.agent_token)  # fmt: skip
        # Autopilot: servers' health and dead-server cleanup, run by the leader.
        self.autopilot: Autopilot | None = None
        if not self.is_client:
            self.autopilot = Autopilot(seed=autopilot_seed(config), store=lambda: self.store,
                                       consensus=self.consensus, view=self._autopilot_view, propose=self.propose,
                                       remove=lambda sid: self.consensus.remove_server(sid))  # fmt: skip
            self.autopilot.register_rpc(self.rpc)
        # Network coordinates: this agent's own (``coordinate_source``: the gossip driver's Vivaldi client,
        # wired here where the driver is built; None until then, and nothing is sent), sent to the servers
        # on Consul's schedule; servers gather everyone's and the leader applies them in batches.
        self.coordinate_settings = CoordinateSettings.from_config(config)
        self.coordinate_source_given = coordinate_source
        self.coordinate_source: CoordinateSource = coordinate_source or (lambda: None)
        self.coordinate_updates: CoordinateUpdates | None = None
        if not self.is_client:
            self.coordinate_updates = CoordinateUpdates(
                settings=self.coordinate_settings, consensus=self.consensus, acl=self.acl, propose=self.propose,
                local=lambda: self.coordinate_source())  # fmt: skip
            self.coordinate_updates.register_rpc(self.rpc)
        self.coordinate_sender = CoordinateSender(
            settings=self.coordinate_settings, node_name=lambda: self.node_name,
            source=lambda: self.coordinate_source(), cluster_size=lambda: len(self.store.nodes),
            send=self._send_coordinate, token=self.agent_token)  # fmt: skip
        # Session TTL timers run on the leader.
        self.session_timers = SessionTimers(store=lambda: self.store, hub=self.hub, consensus=self.consensus,
                                            propose=self.propose)  # fmt: skip
        # The LAN gossip pool (started with the agent), and on servers the leader's catalog reconciliation.
        self.lan: LanPool | None = None
        self.reconciler: CatalogReconciler | None = None
        self.services: dict[str, LocalService] = {}
        self.checks: dict[str, LocalCheck] = {}
        self.http_session: aiohttp.ClientSession | None = None
        # Alias checks: woken by changes to the local checks they follow; an alias of another node reads the
        # catalog (a server its replica, a client agent a server's HTTP API).
        self.alias_notifier = AliasNotifier()
        self.alias_nodes: NodeSource = (
            ServerHTTPNodes(lambda: self.http_session, self.consensus.http_target,
                            lambda: self.acl_tokens.get("default")) if self.is_client  # fmt: skip
            else StoreNodes(lambda: self.store, self.hub)
        )
        self.started_at = time.time()
        self.api: Api | None = None  # served on the HTTP port, and on the HTTPS port when there is one
        self.http_addr: tuple[str, int] | None = None
        self.https_addr: tuple[str, int] | None = None
        self.dns_addr: tuple[str, int] | None = None
        self.dns_listener: DNSListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # members.servers / members.clients as last counted, and the catalog table indexes they were counted at
        self._member_counts: tuple[tuple[int, int, int, int], float, float] | None = None
        self._listeners: list[Listener] = []  # closed in reverse order by stop()
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_event: asyncio.Event | None = None
        self.leaving = False
        self.shutdown_requested: asyncio.Event | None = None
        self._member_ips: tuple[object, frozenset[str]] = (None, frozenset())
        # Gossip encryption, set up at start (registry/agent/gossip_keys.py): the keyring (None: gossip is
        # not encrypted), the codec the gossip driver seals and opens packets with, the keyring operations.
        self.keyring_ops = KeyringOps(config.node_name, config.datacenter, None)
        self.gossip_codec: PacketCodec = PlainCodec()

    def _timed(self, propose: Callable[[Command], Awaitable[Any]]) -> Callable[[Command], Awaitable[Any]]:
        timers = self._command_timers

        async def timed(command: Command) -> Any:
            timer = timers.timer(command.TYPE)
            if timer is None:
                return await propose(command)
            started = time.perf_counter()
            try:
                return await propose(command)
            finally:
                timer.observe((time.perf_counter() - started) * 1000.0)

        return timed

    async def _send_coordinate(self, args: dict[str, Any]) -> None:
        """``Coordinate.Update`` with this agent's coordinate: a server takes it itself (forwarding it to the
        leader), a client agent calls the leader."""
        if self.coordinate_updates is not None:
            await self.coordinate_updates.submit(args["Node"], args["Segment"], args["Coord"], args["Token"])
        else:
            await self.consensus.call_leader(RPC_UPDATE, args, 10.0)

    def agent_token(self) -> str:
        """The token this agent's own calls to the servers carry: ``acl.tokens.agent``, else the default."""
        return self.acl_tokens.get("agent") or self.acl_tokens.get("default")

    # ------------------------------------------------------------------ lifecycle

    @property
    def store(self) -> StateStore:
        # Read through the FSM each time: a snapshot restore replaces the store object.
        return self.consensus.fsm.store

    @property
    def node_name(self) -> str:
        return self.config.node_name

    def _autopilot_view(self) -> ClusterFacts | None:
        view = self._leader_view()
        if view is None:
            return None
        nodes = self.store.nodes
        return facts_from_view(view, lambda name: dict(nodes[name].meta) if name in nodes else {})

    def _make_consensus(self) -> Consensus:
        cfg = self.config
        if cfg.dev:
            self._leader_view = single_server_view(cfg.node_id, cfg.node_name, cfg.server_address,
                                                   lambda: self.store.index)  # fmt: skip
            return LocalLog(self.fsm, cfg.server_address, cfg.node_id, cfg.node_name, self.rpc, self.raft_metrics)
        if cfg.server:
            from pathlib import Path

            from registry.raft.base import raft_tick
            from registry.raft.driver import RaftOptions, RaftServer
            from registry.raft.listener import server_transport

            assert cfg.data_dir is not None
            data_dir = Path(cfg.data_dir)
            cfg.node_id = _persistent_node_id(data_dir, cfg.node_id)
            opts = RaftOptions(
                data_dir=data_dir,
                node_id=cfg.node_id,
                address=cfg.server_address,
                bind=(cfg.bind_addr, cfg.ports.server),
                name=cfg.node_name,
                http=f"{cfg.advertise}:{cfg.ports.http}",
                bootstrap_expect=cfg.bootstrap_expect,
                bootstrap=cfg.bootstrap,
                join=[join_address(a) for a in cfg.retry_join],
                tick=raft_tick(cfg.raft_multiplier),  # performance.raft_multiplier scales every Raft timing
                source_ip=cfg.advertise if cfg.bind_addr not in ("0.0.0.0", "::", "") else None,
            )
            for key, attr in (("raft_snapshot_threshold", "snapshot_threshold"),
                              ("raft_snapshot_interval", "snapshot_interval"), ("raft_trailing_logs", "trailing_logs")):
                if getattr(cfg, key) is not None:
                    setattr(opts, attr, getattr(cfg, key))
            ssl_server, opts.ssl_client, opts.server_hostname, peer_check = rpc_contexts(cfg)  # tls block
            self._rpc_client_tls = opts.ssl_client
            self._rpc_hostname = opts.server_hostname
            if ssl_server is not None:
                self._rpc_tls = ReplaceableServerContext(ssl_server)
            port = server_transport(self.rpc, ssl_server, peer_check, server_authorizer(cfg))
            server = RaftServer(opts, self.fsm, port, CommandResults(), observer=self.raft_metrics)
            self._leader_view = server.leader_view
            return server
        from registry.agent.remote import RemoteServers

        self._leader_view = _no_view
        # Every call a client agent makes to the servers carries its agent token (read at each call: it
        # may be replaced through /v1/agent/token/agent).
        client_ctx, hostname = rpc_contexts(cfg)[1:3]
        self._rpc_client_tls = client_ctx
        self._rpc_hostname = hostname
        return RemoteServers([join_address(a) for a in cfg.retry_join], self.fsm, client_ctx, hostname,
                             token=lambda: self.agent_token(), metrics=self.metrics,
                             cluster_size=self._cluster_size)  # fmt: skip

    def _cluster_size(self) -> int:
        """The agents of the datacenter, as Consul counts them for its scale factors: the LAN pool's
        members alive (or, without a pool, the catalog's nodes)."""
        if self.lan is not None:
            return self.lan.driver.core.num_live
        return max(1, len(self.store.nodes))

    @property
    def is_client(self) -> bool:
        return not self.config.server and not self.config.dev

    async def start(self) -> None:
        self.shutdown_requested = asyncio.Event()
        self._dirty_event = asyncio.Event()
        self.http_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True), auto_decompress=True
        )
        # aiohttp silently resends a PUT/DELETE whose connection broke after sending. A client agent forwards
        # writes through this session, and a resent CAS that had already applied would report false (and a
        # health check must not run twice): every request goes out exactly once. (Private attribute; aiohttp's
        # own test client sets it the same way.)
        self.http_session._retry_connection = False
        if self.config.data_dir and not self.config.dev:
            from pathlib import Path

            self.config.node_id = _persistent_node_id(Path(self.config.data_dir), self.config.node_id)
        self._setup_keyring()  # the gossip codec, before the pool starts
        await self._start_gossip()
        await self.consensus.start()
        if not self.is_client:
            self.session_timers.start()
        try:
            await self._register_self()
        except Exception as exc:  # noqa: BLE001 - no leader yet: anti-entropy registers us once there is one
            log.info("catalog registration deferred", reason=str(exc))
            self._mark_dirty(("node", ""))
        services, checks = self._config_definitions(self.config)
        for service, specs in services:
            await self.add_service(service, specs, replace_checks=False)
            self._config_services.add(service.id)
        for spec in checks:
            await self.add_check(spec)
            self._config_checks.add(spec.check_id)
        await self._warn_if_insecure()
        await self.events.start(self.consensus.known_leader())
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.events.run(), name="user-events"))
        self._tasks.append(loop.create_task(self._sync_loop(), name="anti-entropy"))
        self._tasks.append(loop.create_task(self._reaper_loop(), name="critical-reaper"))
        if self.reconciler is not None:
            self._tasks.append(loop.create_task(self.reconciler.run(), name="member-reconcile"))
        if not self.coordinate_settings.disabled:
            self._spawn(self.coordinate_sender.run(), "coordinate-sync")
            if self.coordinate_updates is not None:
                self._spawn(self.coordinate_updates.run(), "coordinate-batches")
        if self.autopilot is not None:
            if self.config.dev:
                await self.autopilot.step()  # the dev log leads at once: its configuration is there at start
            self._spawn(self.autopilot.run(), "autopilot")
        await self._start_acl()
        self._start_telemetry()
        await self._start_listeners()
        if self.http_addr is not None and self.config.server:
            self.consensus.advertise_http(f"{self.config.advertise}:{self.http_addr[1]}")
        if self.http_addr is not None:
            host = self.http_addr[0] if self.http_addr[0] not in ("0.0.0.0", "::") else "127.0.0.1"
            self.watches.start(f"http://{host}:{self.http_addr[1]}", self._spawn)
        log.info(
            "agent started",
            node=self.node_name,
            datacenter=self.config.datacenter,
            server=self.config.server,
            http=f"{self.http_addr[0]}:{self.http_addr[1]}" if self.http_addr else None,
        )

    def _setup_keyring(self) -> None:
        """Load (or create from ``encrypt``) the gossip keyring, as Consul's agent does before it joins."""
        keyring, warnings = setup_keyring(self.config)
        for warning in warnings:
            log.warning(warning)
        self.keyring_ops.keyring = keyring
        self.gossip_codec = gossip_codec(self.config, keyring)
    async def _start_gossip(self) -> None:
        """The LAN gossip pool on the ``serf_lan`` port (``ports.serf_lan`` -1: none), with Consul's tags;
        on a server, the leader's reconciliation of the pool with the catalog."""
        cfg = self.config
        if cfg.ports.serf_lan < 0:
            return
        bind = cfg.serf_lan_bind
        advertise = Address(cfg.advertise, cfg.ports.serf_lan) if bind in ("0.0.0.0", "::", "") or cfg.advertise_addr \
            else None  # fmt: skip
        if cfg.extra.get("gossip_wan"):
            log.info("gossip_wan has no effect: Proconsul runs no WAN gossip pool")
        driver = GossipDriver(self.node_name, bind=Address(bind or "0.0.0.0", cfg.ports.serf_lan), advertise=advertise,
                              tags=member_tags(cfg, acl_enabled(cfg)), codec=self.gossip_codec,
                              config=gossip_config(cfg))  # the gossip_lan block's timings  # fmt: skip
        if self.coordinate_source_given is None:  # the probes' round trips feed this agent's coordinate
            self.coordinate_source = lambda: driver.coordinate.coordinate
        self.lan = LanPool(driver, retry_join=cfg.retry_join, retry_interval=cfg.retry_interval,
                           retry_max=cfg.retry_max, rejoin_after_leave=cfg.rejoin_after_leave,
                           data_dir=None if cfg.dev else cfg.data_dir, lookup=self._serf_lookup,
                           on_server=self._learn_server, on_server_gone=self._server_gone)  # fmt: skip
        await self.lan.start()
        # Keyring operations across the pool: every member answers Serf's keyring queries from its own keyring.
        ops = self.keyring_ops
        for name in KEYRING_QUERIES.values():
            driver.handle_query(name, lambda q: ops.answer_query(q.name, q.payload))

        async def ask_pool(name: str, payload: bytes) -> tuple[dict[str, bytes], frozenset[str]]:
            result = await driver.query(name, payload, relay_factor=KEYRING_RELAY_FACTOR, until_all=True)
            return result.responses, result.expected

        ops.attach(ask_pool)
        if not self.is_client:
            lan = self.lan
            self.reconciler = CatalogReconciler(
                events=driver.events(), members=driver.members, store=lambda: self.store, propose=self.propose,
                is_leader=self.consensus.is_leader, datacenter=cfg.datacenter, local_name=self.node_name,
                pool_age=lambda: time.monotonic() - lan.started_at,
            )  # fmt: skip
        log.info("gossip pool started", address=f"{self.lan.address}")

    async def _serf_lookup(self, address: str) -> Address | None:
        """Ask the agent at a server RPC address for its Serf LAN address (the ``serf_lan`` method)."""
        from registry.raft.transport import RPCClient

        client = RPCClient(address, self._rpc_client_tls, self._rpc_hostname)
        try:
            reply = await client.call("serf_lan", None, timeout=2.0, token=self.agent_token())
        except (RPCError, OSError, TimeoutError):
            return None
        finally:
            await client.close()
        if (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str) and isinstance(reply[1], int)
                and 0 < reply[1] < 65536):  # fmt: skip
            return Address(reply[0], reply[1])
        return None

    def _learn_server(self, address: str) -> None:
        """A server heard of in the pool (its RPC address): a client agent's server list, a server's peers
        to find the cluster through (Consul's servers find each other and clients find servers by Serf)."""
        from registry.agent.remote import RemoteServers
        from registry.raft.driver import RaftServer

        consensus = self.consensus
        if isinstance(consensus, RemoteServers):
            consensus.learn(address)
            return
        if isinstance(consensus, RaftServer):
            known = consensus.opts.join
            if address == consensus.opts.address:
                return
        else:
            return
        if address not in known:
            known.append(address)

    def _server_gone(self, address: str) -> None:
        """A server the pool reports failed or left (its RPC address): a client agent stops picking it."""
        from registry.agent.remote import RemoteServers

        if isinstance(self.consensus, RemoteServers):
            self.consensus.server_gone(address)

    async def _rpc_serf_lan(self, args: Any) -> Any:
        """This agent's Serf LAN address, for agents given its RPC port as a join address."""
        if self.lan is None or self.lan.address is None:
            raise RPCError("this agent runs no gossip pool", 404)
        return [self.lan.address.host, self.lan.address.port]

    async def join(self, addresses: list[str]) -> tuple[int, list[str]]:
        """Consul's JoinLAN: how many of ``addresses`` were joined, and the errors of the others."""
        if self.lan is None:
            return 0, ["this agent runs no gossip pool"]
        return await self.lan.join(addresses)

    def force_leave(self, node: str, prune: bool) -> None:
        """Consul's ForceLeave (Serf's RemoveFailedNode): a failed member becomes left; CommandError with
        Consul's text when no member has that name."""
        if self.lan is None or not self.lan.is_member(node):
            raise CommandError(f"agent: No node found with name '{node}'", 500)
        log.info("Force leaving node", node=node)
        self.lan.force_leave(node, prune)

    async def _start_acl(self) -> None:
        """With ACLs on: the leader's duties on a server (initialized at once when this agent leads, as a
        -dev agent does), the following of the servers' ACL index on a client agent."""
        if not acl_enabled(self.config):
            return
        if isinstance(self.acl, ClientResolver):
            self._spawn(self.acl.follow(), "acl-index-follow")
        elif self.acl_leader is not None:
            try:
                await self.acl_leader.step()
            except Exception as exc:  # noqa: BLE001 - no leader yet: the leader task retries
                log.debug("ACL tables not initialized yet", error=str(exc))
            self._spawn(self.acl_leader.run(), "acl-leader")

    async def _start_listeners(self) -> None:
        """The HTTP API on the HTTP port, Connect, then the same API on the HTTPS port, then DNS."""
        cfg = self.config
        api = Api(ROUTES, config=cfg, store=lambda: self.store, consensus=self.consensus, hub=self.hub, local=self,
                  connect=self.connect, acl=self.acl, acl_tokens=self.acl_tokens, telemetry=self.telemetry,
                  autopilot=self.autopilot, logs=self.log_router, events=self.events,
                  coordinates=self.coordinate_updates,
                  coordinates_disabled=self.coordinate_settings.disabled,
                  keyring=self.keyring_ops)  # fmt: skip
        self.api = api
        server = APIServer(api, exempt=self._is_member_address)
        self._api_server = server
        try:
            self.http_addr = await server.listen_http(cfg.client_addr, cfg.ports.http)
        except OSError:
            await server.close()
            raise
        self._listeners.append(server)
        if ui_enabled(cfg):
            host = self.http_addr[0] if self.http_addr[0] not in ("0.0.0.0", "::") else "127.0.0.1"
            self.ui = build_ui(f"http://{host}:{self.http_addr[1]}", content_path=content_path(cfg))
            api.pages = self.ui.handle
        await self.connect.start()
        if cfg.ports.https >= 0:
            self._https_tls = ReplaceableServerContext(https_context(cfg))
            self.https_addr = await server.listen_https(cfg.client_addr, cfg.ports.https, self._https_tls.front)
            log.info("HTTPS listener started", address=f"{self.https_addr[0]}:{self.https_addr[1]}")
        if cfg.ports.dns != -1:
            self.dns_listener, self.dns_addr, dns_token = await start_dns(cfg, lambda: self.store, self.acl,
                                                                          self.metrics)  # fmt: skip
            self._listeners.append(self.dns_listener)
            if dns_token is not None:
                # DNS answers with the default token: resolved again when ACL state or the token changes.
                self.acl_tokens.listeners.append(dns_token.changed)
                if isinstance(self.acl, ServerResolver | ClientResolver):
                    self.acl.listeners.append(dns_token.changed)
                self._spawn(dns_token.run(), "dns-acl-token")

    def _start_telemetry(self) -> None:
        """The metrics clock and the gauges it reads: the runtime's on every agent; on a server the Raft
        and autopilot state each second, the members, the CA root's expiry (leader) each interval; this
        agent's TLS certificate expiry when it has one (Consul's agent.tls.cert.expiry)."""
        if not self.metrics.enabled:
            return
        t = self.telemetry
        t.add_collector(t.runtime_collector())
        t.add_collector(t.tasks_collector(), every_second=False)
        if self.lan is not None:
            driver, codec = self.lan.driver, self.gossip_codec
            codec_stats: dict[str, int] = codec.stats if isinstance(codec, EncryptedCodec) else {}
            t.add_collector(GossipMetrics(self.metrics, driver=lambda: driver.stats, core=lambda: driver.core.stats,
                                          codec=lambda: codec_stats, health=lambda: driver.core.health_score,
                                          queued=lambda: driver.core.queued_broadcasts,
                                          members=lambda: driver.core.num_live).collect)  # fmt: skip
        if not self.is_client:
            t.add_collector(self._server_collector())
            t.add_collector(self._collect_members, every_second=False)
            t.add_collector(self._collect_ca_expiry, every_second=False)
        cert = self._tls_cert_file()
        if cert:
            not_after = cert_not_after(cert)
            gauge = self.metrics.gauge("agent.tls.cert.expiry", (), HELP["agent.tls.cert.expiry"])
            if not_after is not None:
                t.add_collector(lambda: gauge.set(seconds_until(not_after, t.clock())), every_second=False)
        self._spawn(t.run(), "telemetry")

    def _tls_cert_file(self) -> str:
        from registry.tls import load_tls_settings

        settings = load_tls_settings(self.config)
        return settings.internal_rpc.cert_file or settings.https.cert_file

    def _server_collector(self) -> Callable[[], None]:
        """Consul's server.isLeader, and autopilot's view on the leader: every server healthy (NaN on the
        others, as Consul reports it) and the failure tolerance."""
        from registry.raft.driver import RaftServer

        m = self.metrics
        is_leader = m.gauge("server.isLeader", (), HELP["server.isLeader"])
        healthy = m.gauge("autopilot.healthy", (), HELP["autopilot.healthy"])
        tolerance = m.gauge("autopilot.failure_tolerance", (), HELP["autopilot.failure_tolerance"])

        def collect() -> None:
            consensus = self.consensus
            leading = consensus.is_leader()
            is_leader.set(1.0 if leading else 0.0)
            if not leading:
                healthy.set(math.nan)
                return
            if isinstance(consensus, RaftServer) and consensus.node is not None:
                node = consensus.node
                ok, spare = raft_health(node.status(), node.configuration.voters, consensus.id, node.last_index,
                                        consensus.opts.tick)  # fmt: skip
            else:
                ok, spare = True, 0  # the single-server dev log
            healthy.set(1.0 if ok else 0.0)
            tolerance.set(float(spare))

        return collect

    def _collect_members(self) -> None:
        """Consul's members.servers and members.clients: the catalog's nodes with a serfHealth check. Counted
        again only when the catalog's nodes, services or checks changed: walking 10,000 nodes takes about
        10 ms, and every server of a cluster closes its metrics interval on the same wall-clock second, so
        a walk each interval was a 30 ms burst on servers sharing a core (bench.fleet's KV write tail)."""
        store = self.store
        at = (id(store), store.table_index["nodes"], store.table_index["services"], store.table_index["checks"])
        if self._member_counts is None or self._member_counts[0] != at:
            servers = clients = 0
            for name in store.nodes:
                if SERF_CHECK_ID not in store.checks.get(name, {}):
                    continue
                if CONSUL_SERVICE in store.services.get(name, {}):
                    servers += 1
                else:
                    clients += 1
            self._member_counts = (at, float(servers), float(clients))
        _, servers_n, clients_n = self._member_counts
        self.metrics.gauge("members.servers", (), HELP["members.servers"]).set(servers_n)
        self.metrics.gauge("members.clients", (), HELP["members.clients"]).set(clients_n)

    def _collect_ca_expiry(self) -> None:
        """The active root's remaining life, from the leader (Consul's mesh.active-root-ca.expiry)."""
        if not self.consensus.is_leader():
            return
        state = self.connect.ca_state() if self.connect.enabled else None
        if state is not None:
            self.metrics.gauge("mesh.active-root-ca.expiry", (), HELP["mesh.active-root-ca.expiry"]).set(
                seconds_until(state.active_root.not_after, self.telemetry.clock()))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a background task that ``stop`` cancels and waits for."""
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        for listener in reversed(self._listeners):
            await listener.close()
        self._listeners.clear()
        for chk in list(self.checks.values()):
            await self._stop_monitor(chk)
        self.session_timers.stop()
        await self.watches.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        if self.lan is not None:
            await self.lan.stop()
        await self.consensus.stop()
        if self.http_session is not None:
            await self.http_session.close()
            self.http_session = None
        if self.ui is not None:
            await self.ui.close()
            self.ui = None
        log.info("agent stopped", node=self.node_name)

    def request_shutdown(self) -> None:
        if self.shutdown_requested is not None:
            self.shutdown_requested.set()

    # ------------------------------------------------------------------ reload

    def request_reload(self) -> None:
        """SIGHUP: reload in the background; a failure is logged and the running config stays."""

        async def run() -> None:
            log.info("Caught signal: hangup; reloading configuration")
            try:
                await self.reload()
            except ConfigError as exc:
                log.error("Reload config failed", error=str(exc).rstrip())

        self._spawn(run(), "reload")

    def _config_definitions(self, cfg: Config) -> tuple[list[tuple[Service, list[CheckSpec]]], list[CheckSpec]]:
        """The services (with their checks) and the checks a config defines, validated; ConfigError
        naming the definition that is wrong."""
        rules = RegistrationRules(cfg.node_name, cfg.enable_script_checks or cfg.enable_local_script_checks,
                                  cfg.check_output_max_size)  # fmt: skip
        services = []
        for i, svc in enumerate(cfg.services):
            try:
                services.append(build_service_registration(rules, api_definition(svc)))
            except CommandError as exc:
                raise ConfigError(f"services[{i}]: {exc}") from exc
        checks = []
        for i, chk in enumerate(cfg.checks):
            try:
                checks.append(build_check_registration(rules, api_definition(chk)))
            except CommandError as exc:
                raise ConfigError(f"checks[{i}]: {exc}") from exc
        return services, checks

    async def reload(self) -> None:
        """Consul's agent reload (``reloadConfigInternal``): build the configuration again from the sources
        the agent started with and apply what can change while running -- the log level, this agent's ACL
        tokens from config, TLS certificates and CAs for new connections, ``limits.http_max_conns_per_client``
        and ``limits.request_limits``, node metadata, and the services and checks defined in config
        (added, changed, removed; those registered over the API stay). Everything is checked before
        anything changes: a config that does not load or validate raises ConfigError (Consul's text) and
        the running config stays. Other keys take a restart, as in Consul."""
        if self._reload_config is None:
            raise ConfigError("this agent was not started from config files; nothing to reload")
        async with self._reloading:
            new = self._reload_config()
            services, checks = self._config_definitions(new)
            known = {svc.id for svc, _ in services} | (set(self.services) - self._config_services)
            for spec in checks:
                if spec.service_id and spec.service_id not in known:
                    raise ConfigError(f'check "{spec.check_id}": ServiceID "{spec.service_id}" does not exist')
            settings = load_tls_settings(new)
            https_ctx = None
            if self._https_tls is not None and new.ports.https >= 0 and settings.https.has_cert:
                https_ctx = https_server_context(settings)
            rpc_server_ctx = rpc_contexts(settings)[0] if self._rpc_tls is not None else None
            if self._rpc_client_tls is not None and settings.internal_rpc.has_cert:
                reload_client_context(self._rpc_client_tls, settings)
            # From here on nothing fails: apply.
            cfg = self.config
            if new.log_level.lower() != cfg.log_level.lower():
                cfg.log_level = new.log_level
                logs.configure(new.log_level, cfg.log_json)
                log.debug("log level changed", level=new.log_level)
            if https_ctx is not None and self._https_tls is not None:
                self._https_tls.replace(https_ctx)
            if rpc_server_ctx is not None and self._rpc_tls is not None:
                self._rpc_tls.replace(rpc_server_ctx)
            cfg.tls, cfg.extra = new.tls, new.extra
            cfg.acl["tokens"] = new.acl.get("tokens") or {}
            self.acl_tokens.load_config(new)
            cfg.limits = new.limits
            if self._api_server is not None:
                self._api_server.set_limits(new.limits)
            if cfg.node_meta != new.node_meta:
                cfg.node_meta = new.node_meta
                self._mark_dirty(("node", ""))
            await self._reload_definitions(services, checks)
            cfg.services, cfg.checks = new.services, new.checks
            log.info("configuration reloaded", services=len(services), checks=len(checks), log_level=cfg.log_level)

    async def _reload_definitions(self, services: list[tuple[Service, list[CheckSpec]]],
                                  checks: list[CheckSpec]) -> None:  # fmt: skip
        """Replace the services and checks defined in config: drop the ones no longer defined, register the
        new and changed ones (an unchanged one keeps its running checks and their status)."""
        new_sids = {svc.id for svc, _ in services}
        new_cids = {spec.check_id for spec in checks}
        for cid in sorted(self._config_checks - new_cids):
            if cid in self.checks:
                await self.remove_check(cid)
        for sid in sorted(self._config_services - new_sids):
            if sid in self.services:
                await self.remove_service(sid)
        for service, specs in services:
            local = self.services.get(service.id)
            running = [c.spec for c in self.checks.values() if c.spec.service_id == service.id
                       and not c.spec.check_id.startswith(SERVICE_MAINT_PREFIX)]  # fmt: skip
            if local is None or local.service != service or running != specs:
                await self.add_service(service, specs, replace_checks=True)
        for spec in checks:
            running_check = self.checks.get(spec.check_id)
            if running_check is None or running_check.spec != spec:
                await self.add_check(spec)
        self._config_services, self._config_checks = new_sids, new_cids

    # ------------------------------------------------------------------ node identity

    def node_row(self) -> Node:
        """This agent's node as the catalog holds it."""
        addr = self.config.advertise
        return Node(
            id=self.config.node_id,
            node=self.node_name,
            address=addr,
            datacenter=self.config.datacenter,
            tagged_addresses={"lan": addr, "lan_ipv4": addr, "wan": addr, "wan_ipv4": addr},
            meta={"consul-network-segment": "", **self.config.node_meta},
        )

    def registration_rules(self) -> RegistrationRules:
        """What a service or check definition registered here is validated against."""
        cfg = self.config
        return RegistrationRules(self.node_name, cfg.enable_script_checks or cfg.enable_local_script_checks,
                                 cfg.check_output_max_size)  # fmt: skip

    async def _register_self(self) -> None:
        # The node-level liveness check a Consul server keeps for every member.
        serf = Check(node=self.node_name, check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=HEALTH_PASSING,
                     output="Agent alive and reachable")  # fmt: skip
        service = None
        if self.config.server:
            service = Service(node=self.node_name, id=CONSUL_SERVICE, service=CONSUL_SERVICE,
                              port=self.config.ports.server)  # fmt: skip
        await self.propose(Register(self.node_row(), service, (serf,)))

    # ------------------------------------------------------------------ local services and checks

    async def add_service(self, service: Service, specs: list[CheckSpec], replace_checks: bool) -> None:
        """Register (or replace) a local service and its checks; ``service`` was validated where it was built
        (``registry.registration``)."""
        sid = service.id
        old_checks = [c for c in self.checks.values() if c.spec.service_id == sid]
        keep_ids = {s.check_id for s in specs}
        self.services[sid] = LocalService(service)
        for spec in specs:
            await self._install_check(spec)
        if replace_checks:
            for chk in old_checks:
                if chk.spec.check_id not in keep_ids and not chk.spec.check_id.startswith(SERVICE_MAINT_PREFIX):
                    await self._remove_check_local(chk.spec.check_id)
        self.alias_notifier.notify(sid)
        await self.sync_service(sid)

    async def remove_service(self, sid: str) -> None:
        if sid not in self.services:
            raise CommandError(
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.', 404
            )
        for cid in [cid for cid, c in self.checks.items() if c.spec.service_id == sid]:
            await self._remove_check_local(cid)
        del self.services[sid]
        self.alias_notifier.notify(sid)
        await self._sync_or_defer(("service-delete", sid))

    async def add_check(self, spec: CheckSpec) -> None:
        if spec.service_id and spec.service_id not in self.services:
            raise CommandError(f'ServiceID "{spec.service_id}" does not exist', 404)
        await self._install_check(spec)
        await self.sync_check(spec.check_id)

    async def remove_check(self, cid: str) -> None:
        if cid not in self.checks:
            raise CommandError(
                f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.', 404
            )
        await self._remove_check_local(cid)
        await self._sync_or_defer(("check-delete", cid))

    async def _install_check(self, spec: CheckSpec) -> None:
        existing = self.checks.get(spec.check_id)
        if existing is not None:
            await self._stop_monitor(existing)
        chk = LocalCheck(spec=spec, status=spec.status)
        if existing is not None and existing.spec.type == spec.type and spec.status == HEALTH_CRITICAL:
            # Re-registering keeps the last known result rather than flapping to the initial status.
            chk.status, chk.output = existing.status, existing.output
        if chk.status == HEALTH_CRITICAL:
            chk.critical_since = time.monotonic()
        self.checks[spec.check_id] = chk
        self._start_monitor(chk)
        self.alias_notifier.notify(spec.service_id)

    def _start_monitor(self, chk: LocalCheck) -> None:
        spec = chk.spec

        def report(status: str, output: str, cid: str = spec.check_id) -> None:
            self.set_check_status(cid, status, output)

        monitor: Monitor | TTLMonitor | AliasMonitor | None
        if spec.type == "ttl":
            monitor = TTLMonitor(spec, report)
        elif spec.type == "http":
            assert self.http_session is not None
            monitor = HTTPMonitor(spec, StatusHandler(spec, report), self.http_session)
        elif spec.type in INTERVAL_MONITORS:
            monitor = INTERVAL_MONITORS[spec.type](spec, StatusHandler(spec, report))
        elif spec.type == "alias":
            monitor = AliasMonitor(spec, report, self, self.alias_notifier, self.alias_nodes)
        else:
            monitor = None  # maintenance and other passive checks
        chk.monitor = monitor
        if monitor is not None:
            monitor.start()

    async def _stop_monitor(self, chk: LocalCheck) -> None:
        if chk.monitor is not None:
            await chk.monitor.stop()
            chk.monitor = None

    async def _remove_check_local(self, cid: str) -> None:
        chk = self.checks.pop(cid, None)
        if chk is not None:
            await self._stop_monitor(chk)
            self.alias_notifier.notify(chk.spec.service_id)

    def set_check_status(self, cid: str, status: str, output: str) -> None:
        """A result from a monitor (or a TTL update): update local state, sync if it matters."""
        chk = self.checks.get(cid)
        if chk is None:
            return
        previous = chk.status
        changed_output = output != chk.output
        chk.status, chk.output = status, output
        if status == HEALTH_CRITICAL:
            if previous != HEALTH_CRITICAL or chk.critical_since is None:
                chk.critical_since = time.monotonic()
        else:
            chk.critical_since = None
        if previous != status or changed_output:
            self.alias_notifier.notify(chk.spec.service_id)
        if previous != status:
            log.info("check status changed", check=cid, status=status, previous=previous)
            self._mark_dirty(("check", cid))
        elif changed_output and time.monotonic() - chk.last_synced >= CHECK_UPDATE_INTERVAL:
            self._mark_dirty(("check", cid))

    def local_check_rows(self) -> list[Check]:
        """Every local check as its catalog row (what a local alias check aggregates)."""
        node = self.node_name
        return [c.row(node) for c in self.checks.values()]

    def has_local_service(self, service_id: str) -> bool:
        return service_id in self.services

    async def update_ttl(self, cid: str, status: str, output: str) -> None:
        chk = self.checks.get(cid)
        if chk is None:
            raise CommandError(
                f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.', 404
            )
        if not isinstance(chk.monitor, TTLMonitor):
            raise CommandError(f'CheckID "{cid}" does not have associated TTL', 500)
        chk.monitor.reset()
        output = output[: chk.spec.output_max_size] if chk.spec.output_max_size > 0 else output
        self.set_check_status(cid, status, output)
        # Written now (the caller then reads its own write) only when set_check_status found something to
        # write: a service's TTL heartbeat repeating its status is not a Raft entry (Consul's UpdateCheck
        # returns early for it, and defers an output-only change by check_update_interval).
        if ("check", cid) in self._dirty:
            await self.sync_check(cid)

    async def _warn_if_insecure(self) -> None:
        """An agent started without ACLs or mutual TLS (``-insecure``, or a client agent without verified
        TLS to the servers) says so at start (``registry.posture``). A server, which was started insecure
        on purpose, also keeps saying so with a warning check on its node; a client agent does not get one,
        because a warning node check keeps every service of the node out of ``?passing`` answers and a
        client agent's services are the applications being discovered."""
        reasons = insecure_reasons(self.config)
        if not reasons:
            return
        log.warning("agent running with an insecure configuration", reasons=reasons,
                    insecure_flag=self.config.insecure)  # fmt: skip
        if not self.config.server:
            return
        spec = CheckSpec(check_id=INSECURE_CHECK_ID, name=INSECURE_CHECK_NAME, type="", status=HEALTH_WARNING,
                         notes="Proconsul's warning: this agent's configuration is not secure")  # fmt: skip
        await self._install_check(spec)
        self.checks[INSECURE_CHECK_ID].output = check_output(self.config, reasons)
        await self.sync_check(INSECURE_CHECK_ID)

    # ------------------------------------------------------------------ maintenance

    async def set_node_maintenance(self, enable: bool, reason: str) -> None:
        if enable:
            if NODE_MAINT_CHECK_ID in self.checks:
                return
            spec = CheckSpec(
                check_id=NODE_MAINT_CHECK_ID,
                name="Node Maintenance Mode",
                type="maintenance",
                notes=reason
                or "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.",
                status=HEALTH_CRITICAL,
            )
            await self._install_check(spec)
            await self.sync_check(NODE_MAINT_CHECK_ID)
        elif NODE_MAINT_CHECK_ID in self.checks:
            await self.remove_check(NODE_MAINT_CHECK_ID)

    async def set_service_maintenance(self, sid: str, enable: bool, reason: str) -> None:
        if sid not in self.services:
            raise CommandError(f'Unknown service ID "{sid}"', 404)
        cid = SERVICE_MAINT_PREFIX + sid
        if enable:
            if cid in self.checks:
                return
            spec = CheckSpec(
                check_id=cid,
                name="Service Maintenance Mode",
                type="maintenance",
                service_id=sid,
                notes=reason
                or "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.",
                status=HEALTH_CRITICAL,
            )
            await self._install_check(spec)
            await self.sync_check(cid)
        elif cid in self.checks:
            await self.remove_check(cid)

    # ------------------------------------------------------------------ anti-entropy

    def _mark_dirty(self, item: tuple[str, str]) -> None:
        self._dirty.add(item)
        if self._dirty_event is not None:
            self._dirty_event.set()

    async def _sync_or_defer(self, item: tuple[str, str]) -> None:
        try:
            await self._sync_item(item)
        except Exception as exc:  # noqa: BLE001 - the catalog catches up on the next sync
            log.warning("catalog sync failed; will retry", item=item, error=str(exc))
            self._mark_dirty(item)

    async def sync_service(self, sid: str) -> None:
        await self._sync_or_defer(("service", sid))

    async def sync_check(self, cid: str) -> None:
        await self._sync_or_defer(("check", cid))

    async def _sync_item(self, item: tuple[str, str]) -> None:
        kind, key = item
        node = self.node_name
        # This sync reads the state after this line, so it covers every change marked before it: the sync
        # loop must not write the same thing again (a TTL pass synced at once used to be written twice). A
        # change made while the write is under way marks the item again.
        self._dirty.discard(item)
        if kind == "node":
            await self._register_self()
            for sid in list(self.services):
                await self._sync_item(("service", sid))
            for cid in list(self.checks):
                await self._sync_item(("check", cid))
        elif kind == "service":
            svc = self.services.get(key)
            if svc is None:
                return
            checks = [c for c in self.checks.values() if c.spec.service_id == key]
            await self.propose(Register(self.node_row(), svc.service, tuple(c.row(node) for c in checks),
                                        skip_node_update=True))  # fmt: skip
            now = time.monotonic()
            for c in checks:
                c.last_synced = now
            log.info("Synced service", service=key)  # Consul's local-state line (agent/local/state.go)
        elif kind == "check":
            chk = self.checks.get(key)
            if chk is None:
                return
            if chk.spec.service_id and chk.spec.service_id not in self.services:
                return
            existing = self.store.checks.get(node, {}).get(key)
            want = chk.row(node)
            cmd: Command
            if existing is not None and _same_definition(existing, want):
                cmd = CheckUpdate(node, key, chk.status, chk.output)
            else:
                cmd = Register(self.node_row(), checks=(want,), skip_node_update=True)
            await self.propose(cmd)
            chk.last_synced = time.monotonic()
            log.info("Synced check", check=key)
        elif kind == "service-delete":
            if key not in self.services:
                await self.propose(Deregister(node, service_id=key))
                log.info("Deregistered service", service=key)
        elif kind == "check-delete":
            if key not in self.checks:
                await self.propose(Deregister(node, check_id=key))
                log.info("Deregistered check", check=key)

    async def sync_full(self) -> None:
        """Bring the catalog's view of this node in line with local state."""
        node = self.node_name
        if self.is_client:
            # A client keeps no catalog: ask a server what it holds for this node.
            catalog_services, catalog_checks, known = await self._remote_node_state()
            if not known:
                await self._register_self()
        else:
            store = self.store
            if node not in store.nodes:
                await self._register_self()
                store = self.store
            # Copies: the syncs below write to the store while we walk these.
            catalog_services = dict(store.services.get(node, {}))
            catalog_checks = dict(store.checks.get(node, {}))
        for sid, svc in list(self.services.items()):
            row = catalog_services.get(sid)
            want = svc.service
            if row is None or not row.same_as(want):
                if row is not None and want.enable_tag_override and row.tags != want.tags:
                    svc.service = replace(want, tags=row.tags)  # tags changed in the catalog win
                    if row.same_as(svc.service):
                        continue
                await self._sync_or_defer(("service", sid))
        for sid, row in catalog_services.items():
            if sid not in self.services and not (self.config.server and row.service == CONSUL_SERVICE):
                await self._sync_or_defer(("service-delete", sid))
        for cid, chk in list(self.checks.items()):
            row = catalog_checks.get(cid)
            want = chk.row(node)
            if row is None or not _same_definition(row, want) or (row.status, row.output) != (want.status, want.output):
                await self._sync_or_defer(("check", cid))
        for cid in list(catalog_checks):
            if cid not in self.checks and cid != SERF_CHECK_ID:
                await self._sync_or_defer(("check-delete", cid))

    async def _sync_loop(self) -> None:
        assert self._dirty_event is not None
        # Consul's StateSyncer: each full sync after the interval plus a random stagger that grows with the
        # cluster (registry/agent/router.py), so a fleet's full syncs spread out instead of arriving together.
        rng = random.Random()
        next_full = time.monotonic() + full_sync_delay(self.config.ae_interval, self._cluster_size(), rng)
        while True:
            timeout = max(0.0, next_full - time.monotonic())
            try:
                await asyncio.wait_for(self._dirty_event.wait(), timeout)
            except TimeoutError:
                pass
            self._dirty_event.clear()
            items, self._dirty = self._dirty, set()
            for item in items:
                await self._sync_or_defer(item)
            if time.monotonic() >= next_full:
                try:
                    await self.sync_full()
                except Exception as exc:  # noqa: BLE001
                    log.warning("anti-entropy sync failed", error=str(exc))
                next_full = time.monotonic() + full_sync_delay(self.config.ae_interval, self._cluster_size(), rng)
            if self._dirty:
                await asyncio.sleep(1.0)  # failed items: retry after a pause, not in a hot loop

    async def _reaper_loop(self) -> None:
        """Deregister services whose check has been critical longer than DeregisterCriticalServiceAfter."""
        while True:
            await asyncio.sleep(self.config.check_reap_interval)
            await self.reap_critical()

    async def reap_critical(self) -> None:
        now = time.monotonic()
        doomed = set()
        for chk in self.checks.values():
            after = chk.spec.deregister_after
            if after and chk.spec.service_id and chk.critical_since is not None and now - chk.critical_since > after:
                doomed.add(chk.spec.service_id)
        for sid in doomed:
            if sid in self.services:
                log.info("deregistering service with a long-critical check", service=sid)
                await self.remove_service(sid)

    # ------------------------------------------------------------------ membership and liveness

    def _is_member_address(self, ip: str) -> bool:
        """Whether ``ip`` is the address of another member agent (a catalog node with serfHealth), whose
        forwarded requests are exempt from ``limits.http_max_conns_per_client``; this agent's own address is
        not (local clients may use it). Remade only when the node or check table moves: it is asked on
        every connection over the limit."""
        if ip == self.config.advertise:
            return False
        if self.lan is not None and ip in self.lan.member_ips():
            return True  # a member of this agent's gossip pool; else a node the catalog knows as one
        store = self.store
        key = (id(store), store.table_index["nodes"], store.table_index["checks"])
        if key != self._member_ips[0]:
            ips = frozenset(node.address for name, node in store.nodes.items()
                            if SERF_CHECK_ID in store.checks.get(name, {}))  # fmt: skip
            self._member_ips = (key, ips)
        return ip in self._member_ips[1]

    def known_servers(self) -> int:
        """Consul's ``known_servers`` (a client's Stats): the servers its router holds, i.e. not reported
        failed or left by the pool; on a server, its Raft peers."""
        from registry.agent.remote import RemoteServers

        if isinstance(self.consensus, RemoteServers):
            return self.consensus.known_servers()
        return len(self.consensus.peers())

    def members(self) -> list[dict[str, Any]]:
        """The LAN pool's members as Consul's /v1/agent/members shows them (statuses alive 1, leaving 2,
        left 3, failed 4, and Consul's tags). An agent that has joined no one lists itself."""
        if self.lan is not None:
            return self.lan.members()
        cfg = self.config
        return [{
            "Name": cfg.node_name, "Addr": cfg.advertise, "Port": cfg.ports.serf_lan,
            "Tags": member_tags(cfg, acl_enabled(cfg)), "Status": STATUS_ALIVE, "ProtocolMin": 1, "ProtocolMax": 5,
            "ProtocolCur": 2, "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        }]  # fmt: skip

    def _register_rpc(self) -> None:
        """The agent's methods on the server port: session renewals, node state, the catalog writes of client
        agents' anti-entropy, and this agent's Serf address. Each is checked against the token the call
        carries when the caller is not a server (``registry.agent.rpc_acl``; Consul's Catalog and Session
        endpoints vet every request's token the same way). Liveness is the gossip pool's, not an RPC's."""
        self.rpc.register("serf_lan", self._rpc_serf_lan)
        self.rpc.register("session_renew", self._rpc_session_renew, with_caller=True, leader=True)
        self.rpc.register("node_state", self._rpc_node_state, with_caller=True, leader=True)
        self.rpc.register(RPC_CLIENT_APPLY, self._rpc_client_apply, with_caller=True, leader=True)

    async def _caller_authz(self, caller: Caller) -> Authorizer | None:
        """The authorizer of a client agent's call (None: nothing to check -- ACLs are off, or the caller is
        a server, trusted by its role). An unknown token is refused with Consul's 403 text."""
        if caller.server or not self.acl.enabled:
            return None
        try:
            return await self.acl.resolve(caller.token)
        except ACLError as exc:
            raise RPCError(str(exc), 403) from None

    @staticmethod
    def _refuse(exc: ACLError) -> RPCError:
        return RPCError(str(exc), 403)

    async def _rpc_session_renew(self, args: Any, caller: Caller) -> Any:
        if not self.consensus.is_leader():
            raise RPCError("not the leader", 503)
        if not isinstance(args, str):
            raise RPCError("session_renew needs a session ID", 400)
        authz = await self._caller_authz(caller)
        session = self.store.sessions.get(args)
        if authz is not None and session is not None and not authz.session_write(session.node):
            # Consul's Session.Renew: session:write on the session's node.
            raise self._refuse(PermissionDenied(authz.accessor_id, "session", "write", session.node))
        return self._renew_here(args)

    async def _rpc_node_state(self, args: Any, caller: Caller) -> Any:
        from registry.state import codec

        if not isinstance(args, str):
            raise RPCError("node_state needs a node name", 400)
        authz = await self._caller_authz(caller)
        if authz is not None and not authz.node_read(args):
            # Consul's Catalog.NodeServices answers no node to a token that may not read it.
            raise self._refuse(PermissionDenied(authz.accessor_id, "node", "read", args))
        store = self.store
        services = list(store.services.get(args, {}).values())
        checks = list(store.checks.get(args, {}).values())
        if authz is not None:
            services = [s for s in services if authz.service_read(s.service)]
            names = {s.id: s.service for s in store.services.get(args, {}).values()}
            checks = [c for c in checks if not c.service_id or authz.service_read(names.get(c.service_id, ""))]
        return {
            "known": args in store.nodes,
            "services": [codec._service(s) for s in services],
            "checks": [codec._check(c) for c in checks],
        }

    async def _rpc_client_apply(self, args: Any, caller: Caller) -> Any:
        """A client agent's catalog write (its anti-entropy: registrations, check updates,
        deregistrations), vetted against the token it carries before it enters the log; a server's own
        writes go through ``apply``, which only servers may call."""
        if not self.consensus.is_leader():
            raise RPCError("not the leader", 503)
        if not isinstance(args, dict):
            raise RPCError("client_apply needs a command", 400)
        try:
            cmd = command_from_wire(args)
        except CommandError as exc:
            return CommandResults().encode_result(exc)
        if not isinstance(cmd, CLIENT_COMMANDS):
            raise self._refuse(PermissionDenied(cause=f"a client agent may not propose {cmd.TYPE!r}"))
        authz = await self._caller_authz(caller)
        if authz is not None:
            try:
                vet_client_command(cmd, authz, self.store)
            except ACLError as exc:
                raise self._refuse(exc) from None
        timer = self._command_timers.timer(cmd.TYPE)
        started = time.perf_counter()
        result = await self.consensus.propose(args)
        if timer is not None:
            timer.observe((time.perf_counter() - started) * 1000.0)
        return CommandResults().encode_result(result)

    # ------------------------------------------------------------------ sessions

    def _renew_here(self, sid: str) -> list[Any] | None:
        from registry.state import codec

        if not self.session_timers.reset(sid):
            return None
        return codec._session(self.store.sessions[sid])

    async def renew_session(self, sid: str) -> Any:
        """Consul's Session.Renew: the leader restarts the session's TTL timer and answers with the session
        (None when it does not exist). A follower asks the leader; the timer lives only there."""
        from registry.state import codec

        if self.consensus.is_leader():
            row = self._renew_here(sid)
        else:
            try:
                row = await self.consensus.call_leader("session_renew", sid, 5.0)
            except RPCError as exc:
                if exc.status == 503:
                    raise NotLeaderError(None) from exc
                raise
        return codec.session_row(row) if row is not None else None

    async def _remote_node_state(self) -> tuple[dict[str, Any], dict[str, Any], bool]:
        from registry.state import codec

        reply = await self.consensus.call_leader("node_state", self.node_name, 10.0)
        services = {}
        checks = {}
        for row in reply.get("services") or []:
            svc = codec.service_row(row)
            services[svc.id] = svc
        for row in reply.get("checks") or []:
            chk = codec.check_row(row)
            checks[chk.check_id] = chk
        return services, checks, bool(reply.get("known"))

    async def leave(self) -> None:
        """Graceful leave (Consul's Agent.Leave): deregister this node from the catalog (a server also leaves
        the Raft configuration), gossip the leave to the pool (the leader deregisters a left member too),
        then shut down."""
        self.leaving = True
        try:
            await self.propose(Deregister(self.node_name))
        except Exception as exc:  # noqa: BLE001
            log.warning("leave: deregistration failed", error=str(exc))
        if self.config.server and not self.config.dev:
            try:
                await self.consensus.remove_server(self.config.node_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("leave: could not leave the Raft configuration", error=str(exc))
        if self.lan is not None:
            await self.lan.leave()
        self.request_shutdown()


def _no_view() -> ClusterView | None:
    return None  # a client agent runs no autopilot


def _persistent_node_id(data_dir: Any, fallback: str) -> str:
    """The node ID lives in <data-dir>/node-id, as Consul keeps it, so it survives restarts."""
    path = data_dir / "node-id"
    try:
        existing = path.read_text().strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    # Created readable by this agent's user only, as Consul creates its data directory (0700): it holds
    # the Raft log, snapshots and the agent's tokens.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(fallback + "\n")
    return fallback


def _same_definition(row: Check, want: Check) -> bool:
    """True when a catalog check row matches a local check in everything but status and output."""
    return row.same_as(
        replace(want, status=row.status, output=row.output, service_name=row.service_name,
                service_tags=row.service_tags)  # fmt: skip
    )
