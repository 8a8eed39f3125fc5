"""The discovery chain compiler: config entries in, a compiled chain out. Pure (no IO, no clock).

This is what a sidecar consumes to route a request to an upstream: Consul's
agent/consul/discoverychain/compile.go, with the same graph, names and errors, in Python values.

A chain for service ``S`` is a graph of nodes keyed ``"<type>:<name>"``:

- ``router``   (at most one, ``S``'s own ``service-router``, only for an HTTP-like protocol): an ordered
               list of routes (first match wins), each pointing at a splitter or resolver node, ending with
               the implicit catch-all ``PathPrefix "/"`` route to ``S`` itself;
- ``splitter`` (``service-splitter`` entries): weighted splits (summing to 100) to further nodes. A split to
               another service that has its own splitter is flattened into this one (weights multiplied),
               so a splitter never points at a splitter;
- ``resolver`` (one per target): the leaf, naming a ``Target`` (service, subset, namespace, partition,
               datacenter) with its ``ConnectTimeout``, and the failover targets to use when the target has
               no healthy instance. Redirects and default subsets are applied while the chain is built, so
               they never appear as nodes.

``Targets`` maps each target ID (``[subset.]service.namespace.partition.datacenter``) to what a proxy needs
to find and dial its instances: the subset's bexpr ``Filter`` and ``OnlyPassing``, the connect timeout,
the SNI it presents (``[subset.]service.namespace.datacenter.internal.<trust domain>``).

Walk a chain from ``start_node``; ``CompiledChain.to_api()`` is Consul's JSON (``GET /v1/discovery-chain``),
and ``chain_from_api`` reads that JSON back into the same values (for a sidecar that follows the chain over
HTTP).

``read_entries`` gathers the entries one chain needs through a lookup function (Consul's
``readDiscoveryChainConfigEntriesTxn``), and ``validate_write`` re-compiles every chain a proposed write
touches, refusing a write that would leave any of them uncompilable (a splitter on a tcp service, a
missing subset, a redirect loop), as Consul's state store does before it writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from registry.configentry import (
    DEFAULT_PROTOCOL,
    PROXY_DEFAULTS,
    PROXY_GLOBAL,
    SERVICE_DEFAULTS,
    SERVICE_RESOLVER,
    SERVICE_ROUTER,
    SERVICE_SPLITTER,
    is_http_like,
    normalize_weight,
    proxy_protocol,
    related_services,
)
from registry.gocompat import format_duration_ns, parse_duration_ns

__all__ = [
    "ChainEntries",
    "ChainError",
    "CompiledChain",
    "Failover",
    "Node",
    "Overrides",
    "Resolver",
    "Route",
    "Split",
    "Target",
    "chain_from_api",
    "compile_chain",
    "read_entries",
    "validate_write",
]

DEFAULT_NS = "default"
DEFAULT_PARTITION = "default"
DEFAULT_CONNECT_TIMEOUT_NS = 5_000_000_000
NODE_ROUTER = "router"
NODE_SPLITTER = "splitter"
NODE_RESOLVER = "resolver"
MESH_GATEWAY_MODES = ("", "none", "local", "remote")
# Consul compiles chains for write-time validation in an arbitrary datacenter and trust domain: they
# cannot change whether a graph compiles.
_VALIDATION_DC = "dc1"
_VALIDATION_TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


class ChainError(ValueError):
    """Consul's ConfigEntryGraphError: the entries do not form a chain that compiles."""


Entry = Mapping[str, Any]
Lookup = Callable[[str, str], Entry | None]  # (kind, name) -> the stored entry, or None


# ================================================================================= the compiled chain


