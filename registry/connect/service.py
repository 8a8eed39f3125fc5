"""The ``Connect`` object an agent owns: CA signer, leaf cache, leader duties, CA health check, HTTPS.

Built in ``Agent.__init__`` (so the FSM knows the Connect command types before any log entry is
replayed) and started in ``Agent.start`` after the HTTP listener (so the HTTPS listener can serve the
same aiohttp app). Its tasks and listeners are handed to the agent, whose ``stop`` ends them in the
documented order.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from ca import provider
from ca.provider import CAConfig, CAState, LeafResult
from registry.config import ConfigError
from registry.connect.leaf import LeafCache, TrustInfo
from registry.connect.manager import CAExpiryCheck, CAManager
from registry.connect.signer import RPC_SIGN, CAServer, SignError
from registry.connect.state import TABLE_CA, StateViews, ca_index, register_commands
from registry.intentions import REASON_DEFAULT_ACL, REASON_DEFAULT_INTENTION_POLICY, IntentionIndex

log = structlog.get_logger("proconsul.connect")

ROOTS_POLL = 0.25  # seconds between looks at the CA table (a dict lookup) for a root change


def utcnow() -> datetime:
    return datetime.now(UTC)


def ca_config_from_agent(connect: dict[str, Any]) -> CAConfig:
    """The CA configuration the cluster bootstraps with: ``connect { ca_provider, ca_config {...} }``
    in the agent config (Consul's keys, snake_case or CamelCase)."""
    body = {"Provider": connect.get("ca_provider") or "consul", "Config": connect.get("ca_config") or {}}
    try:
        return provider.parse_ca_configuration(body)
    except provider.CAConfigError as exc:
        raise ConfigError(f"connect.ca_config: {exc}") from exc


class Connect:
    def __init__(self, agent: Any, *, clock: Callable[[], datetime] = utcnow,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.agent = agent
        self.clock = clock
        cfg = agent.config
        self.enabled = bool(cfg.connect.get("enabled", True))
        self.initial_config = ca_config_from_agent(cfg.connect)
        register_commands(agent.fsm)
        self.views = StateViews()
        self.ca_server = CAServer(lambda: agent.store, self.views, cfg.datacenter, clock=clock)
        self.leaf = LeafCache(
            sign=self.sign,
            trust=lambda: TrustInfo.of(self.ca_state()),
            datacenter=cfg.datacenter,
            clock=clock,
            rng=rng,
            index_floor=lambda: agent.store.index,
        )
        self.manager = CAManager(
            propose=lambda cmd: agent.consensus.propose(cmd),
            is_leader=lambda: agent.consensus.is_leader(),
            ca_state=self.ca_with_index,
            initial_config=self.initial_config,
            clock=clock,
        )
        self.expiry_check = CAExpiryCheck(agent, self.ca_state, clock)
        self.https_addr: tuple[str, int] | None = None
        self._ca_event: asyncio.Event | None = None
        self._chain_rpc()

    # ------------------------------------------------------------------ state views

    def ca_state(self) -> CAState | None:
        return self.views.ca(self.agent.store)

    def ca_with_index(self) -> tuple[CAState | None, int]:
        store = self.agent.store
        return self.views.ca(store), ca_index(store)

    def intentions(self) -> IntentionIndex:
        return self.views.intentions(self.agent.store)

    def default_allow(self) -> tuple[bool, str]:
        """What happens when no intention matches: ``default_intention_policy`` if set, else the ACL
        default policy (allow while ACLs are off)."""
        policy = self.agent.config.default_intention_policy
        if policy:
            return policy == "allow", REASON_DEFAULT_INTENTION_POLICY
        return self.agent.config.acl_default_policy == "allow", REASON_DEFAULT_ACL

    # ------------------------------------------------------------------ signing

    async def sign(self, csr_pem: str, service: str) -> LeafResult:
        """Where this agent's leaf cache gets signatures: the local CA server. Every server holds the
        replicated CA state, so a server signs from its own replica; client agents have no replica
        and would call ``ConnectCA.Sign`` on the leader instead."""
        return await self.ca_server.sign(csr_pem, service)

    def _chain_rpc(self) -> None:
        """Serve ``ConnectCA.Sign`` on the server RPC port, passing every other method on."""
        consensus = self.agent.consensus
        if not hasattr(consensus, "rpc_extension"):
            return  # the single-node log has no RPC port
        previous = consensus.rpc_extension

        async def extension(method: str, args: Any) -> Any:
            from registry.consensus import RPCError  # present whenever an RPC port is

            if method == RPC_SIGN:
                if not consensus.is_leader():
                    raise RPCError("not the leader", 503)
                try:
                    return await self.ca_server.handle_rpc(method, args)
                except SignError as exc:
                    raise RPCError(exc.message, exc.status) from None
            if previous is None:
                raise RPCError(f"unknown rpc method {method!r}", 400)
            return await previous(method, args)

        consensus.rpc_extension = extension

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        agent = self.agent
        loop = asyncio.get_running_loop()
        tasks = agent._tasks
        self._ca_event = asyncio.Event()
        if self.enabled and (agent.config.server or agent.config.dev):
            tasks.append(loop.create_task(self.manager.run(), name="connect-ca-leader"))
            # Bootstrapping now rather than a poll interval later: a dev agent has a CA at once.
            try:
                await self.manager.step()
            except Exception as exc:  # noqa: BLE001 - no leader yet: the leader task retries
                log.debug("connect CA not initialized yet", error=str(exc))
            await self.expiry_check.register()
            tasks.append(loop.create_task(self.expiry_check.run(self._ca_changed), name="connect-ca-expiry"))
        self.leaf.note_active_key()
        tasks.append(loop.create_task(self.leaf.run(), name="connect-leaf-renewer"))
        tasks.append(loop.create_task(self._watch_roots(), name="connect-roots-watch"))
        if agent.config.ports.https >= 0:
            await self._start_https()

    async def _ca_changed(self) -> None:
        """Wait for the next CA state change (seen by ``_watch_roots``)."""
        event = self._ca_event
        assert event is not None
        await event.wait()
        event.clear()

    async def _watch_roots(self) -> None:
        """Tell the leaf cache and the expiry check when the CA state changes.

        A cheap poll of the CA table's index rather than a watch-hub waiter: the hub's waiters are
        the blocking queries in flight, and a permanent background waiter there would blur that."""
        last: tuple[object, int] | None = None
        while True:
            store = self.agent.store
            seen = (store.tables.get(TABLE_CA), ca_index(store))
            if seen != last:
                last = seen
                moved = self.leaf.roots_changed()
                if moved:
                    log.info("CA root changed; renewing leaf certificates with jitter", certificates=moved)
                if self._ca_event is not None:
                    self._ca_event.set()
            await asyncio.sleep(ROOTS_POLL)

    async def _start_https(self) -> None:
        from registry.tls import https_server_context, load_tls_settings

        agent = self.agent
        cfg = agent.config
        try:
            ctx = https_server_context(load_tls_settings(cfg))
        except ConfigError as exc:
            raise OSError(errno.EINVAL, f"Error starting HTTPS listener: {exc}") from exc
        runner = next((lst.runner for lst in agent._listeners if isinstance(getattr(lst, "runner", None),
                                                                            web.AppRunner)), None)  # fmt: skip
        if runner is None:
            from registry.api.http import HTTPListener, build_app

            runner = web.AppRunner(build_app(agent), access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            agent._listeners.append(HTTPListener(runner))
        host, port = cfg.client_addr, cfg.ports.https
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"Error starting HTTPS listener on {host}:{port}: {exc.strerror}") from exc
        # Same runner, same Api: the HTTPS port serves exactly what the HTTP port serves.
        site = web.SockSite(runner, sock, ssl_context=ctx)
        await site.start()
        self.https_addr = sock.getsockname()[:2]
        log.info("HTTPS listener started", address=f"{self.https_addr[0]}:{self.https_addr[1]}")
