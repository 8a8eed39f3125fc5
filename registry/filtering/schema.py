"""The typed selectors of each endpoint: the Go struct Consul filters, as go-bexpr sees it.

go-bexpr validates an expression against the Go type an endpoint returns (``structs.Node``,
``structs.ServiceNode``, ``structs.CheckServiceNode``, ``structs.HealthCheck``, ``api.AgentService``,
``structs.Intention``, ``structs.ServiceIntentionsConfigEntry``): a selector must name a field it may
select (no ``bexpr:"-"``), and the field's type decides which operators and values are accepted. These
schemas mirror those types over the JSON-shaped dicts Proconsul renders; they are data, read once when a
filter is compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AGENT_SERVICE",
    "BOOL",
    "CHECK_SERVICE_NODE",
    "HEALTH_CHECK",
    "INT",
    "INTENTION",
    "NODE",
    "NODE_SERVICE",
    "SERVICE_DEFAULTS",
    "SERVICE_INTENTIONS",
    "SERVICE_NODE",
    "STRING",
    "Map",
    "Node",
    "Prim",
    "Slice",
    "Struct",
    "subfield",
]


@dataclass(frozen=True, eq=False)
class Prim:
    """A Go primitive: ``kind`` is "string", "int" or "bool"."""

    kind: str


@dataclass(frozen=True, eq=False)
class Slice:
    elem: Prim | Struct


@dataclass(frozen=True, eq=False)
class Map:
    """``map[string]value``; ``value`` None stands for ``map[string]interface{}`` (no selection inside)."""

    value: Prim | Struct | Slice | None


@dataclass(frozen=True, eq=False)
class Struct:
    """A Go struct: the fields go-bexpr may select (those without ``bexpr:"-"``). ``loose`` lookups
    also accept case-insensitive and snake_case keys, for objects Proconsul stores as the client sent
    them (Proxy, Connect) where Consul's decoder would have normalised the names."""

    fields: dict[str, Prim | Slice | Map | Struct]
    loose: bool = False
    name: str = ""


Node = Prim | Slice | Map | Struct

STRING = Prim("string")
INT = Prim("int")
BOOL = Prim("bool")


def _struct(name: str, loose: bool = False, **fields: Node) -> Struct:
    return Struct(dict(fields), loose, name)


_MESH_GATEWAY = _struct("MeshGatewayConfig", True, Mode=STRING)
_UPSTREAM = _struct(
    "Upstream", True,
    DestinationType=STRING, DestinationNamespace=STRING, DestinationPartition=STRING, DestinationPeer=STRING,
    DestinationName=STRING, Datacenter=STRING, LocalBindAddress=STRING, LocalBindPort=INT,
    LocalBindSocketPath=STRING, LocalBindSocketMode=STRING, MeshGateway=_MESH_GATEWAY,
)  # fmt: skip
_PROXY = _struct(
    "ConnectProxyConfig", True,
    EnvoyExtensions=Slice(_struct("EnvoyExtension", True, Name=STRING, Required=BOOL, ConsulVersion=STRING,
                                  EnvoyVersion=STRING)),
    DestinationServiceName=STRING, DestinationServiceID=STRING, LocalServiceAddress=STRING,
    LocalServicePort=INT, LocalServiceSocketPath=STRING, Mode=STRING, Upstreams=Slice(_UPSTREAM),
    MeshGateway=_MESH_GATEWAY,
    Expose=_struct("ExposeConfig", True, Checks=BOOL,
                   Paths=Slice(_struct("ExposePath", True, ListenerPort=INT, Path=STRING, LocalPathPort=INT,
                                       Protocol=STRING, ParsedFromCheck=BOOL))),
    TransparentProxy=_struct("TransparentProxyConfig", True, OutboundListenerPort=INT, DialedDirectly=BOOL),
    AccessLogs=_struct("AccessLogsConfig", True, Enabled=BOOL, DisableListenerLogs=BOOL, Type=STRING,
                       Path=STRING, JSONFormat=STRING, TextFormat=STRING),
)  # fmt: skip
_CONNECT = _struct("ServiceConnect", True, Native=BOOL)
_WEIGHTS = _struct("Weights", Passing=INT, Warning=INT)
_SERVICE_ADDRESSES = Map(_struct("ServiceAddress", Address=STRING, Port=INT))
_STRING_MAP = Map(STRING)
_TAGS = Slice(STRING)

#: structs.Node -- /v1/catalog/nodes items, and "Node" in /v1/health/service entries.
NODE = _struct(
    "Node", ID=STRING, Node=STRING, Partition=STRING, PeerName=STRING, Address=STRING, Datacenter=STRING,
    TaggedAddresses=_STRING_MAP, Meta=_STRING_MAP,
)  # fmt: skip

#: structs.NodeService -- /v1/catalog/node(-services) services, "Service" in health entries.
NODE_SERVICE = _struct(
    "NodeService", Kind=STRING, ID=STRING, Service=STRING, Tags=_TAGS, Address=STRING,
    TaggedAddresses=_SERVICE_ADDRESSES, Meta=_STRING_MAP, Port=INT, SocketPath=STRING, Weights=_WEIGHTS,
    EnableTagOverride=BOOL, Proxy=_PROXY, Connect=_CONNECT, PeerName=STRING,
)  # fmt: skip

