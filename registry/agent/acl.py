"""ACL state on an agent: its own tokens, the resolvers behind ``TokenResolver``, and the leader's duties.

* ``AgentTokens``: the agent's ``acl.tokens`` (default, agent, agent_recovery, replication,
  config_file_service_registration), from config, changed by ``PUT /v1/agent/token/<kind>``, and with
  ``acl.enable_token_persistence`` kept in ``<data_dir>/acl-tokens.json`` as Consul keeps it (tokens set
  through the API win over config at the next start, as in Consul).
* ``ServerResolver``: a server resolves a secret from its own replica of the ACL tables, compiling each
  token's rules once and keeping the ``Authorizer`` until the ACL tables change: the FSM's change
  notification carries ``TOPIC_ACL`` and the whole cache is dropped at once, so a deleted token or a
  narrowed policy takes effect with the very write that made it.
* ``ClientResolver``: a client agent keeps no replica. It asks a server (``ACL.ResolveToken``: the token's
  rule sets, already expanded from roles and identities, as parsed rules) and caches the compiled answer;
  it follows the servers' ACL index with a blocking call (``ACL.Index``, as Connect's client follows
  ``ConnectCA.Roots``) and drops its cache when the index moves. Revocation reaches a client within one
  round trip of the commit, where Consul's clients keep a revoked token for up to ``acl.token_ttl``.
  A cached answer fetched before a change it did not see is never kept: answers carry the index they were
  made at and are cached only when not older than the index the client follows.
* ``ACLLeader``: on the leader, Consul's ``initializeACLs`` (built-in policies, anonymous token,
  ``initial_management``) and the reaping of expired tokens through the log.

An expired token resolves as not found at once, on the resolver's clock, whether or not it was reaped.
The agent recovery token resolves to management on this agent only (it is never sent to a server).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from registry.acl.authorizer import Authorizer, compile_rules
from registry.acl.errors import ANONYMOUS_TOKEN_ID, ACLNotFound
from registry.acl.identities import GLOBAL_MANAGEMENT_ID
from registry.acl.objects import ANONYMOUS_SECRET, TokenRow
from registry.acl.resolve import Policy, Role, Token, token_rules
from registry.acl.resolver import TOPIC_ACL
from registry.acl.rules import PolicyRules
from registry.acl.wire import rules_from_wire, rules_to_wire
from registry.commands import ACLInitialize, ACLTokenReap, Command
from registry.config import Config
from registry.consensus import RPCError
from registry.state.acl_table import ACL_INDEX

if TYPE_CHECKING:
    from registry.raft.rpc import RPCRouter
    from registry.state.store import StateStore
    from registry.state.topics import Topic
    from registry.watch import WatchHub

log = structlog.get_logger("proconsul.acl")

RPC_RESOLVE = "ACL.ResolveToken"
RPC_INDEX = "ACL.Index"
INDEX_WAIT = 30.0  # seconds an ACL.Index call may block on the server waiting for a change
REAP_INTERVAL = 2.0  # seconds between the leader's looks for expired tokens
TOKENS_FILE = "acl-tokens.json"

# Agent token kinds, by every name Consul's /v1/agent/token/<kind> accepts, to the persisted key.
TOKEN_KINDS: Mapping[str, str] = {
    "default": "default", "acl_token": "default",
    "agent": "agent", "acl_agent_token": "agent",
    "agent_recovery": "agent_recovery", "agent_master": "agent_recovery", "acl_agent_master_token": "agent_recovery",
    "replication": "replication", "acl_replication_token": "replication",
    "config_file_service_registration": "config_file_service_registration",
}  # fmt: skip


def acl_enabled(cfg: Config) -> bool:
    return bool(cfg.acl.get("enabled"))


# ---------------------------------------------------------------------------------- agent tokens


class AgentTokens:
    """This agent's tokens (Consul's token store, agent/token/store.go)."""

    def __init__(self, config: Config) -> None:
        self._values: dict[str, str] = {}
        self.initial_management = ""
        self._path: Path | None = None
        # Called after any token changes (the DNS interface answers with the default token).
        self.listeners: list[Callable[[], None]] = []
        if config.acl.get("enable_token_persistence") and config.data_dir:
            self._path = Path(config.data_dir) / TOKENS_FILE
        self._from_config(config)

    def _from_config(self, config: Config) -> None:
        tokens = config.acl.get("tokens") or {}
        if not isinstance(tokens, dict):
            tokens = {}
        self._values = {}
        for key in ("default", "agent", "agent_recovery", "replication", "config_file_service_registration"):
            value = tokens.get(key)
            if key == "agent_recovery" and not value:
                value = tokens.get("agent_master")  # Consul's older name
            if isinstance(value, str) and value:
                self._values[key] = value
        im = tokens.get("initial_management") or tokens.get("master")
        self.initial_management = im if isinstance(im, str) else ""
        if self._path is not None:
            self._load()

    def load_config(self, config: Config) -> None:
        """A config reload's tokens (Consul's ``tokens.Load`` on reload): the config's values, under the
        ones set through the API and persisted, which still win; listeners hear of it."""
        before = dict(self._values)
        self._from_config(config)
        if self._values != before:
            log.info("Updated agent's ACL tokens from config", tokens=sorted(self._values))
            for listener in list(self.listeners):
                listener()

    def _load(self) -> None:
        assert self._path is not None
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("could not read persisted ACL tokens", path=str(self._path), error=type(exc).__name__)
            return
        if isinstance(data, dict):
            for key, value in data.items():
                if key in TOKEN_KINDS.values() and isinstance(value, str) and value:
                    self._values[key] = value

    def _persist(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._values, f)
        os.replace(tmp, self._path)

    def get(self, kind: str) -> str:
        return self._values.get(TOKEN_KINDS.get(kind, kind), "")

    def set(self, kind: str, secret: str) -> bool:
        """Set one token (an empty secret clears it); False for a kind Consul does not know."""
        key = TOKEN_KINDS.get(kind)
        if key is None:
            return False
        if secret:
            self._values[key] = secret
        else:
            self._values.pop(key, None)
        self._persist()
        log.info("Updated agent's ACL token", token=kind)
        for listener in list(self.listeners):
            listener()
        return True


# ------------------------------------------------------------------------------------ resolvers


class _Base:
    """What both resolvers share: config, the agent's tokens, the clock, the open authorizer."""

    def __init__(self, config: Config, tokens: AgentTokens, clock_ns: Callable[[], int]) -> None:
        self._enabled = acl_enabled(config)
        self._default_policy = str(config.acl.get("default_policy", "allow"))
        self._default_allow = self._default_policy == "allow"
        self.tokens = tokens
        self.clock_ns = clock_ns
        self._open = Authorizer.management()
        self._recovery = Authorizer.management("agent-recovery")
        # secret -> (authorizer or None for "not found", expiration time in ns or None)
        self._cache: dict[str, tuple[Authorizer | None, int | None]] = {}
        self.hits = 0
        self.misses = 0
        # Called whenever what a token resolves to may have changed (the cache was dropped): holders of a
        # resolved authorizer (the DNS interface's) resolve again.
        self.listeners: list[Callable[[], None]] = []

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def default_policy(self) -> str:
        return self._default_policy if self._enabled else "allow"

    def default_secret(self) -> str:
        return self.tokens.get("default")

    def clear(self) -> None:
        self._cache.clear()
        for listener in list(self.listeners):
            listener()

    def _cached(self, secret: str) -> Authorizer | None:
        """The cached decision, raising ACLNotFound for a cached miss or an expired token; None: not cached."""
        hit = self._cache.get(secret)
        if hit is None:
            return None
        authz, expires = hit
        if authz is None or (expires is not None and expires <= self.clock_ns()):
            raise ACLNotFound()
        self.hits += 1
        return authz

    def _local(self, secret: str) -> Authorizer | None:
        if not self._enabled:
            return self._open
        recovery = self.tokens.get("agent_recovery")
        if recovery and secret == recovery:
            return self._recovery
        return None