@dataclass(frozen=True, slots=True)
class Subset:
    """A resolver subset: which instances of the service (a bexpr ``filter`` over health entries) and
    whether only passing ones count (else passing and warning)."""

    filter: str = ""
    only_passing: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """One place instances come from. ``id`` is the key in ``CompiledChain.targets``."""

    id: str
    service: str
    service_subset: str
    namespace: str
    partition: str
    datacenter: str
    subset: Subset
    connect_timeout_ns: int
    sni: str
    name: str
    mesh_gateway_mode: str = ""

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.connect_timeout_ns:
            out["ConnectTimeout"] = format_duration_ns(self.connect_timeout_ns)
        out["ID"] = self.id
        out["Service"] = self.service
        if self.service_subset:
            out["ServiceSubset"] = self.service_subset
        out["Namespace"] = self.namespace
        out["Partition"] = self.partition
        out["Datacenter"] = self.datacenter
        out["MeshGateway"] = {"Mode": self.mesh_gateway_mode} if self.mesh_gateway_mode else {}
        subset: dict[str, Any] = {}
        if self.subset.filter:
            subset["Filter"] = self.subset.filter
        if self.subset.only_passing:
            subset["OnlyPassing"] = True
        out["Subset"] = subset
        out["TransparentProxy"] = {}
        out["SNI"] = self.sni
        out["Name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Failover:
    """Where a resolver's traffic goes when its target has no healthy instance: ``targets`` in order."""

    targets: tuple[str, ...]
    policy: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Resolver:
    target: str
    connect_timeout_ns: int
    request_timeout_ns: int = 0
    default: bool = False
    failover: Failover | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A router's route: ``definition`` is the service-router's route (Match, Destination) as stored."""

    definition: Mapping[str, Any]
    next_node: str


@dataclass(frozen=True, slots=True)
class Split:
    """A splitter's leg: ``weight`` (percent, 0.01 steps) is the compiled weight, after flattening."""

    definition: Mapping[str, Any]
    weight: float
    next_node: str


@dataclass(frozen=True, slots=True)
class Node:
    type: str  # router | splitter | resolver
    name: str
    routes: tuple[Route, ...] = ()
    splits: tuple[Split, ...] = ()
    resolver: Resolver | None = None
    load_balancer: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.type}:{self.name}"

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type, "Name": self.name}
        if self.routes:
            out["Routes"] = [{"Definition": _plain(r.definition), "NextNode": r.next_node} for r in self.routes]
        if self.splits:
            out["Splits"] = [{"Definition": _plain(s.definition), "Weight": s.weight, "NextNode": s.next_node}
                             for s in self.splits]  # fmt: skip
        if self.resolver is not None:
            r = self.resolver
            res: dict[str, Any] = {}
            if r.connect_timeout_ns:
                res["ConnectTimeout"] = format_duration_ns(r.connect_timeout_ns)
            if r.default:
                res["Default"] = True
            if r.request_timeout_ns:
                res["RequestTimeout"] = r.request_timeout_ns
            res["Target"] = r.target
            if r.failover is not None:
                fo: dict[str, Any] = {"Targets": list(r.failover.targets)}
                if r.failover.policy:
                    fo["Policy"] = _plain(r.failover.policy)
                res["Failover"] = fo
            out["Resolver"] = res
        if self.load_balancer is not None:
            out["LoadBalancer"] = _plain(self.load_balancer)
        return out


@dataclass(frozen=True, slots=True)
class CompiledChain:
    """Consul's CompiledDiscoveryChain. ``default``: no routing, splitting or custom resolution applies
    (what a proxy did before discovery chains); ``protocol``: the one protocol of every service in it."""

    service_name: str
    namespace: str
    partition: str
    datacenter: str
    protocol: str
    start_node: str
    nodes: Mapping[str, Node]
    targets: Mapping[str, Target]
    default: bool = False
    customization_hash: str = ""
    service_meta: Mapping[str, str] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ServiceName": self.service_name,
            "Namespace": self.namespace,
            "Partition": self.partition,
            "Datacenter": self.datacenter,
        }
        if self.customization_hash:
            out["CustomizationHash"] = self.customization_hash
        if self.default:
            out["Default"] = True
        out["Protocol"] = self.protocol
        if self.service_meta:
            out["ServiceMeta"] = dict(self.service_meta)
        out["StartNode"] = self.start_node
        out["Nodes"] = {k: self.nodes[k].to_api() for k in sorted(self.nodes)}
        out["Targets"] = {k: self.targets[k].to_api() for k in sorted(self.targets)}
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


# ================================================================================= inputs