#: api.AgentService -- /v1/agent/services values (the same selectors as NodeService).
AGENT_SERVICE = Struct(NODE_SERVICE.fields, False, "AgentService")

#: structs.ServiceNode -- /v1/catalog/service/:s, /v1/catalog/connect/:s, /v1/catalog/services instances.
SERVICE_NODE = _struct(
    "ServiceNode", ID=STRING, Node=STRING, Address=STRING, Datacenter=STRING, TaggedAddresses=_STRING_MAP,
    NodeMeta=_STRING_MAP, ServiceKind=STRING, ServiceID=STRING, ServiceName=STRING, ServiceTags=_TAGS,
    ServiceAddress=STRING, ServiceTaggedAddresses=_SERVICE_ADDRESSES, ServiceMeta=_STRING_MAP,
    ServicePort=INT, ServiceSocketPath=STRING, ServiceWeights=_WEIGHTS, ServiceEnableTagOverride=BOOL,
    ServiceProxy=_PROXY, ServiceConnect=_CONNECT, PeerName=STRING,
)  # fmt: skip

#: structs.HealthCheck -- /v1/health/{node,checks,state}, /v1/agent/checks (Definition is bexpr:"-").
HEALTH_CHECK = _struct(
    "HealthCheck", Node=STRING, CheckID=STRING, Name=STRING, Status=STRING, Notes=STRING, Output=STRING,
    ServiceID=STRING, ServiceName=STRING, ServiceTags=_TAGS, Type=STRING, Interval=STRING, Timeout=STRING,
    ExposedPort=INT, PeerName=STRING,
)  # fmt: skip

#: structs.CheckServiceNode -- /v1/health/service/:s and /v1/health/connect/:s entries.
CHECK_SERVICE_NODE = _struct("CheckServiceNode", Node=NODE, Service=NODE_SERVICE, Checks=Slice(HEALTH_CHECK))

#: structs.Intention -- /v1/connect/intentions items.
INTENTION = _struct(
    "Intention", ID=STRING, Description=STRING, SourcePeer=STRING, SourceSamenessGroup=STRING,
    SourcePartition=STRING, SourceNS=STRING, SourceName=STRING, DestinationPartition=STRING,
    DestinationNS=STRING, DestinationName=STRING, SourceType=STRING, Action=STRING, Precedence=INT,
    Meta=_STRING_MAP,
)  # fmt: skip

#: structs.ServiceIntentionsConfigEntry -- /v1/config/service-intentions items (Permissions, an L7 list of
#: structs, and the legacy timestamps are not selectable here).
_SOURCE_INTENTION = _struct(
    "SourceIntention", True, Name=STRING, Peer=STRING, Partition=STRING, Namespace=STRING,
    SamenessGroup=STRING, Action=STRING, Precedence=INT, Type=STRING, Description=STRING, LegacyID=STRING,
    LegacyMeta=_STRING_MAP,
)  # fmt: skip
SERVICE_INTENTIONS = _struct(
    "ServiceIntentionsConfigEntry", True, Kind=STRING, Name=STRING, Partition=STRING, Namespace=STRING,
    Sources=Slice(_SOURCE_INTENTION), Meta=_STRING_MAP,
)  # fmt: skip


#: structs.ServiceConfigEntry -- /v1/config/service-defaults items, the one config entry kind Consul's
#: ConfigEntry.List filters (durations and the Envoy escape hatches are left out).
_UPSTREAM_CONFIG = _struct(
    "UpstreamConfig", Name=STRING, Partition=STRING, Namespace=STRING, Peer=STRING, Protocol=STRING,
    ConnectTimeoutMs=INT, MeshGateway=_MESH_GATEWAY, BalanceOutboundConnections=STRING,
    Limits=_struct("UpstreamLimits", MaxConnections=INT, MaxPendingRequests=INT, MaxConcurrentRequests=INT),
    PassiveHealthCheck=_struct("PassiveHealthCheck", MaxFailures=INT, EnforcingConsecutive5xx=INT,
                               MaxEjectionPercent=INT),
)  # fmt: skip
SERVICE_DEFAULTS = _struct(
    "ServiceConfigEntry", Kind=STRING, Name=STRING, Protocol=STRING, Mode=STRING,
    TransparentProxy=_struct("TransparentProxyConfig", OutboundListenerPort=INT, DialedDirectly=BOOL),
    MutualTLSMode=STRING, MeshGateway=_MESH_GATEWAY,
    Expose=_struct("ExposeConfig", Checks=BOOL, Paths=Slice(_struct("ExposePath", ListenerPort=INT, Path=STRING,
                                                                     LocalPathPort=INT, Protocol=STRING))),
    ExternalSNI=STRING,
    UpstreamConfig=_struct("UpstreamConfiguration", Overrides=Slice(_UPSTREAM_CONFIG), Defaults=_UPSTREAM_CONFIG),
    MaxInboundConnections=INT, LocalConnectTimeoutMs=INT, LocalRequestTimeoutMs=INT,
    BalanceInboundConnections=STRING, Meta=_STRING_MAP,
)  # fmt: skip

def subfield(node: Node, part: str) -> Node | None:
    """The field configuration one selector part reaches (go-bexpr's SubFields lookup)."""
    if isinstance(node, Struct):
        return node.fields.get(part)
    if isinstance(node, Map):
        return node.value  # any key
    if isinstance(node, Slice) and isinstance(node.elem, Struct):
        return node.elem.fields.get(part)
    return None