def _policy(row: Any) -> Policy:
    return Policy(row.id, row.name, row.parsed, row.datacenters)


def _role(row: Any) -> Role:
    return Role(row.id, row.name, row.policy_ids(), row.service_identities, row.node_identities,
                row.templated_policies)  # fmt: skip


def _token(row: TokenRow) -> Token:
    return Token(row.accessor_id, row.policy_ids(), row.role_ids(), row.service_identities, row.node_identities,
                 row.templated_policies)  # fmt: skip


def rule_sets_of(store: StateStore, row: TokenRow, datacenter: str) -> list[PolicyRules]:
    """Every rule set that applies to a stored token here: its policies, its roles' and identities'."""
    role_rows = [r for rid in row.role_ids() if (r := store.acl_roles.get(rid)) is not None]
    pids = set(row.policy_ids())
    for r in role_rows:
        pids.update(r.policy_ids())
    policies = {pid: _policy(p) for pid in pids if (p := store.acl_policies.get(pid)) is not None}
    roles = {r.id: _role(r) for r in role_rows}
    return list(token_rules(_token(row), policies=policies, roles=roles, datacenter=datacenter))


def lookup_token(store: StateStore, secret: str, now_ns: int) -> TokenRow | None:
    """The live token for ``secret`` ("" is the anonymous token); None when unknown or expired."""
    row = store.acl_token_by_secret(secret or ANONYMOUS_SECRET)
    if row is None or row.expired(now_ns):
        return None
    return row


