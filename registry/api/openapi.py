"""The OpenAPI 3.0 description of the HTTP API, generated from the route table.

Every operation comes from a ``Route`` of ``registry.api.routes.ROUTES``: its method, its path (a prefix
route becomes a path with a parameter, named as Consul's API reference names it: ``/v1/kv/{key}``,
``/v1/agent/service/{service_id}``), its summary, and the ACL rule it needs, carried as ``x-consul-acl``
(``service:read``, ``operator:write``, or ``none``) with ``x-consul-acl-name`` saying where the name the rule
is checked against comes from. What a route does not carry is declared here, once per (method, path): the
query parameters Consul documents for it, its request body and its success answers. The bodies of service,
check and catalog registrations are converted from the schemas ``registry.registration`` decodes them with,
so the description and the decoder cannot disagree about a field's name or type.

Errors follow Consul's ``agent/http.go``: a plain-text body (``text/plain``) with the status the handler
chose: 400 for input it refuses, 403 ``Permission denied: ...`` or ``ACL not found`` on a route that needs
a rule, 404 for what does not exist, 413 for a body over its limit, 500 for an unknown ``?dc`` ("No path to
datacenter") or a ``?filter`` that does not compile (Consul answers both with 500).

``python -m registry.api.openapi`` writes ``docs/openapi.yaml``; ``--check`` fails when the file is stale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from registry import CONSUL_VERSION
from registry.api.routes import ROUTES, generated_doc_main
from registry.api.routing import Route
from registry.connect.state import SUPPORTED_KINDS
from registry.filtering.errors import ERROR_PREFIX
from registry.registration import (
    CATALOG_DEREGISTER_SCHEMA,
    CATALOG_REGISTER_SCHEMA,
    CHECK_SCHEMA,
    SERVICE_SCHEMA,
)
from registry.txn import MAX_OPS, READ_VERBS, WRITE_VERBS

CATALOG_VERBS = ["cas", "delete", "delete-cas", "get", "set"]  # Node, Service and Check operations
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

JSON = "application/json"
TEXT = "text/plain"
OCTETS = "application/octet-stream"

# ---------------------------------------------------------------------- request body schemas

# A Go duration as Consul's JSON takes it ("10s", "1m30s", "500ms").
DURATION = {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h)([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))*\s*$",
            "example": "10s"}  # fmt: skip
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

_KINDS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "format": "int64"},
    "uint": {"type": "integer", "minimum": 0},
    "bool": {"type": "boolean"},
    "strlist": {"type": "array", "items": {"type": "string"}},
    "strmap": STRING_MAP,
    "dur": DURATION,
    "any": {},
    "headers": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    "taggedaddrs": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"Address": {"type": "string"}, "Port": {"type": "integer"}}}},
    "weights": {"type": "object", "properties": {"Passing": {"type": "integer"}, "Warning": {"type": "integer"}}},
}  # fmt: skip


def schema_from_registration(schema: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON schema for a ``registry.registration`` decoding schema (field -> kind). Unknown fields are
    allowed, as Go's decoder ignores them; the decoder also matches names case-insensitively and takes
    snake_case, which the description leaves out: it documents Consul's spelling."""
    out: dict[str, Any] = {"type": "object", "properties": {k: _kind_schema(v) for k, v in schema.items()}}
    if required:
        out["required"] = list(required)
    return out


def _kind_schema(kind: Any) -> dict[str, Any]:
    if isinstance(kind, dict):
        return schema_from_registration(kind)
    if isinstance(kind, tuple):
        return {"type": "array", "items": _kind_schema(kind[1])}
    return dict(_KINDS[kind])


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


_STR = {"type": "string"}
_CONFIG_KIND: dict[str, Any] = {"type": "string", "enum": sorted(SUPPORTED_KINDS)}
_INT = {"type": "integer"}
_UINT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_ANY: dict[str, Any] = {}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


