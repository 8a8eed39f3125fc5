"""PUT /v1/txn: KV, Node, Service and Check operations applied atomically (Consul's transaction endpoint).

The body is decoded the way Consul's Go code decodes it into ``api.TxnOps`` (field names match
case-insensitively, ``Value`` is standard base64, numbers must fit their Go types, a check's durations are
Go duration strings or nanoseconds), with its status codes and texts: 413 for a body, an operation count or
a value over the limits, 400 ("Failed to parse body: ...") for anything that does not decode. Only the
fields Consul's agent copies into its RPC request are kept (agent/txn_endpoint.go convertOps): a service
keeps its ID, name, kind, tags, address, meta, port, weights, tag override and the proxy's destination and
local service; a check its definition's HTTP/TCP/gRPC target, headers, method, body, TLS settings and
durations.

Before anything runs, every operation is checked as Consul's Txn endpoint checks it (preCheck): a KV key
must be given; a node needs a name and a UUID ID (when it has one); a service a name (its ID defaults to
it) and no unspecified address; a check's ID defaults to its name; and the token must hold key:write,
node:write on the node, or service:write on the service (a connect-proxy also on its destination) -- a
node check node:write, a service check service:write on the ServiceName it names. Every refusal is the
operation's error (409, ``OpIndex`` and ``What``), and nothing is applied.

A transaction with a write verb goes through the log as one ``Txn`` command (``registry.txn``), applied in
one store transaction, so a failing operation rolls back every table; one of reads only is answered from
the local store in the request's consistency mode, without blocking, with ``X-Consul-KnownLeader`` and
``X-Consul-LastContact`` and the query metadata Consul's read reply carries. Either answers 200 with
``Results`` or, when an operation failed, 409 with ``Errors``. Results the token may not read are left out
(Consul's FilterTxnResults). ``render_results`` turns the results (data) into Consul's JSON:
``{"KV": <entry>}``, ``{"Node": <node>}``, ``{"Service": <NodeService>}``, ``{"Check": <HealthCheck>}``.
"""

from __future__ import annotations

import ipaddress
import json
import string
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import txn
from registry.acl.authorizer import Authorizer
from registry.acl.errors import PermissionDenied
from registry.api.decode import depth_error
from registry.api.enforce import FILTERED, PRESENTED, mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.api.views import check_json, kv_json, node_json, service_json
from registry.commands import CheckOp, KVOp, NodeOp, ServiceOp, Txn, TxnOp
from registry.gocompat import format_duration_ns, go_quote, parse_duration_ns
from registry.state import codec
from registry.structs import CONSUL_SERVICE, Check, KVEntry, Node, Service

if TYPE_CHECKING:
    from registry.api.http import Api

TXN_MAX_REQ_LEN = 512 * 1024  # Consul's txn_max_req_len default (raft's suggested entry size)
_LIMIT_DOC = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUES = {c: i for i, c in enumerate(_B64)}


class _Num(str):
    """A JSON number that is not an integer, kept as written (Go's errors quote the literal)."""


class ParseError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ParseError(f"invalid character {go_quote(name[0])[1:-1]!r} looking for beginning of value")


def _json_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float | _Num):
        return "number"
    return "string"


def go_b64decode(s: str) -> bytes:
    """Go's base64.StdEncoding.DecodeString: padded, CR/LF ignored; raises ParseError with Go's text."""
    out = bytearray()
    si, n = 0, len(s)
    while si < n:
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == n:
                if quantum:  # input ends inside a quantum: padding is required
                    raise ParseError(f"illegal base64 data at input byte {si - len(quantum)}")
                return bytes(out)
            ch = s[si]
            si += 1
            if ch in _B64_VALUES:
                quantum.append(_B64_VALUES[ch])
                continue
            if ch in "\r\n":
                continue
            if ch != "=" or len(quantum) < 2:
                raise ParseError(f"illegal base64 data at input byte {si - 1}")
            if len(quantum) == 2:  # "==" expected
                while si < n and s[si] in "\r\n":
                    si += 1
                if si == n:
                    raise ParseError(f"illegal base64 data at input byte {n}")
                if s[si] != "=":
                    raise ParseError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < n and s[si] in "\r\n":
                si += 1
            if si < n:
                raise ParseError(f"illegal base64 data at input byte {si}")
            bits = 0
            for i, v in enumerate(quantum):
                bits |= v << (18 - 6 * i)
            out += bits.to_bytes(3, "big")[: len(quantum) - 1]
            return bytes(out)
        bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += bits.to_bytes(3, "big")
    return bytes(out)


