"""Where a TCP connection to an upstream goes, from its compiled discovery chain: pure, no IO.

The chain (``registry.discoverychain``, followed from ``GET /v1/discovery-chain/<upstream>``) is walked
from its start node, as Envoy's TCP proxy would be configured from it by Consul:

- a ``router`` has no meaning for a byte stream: its last route (the implicit catch-all to the service
  itself) is taken;
- a ``splitter`` is followed by weight, one draw per connection (the compiler only lets splitters into
  http-like chains, but the sidecar follows what the chain says);
- a ``resolver`` names the target, then its ``Failover.Targets`` in order: the connection goes to the
  first target that has a healthy instance (Consul's failover: "when the subset has no healthy
  instance").

``target_instances`` turns a ``/v1/health/connect/<service>`` answer into the instances of one target:
the subset's bexpr ``Filter`` over the health entries (``structs.CheckServiceNode``, as Consul's proxycfg
passes it to the health query), and Consul's notion of healthy for Envoy: any critical check excludes an
instance; a warning excludes it only with ``OnlyPassing``. Each instance carries its weight as Consul
gives it to Envoy (``calculateEndpointHealthAndWeight``): ``Service.Weights.Passing``, or
``Weights.Warning`` while a check warns; a weight below 1 excludes the instance, above 128 is 128.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connect_proxy.upstream import Instance
from registry.discoverychain import NODE_RESOLVER, NODE_ROUTER, NODE_SPLITTER, CompiledChain, Subset
from registry.filtering import CHECK_SERVICE_NODE, compile_filter

__all__ = ["ChainWalkError", "l4_targets", "target_instances"]


class ChainWalkError(ValueError):
    """The chain points at a node it does not have (a malformed answer)."""


def l4_targets(chain: CompiledChain, draw: float) -> list[str]:
    """The target IDs a new connection may use, in order: the one the chain picks (``draw`` in
    [0, 100) chooses the split), then its failover targets."""
    key = chain.start_node
    for _ in range(len(chain.nodes) + 1):
        node = chain.nodes.get(key)
        if node is None:
            raise ChainWalkError(f"the chain has no node {key!r}")
        if node.type == NODE_RESOLVER:
            assert node.resolver is not None
            out = [node.resolver.target]
            if node.resolver.failover is not None:
                out.extend(t for t in node.resolver.failover.targets if t not in out)
            return out
        if node.type == NODE_ROUTER:
            if not node.routes:
                raise ChainWalkError(f"router {key!r} has no routes")
            key = node.routes[-1].next_node
        elif node.type == NODE_SPLITTER:
            if not node.splits:
                raise ChainWalkError(f"splitter {key!r} has no splits")
            acc = 0.0
            key = node.splits[-1].next_node
            for split in node.splits:
                acc += split.weight
                if draw < acc:
                    key = split.next_node
                    break
        else:
            raise ChainWalkError(f"node {key!r} has unknown type {node.type!r}")
    raise ChainWalkError("the chain loops")


def _status_ok(entry: Mapping[str, Any], only_passing: bool) -> bool:
    for check in entry.get("Checks") or ():
        status = check.get("Status") if isinstance(check, Mapping) else None
        if status == "critical" or (only_passing and status == "warning"):
            return False
    return True


MAX_WEIGHT = 128  # Envoy's limit, as Consul clamps it


def _weight(entry: Mapping[str, Any], svc: Mapping[str, Any]) -> int:
    """The instance's load-balancing weight; 0 means "send it nothing" (Consul marks it unhealthy)."""
    weights = svc.get("Weights")
    if not isinstance(weights, Mapping):
        return 1
    weight = weights.get("Passing", 1)
    for check in entry.get("Checks") or ():
        if isinstance(check, Mapping) and check.get("Status") == "warning":
            weight = weights.get("Warning", 1)
    if not isinstance(weight, int) or isinstance(weight, bool):
        return 1
    return min(weight, MAX_WEIGHT) if weight >= 1 else 0


def target_instances(health: Any, subset: Subset) -> list[Instance]:
    """The dialable instances of a target in a health answer. Raises FilterError (Consul's text) when
    the subset's filter does not compile: the caller treats the target as having none."""
    if not isinstance(health, list):
        return []
    flt = compile_filter(subset.filter, CHECK_SERVICE_NODE) if subset.filter else None
    out: list[Instance] = []
    for entry in health:
        if not isinstance(entry, Mapping) or not _status_ok(entry, subset.only_passing):
            continue
        svc, node = entry.get("Service") or {}, entry.get("Node") or {}
        if not isinstance(svc, Mapping) or not isinstance(node, Mapping):
            continue
        if flt is not None and not flt.matches(entry):
            continue
        host = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        if not host or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            continue
        weight = _weight(entry, svc)
        if not weight:
            continue
        inst = Instance(str(host), port, weight)
        if inst not in out:
            out.append(inst)
    return out