class ServerResolver(_Base):
    """Resolution from this server's replica, cached until the ACL tables change."""

    def __init__(self, *, config: Config, tokens: AgentTokens, store: Callable[[], StateStore], hub: WatchHub,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:  # fmt: skip
        super().__init__(config, tokens, clock_ns)
        self._store = store
        self.datacenter = config.datacenter
        self._hub = hub
        hub.listeners.append(self._changed)

    def _changed(self, topics: Iterable[Topic] | None, _kv_keys: Iterable[str] | None) -> None:
        # Called by the FSM's change notification for every applied command: one set probe.
        if topics is None or TOPIC_ACL in topics:
            self.clear()

    def resolve_now(self, secret: str) -> Authorizer:
        local = self._local(secret)
        if local is not None:
            return local
        cached = self._cached(secret)
        if cached is not None:
            return cached
        self.misses += 1
        store = self._store()
        row = lookup_token(store, secret, self.clock_ns())
        if row is None:
            if not secret and store.acl_token_by_secret(ANONYMOUS_SECRET) is None:
                # ACLs on but not initialized yet: the anonymous token has no rules of its own.
                authz = compile_rules((), default_allow=self._default_allow, accessor_id=ANONYMOUS_TOKEN_ID)
                self._cache[secret] = (authz, None)
                return authz
            self._cache[secret] = (None, None)
            raise ACLNotFound()
        authz = compile_rules(rule_sets_of(store, row, self.datacenter), default_allow=self._default_allow,
                              accessor_id=row.accessor_id)  # fmt: skip
        self._cache[secret] = (authz, row.expiration_time_ns)
        return authz

    async def resolve(self, secret: str) -> Authorizer:
        return self.resolve_now(secret)

    # ------------------------------------------------------------------ the servers' RPC for client agents

    def register_rpc(self, router: RPCRouter) -> None:
        router.register(RPC_RESOLVE, self._rpc_resolve, leader=True)
        router.register(RPC_INDEX, self._rpc_index, leader=True)

    async def _rpc_resolve(self, args: Any) -> Any:
        secret = args.get("SecretID") if isinstance(args, dict) else None
        if not isinstance(secret, str):
            raise RPCError("ACL.ResolveToken needs {\"SecretID\": string}", 400)
        if not self._enabled:
            raise RPCError("ACL support disabled", 401)
        store = self._store()
        index = store.acl_index()
        row = lookup_token(store, secret, self.clock_ns())
        if row is None:
            return {"Found": False, "Index": index}
        rules = [rules_to_wire(r) for r in rule_sets_of(store, row, self.datacenter)]
        return {"Found": True, "Index": index, "AccessorID": row.accessor_id, "Rules": rules,
                "ExpirationTime": row.expiration_time_ns}  # fmt: skip

    async def _rpc_index(self, args: Any) -> Any:
        args = args if isinstance(args, dict) else {}
        min_index, wait = args.get("MinIndex", 0), args.get("Wait", 0)
        if not isinstance(min_index, int) or not isinstance(wait, int | float):
            raise RPCError("ACL.Index needs {\"MinIndex\": int, \"Wait\": seconds}", 400)
        return {"Index": await self.wait_index(min_index, float(wait))}

    async def wait_index(self, min_index: int, wait: float) -> int:
        """The ACL index, waiting up to ``wait`` seconds for it to pass ``min_index``."""
        hub = self._hub
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait, 600.0))
        while True:
            fut = hub.watch((TOPIC_ACL,))
            try:
                index = self._store().acl_index(ACL_INDEX)
                remaining = deadline - loop.time()
                if index > min_index or remaining <= 0:
                    return index
                try:
                    async with asyncio.timeout(remaining):
                        await fut
                except TimeoutError:
                    pass
            finally:
                hub.unwatch((TOPIC_ACL,), fut)


CallLeader = Callable[..., Awaitable[Any]]