def _field_error(value: Any, field: str, gotype: str) -> ParseError:
    what = _json_kind(value)
    if what == "number" and gotype == "uint64":
        what = f"number {value}"
    return ParseError(f"json: cannot unmarshal {what} into Go struct field KVTxnOp.KV.{field} of type {gotype}")


def _decode_kv(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ParseError(f"json: cannot unmarshal {_json_kind(raw)} into Go struct field TxnOp.KV of type api.KVTxnOp")
    op: dict[str, Any] = {"Verb": "", "Key": "", "Value": None, "Flags": 0, "Index": 0, "Session": ""}
    names = {k.lower(): k for k in op}
    for k, v in raw.items():
        name = names.get(k.lower())
        if name is None or v is None:
            continue  # unknown fields are ignored and null leaves the zero value, as Go's decoder does
        if name in ("Verb", "Key", "Session"):
            if not isinstance(v, str) or isinstance(v, _Num):
                raise _field_error(v, name, "api.KVOp" if name == "Verb" else "string")
            op[name] = v
        elif name == "Value":
            if not isinstance(v, str) or isinstance(v, _Num):
                raise _field_error(v, name, "[]uint8")
            op[name] = go_b64decode(v)
        else:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**64:
                raise _field_error(v, name, "uint64")
            op[name] = v
    return op


# ---------------------------------------------------------------------- Node, Service and Check operations
#
# Go decodes each operation into the api package's structs; a field of the wrong JSON type fails the whole
# body with "json: cannot unmarshal <kind> into Go struct field <Struct>.<path> of type <type>", where
# <Struct> is the innermost struct and <path> the fields from the operation down.

Spec = dict[str, Any]  # canonical field name -> Go type name, or (struct name, nested Spec)

_DEFINITION: Spec = {
    "HTTP": "string", "Header": "map[string][]string", "Method": "string", "Body": "string",
    "TLSServerName": "string", "TLSSkipVerify": "bool", "TCP": "string", "TCPUseTLS": "bool", "UDP": "string",
    "GRPC": "string", "GRPCUseTLS": "bool", "OSService": "string", "H2PING": "string", "H2PingUseTLS": "bool",
    "DisableRedirects": "bool",
    "Interval": "api.ReadableDuration", "Timeout": "api.ReadableDuration",
    "DeregisterCriticalServiceAfter": "api.ReadableDuration", "IntervalDuration": "time.Duration",
    "TimeoutDuration": "time.Duration", "DeregisterCriticalServiceAfterDuration": "time.Duration",
}  # fmt: skip
_NODE: Spec = {
    "ID": "string", "Node": "string", "Address": "string", "Datacenter": "string",
    "TaggedAddresses": "map[string]string", "Meta": "map[string]string", "CreateIndex": "uint64",
    "ModifyIndex": "uint64", "Partition": "string", "PeerName": "string",
}  # fmt: skip
_SERVICE: Spec = {
    "Kind": "api.ServiceKind", "ID": "string", "Service": "string", "Tags": "[]string",
    "Meta": "map[string]string", "Port": "int", "Address": "string", "SocketPath": "string",
    "Weights": ("AgentWeights", {"Passing": "int", "Warning": "int"}), "EnableTagOverride": "bool",
    "CreateIndex": "uint64", "ModifyIndex": "uint64", "ContentHash": "string", "Namespace": "string",
    "Partition": "string", "Datacenter": "string", "PeerName": "string",
    "Proxy": ("AgentServiceConnectProxyConfig", {
        "DestinationServiceName": "string", "DestinationServiceID": "string", "LocalServiceAddress": "string",
        "LocalServicePort": "int", "LocalServiceSocketPath": "string", "Mode": "api.ProxyMode",
        "MeshGateway": ("MeshGatewayConfig", {"Mode": "api.MeshGatewayMode"}),
        "TransparentProxy": ("TransparentProxyConfig", {"OutboundListenerPort": "int", "DialedDirectly": "bool"}),
    }),
}  # fmt: skip
_CHECK: Spec = {
    "Node": "string", "CheckID": "string", "Name": "string", "Status": "string", "Notes": "string",
    "Output": "string", "ServiceID": "string", "ServiceName": "string", "ServiceTags": "[]string",
    "Type": "string", "Namespace": "string", "Partition": "string", "ExposedPort": "int", "PeerName": "string",
    "Definition": ("HealthCheckDefinition", _DEFINITION), "CreateIndex": "uint64", "ModifyIndex": "uint64",
}  # fmt: skip
# Each operation: its Go struct, and its fields (the verb's Go type names the kind).
_OPS: dict[str, tuple[str, Spec]] = {
    "Node": ("NodeTxnOp", {"Verb": "api.NodeOp", "Node": ("Node", _NODE)}),
    "Service": ("ServiceTxnOp", {"Verb": "api.ServiceOp", "Node": "string", "Service": ("AgentService", _SERVICE)}),
    "Check": ("CheckTxnOp", {"Verb": "api.CheckOp", "Check": ("HealthCheck", _CHECK)}),
}
_INT_RANGE = {"int": (-(2**63), 2**63), "uint64": (0, 2**64), "time.Duration": (-(2**63), 2**63)}


def _unmarshal_error(value: Any, struct: str, path: str, gotype: str) -> ParseError:
    what = _json_kind(value)
    if what == "number" and gotype in _INT_RANGE:
        what = f"number {value}"
    return ParseError(f"json: cannot unmarshal {what} into Go struct field {struct}.{path} of type {gotype}")


def _go_duration(value: Any, struct: str, path: str, gotype: str) -> int:
    """A duration in nanoseconds: a Go duration string ("10s") or a number of nanoseconds, as Consul's
    api.ReadableDuration and HealthCheckDefinition's decoder take them."""
    if isinstance(value, str) and not isinstance(value, _Num):
        try:
            return parse_duration_ns(value)
        except ValueError as exc:
            raise ParseError(str(exc)) from None
    if isinstance(value, int | _Num) and not isinstance(value, bool):
        try:
            return int(float(value))
        except (OverflowError, ValueError):
            raise _unmarshal_error(value, struct, path, gotype) from None
    raise _unmarshal_error(value, struct, path, gotype)


def _decode_struct(raw: Any, struct: str, spec: Spec, path: str) -> dict[str, Any]:
    """One Go struct from JSON: known fields by case-insensitive name (null leaves the zero value, unknown
    fields are ignored, as Go's decoder does), each checked against its Go type."""
    names = {k.lower(): k for k in spec}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = names.get(k.lower())
        if name is None or v is None:
            continue
        gotype = spec[name]
        where = f"{path}.{name}"
        if isinstance(gotype, tuple):
            inner_struct, inner = gotype
            if not isinstance(v, dict):
                raise _unmarshal_error(v, struct, where, f"api.{inner_struct}")
            out[name] = _decode_struct(v, inner_struct, inner, where)
        elif gotype == "bool":
            if not isinstance(v, bool):
                raise _unmarshal_error(v, struct, where, gotype)
            out[name] = v
        elif gotype in ("int", "uint64"):
            lo, hi = _INT_RANGE[gotype]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v < hi:
                raise _unmarshal_error(v, struct, where, gotype)
            out[name] = v
        elif gotype in ("api.ReadableDuration", "time.Duration"):
            out[name] = _go_duration(v, struct, where, gotype)
        elif gotype == "[]string":
            if not isinstance(v, list):
                raise _unmarshal_error(v, struct, where, gotype)
            for item in v:
                if not isinstance(item, str) or isinstance(item, _Num):
                    raise _unmarshal_error(item, struct, where, "string")
            out[name] = list(v)
        elif gotype.startswith("map["):
            if not isinstance(v, dict):
                raise _unmarshal_error(v, struct, where, gotype)
            for item in v.values():
                if gotype == "map[string][]string":
                    if not isinstance(item, list) or not all(isinstance(x, str) for x in item):
                        raise _unmarshal_error(item, struct, where, "[]string")
                elif not isinstance(item, str) or isinstance(item, _Num):
                    raise _unmarshal_error(item, struct, where, "string")
            out[name] = dict(v)
        else:  # string and Go's named string types (api.NodeOp, api.ServiceKind, ...)
            if not isinstance(v, str) or isinstance(v, _Num):
                raise _unmarshal_error(v, struct, where, gotype)
            out[name] = v
    return out


def _definition(d: dict[str, Any]) -> dict[str, Any]:
    """A check's definition as Consul's agent copies it into the transaction and its HealthCheckDefinition
    prints it: the fields it keeps, empty ones omitted, durations as Go duration strings (the ``*Duration``
    spellings are read too, the plain ones win, as agent/txn_endpoint.go does)."""
    out: dict[str, Any] = {}
    for name in ("HTTP", "TLSServerName", "TLSSkipVerify", "Header", "Method", "Body", "TCP", "GRPC",
                 "GRPCUseTLS", "OSService"):  # fmt: skip
        if d.get(name):
            out[name] = d[name]
    for name in ("Interval", "Timeout", "DeregisterCriticalServiceAfter"):
        ns = d.get(name) or d.get(f"{name}Duration") or 0
        if ns:
            out[name] = format_duration_ns(ns)
    return out


def _proxy(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a service's proxy Consul's agent copies into a transaction."""
    if d is None:
        return None
    out: dict[str, Any] = {}
    for name in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress", "LocalServicePort",
                 "LocalServiceSocketPath"):  # fmt: skip
        if d.get(name):
            out[name] = d[name]
    out["MeshGateway"] = {"Mode": mode} if (mode := (d.get("MeshGateway") or {}).get("Mode")) else {}
    tproxy = d.get("TransparentProxy")
    if tproxy is not None:
        out["TransparentProxy"] = {k: v for k, v in tproxy.items() if v}
    return out


def _node_op(d: dict[str, Any], datacenter: str) -> NodeOp:
    n = d.get("Node") or {}
    node = Node(n.get("ID", ""), n.get("Node", ""), n.get("Address", ""), n.get("Datacenter") or datacenter,
                n.get("TaggedAddresses") or {}, n.get("Meta") or {}, modify_index=n.get("ModifyIndex", 0))  # fmt: skip
    return NodeOp(d.get("Verb", ""), node)


def _service_op(d: dict[str, Any]) -> ServiceOp:
    s = d.get("Service") or {}
    node = d.get("Node", "")
    weights = s.get("Weights") or {}
    svc = Service(node, s.get("ID", ""), s.get("Service", ""), kind=s.get("Kind", ""), tags=tuple(s.get("Tags") or ()),
                  address=s.get("Address", ""), meta=s.get("Meta") or {}, port=s.get("Port", 0),
                  weights=(weights.get("Passing", 0), weights.get("Warning", 0)),
                  enable_tag_override=s.get("EnableTagOverride", False), proxy=_proxy(s.get("Proxy")),
                  modify_index=s.get("ModifyIndex", 0))  # fmt: skip
    return ServiceOp(d.get("Verb", ""), node, svc)


def _check_op(d: dict[str, Any]) -> CheckOp:
    c = d.get("Check") or {}
    chk = Check(c.get("Node", ""), c.get("CheckID", ""), c.get("Name", ""), status=c.get("Status", ""),
                notes=c.get("Notes", ""), output=c.get("Output", ""), service_id=c.get("ServiceID", ""),
                service_name=c.get("ServiceName", ""), service_tags=tuple(c.get("ServiceTags") or ()),
                definition=_definition(c.get("Definition") or {}), modify_index=c.get("ModifyIndex", 0))  # fmt: skip
    return CheckOp(d.get("Verb", ""), chk)


def parse_ops(body: bytes, datacenter: str = "") -> list[TxnOp]:
    """The request body -> its operations (a node with no Datacenter gets ``datacenter``, as Consul's agent
    fills its own); raises ParseError with Go's text, or with Proxy's for an element with no operation."""
    if not body.strip():
        raise ParseError("EOF")
    too_deep = depth_error(body)
    if too_deep is not None:
        raise ParseError(too_deep)
    try:
        doc = json.loads(body, parse_float=_Num, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ParseError(str(exc)) from None
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise ParseError(f"json: cannot unmarshal {_json_kind(doc)} into Go value of type api.TxnOps")
    ops: list[TxnOp] = []
    for item in doc:
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise ParseError(f"json: cannot unmarshal {_json_kind(item)} into Go value of type api.TxnOp")
        found: dict[str, Any] = {}
        for k, v in item.items():
            low = k.lower()
            if v is None:
                continue
            if low == "kv":
                found["KV"] = v
            elif low in ("node", "service", "check"):
                found[low.capitalize()] = v
        op: TxnOp | None = None
        # Consul's convertOps takes the first of KV, Node, Service, Check that is present.
        if "KV" in found:
            kv = _decode_kv(found["KV"])
            op = KVOp(kv["Verb"], kv["Key"], kv["Value"], kv["Flags"], kv["Index"], kv["Session"])
        for kind in ("Node", "Service", "Check"):
            if kind not in found:
                continue
            struct, spec = _OPS[kind]
            raw = found[kind]
            if not isinstance(raw, dict):
                raise ParseError(f"json: cannot unmarshal {_json_kind(raw)} into Go struct field TxnOp.{kind} "
                                 f"of type api.{struct}")  # fmt: skip
            fields = _decode_struct(raw, struct, spec, kind)
            if op is None:
                op = _node_op(fields, datacenter) if kind == "Node" else (
                    _service_op(fields) if kind == "Service" else _check_op(fields))  # fmt: skip
        if op is None:
            # Consul's agent skips such an element, which shifts every later OpIndex; Proxy refuses it.
            raise ParseError(f"operation {len(ops)} has none of KV, Node, Service or Check")
        ops.append(op)
    return ops


# ---------------------------------------------------------------------- the pre-checks


def _bad_uuid(text: str) -> str | None:
    """go-uuid's ParseUUID error for ``text``, or None when it is a UUID (36 characters, hex and dashes)."""
    if len(text) != 36:
        return "uuid string is wrong length"
    if text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        return "uuid is improperly formatted"
    bad = next((c for c in text.replace("-", "") if c not in string.hexdigits), None)
    if bad is not None:
        return f"encoding/hex: invalid byte: U+{ord(bad):04X} {bad!r}"
    return None


def _multierror(*errors: str) -> str:
    """hashicorp/go-multierror's text, which Consul's NodeService.Validate returns."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    return f"{len(errors)} errors occurred:\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"


def _service_problem(svc: Service) -> str | None:
    """Consul's servicePreApply, before its ACL check: NodeService.Validate, a name for an ID, an address
    that is not unspecified."""
    if svc.kind == "connect-proxy":
        problems = []
        if not (svc.proxy or {}).get("DestinationServiceName", "").strip():
            problems.append("Proxy.DestinationServiceName must be non-empty for Connect proxy services")
        if not svc.port and not (svc.proxy or {}).get("LocalServiceSocketPath"):
            problems.append("Port or SocketPath must be set for a Connect proxy")
        if problems:
            return _multierror(*problems)
    if svc.id and not svc.service:
        return "Must provide service name (Service.Service) when service ID is provided"
    if svc.address:
        try:
            if ipaddress.ip_address(svc.address).is_unspecified:
                return "Invalid service address"
        except ValueError:
            pass
    return None


def prepare(ops: list[TxnOp], authz: Authorizer | None) -> tuple[list[TxnOp], list[dict[str, Any]]]:
    """Consul's Txn preCheck, in operation order, before the log (or the read): the defaults it fills (a
    service's ID from its name, a check's ID from its name) and each operation's first refusal -- a KV key
    missing or not permitted (kvsPreApply: gets are filtered on the way out, index and session checks need
    key:read, a tree delete write on every key under its prefix: CVE-2021-38698), a node without a name or
    with a malformed ID or not node:write, a service that does not validate or not service:write, a check
    not node:write (node check) or service:write on its ServiceName. Gets are not checked."""
    out: list[TxnOp] = []
    errors: list[dict[str, Any]] = []

    def refuse(i: int, what: str) -> None:
        errors.append({"OpIndex": i, "What": what})

    def allowed(i: int, operation: str, name: str) -> bool:
        if authz is None:
            return True
        try:
            authz.check(operation, name)
        except PermissionDenied as exc:
            refuse(i, str(exc))
            return False
        return True

    for i, op in enumerate(ops):
        if isinstance(op, KVOp):
            out.append(op)
            verb = op.verb
            if not op.key and verb != "delete-tree":
                refuse(i, "Must provide key")
            elif verb not in ("get", "get-tree"):
                operation = ("key_write_prefix" if verb == "delete-tree" else "key_read"
                             if verb in ("check-index", "check-session", "get-or-empty") else "key_write")  # fmt: skip
                allowed(i, operation, op.key)
            continue
        if op.verb == "get":
            out.append(op)
            continue
        if isinstance(op, NodeOp):
            out.append(op)
            node = op.node
            if not node.node:
                refuse(i, "Must provide node")
            elif node.id and (bad := _bad_uuid(node.id)) is not None:
                refuse(i, f"Bad node ID: {bad}")
            else:
                allowed(i, "node_write", node.node)
        elif isinstance(op, ServiceOp):
            svc = op.service
            if not svc.id and svc.service:
                svc = replace(svc, id=svc.service)
                op = ServiceOp(op.verb, op.node, svc)
            out.append(op)
            problem = _service_problem(svc)
            if problem is not None:
                refuse(i, problem)
            elif (svc.service == CONSUL_SERVICE or allowed(i, "service_write", svc.service)) and \
                    svc.kind == "connect-proxy":
                allowed(i, "service_write", (svc.proxy or {}).get("DestinationServiceName", ""))
        else:
            chk = op.check
            if not chk.check_id and chk.name:
                chk = replace(chk, check_id=chk.name)
                op = CheckOp(op.verb, chk)
            out.append(op)
            if chk.service_id:
                allowed(i, "service_write", chk.service_name)
            else:
                allowed(i, "node_write", chk.node)
    return out, errors


# ---------------------------------------------------------------------- the handler


async def put(api: Api, request: web.Request, _suffix: str) -> web.StreamResponse:
    cfg = api.config
    value_limit = cfg.kv_max_value_size
    limit = max(TXN_MAX_REQ_LEN, value_limit)  # Consul: the larger of txn_max_req_len and kv_max_value_size
    if request.content_length is not None:
        too_large = f"Request body({{size}} bytes) too large, max size: {limit} bytes. See {_LIMIT_DOC}."
    else:
        too_large = f"Request body too large, max size: {limit} bytes. See {_LIMIT_DOC}."
    body = await api.read_body(request, limit, too_large=too_large)
    try:
        ops = parse_ops(body, cfg.datacenter)
    except ParseError as exc:
        raise HTTPError(400, f"Failed to parse body: {exc}") from None
    if len(ops) > txn.MAX_OPS:
        raise HTTPError(413, f"Transaction contains too many operations ({len(ops)} > {txn.MAX_OPS})")
    for op in ops:
        if isinstance(op, KVOp) and op.value is not None and len(op.value) > value_limit:
            raise HTTPError(413, f"Value for key {go_quote(op.key)} is too large ({len(op.value)} > {value_limit} bytes)")
    authz = request_authz(request)
    if not any(txn.op_is_write(op) for op in ops):
        return await _read(api, request, ops, authz)
    ops, errors = prepare(ops, authz)
    if errors:
        return api.json(request, {"Results": None, "Errors": errors}, status=409)
    result = await api.propose(Txn(tuple(ops)))
    results = result.get("Results")
    if authz is not None and results:
        results = _readable(request, authz, results)
    reply = {"Results": render_results(results), "Errors": result.get("Errors")}
    return api.json(request, reply, status=409 if reply["Errors"] else 200)


def _may_read(authz: Authorizer, result: dict[str, Any]) -> bool:
    """Consul's FilterTxnResults: a KV entry by key:read, a node by node:read, a service by service:read, a
    check by service:read on its service's name, or node:read on its node when it has no service."""
    if "KV" in result:
        return authz.key_read(result["KV"]["Key"])
    if "Node" in result:
        return authz.allowed("node_read", codec.node_row(result["Node"]).node)
    if "Service" in result:
        return authz.allowed("service_read", codec.service_row(result["Service"]).service)
    chk = codec.check_row(result["Check"])
    if chk.service_name:
        return authz.allowed("service_read", chk.service_name)
    return authz.allowed("node_read", chk.node)


def _readable(request: web.Request, authz: Authorizer, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results the token may not read are left out (Consul's FilterTxnResults)."""
    kept = [r for r in results if _may_read(authz, r)]
    if len(kept) != len(results):
        mark_filtered(request)
    return kept


def render_entry(data: dict[str, Any]) -> dict[str, Any]:
    """One KV result entry (``registry.txn.entry_data``) -> Consul's KV JSON."""
    return kv_json(KVEntry(data["Key"], data["Value"], data["Flags"], data["Session"], data["LockIndex"],
                           data["CreateIndex"], data["ModifyIndex"]))  # fmt: skip


_RENDER: dict[str, Callable[[Any], dict[str, Any]]] = {
    "KV": render_entry,
    "Node": lambda v: node_json(codec.node_row(v)),
    "Service": lambda v: service_json(codec.service_row(v)),
    "Check": lambda v: check_json(codec.check_row(v)),
}


def render_results(results: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A transaction's results as Consul's TxnResults JSON (None stays None: Consul's ``"Results": null``)."""
    if results is None:
        return None
    return [{kind: _RENDER[kind](value) for kind, value in r.items()} for r in results]


async def _read(api: Api, request: web.Request, ops: list[TxnOp], authz: Authorizer | None) -> web.StreamResponse:
    """Consul's Txn.Read: the consistency mode of the request, no blocking, no log entry; the pre-checks
    first, then the reads, their results filtered by what the token may read."""
    _, _, mode = api.query_options(request)
    consensus = api.consensus
    await consensus.barrier_read(mode)
    ops, errors = prepare(ops, authz)
    results: list[dict[str, Any]] | None = None
    if not errors:
        results, errors = txn.run(api.store, ops)
        if authz is not None and results:
            results = _readable(request, authz, results)
        results = render_results(results)
    known_leader = consensus.known_leader()
    last_contact_ms = consensus.last_contact_ms()
    # Consul's TxnReadResponse embeds QueryMeta, so its fields follow Results and Errors in the JSON.
    reply = {
        "Results": None if errors else results,
        "Errors": errors or None,
        "Index": 0,
        "LastContact": last_contact_ms * 1_000_000,
        "KnownLeader": known_leader,
        "ConsistencyLevel": "",
        "NotModified": False,
        "Backend": 0,
        # Consul's Txn.Read sets it when results were left out; its HTTP layer shows it only to a caller who
        # presented a token (maskResultsFilteredByACLs).
        "ResultsFilteredByACLs": bool(request.get(FILTERED) and request.get(PRESENTED)),
    }
    resp = api.json(request, reply, status=409 if errors else 200)
    resp.headers["X-Consul-KnownLeader"] = "true" if known_leader else "false"
    resp.headers["X-Consul-LastContact"] = str(last_contact_ms)
    return resp


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/txn", put, "write", "key", "each",
          "Apply KV, Node, Service and Check operations as one transaction (each operation checked on its "
          "own ACL rule; reads filtered)"),
)