@dataclass(frozen=True, slots=True)
class ChainEntries:
    """The entries one chain is compiled from, by service name (Consul's DiscoveryChainSet)."""

    routers: Mapping[str, Entry] = field(default_factory=dict)
    splitters: Mapping[str, Entry] = field(default_factory=dict)
    resolvers: Mapping[str, Entry] = field(default_factory=dict)
    services: Mapping[str, Entry] = field(default_factory=dict)  # service-defaults
    proxy_defaults: Entry | None = None

    def is_chain_empty(self) -> bool:
        return not self.routers and not self.splitters and not self.resolvers


@dataclass(frozen=True, slots=True)
class Overrides:
    """The POST body of /v1/discovery-chain: protocol, connect timeout and mesh gateway mode to impose."""

    protocol: str = ""
    connect_timeout_ns: int = 0
    mesh_gateway_mode: str = ""


def read_entries(lookup: Lookup, service: str) -> ChainEntries:
    """Collect the entries the chain of ``service`` may use, following routers, splitters and resolvers
    to every service they name (Consul's readDiscoveryChainConfigEntriesTxn): proxy-defaults ``global``,
    ``service``'s router, the splitters and resolvers reachable from it, and each visited service's
    service-defaults."""
    routers: dict[str, Entry] = {}
    splitters: dict[str, Entry] = {}
    resolvers: dict[str, Entry] = {}
    services: dict[str, Entry] = {}
    proxy = lookup(PROXY_DEFAULTS, PROXY_GLOBAL)
    todo_defaults = {service}
    todo_splitters: list[str] = []
    router = lookup(SERVICE_ROUTER, service)
    if router is not None:
        routers[service] = router
        todo_splitters.extend([service, *related_services(router)])
    else:
        todo_splitters.append(service)
    seen_split: set[str] = set()
    todo_resolvers: list[str] = []
    while todo_splitters:
        name = todo_splitters.pop()
        if name in seen_split:
            continue
        seen_split.add(name)
        todo_defaults.add(name)
        splitter = lookup(SERVICE_SPLITTER, name)
        todo_resolvers.append(name)
        if splitter is not None:
            splitters[name] = splitter
            todo_splitters.extend(related_services(splitter))
    seen_res: set[str] = set()
    while todo_resolvers:
        name = todo_resolvers.pop()
        if name in seen_res:
            continue
        seen_res.add(name)
        todo_defaults.add(name)
        resolver = lookup(SERVICE_RESOLVER, name)
        if resolver is not None:
            resolvers[name] = resolver
            todo_resolvers.extend(related_services(resolver))
    for name in todo_defaults:
        sd = lookup(SERVICE_DEFAULTS, name)
        if sd is not None:
            services[name] = sd
    return ChainEntries(routers, splitters, resolvers, services, proxy)


# ================================================================================= compiling


@dataclass(slots=True)
class _Target:
    service: str
    service_subset: str
    namespace: str
    partition: str
    datacenter: str
    id: str = ""
    subset: Subset = field(default_factory=Subset)
    connect_timeout_ns: int = 0
    sni: str = ""
    name: str = ""
    mesh_gateway_mode: str = ""

    def opts(self) -> dict[str, str]:
        return {"Service": self.service, "ServiceSubset": self.service_subset, "Namespace": self.namespace,
                "Partition": self.partition, "Datacenter": self.datacenter}  # fmt: skip


@dataclass(slots=True)
class _Node:
    type: str
    name: str
    routes: list[list[Any]] = field(default_factory=list)  # [definition, next]
    splits: list[list[Any]] = field(default_factory=list)  # [definition, weight, next]
    resolver: Resolver | None = None
    load_balancer: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.type}:{self.name}"


def _sid(name: str) -> str:
    # Consul's serviceIDString: "<name>.<namespace>.<partition>".
    return f"{name}.{DEFAULT_NS}.{DEFAULT_PARTITION}"


def _target_id(o: Mapping[str, str]) -> str:
    base = f"{o['Service']}.{o['Namespace']}.{o['Partition']}.{o['Datacenter']}"
    return f"{o['ServiceSubset']}.{base}" if o["ServiceSubset"] else base


def _sni(t: _Target, trust_domain: str) -> str:
    # Consul's ServiceSNI in the default partition.
    parts = [t.service, t.namespace or DEFAULT_NS, t.datacenter, "internal", trust_domain]
    return ".".join([t.service_subset, *parts] if t.service_subset else parts)


def _dur(value: Any) -> int:
    if not value:
        return 0
    return int(value) if isinstance(value, int) else parse_duration_ns(str(value))