class ClientResolver(_Base):
    """Resolution by RPC to the servers, cached until the servers' ACL index moves."""

    def __init__(self, *, config: Config, tokens: AgentTokens, call_leader: CallLeader,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:  # fmt: skip
        super().__init__(config, tokens, clock_ns)
        self._call = call_leader
        self.index = 0
        self._inflight: dict[str, asyncio.Future[tuple[Authorizer | None, int | None]]] = {}

    def _advance(self, index: int) -> None:
        if index > self.index:
            self.index = index
            self.clear()

    async def _fetch(self, secret: str) -> tuple[Authorizer | None, int | None]:
        for _ in range(3):
            reply = await self._call(RPC_RESOLVE, {"SecretID": secret}, timeout=10)
            if not isinstance(reply, dict) or not isinstance(reply.get("Index"), int):
                raise RPCError("malformed ACL.ResolveToken reply", 500)
            index = reply["Index"]
            if index < self.index:
                continue  # made before a change this agent has already seen: ask again
            self._advance(index)
            if not reply.get("Found"):
                return None, None
            try:
                rule_sets = [rules_from_wire(r) for r in reply.get("Rules") or []]
            except ValueError as exc:
                raise RPCError(f"malformed ACL.ResolveToken reply: {exc}", 500) from None
            accessor = reply.get("AccessorID")
            expires = reply.get("ExpirationTime")
            authz = compile_rules(rule_sets, default_allow=self._default_allow,
                                  accessor_id=accessor if isinstance(accessor, str) else "")  # fmt: skip
            return authz, expires if isinstance(expires, int) else None
        raise RPCError("ACL state kept changing while resolving a token; try again", 500)

    async def resolve(self, secret: str) -> Authorizer:
        local = self._local(secret)
        if local is not None:
            return local
        cached = self._cached(secret)
        if cached is not None:
            return cached
        self.misses += 1
        # One RPC per secret at a time, however many requests carry it.
        fut = self._inflight.get(secret)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[secret] = fut
            index_before = self.index
            try:
                result = await self._fetch(secret)
                if self.index >= index_before:
                    self._cache[secret] = result
                fut.set_result(result)
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it
                raise
            finally:
                del self._inflight[secret]
        authz, expires = await asyncio.shield(fut)
        if authz is None or (expires is not None and expires <= self.clock_ns()):
            raise ACLNotFound()
        return authz

    async def follow(self) -> None:
        """Follow the servers' ACL index with blocking calls; every move drops the cache."""
        delay = 0.2
        while True:
            try:
                reply = await self._call(RPC_INDEX, {"MinIndex": self.index, "Wait": INDEX_WAIT},
                                         timeout=INDEX_WAIT + 10)  # fmt: skip
                index = reply.get("Index") if isinstance(reply, dict) else None
                if not isinstance(index, int):
                    raise RPCError("malformed ACL.Index reply", 500)
                if index < self.index:
                    # A restored snapshot or a new cluster: start over from what the servers have.
                    self.index = index
                    self.clear()
                else:
                    self._advance(index)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no leader yet, a server restarting
                log.debug("ACL index follow failed", error=str(exc))
                # Without the servers' index, cached answers may be stale: forget them.
                self._cache.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


# ---------------------------------------------------------------------------------- leader duties


class ACLLeader:
    """On the leader: initialize the ACL tables once per leadership, then reap expired tokens."""

    def __init__(self, *, is_leader: Callable[[], bool], store: Callable[[], StateStore],
                 propose: Callable[[Command], Awaitable[Any]], tokens: AgentTokens, new_uuid: Callable[[], str],
                 clock_ns: Callable[[], int] = time.time_ns) -> None:  # fmt: skip
        self._is_leader = is_leader
        self._store = store
        self._propose = propose
        self._tokens = tokens
        self._uuid = new_uuid
        self.clock_ns = clock_ns
        self.initialized = False

    def _needs_init(self) -> bool:
        store = self._store()
        if GLOBAL_MANAGEMENT_ID not in store.acl_policies or ANONYMOUS_TOKEN_ID not in store.acl_tokens:
            return True
        im = self._tokens.initial_management
        return bool(im) and store.acl_token_by_secret(im) is None

    async def step(self) -> None:
        if not self._is_leader():
            self.initialized = False
            return
        if not self.initialized:
            if self._needs_init():
                im = self._tokens.initial_management
                token = TokenRow(self._uuid(), im) if im else None
                await self._propose(ACLInitialize(self.clock_ns(), token))
                log.info("ACL tables initialized")
            self.initialized = True
        now = self.clock_ns()
        if any(t.expired(now) for t in self._store().acl_tokens.values()):
            reaped = await self._propose(ACLTokenReap(now))
            log.info("reaped expired ACL tokens", count=reaped)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - leadership lost mid-write: the next step retries
                log.debug("ACL leader step failed", error=str(exc))
                self.initialized = False
            await asyncio.sleep(REAP_INTERVAL if self.initialized else 0.5)
