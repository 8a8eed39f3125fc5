"""The ``Connect`` object an agent owns: CA signer, leaf cache, leader duties, CA health check.

Built in ``Agent.__init__`` (so the FSM knows the Connect command types before any log entry is
replayed) from narrow parts -- the config, the FSM, a store reader, the consensus, the watch hub, the
agent's local checks and a task spawner -- and started in ``Agent.start``. Its background tasks go through
the spawner, so the agent's ``stop`` ends them in the documented order. The HTTPS port, which serves the
same API as the HTTP port, is the agent's listener, not Connect's.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ca import provider
from ca.provider import CAConfig, CAState, LeafResult
from ca.spiffe import InvalidSpiffeURI, ServiceIdentity, parse_uri
from registry.acl.errors import ACLError
from registry.config import Config, ConfigError
from registry.connect.leaf import LeafCache, TrustInfo
from registry.connect.manager import CAExpiryCheck, CAManager
from registry.connect.remote import RPC_AUTHORIZE, RPC_ROOTS, RemoteCA
from registry.connect.signer import RPC_SIGN, CAServer, SignError
from registry.connect.state import TABLE_CA, TOPIC_CA, StateViews, ca_index, register_commands
from registry.consensus import RPCError
from registry.intentions import (
    REASON_DEFAULT_ACL,
    REASON_DEFAULT_INTENTION_POLICY,
    IntentionIndex,
    decide,
)
from registry.raft.rpc import Caller, RPCRouter

if TYPE_CHECKING:
    from registry.acl.resolver import TokenResolver
    from registry.commands import Command
    from registry.consensus import Consensus
    from registry.fsm import FSM
    from registry.registration import CheckSpec
    from registry.state.store import StateStore
    from registry.watch import WatchHub

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


def validate_config(cfg: Config) -> None:
    """Refuse, before anything starts, a ``connect`` block that cannot work (ConfigError): Consul checks
    ``connect.ca_config`` when it builds the runtime config, not when the CA first needs it."""
    ca_config_from_agent(cfg.connect)


class LocalChecks(Protocol):
    """The agent's local check machinery, where the CA expiry check lives like any other node check."""

    async def add_check(self, spec: CheckSpec) -> None: ...

    def set_check_status(self, cid: str, status: str, output: str) -> None: ...

    async def sync_check(self, cid: str) -> None: ...


Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class Connect:
    def __init__(
        self,
        *,
        config: Config,
        propose: Callable[[Command], Awaitable[Any]],
        fsm: FSM,
        store: Callable[[], StateStore],
        consensus: Consensus,
        hub: WatchHub,
        rpc: RPCRouter,
        checks: LocalChecks,
        spawn: Spawn,
        is_client: bool,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        acl: TokenResolver | None = None,
        agent_token: Callable[[], str] = lambda: "",
    ) -> None:
        self.config = config
        # The server checks the token a ConnectCA.Sign call carries; a client agent sends its agent token.
        self.acl = acl
        self._store = store
        self.consensus = consensus
        self.hub = hub
        self._spawn = spawn
        self.clock = clock
        cfg = config
        self.enabled = bool(cfg.connect.get("enabled", True))
        self.initial_config = ca_config_from_agent(cfg.connect)
        register_commands(fsm)
        self.views = StateViews()
        self.ca_server = CAServer(store, self.views, cfg.datacenter, clock=clock)
        self._trust: tuple[CAState | None, TrustInfo | None] = (None, None)
        # A client agent has no replica of the CA: roots, signatures and authorize decisions come
        # from the servers over RPC.
        self.remote: RemoteCA | None = None
        if is_client:
            self.remote = RemoteCA(consensus.call_leader, on_change=lambda: self.leaf.roots_changed(), token=agent_token)
        self.leaf = LeafCache(
            sign=self.sign,
            trust=self.remote.trust if self.remote is not None else self._local_trust,
            datacenter=cfg.datacenter,
            clock=clock,
            rng=rng,
            index_floor=lambda: store().index,
        )
        self.manager = CAManager(
            propose=propose,
            is_leader=lambda: consensus.is_leader(),
            ca_state=self.ca_with_index,
            initial_config=self.initial_config,
            clock=clock,
        )
        self.expiry_check = CAExpiryCheck(checks, self.ca_state, clock)
        self._ca_event: asyncio.Event | None = None
        self._register_rpc(rpc)

    # ------------------------------------------------------------------ state views

    def _local_trust(self) -> TrustInfo | None:
        """The replicated CA's trust domain and signing key, remade only when the CA state changes."""
        state = self.ca_state()
        if state is not self._trust[0]:
            self._trust = (state, TrustInfo.of(state))
        return self._trust[1]

    def ca_state(self) -> CAState | None:
        return self.views.ca(self._store())

    def ca_with_index(self) -> tuple[CAState | None, int]:
        store = self._store()
        return self.views.ca(store), ca_index(store)

    def intentions(self) -> IntentionIndex:
        return self.views.intentions(self._store())

    def default_allow(self) -> tuple[bool, str]:
        """What happens when no intention matches: ``default_intention_policy`` if set, else the ACL
        default policy (allow while ACLs are off)."""
        policy = self.config.default_intention_policy
        if policy:
            return policy == "allow", REASON_DEFAULT_INTENTION_POLICY
        return self.config.acl_default_policy == "allow", REASON_DEFAULT_ACL

    # ------------------------------------------------------------------ signing

    async def sign(self, csr_pem: str, service: str) -> LeafResult:
        """Where this agent's leaf cache gets signatures. Every server holds the replicated CA state
        and signs from its own replica; a client agent has none and calls ``ConnectCA.Sign`` on the
        leader."""
        if self.remote is not None:
            return await self.remote.sign(csr_pem, service)
        return await self.ca_server.sign(csr_pem, service)

    async def authorize(self, target: Any, uri: Any, token: str = "") -> tuple[int, Any]:
        """POST /v1/agent/connect/authorize as (HTTP status, body): a JSON decision, or error text.

        The certificate URI is parsed strictly: anything that is not the canonical SPIFFE ID of a
        service is refused with Consul's words, and a well-formed ID from another trust domain is
        denied (Consul leaves that to the TLS handshake; we refuse it here too, so a caller that
        forgot to pin the trust bundle cannot turn a foreign certificate into an allow)."""
        if not isinstance(target, str) or not isinstance(uri, str):
            return 400, "Request decode failed: Target and ClientCertURI must be strings"
        if not target:
            return 400, "Target service must be specified"
        try:
            identity = parse_uri(uri)
        except InvalidSpiffeURI:
            return 400, "ClientCertURI not a valid Connect identifier"
        if not isinstance(identity, ServiceIdentity):
            return 400, "ClientCertURI not a valid Service identifier"
        if self.remote is not None:
            return await self.remote.authorize(target, uri, token)
        state = self.ca_state()
        if state is None:
            return 200, {"Authorized": False, "Reason": "CA has not finished initializing"}
        if identity.trust_domain != state.trust_domain:
            return 200, {
                "Authorized": False,
                "Reason": f"Client certificate is from trust domain {identity.trust_domain!r}, "
                          f"not this cluster's {state.trust_domain!r}",
            }  # fmt: skip
        allow, reason = self.default_allow()
        decision = decide(self.intentions(), identity, target, allow, default_reason=reason)
        return 200, {"Authorized": decision.allowed, "Reason": decision.reason}

    async def roots_at(self, min_index: int, wait: float) -> tuple[dict[str, Any], int]:
        """The roots JSON and its index, waiting up to ``wait`` seconds for an index above
        ``min_index`` (0: answer at once). Serves ConnectCA.Roots for client agents."""
        hub = self.hub
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait, 600.0))
        while True:
            fut = hub.watch((TOPIC_CA,))
            try:
                store = self._store()
                index, state = ca_index(store), self.views.ca(store)
                remaining = deadline - loop.time()
                if not min_index or index > min_index or remaining <= 0:
                    body = provider.roots_response(state) if state is not None else {
                        "ActiveRootID": "", "TrustDomain": "", "Roots": []}  # fmt: skip
                    return body, index
                try:
                    async with asyncio.timeout(remaining):
                        await fut
                except TimeoutError:
                    pass
            finally:
                hub.unwatch((TOPIC_CA,), fut)

    def _register_rpc(self, router: RPCRouter) -> None:
        """Serve ConnectCA.Sign, .Roots and .Authorize on the server RPC port (Consul's ConnectCA
        endpoint), for client agents, which hold no replica of the CA. Only the leader answers."""
        router.register(RPC_SIGN, self._rpc_sign, leader=True)
        router.register(RPC_ROOTS, self._rpc_roots, leader=True)
        router.register(RPC_AUTHORIZE, self._rpc_authorize, with_caller=True, leader=True)

    def _require_leader(self) -> None:
        if not self.consensus.is_leader():
            raise RPCError("not the leader", 503)

    async def _rpc_sign(self, args: Any) -> Any:
        self._require_leader()
        await self._check_sign_token(args)
        try:
            return await self.ca_server.handle_rpc(RPC_SIGN, args)
        except SignError as exc:
            raise RPCError(exc.message, exc.status) from None

    async def _check_sign_token(self, args: Any) -> None:
        """Consul's ConnectCA.Sign: the caller's token needs service:write on the service the CSR is for
        (the CSR's one SPIFFE URI must name that same service, which the signer checks: CVE-2022-40716)."""
        acl = self.acl
        if acl is None or not acl.enabled:
            return
        token = args.get("Token", "") if isinstance(args, dict) else ""
        service = args.get("Service") if isinstance(args, dict) else None
        if not isinstance(token, str) or not isinstance(service, str):
            raise RPCError("ConnectCA.Sign needs a string Token and Service", 400)
        try:
            authz = await acl.resolve(token or acl.default_secret())
            authz.check("service_write", service)
        except ACLError as exc:
            raise RPCError(str(exc), 403) from None

    async def _check_authorize_token(self, args: dict[str, Any], caller: Caller) -> None:
        """Consul's /v1/agent/connect/authorize needs service:write on the target: a client agent's call
        carries its HTTP caller's token (``Token``), checked here as well as on the agent. A server's call
        is trusted by its role."""
        acl = self.acl
        if acl is None or not acl.enabled or caller.server:
            return
        token = args.get("Token", caller.token)
        target = args.get("Target")
        if not isinstance(token, str) or not isinstance(target, str):
            raise RPCError("ConnectCA.Authorize needs a string Token and Target", 400)
        try:
            (await acl.resolve(token)).check("service_write", target)
        except ACLError as exc:
            raise RPCError(str(exc), 403) from None

    async def _rpc_roots(self, args: Any) -> Any:
        self._require_leader()
        args = args if isinstance(args, dict) else {}
        min_index, wait = args.get("MinIndex", 0), args.get("Wait", 0)
        if not isinstance(min_index, int) or not isinstance(wait, int | float):
            raise RPCError("ConnectCA.Roots needs {\"MinIndex\": int, \"Wait\": seconds}", 400)
        roots, index = await self.roots_at(min_index, float(wait))
        return {"Roots": roots, "Index": index}

    async def _rpc_authorize(self, args: Any, caller: Caller) -> Any:
        self._require_leader()
        args = args if isinstance(args, dict) else {}
        await self._check_authorize_token(args, caller)
        status, body = await self.authorize(args.get("Target"), args.get("ClientCertURI"))
        if status != 200:
            raise RPCError(str(body), status)
        return body

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        spawn = self._spawn
        self._ca_event = asyncio.Event()
        if self.enabled and self.remote is not None:
            spawn(self.remote.run(), "connect-roots-follow")
        if self.enabled and (self.config.server or self.config.dev):
            spawn(self.manager.run(), "connect-ca-leader")
            # Bootstrapping now rather than a poll interval later: a dev agent has a CA at once.
            try:
                await self.manager.step()
            except Exception as exc:  # noqa: BLE001 - no leader yet: the leader task retries
                log.debug("connect CA not initialized yet", error=str(exc))
            await self.expiry_check.register()
            spawn(self.expiry_check.run(self._ca_changed), "connect-ca-expiry")
        self.leaf.note_active_key()
        spawn(self.leaf.run(), "connect-leaf-renewer")
        spawn(self._watch_roots(), "connect-roots-watch")

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
            store = self._store()
            seen = (store.tables.get(TABLE_CA), ca_index(store))
            if seen != last:
                last = seen
                moved = self.leaf.roots_changed()
                if moved:
                    log.info("CA root changed; renewing leaf certificates with jitter", certificates=moved)
                if self._ca_event is not None:
                    self._ca_event.set()
            await asyncio.sleep(ROOTS_POLL)