class _Compiler:
    def __init__(self, service: str, datacenter: str, trust_domain: str, entries: ChainEntries,
                 overrides: Overrides) -> None:  # fmt: skip
        self.service = service
        self.dc = datacenter
        self.trust_domain = trust_domain
        self.entries = entries
        self.overrides = overrides
        self.resolvers: dict[str, Entry] = dict(entries.resolvers)
        self.splitter_nodes: dict[str, _Node] = {}
        self.resolve_nodes: dict[str, _Node] = {}
        self.nodes: dict[str, _Node] = {}
        self.loaded: dict[str, _Target] = {}
        self.retained: set[str] = set()
        self.protocol = ""
        self.uses_advanced = False
        self.disable_advanced = bool(overrides.protocol) and not is_http_like(overrides.protocol)
        self.customized: set[str] = set()
        self.start = ""

    # -------------------------------------------------------------- protocol

    def record_service_protocol(self, name: str) -> None:
        sd = self.entries.services.get(name)
        if sd is not None:
            return self.record_protocol(name, sd.get("Protocol", ""))
        return self.record_protocol(name, proxy_protocol(self.entries.proxy_defaults))

    def record_protocol(self, name: str, protocol: str) -> None:
        protocol = protocol.lower() if protocol else DEFAULT_PROTOCOL
        if not self.protocol:
            self.protocol = protocol
        elif self.protocol != protocol:
            raise ChainError(f'discovery chain "{self.service}" uses inconsistent protocols; service '
                             f'"{name}" has "{protocol}" which is not "{self.protocol}"')  # fmt: skip

    # -------------------------------------------------------------- nodes and targets

    def record_node(self, node: _Node) -> None:
        if node.type == NODE_SPLITTER:
            self.splitter_nodes[node.name] = node
        elif node.type == NODE_RESOLVER:
            assert node.resolver is not None
            self.resolve_nodes[node.resolver.target] = node
        self.nodes[node.key] = node

    def new_target(self, service: str, subset: str = "", namespace: str = "", partition: str = "",
                   datacenter: str = "") -> _Target:  # fmt: skip
        t = _Target(service, subset, namespace or DEFAULT_NS, partition or DEFAULT_PARTITION, datacenter or self.dc)
        t.id = _target_id(t.opts())
        prev = self.loaded.get(t.id)
        if prev is not None:
            return prev
        t.sni = _sni(t, self.trust_domain)
        t.name = t.sni
        self.loaded[t.id] = t
        return t

    def rewrite_target(self, t: _Target, o: Mapping[str, Any]) -> _Target:
        service, subset = t.service, t.service_subset
        if o.get("Service") and o["Service"] != service:
            service, subset = o["Service"], ""  # another service: its own default subset applies
        if o.get("ServiceSubset"):
            subset = o["ServiceSubset"]
        return self.new_target(service, subset, o.get("Namespace") or t.namespace,
                               o.get("Partition") or t.partition, o.get("Datacenter") or t.datacenter)  # fmt: skip

    # -------------------------------------------------------------- assembly

    def compile(self) -> CompiledChain:
        self.assemble()
        self.detect_circular_references()
        self.flatten_splitters()
        self.remove_unused_nodes()
        for tid in list(self.loaded):
            if tid not in self.retained:
                del self.loaded[tid]
        if not is_http_like(self.protocol) and self.uses_advanced:
            raise ChainError(f'discovery chain "{self.service}" uses a protocol "{self.protocol}" that does not '
                             "permit advanced routing or splitting behavior")  # fmt: skip
        if self.overrides.protocol and self.overrides.protocol != self.protocol:
            self.protocol = self.overrides.protocol
            self.customized.add("protocol")
        customization = ""
        if self.customized:
            o = self.overrides
            parts = [
                o.mesh_gateway_mode if "mesh_gateway" in self.customized else "",
                o.protocol if "protocol" in self.customized else "",
                str(o.connect_timeout_ns) if "connect_timeout" in self.customized else "",
            ]
            # Consul hashes its override struct with hashstructure; the value is opaque either way, a
            # prefix to keep customized data plane objects apart from the plain ones.
            customization = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]
        nodes = {k: self.freeze_node(n) for k, n in self.nodes.items()}
        targets = {
            tid: Target(t.id, t.service, t.service_subset, t.namespace, t.partition, t.datacenter, t.subset,
                        t.connect_timeout_ns, t.sni, t.name, t.mesh_gateway_mode)
            for tid, t in self.loaded.items()
        }  # fmt: skip
        sd = self.entries.services.get(self.service)
        return CompiledChain(
            service_name=self.service, namespace=DEFAULT_NS, partition=DEFAULT_PARTITION, datacenter=self.dc,
            protocol=self.protocol, start_node=self.start, nodes=MappingProxyType(nodes),
            targets=MappingProxyType(targets), default=self.is_default(nodes, targets),
            customization_hash=customization,
            service_meta=MappingProxyType(dict((sd or {}).get("Meta") or {})),
        )  # fmt: skip

    @staticmethod
    def freeze_node(n: _Node) -> Node:
        return Node(
            n.type, n.name,
            routes=tuple(Route(_freeze(d), nxt) for d, nxt in n.routes),
            splits=tuple(Split(_freeze(d), w, nxt) for d, w, nxt in n.splits),
            resolver=n.resolver,
            load_balancer=_freeze(n.load_balancer) if n.load_balancer is not None else None,
        )  # fmt: skip

    def is_default(self, nodes: Mapping[str, Node], targets: Mapping[str, Target]) -> bool:
        node = nodes.get(self.start)
        if node is None or node.resolver is None or not node.resolver.default:
            return node is None
        target = targets[node.resolver.target]
        return target.service == self.service and target.namespace == DEFAULT_NS

    def assemble(self) -> None:
        if not self.resolvers and self.entries.is_chain_empty():
            self.resolvers[self.service] = {"Kind": SERVICE_RESOLVER, "Name": self.service}
        router = self.entries.routers.get(self.service)
        if router is not None and self.disable_advanced:
            router = None
            self.customized.add("protocol")
        if router is None:
            node = self.splitter_or_resolver(self.new_target(self.service))
            self.start = node.key
            return
        route_node = _Node(NODE_ROUTER, _sid(router["Name"]))
        self.uses_advanced = True
        self.record_service_protocol(router["Name"])
        for route in router.get("Routes") or []:
            dest = route.get("Destination")
            if dest is None:
                dest = {"Service": self.service, "Namespace": DEFAULT_NS, "Partition": DEFAULT_PARTITION}
            svc = dest.get("Service") or self.service
            if not dest.get("ServiceSubset"):
                node = self.splitter_or_resolver(self.new_target(svc, "", dest.get("Namespace", ""),
                                                                 dest.get("Partition", "")))  # fmt: skip
            else:
                node = self.resolver_node(self.new_target(svc, dest["ServiceSubset"], dest.get("Namespace", ""),
                                                          dest.get("Partition", "")), False)  # fmt: skip
            route_node.routes.append([route, node.key])
        default = self.splitter_or_resolver(self.new_target(router["Name"]))
        catch_all = {"Match": {"HTTP": {"PathPrefix": "/"}},
                     "Destination": {"Service": router["Name"], "Namespace": DEFAULT_NS,
                                     "Partition": DEFAULT_PARTITION}}  # fmt: skip
        route_node.routes.append([catch_all, default.key])
        self.start = route_node.key
        self.record_node(route_node)

    def splitter_or_resolver(self, target: _Target) -> _Node:
        node = self.splitter_node(target.service)
        if node is not None:
            return node
        return self.resolver_node(target, False)

    def splitter_node(self, service: str) -> _Node | None:
        name = _sid(service)
        prev = self.splitter_nodes.get(name)
        if prev is not None:
            return prev
        splitter = self.entries.splitters.get(service)
        if splitter is not None and self.disable_advanced:
            splitter = None
            self.customized.add("protocol")
        if splitter is None:
            return None
        node = _Node(NODE_SPLITTER, name)
        self.record_node(node)  # before recursing, so a loop below finds it
        has_lb = False
        for split in splitter.get("Splits") or []:
            entry = [split, split.get("Weight", 0), ""]
            node.splits.append(entry)
            svc = split.get("Service") or service
            if svc != service and not split.get("ServiceSubset"):
                nxt = self.splitter_node(svc)
                if nxt is not None:
                    entry[2] = nxt.key
                    continue
            res = self.resolver_node(self.new_target(svc, split.get("ServiceSubset", ""), split.get("Namespace", ""),
                                                     split.get("Partition", "")), False)  # fmt: skip
            entry[2] = res.key
            lb = res.load_balancer
            if not has_lb and lb is not None and lb.get("Policy") in ("ring_hash", "maglev"):
                node.load_balancer = lb
                has_lb = True
        self.uses_advanced = True
        return node

    def resolver_node(self, target: _Target, for_failover: bool) -> _Node:
        history: list[str] = []
        while True:
            prev = self.resolve_nodes.get(target.id)
            if prev is not None:
                return prev
            self.record_service_protocol(target.service)
            resolver = self.resolvers.get(target.service)
            if resolver is None:
                resolver = {"Kind": SERVICE_RESOLVER, "Name": target.service}
                self.resolvers[target.service] = resolver
            if target.id in history:
                history.append(target.id)
                raise ChainError(f"detected circular resolver redirect: [{' -> '.join(history)}]")
            history.append(target.id)
            redirect = resolver.get("Redirect")
            if redirect is not None:
                redirected = self.rewrite_target(target, redirect)
                if redirected.id != target.id:
                    target = redirected
                    continue
            if not target.service_subset and resolver.get("DefaultSubset"):
                target = self.rewrite_target(target, {"ServiceSubset": resolver["DefaultSubset"]})
                continue
            break
        subsets = resolver.get("Subsets") or {}
        if target.service_subset and target.service_subset not in subsets:
            raise ChainError(f'service "{target.service}" does not have a subset named "{target.service_subset}"')
        timeout = _dur(resolver.get("ConnectTimeout"))
        if timeout < 1:
            timeout = DEFAULT_CONNECT_TIMEOUT_NS
        if self.overrides.connect_timeout_ns > 0 and timeout != self.overrides.connect_timeout_ns:
            timeout = self.overrides.connect_timeout_ns
            self.customized.add("connect_timeout")
        target.connect_timeout_ns = timeout
        sub = subsets.get(target.service_subset) or {}
        target.subset = Subset(sub.get("Filter", ""), bool(sub.get("OnlyPassing", False)))
        sd = self.entries.services.get(target.service)
        mode = ((sd or {}).get("MeshGateway") or {}).get("Mode", "")
        if not mode and self.entries.proxy_defaults is not None:
            mode = (self.entries.proxy_defaults.get("MeshGateway") or {}).get("Mode", "")
        if self.overrides.mesh_gateway_mode and mode != self.overrides.mesh_gateway_mode:
            mode = self.overrides.mesh_gateway_mode
            self.customized.add("mesh_gateway")
        target.mesh_gateway_mode = mode
        is_default = set(resolver) <= {"Kind", "Name", "Meta", "CreateIndex", "ModifyIndex"}
        node = _Node(NODE_RESOLVER, target.id, load_balancer=resolver.get("LoadBalancer"))
        node.resolver = Resolver(target.id, timeout, _dur(resolver.get("RequestTimeout")), is_default)
        self.retained.add(target.id)
        if for_failover:
            return node
        self.record_node(node)
        failover_map = resolver.get("Failover") or {}
        failover = failover_map.get(target.service_subset) or failover_map.get("*")
        if failover is None:
            return node
        targets: list[_Target] = []
        if failover.get("Datacenters"):
            for dc in failover["Datacenters"]:
                t = self.rewrite_target(target, {**_failover_opts(failover), "Datacenter": dc})
                if t.id != target.id:
                    targets.append(t)
        elif failover.get("Targets"):
            for ft in failover["Targets"]:
                t = self.rewrite_target(target, ft)
                if t.id != target.id:
                    targets.append(t)
        else:
            t = self.rewrite_target(target, _failover_opts(failover))
            if t.id != target.id:
                targets.append(t)
        if targets:
            policy = failover.get("Policy")
            ids = tuple(self.resolver_node(t, True).resolver.target for t in targets)  # type: ignore[union-attr]
            node.resolver = Resolver(target.id, timeout, node.resolver.request_timeout_ns, is_default,
                                     Failover(ids, _freeze(policy) if policy and policy.get("Mode") else None))  # fmt: skip
        return node

    # -------------------------------------------------------------- graph passes

    def detect_circular_references(self) -> None:
        todo: list[str] = [self.start]
        visited: set[str] = set()
        chain: list[str] = []
        while todo:
            current = todo.pop()
            if current == "_popvisit":
                if chain:
                    visited.discard(chain.pop())
                continue
            chain.append(current)
            if current in visited:
                raise ChainError(f"detected circular reference: [{' -> '.join(chain)}]")
            visited.add(current)
            todo.append("_popvisit")
            node = self.nodes[current]
            if node.type == NODE_ROUTER:
                todo.extend(r[1] for r in node.routes)
            elif node.type == NODE_SPLITTER:
                todo.extend(s[2] for s in node.splits)

    def flatten_splitters(self) -> None:
        while True:
            changed_any = False
            for node in self.nodes.values():
                if node.type != NODE_SPLITTER:
                    continue
                fixed: list[list[Any]] = []
                changed = False
                for definition, weight, nxt in node.splits:
                    inner = self.nodes[nxt]
                    if inner.type != NODE_SPLITTER:
                        fixed.append([definition, weight, nxt])
                        continue
                    changed = True
                    for idef, iweight, inxt in inner.splits:
                        fixed.append([_merge_parent(idef, definition), normalize_weight(weight * iweight / 100), inxt])
                if changed:
                    node.splits = fixed
                    changed_any = True
            if not changed_any:
                return

    def remove_unused_nodes(self) -> None:
        visited: set[str] = set()
        todo = [self.start]
        while todo:
            key = todo.pop()
            if key in visited:
                continue
            visited.add(key)
            node = self.nodes[key]
            if node.type == NODE_ROUTER:
                todo.extend(r[1] for r in node.routes)
            elif node.type == NODE_SPLITTER:
                todo.extend(s[2] for s in node.splits)
        for key in list(self.nodes):
            if key not in visited:
                del self.nodes[key]


