"""Service and check definitions: parsing, validation and defaults, for the HTTP API and config files alike.

A definition arrives as JSON (``PUT /v1/agent/service/register``, ``/v1/agent/check/register``) or from a
config file's ``services``/``checks``; both go through the functions here, so they are checked once, with
the same words. Consul decodes JSON with Go's encoding/json (field names match case-insensitively) and, for
agent service and check registration, also accepts snake_case names. We match a key by lower-casing it and
dropping underscores, then check its type. User-data maps (Meta, TaggedAddresses' keys, Header) keep their
keys. Validation follows Consul's ``ServiceDefinition.Validate`` and ``CheckType.Validate``; every problem
raises ``CommandError`` (400) naming the field, and nothing is half-decoded.

The results are typed: the service as its catalog row (``registry.structs.Service``) and each check as a
``CheckSpec`` (what the agent's health checker runs); neither is checked again on its way to the catalog.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from registry.commands import CommandError, service_from
from registry.gocompat import DurationError, format_duration, parse_duration
from registry.structs import CHECK_STATUSES, HEALTH_CRITICAL, Service

MIN_INTERVAL = 1.0  # Consul raises shorter intervals to one second
MIN_DEREGISTER_AFTER = 60.0  # Consul raises DeregisterCriticalServiceAfter to one minute
SIDECAR_PORT_MIN, SIDECAR_PORT_MAX = 21000, 21255


class DecodeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RegistrationRules:
    """What validating a definition needs to know about the agent that takes it."""

    node: str
    scripts_enabled: bool = False  # enable_script_checks or enable_local_script_checks
    output_max_size: int = 4096  # check_output_max_size: the default OutputMaxSize


@dataclass
class CheckSpec:
    """A check definition after decoding: durations in seconds, the type resolved."""

    check_id: str
    name: str
    type: str  # ttl | http | tcp | script | grpc | h2ping | udp | os_service | alias
    service_id: str = ""
    notes: str = ""
    status: str = HEALTH_CRITICAL
    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    disable_redirects: bool = True
    tcp: str = ""
    args: list[str] = field(default_factory=list)
    grpc: str = ""  # host:port[/service]
    grpc_use_tls: bool = False
    h2ping: str = ""  # host:port
    h2ping_use_tls: bool = True  # Consul's default once H2PING is set
    udp: str = ""  # host:port
    os_service: str = ""  # a systemd unit (a Windows service in Consul)
    alias_node: str = ""
    alias_service: str = ""  # a service ID
    deregister_after: float = 0.0
    output_max_size: int = 4096
    success_before_passing: int = 0
    failures_before_critical: int = 0
    failures_before_warning: int = 0

    def definition(self) -> dict[str, Any]:
        """The check's ``Definition`` as Consul's HealthCheckDefinition renders it (empty fields left out)."""
        d: dict[str, Any] = {}
        if self.http:
            d.update(HTTP=self.http, Method=self.method, Header=self.header, Body=self.body,
                     TLSSkipVerify=self.tls_skip_verify, TLSServerName=self.tls_server_name)  # fmt: skip
        if self.tcp:
            d["TCP"] = self.tcp
        if self.udp:
            d["UDP"] = self.udp
        if self.grpc:
            d.update(GRPC=self.grpc, GRPCUseTLS=self.grpc_use_tls)
        if self.h2ping:
            d.update(H2PING=self.h2ping, H2PingUseTLS=self.h2ping_use_tls)
        if self.grpc or self.h2ping:
            d.update(TLSSkipVerify=self.tls_skip_verify, TLSServerName=self.tls_server_name)
        if self.os_service:
            d["OSService"] = self.os_service
        if self.alias_node:
            d["AliasNode"] = self.alias_node
        if self.alias_service:
            d["AliasService"] = self.alias_service
        if self.args:
            d["ScriptArgs"] = list(self.args)
        if self.interval:
            d["Interval"] = dur_str(self.interval)
        if self.timeout:
            d["Timeout"] = dur_str(self.timeout)
        if self.deregister_after:
            d["DeregisterCriticalServiceAfter"] = dur_str(self.deregister_after)
        if self.output_max_size != 4096:
            d["OutputMaxSize"] = self.output_max_size
        return d


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


# Field kinds: "str", "int", "uint", "bool", "strlist", "strmap", "dur", "any", "headers", "taggedaddrs",
# "weights", or a nested schema dict, or ("list", schema).
CHECK_SCHEMA: dict[str, Any] = {
    "CheckID": "str",
    "ID": "str",
    "Name": "str",
    "Notes": "str",
    "Status": "str",
    "ServiceID": "str",
    "Token": "str",
    "Args": "strlist",
    "ScriptArgs": "strlist",
    "HTTP": "str",
    "Header": "headers",
    "Method": "str",
    "Body": "str",
    "DisableRedirects": "bool",
    "TCP": "str",
    "UDP": "str",
    "GRPC": "str",
    "GRPCUseTLS": "bool",
    "H2PING": "str",
    "H2PingUseTLS": "bool",
    "AliasNode": "str",
    "AliasService": "str",
    "DockerContainerID": "str",
    "Shell": "str",
    "OSService": "str",
    "Interval": "dur",
    "Timeout": "dur",
    "TTL": "dur",
    "TLSServerName": "str",
    "TLSSkipVerify": "bool",
    "DeregisterCriticalServiceAfter": "dur",
    "OutputMaxSize": "int",
    "SuccessBeforePassing": "uint",
    "FailuresBeforeCritical": "uint",
    "FailuresBeforeWarning": "uint",
    "Namespace": "str",
    "Partition": "str",
    "Definition": "any",
    "Type": "str",
    "Node": "str",
    "Output": "str",
    "ServiceName": "str",
    "ServiceTags": "any",
    "CreateIndex": "any",
    "ModifyIndex": "any",
}

SERVICE_SCHEMA: dict[str, Any] = {
    "ID": "str",
    "Name": "str",
    "Service": "str",  # the catalog spelling
    "Tags": "strlist",
    "Address": "str",
    "TaggedAddresses": "taggedaddrs",
    "Meta": "strmap",
    "Port": "int",
    "SocketPath": "str",
    "Kind": "str",
    "Proxy": "any",
    "Connect": "any",
    "Check": CHECK_SCHEMA,
    "Checks": ("list", CHECK_SCHEMA),
    "EnableTagOverride": "bool",
    "Weights": "weights",
    "Token": "str",
    "Namespace": "str",
    "Partition": "str",
    "Datacenter": "str",
    "Locality": {"Region": "str", "Zone": "str"},
    "CreateIndex": "any",
    "ModifyIndex": "any",
    "ContentHash": "any",
}

CATALOG_REGISTER_SCHEMA: dict[str, Any] = {
    "ID": "str",
    "Node": "str",
    "Address": "str",
    "Datacenter": "str",
    "TaggedAddresses": "strmap",
    "NodeMeta": "strmap",
    "Service": SERVICE_SCHEMA,
    "Check": CHECK_SCHEMA,
    "Checks": ("list", CHECK_SCHEMA),
    "SkipNodeUpdate": "bool",
    "Token": "str",
}

CATALOG_DEREGISTER_SCHEMA: dict[str, Any] = {
    "Node": "str",
    "Datacenter": "str",
    "CheckID": "str",
    "ServiceID": "str",
    "Token": "str",
}

_normalized: dict[int, dict[str, str]] = {}


def _index(schema: dict[str, Any]) -> dict[str, str]:
    idx = _normalized.get(id(schema))
    if idx is None:
        idx = _normalized[id(schema)] = {_norm(k): k for k in schema}
    return idx


def _typename(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool", type(None): "null"}.get(
        type(v), "number"
    )


def decode(obj: Any, schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Decode a JSON object against a schema into a dict keyed by canonical field names."""
    if not isinstance(obj, dict):
        raise DecodeError(f"{path or 'body'}: expected a JSON object, got {_typename(obj)}")
    idx = _index(schema)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = idx.get(_norm(key))
        if name is None:
            continue  # Go's decoder ignores unknown fields; so do we
        out[name] = _field(value, schema[name], f"{path}{name}")
    return out