SCHEMAS: dict[str, dict[str, Any]] = {
    # ---- request bodies
    "ServiceDefinition": schema_from_registration(SERVICE_SCHEMA, ("Name",)),
    "CheckDefinition": schema_from_registration(CHECK_SCHEMA, ("Name",)),
    "CatalogRegistration": schema_from_registration(CATALOG_REGISTER_SCHEMA, ("Node",)),
    "CatalogDeregistration": schema_from_registration(CATALOG_DEREGISTER_SCHEMA, ("Node",)),
    "CheckUpdate": _obj(Status={"type": "string", "enum": ["passing", "warning", "critical"]}, Output=_STR),
    "Coord": _obj(("Vec", "Error", "Adjustment", "Height"), Vec=_array({"type": "number"}), Error={"type": "number"},
                  Adjustment={"type": "number"}, Height={"type": "number"}),
    "Coordinate": _obj(("Node", "Segment", "Coord"), Node=_STR, Segment=_STR, Coord=_ref("Coord")),
    "CoordinateUpdate": _obj(("Node", "Coord"), Node=_STR, Segment=_STR, Coord=_ref("Coord")),
    "UserEvent": _obj(("ID", "Name", "Version", "LTime"), ID=_STR, Name=_STR,
                      Payload={"type": "string", "format": "byte", "nullable": True}, NodeFilter=_STR,
                      ServiceFilter=_STR, TagFilter=_STR, Version=_INT, LTime=_INT),
    "SessionRequest": _obj(
        Name=_STR, Node=_STR, Behavior={"type": "string", "enum": ["release", "delete"]}, TTL=DURATION,
        LockDelay={"oneOf": [DURATION, {"type": "integer", "minimum": 0}]}, Checks=_array(_STR),
        NodeChecks=_array(_STR), ServiceChecks=_array(_obj(ID=_STR, Namespace=_STR)),
    ),
    "TxnOps": {"type": "array", "maxItems": MAX_OPS, "items": _obj(KV=_obj(
        ("Verb",), Verb={"type": "string", "enum": sorted(WRITE_VERBS | READ_VERBS)}, Key=_STR,
        Value={"type": "string", "format": "byte"}, Flags=_UINT, Index=_UINT, Session=_STR,
    ), Node=_obj(("Verb", "Node"), Verb={"type": "string", "enum": CATALOG_VERBS}, Node={"type": "object"}),
        Service=_obj(("Verb", "Node", "Service"), Verb={"type": "string", "enum": CATALOG_VERBS}, Node=_STR,
                     Service={"type": "object"}),
        Check=_obj(("Verb", "Check"), Verb={"type": "string", "enum": CATALOG_VERBS}, Check={"type": "object"}),
    )},
    "Intention": _obj(
        SourceName=_STR, SourceNS=_STR, DestinationName=_STR, DestinationNS=_STR,
        SourceType={"type": "string", "enum": ["consul"]}, Action={"type": "string", "enum": ["allow", "deny"]},
        Description=_STR, Meta=STRING_MAP,
    ),
    "IntentionExact": _obj(
        SourceType={"type": "string", "enum": ["consul"]}, Action={"type": "string", "enum": ["allow", "deny"]},
        Description=_STR,
    ),
    "ConfigEntry": {**_obj(("Kind", "Name"), Kind=_CONFIG_KIND, Name=_STR, Namespace=_STR, Meta=STRING_MAP,
                           Sources=_array(_obj(Name=_STR, Namespace=_STR, Action=_STR, Description=_STR))),
                    "additionalProperties": True},
    "DiscoveryChainOverrides": _obj(OverrideProtocol=_STR, OverrideConnectTimeout=_STR,
                                    OverrideMeshGateway=_obj(Mode={"type": "string",
                                                                   "enum": ["", "none", "local", "remote"]})),
    "CAConfiguration": _obj(("Provider",), Provider=_STR, Config={"type": "object"}, ForceWithoutCrossSigning=_BOOL),
    "AuthorizeRequest": _obj(("Target", "ClientCertURI"), Target=_STR, ClientCertURI=_STR, ClientCertSerial=_STR),
    "ACLToken": _obj(AccessorID=_STR, SecretID=_STR, Description=_STR, Policies=_array(_obj(ID=_STR, Name=_STR)),
                     Roles=_array(_obj(ID=_STR, Name=_STR)), ServiceIdentities=_array(_obj(
                         ("ServiceName",), ServiceName=_STR, Datacenters=_array(_STR))),
                     NodeIdentities=_array(_obj(("NodeName", "Datacenter"), NodeName=_STR, Datacenter=_STR)),
                     TemplatedPolicies=_array(_obj(("TemplateName",), TemplateName=_STR,
                                                   TemplateVariables=_obj(Name=_STR))),
                     Local=_BOOL, ExpirationTime=_STR, ExpirationTTL=DURATION),
    "ACLTokenClone": _obj(Description=_STR),
    "ACLPolicy": _obj(("Name",), ID=_STR, Name=_STR, Description=_STR, Rules=_STR, Datacenters=_array(_STR)),
    "ACLRole": _obj(("Name",), ID=_STR, Name=_STR, Description=_STR, Policies=_array(_obj(ID=_STR, Name=_STR)),
                    ServiceIdentities=_array(_obj(("ServiceName",), ServiceName=_STR)),
                    NodeIdentities=_array(_obj(("NodeName", "Datacenter"), NodeName=_STR, Datacenter=_STR))),
    "ACLAuthMethod": _obj(("Name", "Type"), Name=_STR, Type={"type": "string", "enum": ["jwt"]}, DisplayName=_STR,
                          Description=_STR, MaxTokenTTL=DURATION, TokenLocality=_STR, Config={"type": "object"}),
    "ACLBindingRule": _obj(("AuthMethod", "BindType", "BindName"), ID=_STR, Description=_STR, AuthMethod=_STR,
                           Selector=_STR, BindType={"type": "string", "enum": ["service", "node", "role", "policy",
                                                                               "templated-policy"]},
                           BindName=_STR),
    "ACLLogin": _obj(("AuthMethod", "BearerToken"), AuthMethod=_STR, BearerToken=_STR, Meta=STRING_MAP),
    "ACLAuthorizations": _array(_obj(("Resource", "Access"), Resource=_STR, Segment=_STR, Access=_STR)),
    "AgentToken": _obj(("Token",), Token=_STR),
    "ACLBootstrap": _obj(BootstrapSecret=_STR),
    "PreparedQuery": _obj(
        ("Service",), Name=_STR, Session=_STR, Token=_STR,
        Template=_obj(Type={"type": "string", "enum": ["name_prefix_match"]}, Regexp=_STR, RemoveEmptyTags=_BOOL),
        Service=_obj(("Service",), Service=_STR, Failover=_obj(
            NearestN=_UINT, Datacenters=_array(_STR), Targets=_array(_obj(Peer=_STR, Datacenter=_STR))),
            OnlyPassing=_BOOL, IgnoreCheckIDs=_array(_STR), Near=_STR, Tags=_array(_STR), NodeMeta=STRING_MAP,
            ServiceMeta=STRING_MAP, Connect=_BOOL, Peer=_STR),
        DNS=_obj(TTL=DURATION),
    ),
    "KeyringRequest": _obj(("Key",), Key=_STR),
    # ---- answers
    "KeyringResponse": _obj(
        ("WAN", "Datacenter", "Keys", "PrimaryKeys", "NumNodes"), WAN=_BOOL, Datacenter=_STR, Segment=_STR,
        Messages={"type": "object", "additionalProperties": _STR},
        Keys={"type": "object", "additionalProperties": _INT},
        PrimaryKeys={"type": "object", "additionalProperties": _INT}, NumNodes=_INT, Error=_STR),
    "AutopilotConfiguration": _obj(
        (), CleanupDeadServers=_BOOL, LastContactThreshold=_STR, MaxTrailingLogs=_UINT, MinQuorum=_UINT,
        ServerStabilizationTime=_STR, RedundancyZoneTag=_STR, DisableUpgradeMigration=_BOOL, UpgradeVersionTag=_STR,
        CreateIndex=_UINT, ModifyIndex=_UINT),
    "OperatorHealthReply": _obj(("Healthy", "FailureTolerance", "Servers"), Healthy=_BOOL, FailureTolerance=_INT,
                                Servers=_array(_obj(
                                    ("ID", "Name", "Address", "SerfStatus", "Leader", "LastContact", "LastTerm",
                                     "LastIndex", "Healthy", "Voter", "StableSince"),
                                    ID=_STR, Name=_STR, Address=_STR, SerfStatus=_STR, Version=_STR, Leader=_BOOL,
                                    LastContact=_STR, LastTerm=_UINT, LastIndex=_UINT, Healthy=_BOOL, Voter=_BOOL,
                                    StableSince=_STR))),
    "AutopilotState": _obj(("Healthy", "FailureTolerance", "Servers", "Leader", "Voters"), Healthy=_BOOL,
                           FailureTolerance=_INT, OptimisticFailureTolerance=_INT,
                           Servers={"type": "object", "additionalProperties": {"type": "object"}}, Leader=_STR,
                           Voters=_array(_STR)),
    "ServiceUsage": _obj(("Services", "ServiceInstances", "ConnectServiceInstances", "BillableServiceInstances"),
                         Services=_UINT, ServiceInstances=_UINT,
                         ConnectServiceInstances={"type": "object", "additionalProperties": _UINT},
                         BillableServiceInstances=_UINT),
    "KVPair": _obj(("Key", "Flags", "LockIndex", "CreateIndex", "ModifyIndex"), Key=_STR, Flags=_UINT,
                   LockIndex=_UINT, Session=_STR, CreateIndex=_UINT, ModifyIndex=_UINT,
                   Value={"type": "string", "format": "byte", "nullable": True}),
    "Node": _obj(("Node", "Address"), ID=_STR, Node=_STR, Address=_STR, Datacenter=_STR,
                 TaggedAddresses=STRING_MAP, Meta=STRING_MAP, CreateIndex=_UINT, ModifyIndex=_UINT),
    "NodeService": _obj(("ID", "Service"), ID=_STR, Service=_STR, Tags=_array(_STR), Address=_STR, Port=_INT,
                        Meta=STRING_MAP, CreateIndex=_UINT, ModifyIndex=_UINT),
    "CatalogService": _obj(("Node", "ServiceID", "ServiceName"), Node=_STR, Address=_STR, ServiceID=_STR,
                           ServiceName=_STR, ServiceTags=_array(_STR), ServicePort=_INT,
                           ServiceMeta=STRING_MAP),
    "HealthCheck": _obj(("Node", "CheckID", "Status"), Node=_STR, CheckID=_STR, Name=_STR,
                        Status={"type": "string", "enum": ["passing", "warning", "critical", "maintenance"]},
                        Notes=_STR, Output=_STR, ServiceID=_STR, ServiceName=_STR),
    "ServiceEntry": _obj(("Node", "Service", "Checks"), Node=_ref("Node"), Service=_ref("NodeService"),
                         Checks=_array(_ref("HealthCheck"))),
    "AgentService": _obj(("ID", "Service"), ID=_STR, Service=_STR, Tags=_array(_STR), Port=_INT, Address=_STR,
                         Meta=STRING_MAP),
    "AgentServiceHealth": _obj(("AggregatedStatus",), AggregatedStatus=_STR, Service=_ref("AgentService"),
                               Checks=_array(_ANY)),
    # NodeChecks is null for a session linked to no node check (Consul's nil slice, as a body with
    # "NodeChecks": null leaves it; Proconsul answers null for any session without one).
    "Session": _obj(("ID", "Node"), ID=_STR, Name=_STR, Node=_STR, LockDelay=_INT, Behavior=_STR, TTL=_STR,
                    NodeChecks={**_array(_STR), "nullable": True}, CreateIndex=_UINT, ModifyIndex=_UINT),
    "CARoots": _obj(("ActiveRootID", "Roots"), ActiveRootID=_STR, TrustDomain=_STR, Roots=_array(_obj(
        ID=_STR, Name=_STR, RootCert=_STR, Active=_BOOL,
        # Proconsul's addition on a rotated-out root (Consul keeps the time but does not publish it).
        RotatedOutAt={"type": "string", "format": "date-time"}))),
    "ServiceTopologySummary": _obj(
        ("Name", "InstanceCount", "Source", "Intention"), Kind=_STR, Name=_STR, Datacenter=_STR,
        Tags={"type": "array", "items": _STR, "nullable": True}, Nodes={"type": "array", "items": _STR, "nullable": True},
        InstanceCount=_INT, ChecksPassing=_INT, ChecksWarning=_INT, ChecksCritical=_INT, TransparentProxy=_BOOL,
        ConnectNative=_BOOL, Source={"type": "string", "enum": ["proxy-registration", "specific-intention",
                                                               "wildcard-intention", "default-allow",
                                                               "routing-config"]},
        Intention=_obj(("Allowed", "HasPermissions", "ExternalSource", "HasExact", "DefaultAllow"),
                       Allowed=_BOOL, HasPermissions=_BOOL, ExternalSource=_STR, HasExact=_BOOL, DefaultAllow=_BOOL)),
    "IssuedCert": _obj(("SerialNumber", "CertPEM", "PrivateKeyPEM", "Service"), SerialNumber=_STR, CertPEM=_STR,
                       PrivateKeyPEM=_STR, Service=_STR, ServiceURI=_STR, ValidAfter=_STR, ValidBefore=_STR),
    "IntentionOut": _obj(("SourceName", "DestinationName"), ID=_STR, SourceName=_STR, DestinationName=_STR,
                         Action=_STR, Precedence=_INT),
    "ACLTokenOut": _obj(("AccessorID", "SecretID"), AccessorID=_STR, SecretID=_STR, Description=_STR,
                        Local=_BOOL, CreateIndex=_UINT, ModifyIndex=_UINT),
    "PreparedQueryOut": _obj(("ID", "Service"), ID=_STR, Name=_STR, Session=_STR, Token=_STR,
                             Template={"type": "object"}, Service={"type": "object"}, DNS=_obj(TTL=_STR),
                             CreateIndex=_UINT, ModifyIndex=_UINT),
    "PreparedQueryResult": _obj(("Service", "Nodes", "Datacenter", "Failovers"), Service=_STR,
                                Nodes=_array(_ref("ServiceEntry")), DNS=_obj(TTL=_STR), Datacenter=_STR,
                                PeerName=_STR, Failovers=_INT, Index=_UINT),
    "MetricsSummary": _obj(("Timestamp", "Gauges", "Points", "Counters", "Samples"), Timestamp=_STR,
                           Gauges=_array(_obj(("Name", "Value", "Labels"), Name=_STR, Value={"type": "number"},
                                              Labels=STRING_MAP)),
                           PrecisionGauges=_array(_ANY), Points=_array(_ANY),
                           Counters=_array(_ref("MetricsSampled")), Samples=_array(_ref("MetricsSampled"))),
    "MetricsSampled": _obj(("Name", "Count", "Sum", "Min", "Max", "Mean", "Stddev", "Labels"), Name=_STR,
                           Count=_UINT, Rate={"type": "number"}, Sum={"type": "number"}, Min={"type": "number"},
                           Max={"type": "number"}, Mean={"type": "number"}, Stddev={"type": "number"},
                           Labels=STRING_MAP),
    "TxnResult": _obj(("Results", "Errors"),
                      Results={"type": "array", "nullable": True, "items": _obj(KV=_ref("KVPair"))},
                      Errors={"type": "array", "nullable": True, "items": _obj(OpIndex=_INT, What=_STR)}),
}  # fmt: skip