def _failover_opts(f: Mapping[str, Any]) -> dict[str, str]:
    return {k: f[k] for k in ("Service", "ServiceSubset", "Namespace") if f.get(k)}


def _merge_headers(base: Mapping[str, Any] | None, over: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Consul's MergeHTTPHeaderModifiers: ``over`` wins on Add/Set keys; Remove lists are joined."""
    def zero(m: Mapping[str, Any] | None) -> bool:
        return m is None or not (m.get("Add") or m.get("Set") or m.get("Remove"))

    if zero(base):
        return _plain(over) if over is not None else None
    merged = _plain(base)
    if zero(over):
        return merged
    assert over is not None
    for key in ("Add", "Set"):
        if over.get(key):
            merged[key] = {**merged.get(key, {}), **over[key]}
    removes = list(merged.get("Remove", []))
    for k in over.get("Remove", []):
        if k not in removes:
            removes.append(k)
    if removes:
        merged["Remove"] = removes
    return merged


def _merge_parent(child: Mapping[str, Any], parent: Mapping[str, Any]) -> dict[str, Any]:
    """Consul's ServiceSplit.MergeParent: a flattened leg keeps the parent's header edits (request edits
    of the child win, response edits of the parent win, as if the request passed parent then child)."""
    out = _plain(child)
    req = _merge_headers(parent.get("RequestHeaders"), child.get("RequestHeaders"))
    resp = _merge_headers(child.get("ResponseHeaders"), parent.get("ResponseHeaders"))
    for key, value in (("RequestHeaders", req), ("ResponseHeaders", resp)):
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def compile_chain(service: str, entries: ChainEntries, *, datacenter: str, trust_domain: str,
                  overrides: Overrides | None = None) -> CompiledChain:  # fmt: skip
    """Compile the discovery chain of ``service`` as evaluated in ``datacenter`` (default namespace and
    partition). Raises ChainError with Consul's text when the entries do not form a valid chain."""
    if not service:
        raise ChainError("serviceName is required")
    overrides = overrides or Overrides()
    if overrides.mesh_gateway_mode not in MESH_GATEWAY_MODES:
        raise ChainError("Invalid OverrideMeshGateway.Mode parameter")
    return _Compiler(service, datacenter, trust_domain, entries, overrides).compile()


def chain_from_api(data: Mapping[str, Any]) -> CompiledChain:
    """The inverse of ``CompiledChain.to_api``: a chain from ``GET /v1/discovery-chain``'s ``Chain`` (what a
    sidecar following the chain over HTTP gets). Raises ChainError when the document is not one."""
    try:
        nodes: dict[str, Node] = {}
        for key, n in (data.get("Nodes") or {}).items():
            res = n.get("Resolver")
            resolver = None
            if res is not None:
                fo = res.get("Failover")
                failover = None if fo is None else Failover(tuple(fo.get("Targets") or ()), _freeze(fo.get("Policy")))
                resolver = Resolver(res["Target"], _dur(res.get("ConnectTimeout")), _dur(res.get("RequestTimeout")),
                                    bool(res.get("Default", False)), failover)  # fmt: skip
            node = Node(
                n["Type"], n["Name"],
                routes=tuple(Route(_freeze(r.get("Definition") or {}), r["NextNode"]) for r in n.get("Routes") or ()),
                splits=tuple(Split(_freeze(s.get("Definition") or {}), s["Weight"], s["NextNode"])
                             for s in n.get("Splits") or ()),
                resolver=resolver,
                load_balancer=_freeze(n["LoadBalancer"]) if n.get("LoadBalancer") is not None else None,
            )  # fmt: skip
            if node.key != key:
                raise ChainError(f"node {key!r} is named {node.key!r}")
            nodes[key] = node
        targets: dict[str, Target] = {}
        for tid, t in (data.get("Targets") or {}).items():
            sub = t.get("Subset") or {}
            targets[tid] = Target(t["ID"], t["Service"], t.get("ServiceSubset", ""), t["Namespace"],
                                  t.get("Partition", DEFAULT_PARTITION), t["Datacenter"],
                                  Subset(sub.get("Filter", ""), bool(sub.get("OnlyPassing", False))),
                                  _dur(t.get("ConnectTimeout")), t.get("SNI", ""), t.get("Name", ""),
                                  (t.get("MeshGateway") or {}).get("Mode", ""))  # fmt: skip
        chain = CompiledChain(
            service_name=data["ServiceName"], namespace=data["Namespace"],
            partition=data.get("Partition", DEFAULT_PARTITION), datacenter=data["Datacenter"],
            protocol=data["Protocol"], start_node=data["StartNode"], nodes=MappingProxyType(nodes),
            targets=MappingProxyType(targets), default=bool(data.get("Default", False)),
            customization_hash=data.get("CustomizationHash", ""),
            service_meta=MappingProxyType(dict(data.get("ServiceMeta") or {})),
        )  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        if isinstance(exc, ChainError):
            raise
        raise ChainError(f"not a compiled discovery chain: {type(exc).__name__}: {exc}") from None
    if chain.start_node not in chain.nodes:
        raise ChainError(f"StartNode {chain.start_node!r} is not among the nodes")
    return chain


# ================================================================================= write-time validation


def validate_write(lookup: Lookup, chain_entries: Iterable[Entry], kind: str, name: str,
                   proposed: Entry | None) -> None:  # fmt: skip
    """Refuse a write (``proposed``; None for a delete) that leaves some discovery chain uncompilable.

    Consul's validateProposedConfigEntryInGraph: a change to proxy-defaults re-checks every chain that has
    a router, splitter or resolver; any other change re-checks the chain named like the entry and every
    chain whose entries name that service (``chain_entries``: every stored router, splitter and resolver).
    Each is compiled with ``proposed`` standing in for what is stored. Raises ChainError."""
    if kind not in (PROXY_DEFAULTS, SERVICE_DEFAULTS, SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER):
        return
    chains: set[str] = set()
    entries = list(chain_entries)
    if kind == PROXY_DEFAULTS:
        if name != PROXY_GLOBAL:
            return
        chains.update(e["Name"] for e in entries)
    else:
        chains.add(name)
        chains.update(e["Name"] for e in entries if name in related_services(e))

    def speculative(k: str, n: str) -> Entry | None:
        if k == kind and n == name:
            return proposed
        return lookup(k, n)

    for chain in sorted(chains):
        compile_chain(chain, read_entries(speculative, chain), datacenter=_VALIDATION_DC,
                      trust_domain=_VALIDATION_TRUST_DOMAIN)  # fmt: skip