def _field(value: Any, kind: Any, path: str) -> Any:
    if value is None:
        return None
    if isinstance(kind, dict):
        return decode(value, kind, path + ".")
    if isinstance(kind, tuple):
        if not isinstance(value, list):
            raise DecodeError(f"{path}: expected an array, got {_typename(value)}")
        return [_field(v, kind[1], f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "any":
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise DecodeError(f"{path}: expected a string, got {_typename(value)}")
        return value
    if kind in ("int", "uint"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecodeError(f"{path}: expected an integer, got {_typename(value)}")
        if kind == "uint" and value < 0:
            raise DecodeError(f"{path}: must not be negative")
        if not -(2**63) <= value < 2**64:
            raise DecodeError(f"{path}: integer out of range")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise DecodeError(f"{path}: expected true or false, got {_typename(value)}")
        return value
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DecodeError(f"{path}: expected an array of strings")
        return list(value)
    if kind == "strmap":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise DecodeError(f"{path}: expected an object of strings")
        return dict(value)
    if kind == "headers":
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object of string arrays")
        out = {}
        for k, v in value.items():
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise DecodeError(f"{path}.{k}: expected an array of strings")
            out[k] = list(v)
        return out
    if kind == "dur":
        try:
            return parse_duration(value, field=path)
        except DurationError as exc:
            raise DecodeError(str(exc)) from exc
    if kind == "weights":
        w = decode(value, {"Passing": "int", "Warning": "int"}, path + ".")
        return w
    if kind == "taggedaddrs":
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object")
        addrs = {}
        for k, v in value.items():
            d = decode(v, {"Address": "str", "Port": "int"}, f"{path}.{k}.")
            addrs[k] = {"Address": d.get("Address") or "", "Port": d.get("Port") or 0}
        return addrs
    raise AssertionError(f"unknown schema kind {kind!r}")


# ---------------------------------------------------------------------- definitions from config files

# Words Consul's API spells in capitals, and the names that are not simply the snake_case words joined.
_API_WORDS = {"id": "ID", "http": "HTTP", "tcp": "TCP", "udp": "UDP", "ttl": "TTL", "grpc": "GRPC", "tls": "TLS",
              "h2ping": "H2PING", "dns": "DNS"}  # fmt: skip
_API_NAMES = {"h2ping_use_tls": "H2PingUseTLS", "os_service": "OSService"}
# Maps whose keys are the user's: their keys are kept as written.
_USER_MAPS = frozenset({"meta", "config", "header", "tagged_addresses", "ca_config"})


def _api_name(key: str) -> str:
    if key in _API_NAMES:
        return _API_NAMES[key]
    return "".join(_API_WORDS.get(part, part[:1].upper() + part[1:]) for part in key.split("_"))


def api_definition(value: Any) -> Any:
    """A service or check definition from a config file (Consul's snake_case keys: ``enable_tag_override``,
    ``proxy { destination_service_name }``, ``connect { sidecar_service { ... } }``) in the API's
    spelling (``EnableTagOverride``, ``Proxy.DestinationServiceName``), as Consul's config builder turns
    a file's definitions into the same structs the HTTP API decodes. Keys already in the API's spelling
    stay; the keys of user maps (``meta``, ``config``, ``header``) are kept as written."""
    if isinstance(value, list):
        return [api_definition(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        name = _api_name(key)
        if key.lower() in _USER_MAPS and isinstance(v, dict):
            out[name] = v if key.lower() != "tagged_addresses" else {k: api_definition(a) for k, a in v.items()}
        else:
            out[name] = api_definition(v)
    return out


# ---------------------------------------------------------------------- validation shared by endpoints

_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512


def validate_meta(meta: dict[str, str], what: str = "Service") -> None:
    """Consul's ValidateMetadata rules."""
    if len(meta) > META_MAX_PAIRS:
        raise DecodeError(f"{what} metadata cannot contain more than {META_MAX_PAIRS} key/value pairs")
    for k, v in meta.items():
        if not k:
            raise DecodeError("Key cannot be blank")
        if not _META_KEY.match(k):
            raise DecodeError(f"Key contains invalid characters: {k!r}")
        if len(k) > META_KEY_MAX:
            raise DecodeError(f"Key is too long (limit: {META_KEY_MAX} characters)")
        if k.startswith("consul-"):
            raise DecodeError("Key prefix 'consul-' is reserved for internal use")
        if len(v) > META_VALUE_MAX:
            raise DecodeError(f"Value is too long (limit: {META_VALUE_MAX} characters)")


def dur_str(seconds: float | None) -> str:
    return format_duration(seconds) if seconds else ""


# ---------------------------------------------------------------------- building registrations


def _check_type(d: dict[str, Any]) -> str:
    """The kind of check a definition describes, in the order Consul's agent tries them (addCheck)."""
    if d.get("TTL"):
        return "ttl"
    if d.get("Args") or d.get("ScriptArgs"):
        return "docker" if d.get("DockerContainerID") else "script"
    for key, kind in (("HTTP", "http"), ("TCP", "tcp"), ("UDP", "udp"), ("GRPC", "grpc"),
                      ("OSService", "os_service"), ("H2PING", "h2ping"), ("AliasNode", "alias"),
                      ("AliasService", "alias")):  # fmt: skip
        if d.get(key):
            return kind
    return ""


# The kinds that run on an interval (Consul's CheckType.Validate: intervalCheck).
INTERVAL_KINDS = frozenset({"script", "docker", "http", "tcp", "udp", "grpc", "h2ping", "os_service"})
SUPPORTED_KINDS = frozenset({"ttl", "script", "http", "tcp", "udp", "grpc", "h2ping", "os_service", "alias"})


def _validate_check_type(d: dict[str, Any]) -> str:
    """Consul's CheckType.Validate, in its order and words; returns the kind."""
    interval = d.get("Interval") or 0.0
    ttl = d.get("TTL") or 0.0
    interval_check = any(d.get(k) for k in ("Args", "ScriptArgs", "HTTP", "TCP", "UDP", "GRPC", "H2PING", "OSService"))
    alias = bool(d.get("AliasNode") or d.get("AliasService"))
    if interval > 0 and ttl > 0:
        raise CommandError("Invalid check: Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise CommandError("Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks")
    if interval_check and alias:
        raise CommandError("Invalid check: Interval cannot be set for Alias checks")
    if alias and ttl > 0:
        raise CommandError("Invalid check: TTL must be not be set for Alias checks")
    if not interval_check and not alias and ttl <= 0:
        raise CommandError("Invalid check: TTL must be > 0 for TTL checks")
    if (d.get("OutputMaxSize") or 0) < 0:
        raise CommandError("Invalid check: MaxOutputMaxSize must be positive")
    if (d.get("FailuresBeforeWarning") or 0) > (d.get("FailuresBeforeCritical") or 0):
        raise CommandError("Invalid check: FailuresBeforeWarning can't be higher than FailuresBeforeCritical")
    return _check_type(d)


def _host_port(field_name: str, addr: str) -> str:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"Invalid check: {field_name} must be host:port, got {addr!r}")
    return addr


def build_check_spec(
    rules: RegistrationRules, d: dict[str, Any], *, check_id: str, name: str, service_id: str, status_error: str
) -> CheckSpec:
    """Validate a decoded check definition as Consul's CheckType.Validate does, and resolve defaults."""
    kind = _validate_check_type(d)
    interval = d.get("Interval") or 0.0
    ttl = d.get("TTL") or 0.0
    if kind not in SUPPORTED_KINDS:
        raise CommandError(f"Invalid check: {kind} checks are not supported by Proconsul (supported: HTTP, TCP, "
                           "UDP, gRPC, H2PING, OSService, TTL, alias, script)")  # fmt: skip
    if kind == "script" and not rules.scripts_enabled:
        raise CommandError(
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
            "'enable_local_script_checks' to true",
        )
    status = d.get("Status") or HEALTH_CRITICAL
    if status not in CHECK_STATUSES:
        raise CommandError(status_error)
    output_max = d.get("OutputMaxSize")
    if output_max is None or output_max == 0:
        output_max = rules.output_max_size
    spec = CheckSpec(
        check_id=check_id,
        name=name,
        type=kind,
        service_id=service_id,
        notes=d.get("Notes") or "",
        status=status,
        interval=max(interval, MIN_INTERVAL) if interval else 0.0,
        timeout=d.get("Timeout") or 0.0,
        ttl=ttl,
        output_max_size=output_max,
        success_before_passing=d.get("SuccessBeforePassing") or 0,
        failures_before_critical=d.get("FailuresBeforeCritical") or 0,
        # Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
        failures_before_warning=d.get("FailuresBeforeWarning") or d.get("FailuresBeforeCritical") or 0,
    )
    if dereg := d.get("DeregisterCriticalServiceAfter"):
        spec.deregister_after = max(dereg, MIN_DEREGISTER_AFTER)
    if kind == "http":
        url = d["HTTP"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(f"Invalid check: HTTP must be an http:// or https:// URL, got {url!r}")
        spec.http = url
        spec.method = (d.get("Method") or "GET").upper()
        spec.header = d.get("Header") or {}
        spec.body = d.get("Body") or ""
        spec.tls_skip_verify = bool(d.get("TLSSkipVerify"))
        spec.tls_server_name = d.get("TLSServerName") or ""
        spec.disable_redirects = d.get("DisableRedirects", True) is not False
    elif kind == "tcp":
        spec.tcp = _host_port("TCP", d["TCP"])
    elif kind == "udp":
        spec.udp = _host_port("UDP", d["UDP"])
    elif kind == "grpc":
        spec.grpc = d["GRPC"]
        _host_port("GRPC", spec.grpc.split("/", 1)[0])
        spec.grpc_use_tls = bool(d.get("GRPCUseTLS"))
    elif kind == "h2ping":
        spec.h2ping = _host_port("H2PING", d["H2PING"])
        spec.h2ping_use_tls = d.get("H2PingUseTLS") is not False  # Consul: true unless set false
    elif kind == "os_service":
        spec.os_service = d["OSService"]
    elif kind == "alias":
        spec.alias_node = d.get("AliasNode") or ""
        spec.alias_service = d.get("AliasService") or ""
    elif kind == "script":
        spec.args = list(d.get("Args") or d.get("ScriptArgs") or [])
    if kind in ("grpc", "h2ping"):
        spec.tls_skip_verify = bool(d.get("TLSSkipVerify"))
        spec.tls_server_name = d.get("TLSServerName") or ""
    return spec


def build_check_registration(rules: RegistrationRules, raw: Any) -> CheckSpec:
    """A /v1/agent/check/register body (or a config file's check) -> the check to run."""
    try:
        d = decode(raw, CHECK_SCHEMA)
    except DecodeError as exc:
        raise CommandError(f"Request decode failed: {exc}") from exc
    name = d.get("Name") or ""
    if not name:
        raise CommandError("Missing check name")
    check_id = d.get("CheckID") or d.get("ID") or name
    return build_check_spec(rules, d, check_id=check_id, name=name, service_id=d.get("ServiceID") or "",
                            status_error="Bad check status")  # fmt: skip


def _validate_address(addr: str) -> None:
    if not addr:
        return
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return  # hostnames are allowed (DNS answers them as CNAME)
    if ip.is_unspecified:
        raise CommandError("Invalid service address")


def build_service_registration(rules: RegistrationRules, raw: Any) -> tuple[Service, list[CheckSpec]]:
    """A /v1/agent/service/register body (or a config file's service) -> (the service's catalog row on this
    agent's node, its checks). Raises CommandError."""
    try:
        d = decode(raw, SERVICE_SCHEMA)
    except DecodeError as exc:
        raise CommandError(f"Request decode failed: {exc}") from exc
    name = d.get("Name") or d.get("Service") or ""
    if not name:
        raise CommandError("Missing service name")
    sid = d.get("ID") or name
    address = d.get("Address") or ""
    _validate_address(address)
    port = d.get("Port") or 0
    if not 0 <= port <= 65535:
        raise CommandError(f"Invalid service port {port}: must be between 0 and 65535")
    weights = d.get("Weights")
    if weights is not None:
        passing, warning = weights.get("Passing", 1), weights.get("Warning", 1)
        if passing is None or passing <= 0:
            raise CommandError("Invalid Weights: Passing must be greater than 0")
        if warning is None or warning < 0:
            raise CommandError("Invalid Weights: Warning must be greater or equal than 0")
        weights = {"Passing": passing, "Warning": warning}
    else:
        weights = {"Passing": 1, "Warning": 1}
    meta = d.get("Meta") or {}
    try:
        validate_meta(meta)
    except DecodeError as exc:
        raise CommandError(f"Invalid Service Meta: {exc}") from exc
    for tag_addr in (d.get("TaggedAddresses") or {}).values():
        _validate_address(tag_addr.get("Address", ""))
    kind = d.get("Kind") or ""
    if kind not in ("", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"):
        raise CommandError(f"Invalid service kind: {kind!r}")
    proxy = d.get("Proxy")
    connect = d.get("Connect")
    if proxy is not None and not isinstance(proxy, dict):
        raise CommandError("Request decode failed: Proxy: expected a JSON object")
    if connect is not None and not isinstance(connect, dict):
        raise CommandError("Request decode failed: Connect: expected a JSON object")
    if kind == "connect-proxy":
        if not port:
            raise CommandError("Validation failed: Port must be set for a Connect proxy")
        if not proxy or not proxy.get("DestinationServiceName"):
            raise CommandError("Validation failed: Proxy.DestinationServiceName must be set for a Connect proxy")
    elif proxy and kind == "":
        raise CommandError("Validation failed: Proxy is only valid for connect-proxy and gateway services")
    definition: dict[str, Any] = {
        "ID": sid,
        "Service": name,
        "Kind": kind,
        "Tags": d.get("Tags") or [],
        "Address": address,
        "TaggedAddresses": d.get("TaggedAddresses") or {},
        "Meta": meta,
        "Port": port,
        "Weights": weights,
        "EnableTagOverride": bool(d.get("EnableTagOverride")),
        "Proxy": proxy,
        "Connect": {k: v for k, v in connect.items() if k != "SidecarService"} if connect else None,
        "Locality": d.get("Locality"),
    }
    raw_checks: list[dict[str, Any]] = []
    if d.get("Check"):
        raw_checks.append(d["Check"])
    raw_checks.extend(c for c in (d.get("Checks") or []) if c)
    specs = []
    status_error = "Status for checks must 'passing', 'warning', 'critical'"
    for i, c in enumerate(raw_checks, start=1):
        cid = c.get("CheckID") or c.get("ID") or (f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{i}")
        cname = c.get("Name") or f"Service '{name}' check"
        specs.append(build_check_spec(rules, c, check_id=cid, name=cname, service_id=sid, status_error=status_error))
    try:
        service = service_from(rules.node, definition)
    except CommandError as exc:
        raise CommandError(f"Validation failed: {exc}") from exc
    return service, specs


def _pop_ci(raw: dict[str, Any], key: str) -> Any:
    """Remove every spelling of ``key`` (Consul decodes case-insensitively, snake_case too) and return
    the first non-empty value."""
    want = key.lower()
    found: Any = None
    for k in [k for k in raw if str(k).replace("_", "").lower() == want]:
        value = raw.pop(k)
        if found is None and value:
            found = value
    return found


def sidecar_registration(
    rules: RegistrationRules, parent: Service, sidecar: Any, ports: Mapping[str, int]
) -> tuple[Service, list[CheckSpec]]:
    """Connect.SidecarService: a connect-proxy registration for ``parent``, with Consul's defaults.
    ``ports``: the port of each service already registered on this agent (by ID), to pick a free one."""
    if not isinstance(sidecar, dict):
        raise CommandError("Invalid SidecarService: expected a JSON object")
    raw = dict(sidecar)
    sid = raw.get("ID") or f"{parent.id}-sidecar-proxy"
    raw.setdefault("Name", f"{parent.service}-sidecar-proxy")
    raw["ID"] = sid
    raw["Kind"] = "connect-proxy"
    if not raw.get("Port"):
        used = {port for other, port in ports.items() if other != sid}
        free = next((p for p in range(SIDECAR_PORT_MIN, SIDECAR_PORT_MAX + 1) if p not in used), None)
        if free is None:
            raise CommandError("Invalid SidecarService: no sidecar port available in 21000-21255")
        raw["Port"] = free
    proxy = dict(raw.get("Proxy") or {})
    proxy.setdefault("DestinationServiceName", parent.service)
    proxy.setdefault("DestinationServiceID", parent.id)
    proxy.setdefault("LocalServiceAddress", "127.0.0.1")
    proxy.setdefault("LocalServicePort", parent.port)
    raw["Proxy"] = proxy
    # Consul's sidecarServiceFromNodeService: a sidecar that sets no Tags, Meta or Address of its own
    # carries its parent's, so it is found (and filtered) like the service it fronts.
    for key, inherited in (("Tags", list(parent.tags)), ("Meta", dict(parent.meta)), ("Address", parent.address)):
        own = _pop_ci(raw, key)
        if own or inherited:
            raw[key] = own or inherited
    if parent.locality and not raw.get("Locality"):
        raw["Locality"] = parent.locality  # a sidecar is where its service is (Consul copies it)
    if not raw.get("Check") and not raw.get("Checks"):
        # Consul's sidecarDefaultChecks: the proxy's port is listening, and the proxy is no healthier than
        # the service it fronts (an alias of the parent instance).
        addr = raw.get("Address") or parent.address or proxy["LocalServiceAddress"]
        raw["Checks"] = [
            {"Name": "Connect Sidecar Listening", "TCP": f"[{addr}]:{raw['Port']}" if ":" in addr else f"{addr}:{raw['Port']}",
             "Interval": "10s"},
            {"Name": f"Connect Sidecar Aliasing {parent.id}", "AliasService": parent.id},
        ]
    service, specs = build_service_registration(rules, raw)
    for i, spec in enumerate(specs, start=1):
        if spec.check_id.startswith("service:"):
            spec.check_id = f"service:{sid}:{i}"
    return service, specs