# ---------------------------------------------------------------------- parameters

_BOOL_FLAG = {"type": "boolean"}
PARAMETERS: dict[str, dict[str, Any]] = {
    "dc": {"description": "The datacenter to query; defaults to the agent's. An unknown one answers 500 "
                          "No path to datacenter.", "schema": _STR},
    "index": {"description": "Blocking query: wait until the result's index passes this one.",
              "schema": {"type": "integer", "minimum": 0}},
    "wait": {"description": "Blocking query: how long to wait (Go duration, capped by max_query_time).",
             "schema": DURATION},
    "stale": {"description": "Any server may answer, however far behind (presence enables).",
              "schema": _BOOL_FLAG, "allowEmptyValue": True},
    "consistent": {"description": "The leader confirms its leadership before answering (presence enables).",
                   "schema": _BOOL_FLAG, "allowEmptyValue": True},
    "filter": {"description": "A filter expression over the answer's items; one that does not compile "
                              "answers 500, as in Consul.", "schema": _STR},
    "node-meta": {"description": "key:value of node metadata; repeat for several.", "schema": _array(_STR),
                  "style": "form", "explode": True},
    "near": {"description": "Sort by estimated round-trip time from this node (_agent: the agent's own; on a "
                            "prepared query also _ip: the node at the caller's address); nodes without a "
                            "coordinate last.", "schema": _STR},
    "segment": {"description": "Only the coordinates of this network segment (present, even empty).",
                "schema": _STR},
    "tag": {"description": "Only instances with this tag; repeat for several.", "schema": _array(_STR),
            "style": "form", "explode": True},
    "passing": {"description": "Only instances whose checks all pass.", "schema": _BOOL_FLAG,
                "allowEmptyValue": True},
    "recurse": {"description": "Every key under the prefix (presence enables).", "schema": _BOOL_FLAG,
                "allowEmptyValue": True},
    "keys": {"description": "Only the keys under the prefix (presence enables).", "schema": _BOOL_FLAG,
             "allowEmptyValue": True},
    "separator": {"description": "With ?keys: list keys only up to this separator.", "schema": _STR},
    "raw": {"description": "The value's bytes as stored, not JSON (presence enables).", "schema": _BOOL_FLAG,
            "allowEmptyValue": True},
    "compile-dc": {"description": "The datacenter the chain is compiled for (default: this agent's).",
                   "schema": _STR},
    "cas": {"description": "Check-and-set: write only when the entry's ModifyIndex is this (0: only if absent).",
            "schema": {"type": "integer", "minimum": 0}},
    "loglevel": {"description": "The lowest level of the lines to stream: trace, debug, info (default), warn, "
                              "error.", "schema": _STR},
    "logjson": {"description": "Stream JSON lines (presence enables).", "schema": _BOOL_FLAG, "allowEmptyValue": True},
    "relay-factor": {"description": "Relay each member's answer through this many other members (0-5).",
                     "schema": _INT},
    "local-only": {"description": "List the keys of this datacenter's pool only (lists only).", "schema": _BOOL},
    "global": {"description": "Usage of every known datacenter, not only this one (presence enables).",
               "schema": _BOOL_FLAG, "allowEmptyValue": True},
    "flags": {"description": "An opaque unsigned 64-bit number stored with the key.",
              "schema": {"type": "integer", "minimum": 0}},
    "acquire": {"description": "Take the key's lock for this session.", "schema": _STR},
    "release": {"description": "Release the key's lock held by this session.", "schema": _STR},
    "wan": {"description": "The WAN gossip pool instead of the LAN pool (only servers are in one).",
            "schema": _STR},
    "prune": {"description": "Also forget the member at once (presence enables).", "schema": _BOOL_FLAG,
              "allowEmptyValue": True},
    "replace-existing-checks": {"description": "Replace the service's checks instead of adding to them.",
                                "schema": _BOOL_FLAG, "allowEmptyValue": True},
    "enable": {"description": "true to enter maintenance, false to leave it.", "required": True,
               "schema": _BOOL_FLAG},
    "reason": {"description": "Why, shown in the maintenance check's notes.", "schema": _STR},
    "note": {"description": "The check's new output.", "schema": _STR},
    "format": {"description": "text: answer an agent health endpoint's aggregated status as plain text; "
                              "prometheus: answer /v1/agent/metrics in Prometheus' text format (0.0.4).",
               "schema": {"type": "string", "enum": ["text", "prometheus"]}},
    "pem": {"description": "Answer with the roots as a PEM chain.", "schema": _BOOL_FLAG},
    "source": {"description": "The source service ([namespace/]name).", "required": True, "schema": _STR},
    "destination": {"description": "The destination service ([namespace/]name).", "required": True,
                    "schema": _STR},
    "by": {"description": "Match intentions by source or by destination.", "required": True,
           "schema": {"type": "string", "enum": ["source", "destination"]}},
    "name": {"description": "The service to match; repeat for several.", "required": True,
             "schema": _array(_STR), "style": "form", "explode": True},
    "source-type": {"description": "The source's type; only consul.", "schema": {"type": "string", "enum": ["consul"]}},
    "id": {"description": "A Raft server's ID.", "schema": _STR},
    "address": {"description": "A Raft server's address (ip:port).", "schema": _STR},
    "policy": {"description": "Only the tokens or roles that link this policy ID.", "schema": _STR},
    "role": {"description": "Only the tokens that link this role ID.", "schema": _STR},
    "authmethod": {"description": "Only what this auth method made (tokens) or owns (binding rules).",
                   "schema": _STR},
    "servicename": {"description": "Only the tokens with this service identity.", "schema": _STR},
    "limit": {"description": "At most this many instances, after sorting or shuffling.", "schema": _INT},
    "connect": {"description": "Only Connect-capable instances (proxies and native services).",
                "schema": _BOOL_FLAG},
    "pretty": {"description": "Indent the JSON answer (presence enables).", "schema": _BOOL_FLAG,
               "allowEmptyValue": True},
    # Parameters that share a name with another of a different meaning: ``param`` is the name sent.
    "event-node": {"param": "node", "description": "A regular expression (Go's syntax) on the node names that "
                   "keep the event.", "schema": _STR},
    "event-service": {"param": "service", "description": "A regular expression on the service IDs of the "
                      "agents that keep the event.", "schema": _STR},
    "event-tag": {"param": "tag", "description": "A regular expression on those services' tags (needs "
                  "?service).", "schema": _STR},
    "event-name": {"param": "name", "description": "Only the events of this name.", "schema": _STR},
    "topology-kind": {"param": "kind", "description": "The service's kind: empty for a typical service, or "
                      "ingress-gateway (required; another kind answers 400).", "required": True,
                      "schema": {"type": "string", "enum": ["", "ingress-gateway"]}, "allowEmptyValue": True},
}  # fmt: skip

