"""Store rows -> Consul's JSON shapes (field names and order as Consul's Go structs print them)."""

from __future__ import annotations

import base64
from typing import Any

from registry.structs import Check, KVEntry, Node, Service


def node_json(n: Node) -> dict[str, Any]:
    return {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses),
        "Meta": dict(n.meta),
        "CreateIndex": n.create_index,
        "ModifyIndex": n.modify_index,
    }


def _weights(s: Service) -> dict[str, int]:
    return {"Passing": s.weights[0], "Warning": s.weights[1]}


def _proxy(s: Service) -> dict[str, Any]:
    return s.proxy if s.proxy is not None else {"Mode": "", "MeshGateway": {}, "Expose": {}}


def service_json(s: Service) -> dict[str, Any]:
    """NodeService, as inside /v1/health/service entries and /v1/catalog/node."""
    out: dict[str, Any] = {"ID": s.id, "Service": s.service, "Tags": list(s.tags), "Address": s.address}
    if s.kind:
        out = {"Kind": s.kind, **out}
    if s.tagged_addresses:
        out["TaggedAddresses"] = s.tagged_addresses
    out.update(
        Meta=dict(s.meta),
        Port=s.port,
        Weights=_weights(s),
        EnableTagOverride=s.enable_tag_override,
        Proxy=_proxy(s),
        Connect=s.connect if s.connect is not None else {},
    )
    if s.locality:
        out["Locality"] = dict(s.locality)
    out.update(CreateIndex=s.create_index, ModifyIndex=s.modify_index)
    return out


def agent_service_json(s: Service, datacenter: str) -> dict[str, Any]:
    """AgentService, as /v1/agent/services prints it."""
    out: dict[str, Any] = {}
    if s.kind:
        out["Kind"] = s.kind
    out.update(ID=s.id, Service=s.service, Tags=list(s.tags), Meta=dict(s.meta), Port=s.port, Address=s.address)
    if s.tagged_addresses:
        out["TaggedAddresses"] = s.tagged_addresses
    out.update(Weights=_weights(s), EnableTagOverride=s.enable_tag_override)
    if s.proxy is not None:
        out["Proxy"] = s.proxy
    if s.connect:
        out["Connect"] = s.connect
    out["Datacenter"] = datacenter
    if s.locality:
        out["Locality"] = dict(s.locality)
    return out


def catalog_service_json(n: Node, s: Service) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": n.id,
        "Node": n.node,
        "Address": n.address,
        "Datacenter": n.datacenter,
        "TaggedAddresses": dict(n.tagged_addresses),
        "NodeMeta": dict(n.meta),
        "ServiceKind": s.kind,
        "ServiceID": s.id,
        "ServiceName": s.service,
        "ServiceTags": list(s.tags),
        "ServiceAddress": s.address,
        "ServiceWeights": _weights(s),
        "ServiceMeta": dict(s.meta),
        "ServicePort": s.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": s.enable_tag_override,
        "ServiceProxy": _proxy(s),
        "ServiceConnect": s.connect if s.connect is not None else {},
    }
    if s.locality:
        out["ServiceLocality"] = dict(s.locality)
    out.update(CreateIndex=s.create_index, ModifyIndex=s.modify_index)
    if s.tagged_addresses:
        out["ServiceTaggedAddresses"] = s.tagged_addresses
    return out


def check_json(c: Check) -> dict[str, Any]:
    return {
        "Node": c.node,
        "CheckID": c.check_id,
        "Name": c.name,
        "Status": c.status,
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": c.service_name,
        "ServiceTags": list(c.service_tags),
        "Type": c.type,
        "Interval": c.interval,
        "Timeout": c.timeout,
        "ExposedPort": 0,
        "Definition": dict(c.definition),
        "CreateIndex": c.create_index,
        "ModifyIndex": c.modify_index,
    }


def kv_json(e: KVEntry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": base64.b64encode(e.value).decode() if e.value else None,
    }
    if e.session:
        out["Session"] = e.session
    out["CreateIndex"] = e.create_index
    out["ModifyIndex"] = e.modify_index
    return out