# Path parameters: Consul's API reference names them. ID-like names never hold a "/" (one would reach
# another route); KV keys and config entry names may.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "key": {"description": "The key (slashes included).", "schema": {"type": "string", "minLength": 1}},
    "service": {"description": "The service's name.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "node": {"description": "The node's name.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "address": {"description": "A gossip address: host, or host:port (8301 by default).",
                "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "gateway": {"description": "The gateway service's name.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "state": {"description": "The check state.",
              "schema": {"type": "string", "enum": ["any", "passing", "warning", "critical"]}},
    "uuid": {"description": "The ID.", "schema": {"type": "string", "format": "uuid"}},
    "service_id": {"description": "The service instance's ID.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "check_id": {"description": "The check's ID.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "service_name": {"description": "The service's name.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "kind": {"description": "The config entry kind (the kinds this agent stores; others answer 400).",
             "schema": _CONFIG_KIND},
    "name": {"description": "The name.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "AccessorID": {"description": "The token's AccessorID.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
    "id": {"description": "The ID.", "schema": {"type": "string", "pattern": "^[^/]+$"}},
}  # fmt: skip

# A prefix route -> the templated path(s) it serves, in Consul's words.
PATH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "/v1/agent/check/deregister/": ("/v1/agent/check/deregister/{check_id}",),
    "/v1/agent/check/fail/": ("/v1/agent/check/fail/{check_id}",),
    "/v1/agent/check/pass/": ("/v1/agent/check/pass/{check_id}",),
    "/v1/agent/check/update/": ("/v1/agent/check/update/{check_id}",),
    "/v1/agent/check/warn/": ("/v1/agent/check/warn/{check_id}",),
    "/v1/agent/connect/ca/leaf/": ("/v1/agent/connect/ca/leaf/{service}",),
    "/v1/agent/join/": ("/v1/agent/join/{address}",),
    "/v1/agent/force-leave/": ("/v1/agent/force-leave/{node}",),
    "/v1/agent/health/service/id/": ("/v1/agent/health/service/id/{service_id}",),
    "/v1/agent/health/service/name/": ("/v1/agent/health/service/name/{service_name}",),
    "/v1/agent/service/": ("/v1/agent/service/{service_id}",),
    "/v1/agent/service/deregister/": ("/v1/agent/service/deregister/{service_id}",),
    "/v1/agent/service/maintenance/": ("/v1/agent/service/maintenance/{service_id}",),
    "/v1/catalog/connect/": ("/v1/catalog/connect/{service}",),
    "/v1/catalog/gateway-services/": ("/v1/catalog/gateway-services/{gateway}",),
    "/v1/catalog/node-services/": ("/v1/catalog/node-services/{node}",),
    "/v1/catalog/node/": ("/v1/catalog/node/{node}",),
    "/v1/catalog/service/": ("/v1/catalog/service/{service}",),
    "/v1/config/": ("/v1/config/{kind}", "/v1/config/{kind}/{name}"),
    "/v1/discovery-chain/": ("/v1/discovery-chain/{service}",),
    "/v1/internal/ui/service-topology/": ("/v1/internal/ui/service-topology/{service}",),
    "/v1/connect/intentions/": ("/v1/connect/intentions/{uuid}",),
    "/v1/health/checks/": ("/v1/health/checks/{service}",),
    "/v1/health/connect/": ("/v1/health/connect/{service}",),
    "/v1/health/ingress/": ("/v1/health/ingress/{service}",),
    "/v1/health/node/": ("/v1/health/node/{node}",),
    "/v1/health/service/": ("/v1/health/service/{service}",),
    "/v1/health/state/": ("/v1/health/state/{state}",),
    "/v1/kv/": ("/v1/kv/{key}",),
    "/v1/session/destroy/": ("/v1/session/destroy/{uuid}",),
    "/v1/event/fire/": ("/v1/event/fire/{name}",),
    "/v1/coordinate/node/": ("/v1/coordinate/node/{node}",),
    # Execute and explain take an ID or a name; reading one takes the ID.
    "/v1/query/": ("/v1/query/{uuid}", "/v1/query/{uuid}/execute", "/v1/query/{uuid}/explain"),
    "/v1/session/info/": ("/v1/session/info/{uuid}",),
    "/v1/session/node/": ("/v1/session/node/{node}",),
    "/v1/session/renew/": ("/v1/session/renew/{uuid}",),
    "/v1/acl/token/": ("/v1/acl/token/{AccessorID}",),
    "/v1/acl/policy/": ("/v1/acl/policy/{id}",),
    "/v1/acl/policy/name/": ("/v1/acl/policy/name/{name}",),
    "/v1/acl/role/": ("/v1/acl/role/{id}",),
    "/v1/acl/role/name/": ("/v1/acl/role/name/{name}",),
    "/v1/acl/auth-method/": ("/v1/acl/auth-method/{name}",),
    "/v1/acl/binding-rule/": ("/v1/acl/binding-rule/{id}",),
    "/v1/acl/templated-policy/name/": ("/v1/acl/templated-policy/name/{name}",),
    # Consul documents each agent token at its own path.
    "/v1/agent/token/": tuple(f"/v1/agent/token/{kind}" for kind in (
        "default", "agent", "agent_recovery", "replication", "config_file_service_registration")),
}
# A method of a prefix route served on only some of its templated paths (Consul deletes a config entry
# by kind and name, never a whole kind).
METHOD_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("DELETE", "/v1/config/"): ("/v1/config/{kind}/{name}",),
    ("PUT", "/v1/acl/token/"): ("/v1/acl/token/{AccessorID}", "/v1/acl/token/{AccessorID}/clone"),
    ("PUT", "/v1/query/"): ("/v1/query/{uuid}",),
    ("DELETE", "/v1/query/"): ("/v1/query/{uuid}",),
}

# ---------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Op:
    """What the description says of one (method, route) beyond the route table: its query parameters,
    its request body (a component schema name, or a media type for raw bytes), its success answers
    (status -> (media type, schema) or None for an empty body) and the error statuses it may give
    besides the ones every operation of its kind gives."""

    query: tuple[str, ...] = ()
    body: str | None = None
    ok: dict[int, tuple[str, dict[str, Any]] | None] = field(default_factory=lambda: {200: (JSON, _ANY)})
    errors: tuple[int, ...] = ()
    blocking: bool = False
    # The 500s Consul itself answers for this operation's bad input or state, by the start of their text
    # (an RPC error Consul's HTTP layer does not map to a 4xx); any other 5xx is a bug.
    server_errors: tuple[str, ...] = ()
    # What a 404 carries: Consul's plain text, an empty body (a blocking read of nothing), or JSON.
    not_found: tuple[str, ...] = (TEXT,)


BLOCKING = ("dc", "index", "wait", "stale", "consistent")
NO_DC = "No path to datacenter"
BAD_FILTER = ERROR_PREFIX.rstrip(": ")
# Consul's session create refuses these in its RPC, so its HTTP API answers them with 500.
SESSION_500 = ("Session TTL", "Invalid Session TTL", "Invalid Behavior setting", "Invalid session behavior", "Must provide Node",
               "Missing node registration", "Missing check", "Check '")  # fmt: skip
# Consul's state store refuses a lock (?acquire) with no session or one that does not exist, and a release
# (?release) with no session, in its KVS.Apply RPC (kvsLockTxn, kvsUnlockTxn): its HTTP API answers 500.
KV_LOCK_500 = ("missing session", 'invalid session "')
# Consul's agent answers a TTL update of a check that is not a TTL check (an alias, a gRPC check...) with 500.
NOT_TTL = ('CheckID "',)
_TRUE = (JSON, _BOOL)
KEYRING_500 = ("1 error occurred:", "2 errors occurred:", "keyring operations are not available")
_EMPTY: dict[int, tuple[str, dict[str, Any]] | None] = {200: None}


def _json(schema: dict[str, Any]) -> dict[int, tuple[str, dict[str, Any]] | None]:
    return {200: (JSON, schema)}


OPERATIONS: dict[tuple[str, str], Op] = {
    # ---- agent
    ("GET", "/v1/agent/self"): Op(ok=_json({"type": "object"})),
    ("GET", "/v1/agent/host"): Op(ok=_json({"type": "object"})),
    ("GET", "/v1/agent/members"): Op(ok=_json(_array(_obj(("Name", "Addr"), Name=_STR, Addr=_STR)))),
    ("GET", "/v1/agent/version"): Op(ok=_json(_obj(("HumanVersion",), HumanVersion=_STR))),
    # JSON by default; ?format=prometheus answers text/plain; version=0.0.4, or 415 while
    # telemetry.prometheus_retention_time is not positive.
    ("GET", "/v1/agent/metrics"): Op(query=("format",), ok=_json(_ref("MetricsSummary")), errors=(415,)),
    ("GET", "/v1/agent/metrics/stream"): Op(ok=_json(_ref("MetricsSummary"))),
    ("GET", "/v1/agent/services"): Op(query=("filter",), ok=_json({"type": "object",
                                                                  "additionalProperties": _ref("AgentService")})),
    ("GET", "/v1/agent/service/"): Op(ok=_json(_ref("AgentService")), errors=(404, 405)),
    ("GET", "/v1/agent/checks"): Op(query=("filter",), ok=_json({"type": "object"})),
    ("PUT", "/v1/agent/service/register"): Op(query=("replace-existing-checks",), body="ServiceDefinition",
                                              ok=_EMPTY),
    ("PUT", "/v1/agent/service/deregister/"): Op(ok=_EMPTY, errors=(404,)),
    ("PUT", "/v1/agent/service/maintenance/"): Op(query=("enable", "reason"), ok=_EMPTY, errors=(404,)),
    ("PUT", "/v1/agent/maintenance"): Op(query=("enable", "reason"), ok=_EMPTY),
    ("PUT", "/v1/agent/check/register"): Op(body="CheckDefinition", ok=_EMPTY),
    ("PUT", "/v1/agent/check/deregister/"): Op(ok=_EMPTY, errors=(404,)),
    ("PUT", "/v1/agent/check/pass/"): Op(query=("note",), ok=_EMPTY, errors=(404,), server_errors=NOT_TTL),
    ("PUT", "/v1/agent/check/warn/"): Op(query=("note",), ok=_EMPTY, errors=(404,), server_errors=NOT_TTL),
    ("PUT", "/v1/agent/check/fail/"): Op(query=("note",), ok=_EMPTY, errors=(404,), server_errors=NOT_TTL),
    ("PUT", "/v1/agent/check/update/"): Op(body="CheckUpdate", ok=_EMPTY, errors=(404,), server_errors=NOT_TTL),
    # 200 passing, 429 warning, 503 critical: Consul's status codes for the aggregated health.
    ("GET", "/v1/agent/health/service/name/"): Op(query=("format",), ok={
        200: (JSON, _array(_ref("AgentServiceHealth"))), 429: (JSON, _array(_ref("AgentServiceHealth"))),
        503: (JSON, _array(_ref("AgentServiceHealth")))}, errors=(404,), not_found=(JSON, TEXT)),
    ("GET", "/v1/agent/health/service/id/"): Op(query=("format",), ok={
        200: (JSON, _ref("AgentServiceHealth")), 429: (JSON, _ref("AgentServiceHealth")),
        503: (JSON, _ref("AgentServiceHealth"))}, errors=(404,), not_found=(JSON, TEXT)),
    ("GET", "/v1/agent/monitor"): Op(query=("loglevel", "logjson"), ok={200: (TEXT, {"type": "string"})},
                                    errors=(400,), server_errors=("Streaming not supported",)),
    ("PUT", "/v1/agent/reload"): Op(ok=_EMPTY),
    ("PUT", "/v1/agent/leave"): Op(ok=_EMPTY),
    # A join that reached no one, or a WAN join, is Consul's 500 with the gossip layer's errors.
    ("PUT", "/v1/agent/join/"): Op(query=("wan",), ok=_EMPTY, server_errors=(
        "1 error occurred", "Must be a server", "WAN join is not supported")),
    ("PUT", "/v1/agent/force-leave/"): Op(query=("prune", "wan"), ok=_EMPTY, server_errors=(
        "agent: No node found with name", "Must be a server")),
    # ---- catalog
    ("PUT", "/v1/catalog/register"): Op(query=("dc",), body="CatalogRegistration", ok={200: _TRUE}),
    ("PUT", "/v1/catalog/deregister"): Op(query=("dc",), body="CatalogDeregistration", ok={200: _TRUE}),
    ("GET", "/v1/catalog/datacenters"): Op(ok=_json(_array(_STR))),
    ("GET", "/v1/catalog/nodes"): Op(query=(*BLOCKING, "near", "node-meta", "filter"), blocking=True,
                                     ok=_json(_array(_ref("Node")))),
    ("GET", "/v1/catalog/services"): Op(query=(*BLOCKING, "node-meta", "filter"), blocking=True,
                                        ok=_json({"type": "object", "additionalProperties": _array(_STR)})),
    ("GET", "/v1/catalog/service/"): Op(query=(*BLOCKING, "tag", "near", "node-meta", "filter"), blocking=True,
                                        ok=_json(_array(_ref("CatalogService")))),
    ("GET", "/v1/catalog/connect/"): Op(query=(*BLOCKING, "tag", "near", "node-meta", "filter"), blocking=True,
                                        ok=_json(_array(_ref("CatalogService")))),
    ("GET", "/v1/catalog/gateway-services/"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_obj(
        ("Gateway", "Service", "GatewayKind"), Gateway={"type": "object"}, Service={"type": "object"},
        GatewayKind=_STR)))),
    ("GET", "/v1/catalog/node/"): Op(query=(*BLOCKING, "filter"), blocking=True, ok=_json({
        "nullable": True, **_obj(Node=_ref("Node"), Services={"type": "object"})})),
    ("GET", "/v1/catalog/node-services/"): Op(query=(*BLOCKING, "filter"), blocking=True, ok=_json(_obj(
        Node={"nullable": True, **_ref("Node")}, Services=_array(_ref("NodeService"))))),
    # ---- health
    ("GET", "/v1/health/service/"): Op(query=(*BLOCKING, "passing", "tag", "near", "node-meta", "filter"),
                                       blocking=True, ok=_json(_array(_ref("ServiceEntry")))),
    ("GET", "/v1/health/connect/"): Op(query=(*BLOCKING, "passing", "tag", "near", "node-meta", "filter"),
                                       blocking=True, ok=_json(_array(_ref("ServiceEntry")))),
    ("GET", "/v1/health/ingress/"): Op(query=(*BLOCKING, "passing"), blocking=True,
                                       ok=_json(_array(_ref("ServiceEntry")))),
    ("GET", "/v1/health/checks/"): Op(query=(*BLOCKING, "near", "node-meta", "filter"), blocking=True,
                                      ok=_json(_array(_ref("HealthCheck")))),
    ("GET", "/v1/health/node/"): Op(query=(*BLOCKING, "filter"), blocking=True,
                                    ok=_json(_array(_ref("HealthCheck")))),
    ("GET", "/v1/health/state/"): Op(query=(*BLOCKING, "near", "node-meta", "filter"), blocking=True,
                                     ok=_json(_array(_ref("HealthCheck")))),
    # ---- the web UI's read endpoints (Consul's agent/ui_endpoint.go shapes)
    ("GET", "/v1/internal/ui/services"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_obj(
        ("Name", "Datacenter", "Tags", "Nodes", "InstanceCount", "ChecksPassing", "ChecksWarning",
         "ChecksCritical"), Kind=_STR, Name=_STR, Datacenter=_STR, Tags=_array(_STR), Nodes=_array(_STR),
        ExternalSources=_array(_STR), InstanceCount={"type": "integer"}, ChecksPassing={"type": "integer"},
        ChecksWarning={"type": "integer"}, ChecksCritical={"type": "integer"}, GatewayConfig={"type": "object"},
        TransparentProxy={"type": "boolean"}, ConnectNative={"type": "boolean"},
        ConnectedWithProxy={"type": "boolean"}, ConnectedWithGateway={"type": "boolean"})))),
    ("GET", "/v1/internal/ui/nodes"): Op(query=BLOCKING, blocking=True, ok=_json(_array({"type": "object"}))),
    ("GET", "/v1/internal/ui/service-topology/"): Op(query=(*BLOCKING, "topology-kind"), blocking=True, ok=_json(_obj(
        ("Protocol", "TransparentProxy", "Upstreams", "Downstreams", "FilteredByACLs"), Protocol=_STR,
        TransparentProxy=_BOOL, FilteredByACLs=_BOOL, Upstreams=_array(_ref("ServiceTopologySummary")),
        Downstreams=_array(_ref("ServiceTopologySummary"))))),
    # ---- kv
    ("GET", "/v1/kv/"): Op(query=(*BLOCKING, "recurse", "keys", "separator", "raw"), blocking=True, ok={
        200: (JSON, {"oneOf": [_array(_ref("KVPair")), _array(_STR)]})}, errors=(404,), not_found=()),
    ("PUT", "/v1/kv/"): Op(query=("dc", "flags", "cas", "acquire", "release"), body=OCTETS, ok={200: _TRUE},
                           errors=(413,), server_errors=KV_LOCK_500),
    ("DELETE", "/v1/kv/"): Op(query=("dc", "recurse", "cas"), ok={200: _TRUE}),
    # ---- status
    ("GET", "/v1/status/leader"): Op(ok=_json(_STR)),
    ("GET", "/v1/status/peers"): Op(ok=_json(_array(_STR))),
    # ---- operator and snapshot
    ("GET", "/v1/operator/raft/configuration"): Op(query=("dc", "stale"), ok=_json(_obj(
        ("Servers", "Index"), Servers=_array({"type": "object"}), Index=_UINT))),
    ("DELETE", "/v1/operator/raft/peer"): Op(query=("dc", "id", "address"), ok=_EMPTY, server_errors=("",)),
    ("POST", "/v1/operator/raft/transfer-leader"): Op(query=("id",), ok=_json(_obj(Success=_BOOL)),
                                                      server_errors=("Cannot transfer leadership",)),
    ("GET", "/v1/operator/autopilot/configuration"): Op(query=("dc", "stale"), ok=_json(_ref("AutopilotConfiguration")),
                                                         server_errors=("autopilot config not initialized yet",)),
    ("PUT", "/v1/operator/autopilot/configuration"): Op(query=("dc", "cas"), body="AutopilotConfiguration",
                                                         ok={200: _TRUE}),
    ("GET", "/v1/operator/autopilot/health"): Op(query=("dc",), ok={
        200: (JSON, _ref("OperatorHealthReply")), 429: (JSON, _ref("OperatorHealthReply"))}),
    ("GET", "/v1/operator/autopilot/state"): Op(query=("dc",), ok=_json(_ref("AutopilotState"))),
    # A failure on any member answers 500 with Consul's multi-error text (the pool's, then each member's).
    ("GET", "/v1/operator/keyring"): Op(query=("relay-factor", "local-only"), ok=_json(_array(_ref("KeyringResponse"))),
                                        server_errors=KEYRING_500),
    ("POST", "/v1/operator/keyring"): Op(query=("relay-factor",), body="KeyringRequest", ok=_EMPTY,
                                         server_errors=KEYRING_500),
    ("PUT", "/v1/operator/keyring"): Op(query=("relay-factor",), body="KeyringRequest", ok=_EMPTY,
                                        server_errors=KEYRING_500),
    ("DELETE", "/v1/operator/keyring"): Op(query=("relay-factor",), body="KeyringRequest", ok=_EMPTY,
                                           server_errors=KEYRING_500),
    ("GET", "/v1/operator/usage"): Op(query=(*BLOCKING, "global"), blocking=True, ok=_json(_obj(
        ("Usage",), Usage={"type": "object", "additionalProperties": _ref("ServiceUsage")}, Index=_UINT,
        KnownLeader=_BOOL, ConsistencyLevel=_STR))),
    ("GET", "/v1/snapshot"): Op(query=("dc", "stale"), ok={200: (OCTETS, {"type": "string", "format": "binary"})}),
    ("PUT", "/v1/snapshot"): Op(query=("dc",), body=OCTETS, ok=_EMPTY, errors=(413,)),
    # ---- session
    ("PUT", "/v1/session/create"): Op(query=("dc",), body="SessionRequest", ok=_json(_obj(("ID",), ID=_STR)),
                                      server_errors=SESSION_500),
    ("PUT", "/v1/session/destroy/"): Op(query=("dc",), ok={200: _TRUE}),
    ("PUT", "/v1/session/renew/"): Op(query=BLOCKING, ok=_json(_array(_ref("Session"))), errors=(404,)),
    ("GET", "/v1/session/info/"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_ref("Session")))),
    ("GET", "/v1/session/node/"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_ref("Session")))),
    ("GET", "/v1/session/list"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_ref("Session")))),
    # ---- txn: 409 with Errors when an operation failed (Consul's rollback answer)
    ("PUT", "/v1/txn"): Op(query=("dc", "stale", "consistent"), body="TxnOps", ok={
        200: (JSON, _ref("TxnResult")), 409: (JSON, _ref("TxnResult"))}, errors=(413,)),
    # ---- connect
    ("GET", "/v1/connect/ca/roots"): Op(query=(*BLOCKING, "pem"), blocking=True, ok={
        200: (JSON, _ref("CARoots"))}, errors=()),
    ("GET", "/v1/connect/ca/configuration"): Op(query=BLOCKING, blocking=True, ok=_json({"type": "object"})),
    ("PUT", "/v1/connect/ca/configuration"): Op(query=("dc",), body="CAConfiguration", ok=_EMPTY),
    ("GET", "/v1/agent/connect/ca/roots"): Op(query=BLOCKING, blocking=True, ok=_json(_ref("CARoots"))),
    ("GET", "/v1/agent/connect/ca/leaf/"): Op(query=("index", "wait"), blocking=True, ok=_json(_ref("IssuedCert")),
                                              errors=(429,)),
    ("POST", "/v1/agent/connect/authorize"): Op(body="AuthorizeRequest", ok=_json(_obj(
        ("Authorized", "Reason"), Authorized=_BOOL, Reason=_STR))),
    ("GET", "/v1/connect/intentions"): Op(query=(*BLOCKING, "filter"), blocking=True,
                                          ok=_json(_array(_ref("IntentionOut")))),
    ("POST", "/v1/connect/intentions"): Op(query=("dc",), body="Intention", ok=_json(_obj(("ID",), ID=_STR))),
    ("GET", "/v1/connect/intentions/exact"): Op(query=(*BLOCKING, "source", "destination"), blocking=True,
                                                ok=_json(_ref("IntentionOut")), errors=(404,)),
    ("PUT", "/v1/connect/intentions/exact"): Op(query=("dc", "source", "destination"), body="IntentionExact",
                                                ok={200: _TRUE}),
    ("DELETE", "/v1/connect/intentions/exact"): Op(query=("dc", "source", "destination"), ok={200: _TRUE}),
    ("GET", "/v1/connect/intentions/match"): Op(query=(*BLOCKING, "by", "name"), blocking=True, ok=_json({
        "type": "object", "additionalProperties": _array(_ref("IntentionOut"))})),
    ("GET", "/v1/connect/intentions/check"): Op(query=(*BLOCKING, "source", "destination", "source-type"),
                                                blocking=True, ok=_json(_obj(("Allowed",), Allowed=_BOOL))),
    ("GET", "/v1/connect/intentions/"): Op(query=BLOCKING, blocking=True, ok=_json(_ref("IntentionOut")),
                                           errors=(404,)),
    ("PUT", "/v1/connect/intentions/"): Op(query=("dc",), body="Intention", ok=_EMPTY, errors=(404,)),
    ("DELETE", "/v1/connect/intentions/"): Op(query=("dc",), ok={200: _TRUE}, errors=(404,)),
    # ---- prepared queries
    ("POST", "/v1/query"): Op(query=("dc",), body="PreparedQuery", ok=_json(_obj(("ID",), ID=_STR)),
                              server_errors=(NO_DC,)),
    ("GET", "/v1/query"): Op(query=BLOCKING, blocking=True, ok=_json(_array(_ref("PreparedQueryOut"))),
                             server_errors=(NO_DC,)),
    ("GET", "/v1/query/"): Op(query=(*BLOCKING, "near", "limit", "connect"), blocking=True, ok=_json({"oneOf": [
        _array(_ref("PreparedQueryOut")), _ref("PreparedQueryResult"),
        _obj(("Query",), Query=_ref("PreparedQueryOut"))]}), errors=(404,), server_errors=(NO_DC,)),
    ("PUT", "/v1/query/"): Op(query=("dc",), body="PreparedQuery", ok=_EMPTY, errors=(404, 405),
                              server_errors=(NO_DC,)),
    ("DELETE", "/v1/query/"): Op(query=("dc",), ok=_EMPTY, errors=(404, 405), server_errors=(NO_DC,)),
    # ---- network coordinates: 401 "Coordinate support disabled" with disable_coordinates, as Consul answers
    ("GET", "/v1/coordinate/datacenters"): Op(ok=_json(_array(_obj(("Datacenter", "AreaID", "Coordinates"),
        Datacenter=_STR, AreaID=_STR, Coordinates=_array(_ref("Coordinate"))))), errors=(401,)),  # fmt: skip
    ("GET", "/v1/coordinate/nodes"): Op(query=(*BLOCKING, "segment"), blocking=True,
                                        ok=_json(_array(_ref("Coordinate"))), errors=(401,)),
    ("GET", "/v1/coordinate/node/"): Op(query=(*BLOCKING, "segment"), blocking=True,
                                        ok=_json(_array(_ref("Coordinate"))), errors=(401, 404), not_found=()),
    ("PUT", "/v1/coordinate/update"): Op(query=("dc",), body="CoordinateUpdate", ok=_EMPTY, errors=(401,)),
    # ---- user events
    ("PUT", "/v1/event/fire/"): Op(query=("dc", "event-node", "event-service", "event-tag"), body=OCTETS,
                                   ok=_json(_ref("UserEvent"))),
    ("GET", "/v1/event/list"): Op(query=("event-name", "index", "wait"), blocking=True,
                                  ok=_json(_array(_ref("UserEvent")))),
    # ---- config entries
    ("PUT", "/v1/config"): Op(query=("dc", "cas"), body="ConfigEntry", ok={200: _TRUE}),
    ("GET", "/v1/config/"): Op(query=(*BLOCKING, "filter"), blocking=True, ok=_json({}), errors=(404,)),
    ("DELETE", "/v1/config/"): Op(query=("dc", "cas"), ok=_json({}), errors=(404,)),
    # ---- discovery chain
    ("GET", "/v1/discovery-chain/"): Op(query=(*BLOCKING, "compile-dc"), blocking=True,
                                        ok=_json(_obj(("Chain",), Chain={"type": "object"})),
                                        server_errors=("no cluster ca config setup",)),
    ("POST", "/v1/discovery-chain/"): Op(query=(*BLOCKING, "compile-dc"), body="DiscoveryChainOverrides",
                                         blocking=True, ok=_json(_obj(("Chain",), Chain={"type": "object"})),
                                         server_errors=("no cluster ca config setup",)),
    # ---- ACL system: 401 "ACL support disabled" while acl.enabled is false, as Consul answers
    ("PUT", "/v1/acl/bootstrap"): Op(body="ACLBootstrap", ok=_json(_ref("ACLTokenOut")), errors=(401,)),
    ("PUT", "/v1/acl/token"): Op(body="ACLToken", ok=_json(_ref("ACLTokenOut")), errors=(401,)),
    ("GET", "/v1/acl/token/self"): Op(ok=_json(_ref("ACLTokenOut")), errors=(401, 403)),
    ("GET", "/v1/acl/token/"): Op(query=BLOCKING, ok=_json(_ref("ACLTokenOut")), errors=(401, 404)),
    ("PUT", "/v1/acl/token/"): Op(body="ACLToken", ok=_json(_ref("ACLTokenOut")), errors=(401, 404)),
    ("DELETE", "/v1/acl/token/"): Op(ok={200: _TRUE}, errors=(401, 404)),
    ("GET", "/v1/acl/tokens"): Op(query=(*BLOCKING, "policy", "role", "authmethod", "servicename"),
                                  ok=_json(_array({"type": "object"})), errors=(401,)),
    ("PUT", "/v1/acl/policy"): Op(body="ACLPolicy", ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/policy/name/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("GET", "/v1/acl/policy/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("PUT", "/v1/acl/policy/"): Op(body="ACLPolicy", ok=_json({"type": "object"}), errors=(401, 404)),
    ("DELETE", "/v1/acl/policy/"): Op(ok={200: _TRUE}, errors=(401, 404)),
    ("GET", "/v1/acl/policies"): Op(query=BLOCKING, ok=_json(_array({"type": "object"})), errors=(401,)),
    ("PUT", "/v1/acl/role"): Op(body="ACLRole", ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/role/name/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("GET", "/v1/acl/role/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("PUT", "/v1/acl/role/"): Op(body="ACLRole", ok=_json({"type": "object"}), errors=(401, 404)),
    ("DELETE", "/v1/acl/role/"): Op(ok={200: _TRUE}, errors=(401, 404)),
    ("GET", "/v1/acl/roles"): Op(query=(*BLOCKING, "policy"), ok=_json(_array({"type": "object"})), errors=(401,)),
    ("PUT", "/v1/acl/auth-method"): Op(body="ACLAuthMethod", ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/auth-method/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("PUT", "/v1/acl/auth-method/"): Op(body="ACLAuthMethod", ok=_json({"type": "object"}), errors=(401, 404)),
    ("DELETE", "/v1/acl/auth-method/"): Op(ok={200: _TRUE}, errors=(401, 404)),
    ("GET", "/v1/acl/auth-methods"): Op(query=BLOCKING, ok=_json(_array({"type": "object"})), errors=(401,)),
    ("PUT", "/v1/acl/binding-rule"): Op(body="ACLBindingRule", ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/binding-rule/"): Op(query=BLOCKING, ok=_json({"type": "object"}), errors=(401, 404)),
    ("PUT", "/v1/acl/binding-rule/"): Op(body="ACLBindingRule", ok=_json({"type": "object"}), errors=(401, 404)),
    ("DELETE", "/v1/acl/binding-rule/"): Op(ok={200: _TRUE}, errors=(401, 404)),
    ("GET", "/v1/acl/binding-rules"): Op(query=(*BLOCKING, "authmethod"), ok=_json(_array({"type": "object"})),
                                         errors=(401,)),
    ("GET", "/v1/acl/templated-policies"): Op(ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/replication"): Op(ok=_json({"type": "object"}), errors=(401,)),
    ("GET", "/v1/acl/templated-policy/name/"): Op(ok=_json({"type": "object"}), errors=(401, 404)),
    ("POST", "/v1/internal/acl/authorize"): Op(body="ACLAuthorizations", ok=_json(_array({"type": "object"})),
                                               errors=(401, 403)),
    ("PUT", "/v1/agent/token/"): Op(body="AgentToken", ok=_EMPTY, errors=(401, 404)),
    # A JWKS that cannot be fetched is a 500, as in Consul (the auth method's configuration is at fault).
    ("POST", "/v1/acl/login"): Op(body="ACLLogin", ok=_json(_ref("ACLTokenOut")), errors=(401, 403),
                                  server_errors=("",)),
    ("POST", "/v1/acl/logout"): Op(ok={200: _TRUE}, errors=(401, 403)),
}  # fmt: skip

# Operations whose handler reads no parameter and no body: nothing to refuse, no 400.
_NO_INPUT = frozenset({("GET", "/v1/status/leader"), ("GET", "/v1/status/peers"), ("GET", "/v1/agent/version"),
                       ("GET", "/v1/catalog/datacenters"), ("GET", "/v1/agent/self"), ("GET", "/v1/agent/members"),
                       ("PUT", "/v1/agent/reload"), ("PUT", "/v1/agent/leave")})  # fmt: skip
# Routes Proconsul serves only with Connect enabled; without it they answer 400 (Consul's words).
_CONNECT_PATHS = ("/v1/connect/", "/v1/agent/connect/")

_ERROR_WORDS = {
    401: "ACL support disabled (acl.enabled is false).",
    400: "Bad request: the input was refused (plain text says why, in Consul's words).",
    403: "Permission denied: the token lacks the ACL rule in x-consul-acl, or ACL not found.",
    404: "Not found.",
    405: "Method not allowed (the path names another route).",
    409: "Conflict.",
    413: "Request body too large.",
    415: "Unsupported media type: the format asked for is not enabled (Consul's words say why).",
    429: "Rate limited; Retry-After says when to come back.",
    500: "An error Consul answers with 500 (x-consul-errors lists how its text starts): an unknown datacenter, "
         "a ?filter that does not compile, a refusal from a server's RPC.",
}
_INDEX_HEADERS = {
    "X-Consul-Index": {"description": "The index of the answer, for the next blocking query.",
                       "schema": {"type": "integer", "minimum": 1}},
    "X-Consul-KnownLeader": {"description": "Whether the cluster has a known leader.",
                             "schema": {"type": "string", "enum": ["true", "false"]}},
    "X-Consul-LastContact": {"description": "Milliseconds since this server last heard from the leader.",
                             "schema": {"type": "integer", "minimum": 0}},
}  # fmt: skip


class OpenAPIError(ValueError):
    """The route table and this module's declarations disagree (a route without a description here)."""


def acl_rule(r: Route) -> str:
    """The ``x-consul-acl`` value: ``<resource>:<access>`` as Consul names a rule, or ``none``."""
    return "none" if r.resource == "none" else f"{r.resource}:{r.access}"


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path.removeprefix("/v1/")).strip("_")
    return f"{method.lower()}_{words}"


def _responses(method: str, r: Route, op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, content in sorted(op.ok.items()):
        resp: dict[str, Any] = {"description": "Success." if status == 200 else _ok_words(status, r.path)}
        if content is not None:
            media, schema = content
            resp["content"] = {media: {"schema": schema}}
            if media == JSON and (method, r.path) == ("GET", "/v1/kv/"):
                resp["content"][TEXT] = {"schema": {"type": "string"}}  # ?raw
            if r.path in ("/v1/agent/health/service/name/", "/v1/agent/health/service/id/"):
                resp["content"][TEXT] = {"schema": {"type": "string"}}  # ?format=text
            if r.path == "/v1/connect/ca/roots":
                resp["content"]["application/pem-certificate-chain"] = {"schema": {"type": "string"}}  # ?pem
        if op.blocking and status == 200:
            resp["headers"] = _INDEX_HEADERS
        out[str(status)] = resp
    errors = set(op.errors)
    if (method, r.path) not in _NO_INPUT or r.path.startswith(_CONNECT_PATHS):
        errors.add(400)
    if r.resource != "none":
        errors.add(403)
    server_errors = server_error_texts(r, op)
    if server_errors:
        errors.add(500)
    if op.body is not None:
        errors.add(413)
    for status in sorted(errors):
        if str(status) in out:
            continue
        resp: dict[str, Any] = {"description": _ERROR_WORDS[status]}
        media = op.not_found if status == 404 else (TEXT,)
        if media:
            resp["content"] = {m: {"schema": {"type": "string"} if m == TEXT else {}} for m in media}
        if status == 500:
            resp["x-consul-errors"] = list(server_errors)
        out[str(status)] = resp
    return out


def server_error_texts(r: Route, op: Op) -> tuple[str, ...]:
    """How each 500 this operation may answer starts, as Consul words it; listed in the description as
    ``x-consul-errors`` of its 500 response ("" stands for any text: an RPC error passed through)."""
    out = list(op.server_errors)
    if "dc" in op.query and r.takes_dc:
        out.append(NO_DC)
    if "filter" in op.query:
        out.append(BAD_FILTER)
    return tuple(dict.fromkeys(out))


def _ok_words(status: int, path: str = "") -> str:
    if path == "/v1/operator/autopilot/health" and status == 429:
        return "At least one server is unhealthy."
    return {409: "The transaction failed: Errors says which operation and why.",
            429: "Aggregated status warning.", 503: "Aggregated status critical."}.get(status, "Success.")  # fmt: skip


def _request_body(op: Op) -> dict[str, Any] | None:
    if op.body is None:
        return None
    if op.body == OCTETS:
        return {"required": False, "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}}}
    return {"required": op.body not in ("SessionRequest", "CheckUpdate"),
            "content": {JSON: {"schema": _ref(op.body)}}}


def _templates(method: str, r: Route) -> tuple[str, ...]:
    if not r.is_prefix:
        return (r.path,)
    special = METHOD_TEMPLATES.get((method, r.path))
    if special is not None:
        return special
    try:
        return PATH_TEMPLATES[r.path]
    except KeyError:
        raise OpenAPIError(f"{r.path}: a prefix route needs its templated path in PATH_TEMPLATES") from None


def _operation(method: str, r: Route, template: str) -> dict[str, Any]:
    try:
        op = OPERATIONS[(method, r.path)]
    except KeyError:
        raise OpenAPIError(f"{method} {r.path}: no entry in registry.api.openapi.OPERATIONS") from None
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, **PATH_PARAMETERS[name]}
        for name in re.findall(r"{([^}]+)}", template)
    ]
    params += [{"$ref": f"#/components/parameters/{q}"} for q in op.query]
    out: dict[str, Any] = {
        "operationId": _operation_id(method, template),
        "summary": r.summary,
        "tags": [template.split("/")[2]],
        "x-consul-acl": acl_rule(r),
        "x-consul-acl-name": r.name,
    }
    if params:
        out["parameters"] = params
    body = _request_body(op)
    if body is not None:
        out["requestBody"] = body
    out["responses"] = _responses(method, r, op)
    return out


def build_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes``: one operation per (method, templated path)."""
    unused = set(OPERATIONS) - {(m, r.path) for r in routes for m in r.methods}
    if routes is ROUTES and unused:
        raise OpenAPIError(f"OPERATIONS describes routes that are not served: {sorted(unused)}")
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        for method in r.methods:
            for template in _templates(method, r):
                paths.setdefault(template, {})[method.lower()] = _operation(method, r, template)
    ordered = {p: dict(sorted(paths[p].items())) for p in sorted(paths)}
    components: dict[str, Any] = {
        "securitySchemes": {
            "ConsulToken": {"type": "apiKey", "in": "header", "name": "X-Consul-Token",
                            "description": "The ACL token's SecretID, used when ?token is absent."},
            "BearerToken": {"type": "http", "scheme": "bearer",
                            "description": "Authorization: Bearer <SecretID>, used when neither ?token nor X-Consul-Token is given."},
            "TokenQuery": {"type": "apiKey", "in": "query", "name": "token",
                           "description": "?token=<SecretID>, looked at first (it ends up in logs and shell history: prefer the header)."},
        },
        "parameters": {key: {"name": spec.get("param", key), "in": "query",
                             **{k: v for k, v in spec.items() if k != "param"}}
                       for key, spec in PARAMETERS.items()},
        "schemas": SCHEMAS,
    }  # fmt: skip
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Proconsul HTTP API",
            "version": CONSUL_VERSION,
            "description": (
                "Consul's HTTP API as Proconsul serves it. Generated from the route table "
                "(registry/api/routes.py) by `python -m registry.api.openapi`; do not edit by hand. "
                "x-consul-acl on each operation is the ACL rule it needs (resource:access, or none), and "
                "x-consul-acl-name where the name the rule is checked against comes from. Without a token "
                "the agent's default token is used, else the anonymous token."
            ),
            "license": {"name": "MPL-2.0"},
        },
        "servers": [{"url": "http://127.0.0.1:8500"}],
        "security": [{"ConsulToken": []}, {"BearerToken": []}, {"TokenQuery": []}, {}],
        "tags": [{"name": t} for t in sorted({p.split("/")[2] for p in ordered})],
        "paths": ordered,
        "components": components,
    }


class _Dumper(yaml.SafeDumper):
    """Never emits anchors and aliases (shared dicts are written out each time: the file reads top to
    bottom, and schema loaders need no alias support)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(doc: dict[str, Any] | None = None) -> str:
    return yaml.dump(doc if doc is not None else build_document(), Dumper=_Dumper, sort_keys=False, width=110,
                     allow_unicode=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return generated_doc_main("registry.api.openapi", DOC_PATH, render_yaml, argv)


if __name__ == "__main__":
    raise SystemExit(main())
