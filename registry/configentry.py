"""Config entries of the service mesh: decoding, normalizing and validating, as Consul does it.

Pure module (no IO, no clock). It covers the kinds the discovery chain and the sidecar consume:
``service-defaults``, ``proxy-defaults``, ``service-resolver``, ``service-splitter`` and
``service-router`` (``service-intentions`` has its own module, ``registry.intentions``).

Decoding follows Consul's ``structs.DecodeConfigEntry`` (agent/structs/config_entry.go), which the HTTP
API and, in its ``api`` twin, ``consul config write`` both use: mapstructure over the raw JSON/HCL map
with ``lib/decode``'s hooks:

- keys match a field case-insensitively (``protocol``, ``Protocol``, ``PROTOCOL``), and the snake_case
  aliases Consul declares (``service_subset``, ``connect_timeout``, ``num_retries``...) name the same
  field; when both spellings are given the canonical one wins (``HookTranslateKeys``);
- a one-element list where one object is expected is that object (``HookWeakDecodeFromSlice``: what HCL
  blocks decode to);
- weakly typed input: ``"5"`` for a number, ``1`` for ``true``, durations as Go strings ("15s") or
  nanoseconds;
- any key that names no field is refused, all of them at once: ``invalid config key "Routes[0].Foo"``
  (``validateUnusedKeys``, CE wording; ``Kind``, ``CreateIndex``, ``ModifyIndex`` are ignored).

The result is the entry in Consul's JSON shape (what ``GET /v1/config/:kind/:name`` answers): canonical
key spelling, Go's ``omitempty`` (zero values left out, except the struct-valued fields Go always prints:
``MeshGateway``, ``TransparentProxy``, ``Expose``), durations as Go prints them (``"15s"`` where Consul's
type has a custom JSON marshaller, integer nanoseconds where it has not: ``PassiveHealthCheck.Interval``).

``normalize_and_validate`` then applies each kind's ``Normalize`` and ``Validate`` with Consul's texts
(agent/structs/config_entry.go, config_entry_discoverychain.go). Cross-entry checks (protocols, subsets
that exist, loops) belong to the discovery chain compiler (``registry.discoverychain``), which the store
runs on every write as Consul's state store does.

Fields Consul has but this agent does not act on (``ExternalSNI``, ``Destination``, envoy escape hatches,
rate limits, peers...) are refused with a message saying so, never stored and silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.filtering import ERROR_PREFIX, FilterError, parse
from registry.gocompat import format_duration_ns, parse_duration_ns

__all__ = [
    "CHAIN_KINDS",
    "ConfigEntryError",
    "DEFAULT_PROTOCOL",
    "KINDS",
    "PROXY_DEFAULTS",
    "PROXY_GLOBAL",
    "SERVICE_DEFAULTS",
    "SERVICE_RESOLVER",
    "SERVICE_ROUTER",
    "SERVICE_SPLITTER",
    "decode",
    "is_http_like",
    "multierror",
    "normalize_and_validate",
    "parse_entry",
    "proxy_protocol",
    "related_services",
]

SERVICE_DEFAULTS = "service-defaults"
PROXY_DEFAULTS = "proxy-defaults"
SERVICE_RESOLVER = "service-resolver"
SERVICE_SPLITTER = "service-splitter"
SERVICE_ROUTER = "service-router"
KINDS = (SERVICE_DEFAULTS, PROXY_DEFAULTS, SERVICE_RESOLVER, SERVICE_SPLITTER, SERVICE_ROUTER)
# The kinds that form a discovery chain's graph (Consul's serviceGraphKinds).
CHAIN_KINDS = (SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER)
PROXY_GLOBAL = "global"
DEFAULT_PROTOCOL = "tcp"
WILDCARD = "*"

# Consul's limits on Meta (agent/structs: metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength).
META_MAX_KEY_PAIRS = 64
META_KEY_MAX_LENGTH = 128
META_VALUE_MAX_LENGTH = 512


class ConfigEntryError(ValueError):
    """An entry that cannot be accepted; the message is Consul's text for the problem."""


def multierror(errors: Sequence[str]) -> str:
    """hashicorp/go-multierror's Error(), which Consul returns for several of its checks."""
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} {noun} occurred:\n" + "".join(f"\t* {e}\n" for e in errors) + "\n"


def is_http_like(protocol: str) -> bool:
    """Consul's IsProtocolHTTPLike: the protocols that permit routing and splitting."""
    return protocol in ("http", "http2", "grpc")


# ================================================================================= the schema


@dataclass(frozen=True, slots=True)
class Field:
    """One struct field as Consul declares it.

    ``kind``: str, int, uint, bool, float, duration (printed "15s"), duration_ns (printed as integer
    nanoseconds), str_map, str_list, uint_list, any_map (kept as given: proxy-defaults ``Config``),
    struct, struct_list, struct_map. ``always``: printed even when zero (no ``omitempty``, or a struct
    value). ``pointer``: a Go pointer: printed when given, even if zero. ``unsupported``: a field Consul
    has that this agent refuses (the reason)."""

    name: str
    kind: str
    sub: tuple[Field, ...] = ()
    alias: str = ""
    always: bool = False
    pointer: bool = False
    unsupported: str = ""


def F(name: str, kind: str = "str", *sub: Field, alias: str = "", always: bool = False, pointer: bool = False,
      unsupported: str = "") -> Field:  # fmt: skip
    return Field(name, kind, tuple(sub), alias, always, pointer, unsupported)


def _no(name: str, alias: str = "", why: str = "not supported by Proconsul") -> Field:
    return Field(name, "any", (), alias, False, False, why)


_HEADER_MODS = (F("Add", "str_map"), F("Set", "str_map"), F("Remove", "str_list"))
_MESH_GATEWAY = F("MeshGateway", "struct", F("Mode"), alias="mesh_gateway", always=True)
_TPROXY = F("TransparentProxy", "struct", F("OutboundListenerPort", "int", alias="outbound_listener_port"),
            F("DialedDirectly", "bool", alias="dialed_directly"), alias="transparent_proxy", always=True)  # fmt: skip
_EXPOSE = F("Expose", "struct", F("Checks", "bool"),
            F("Paths", "struct_list", F("ListenerPort", "int", alias="listener_port"), F("Path"),
              F("LocalPathPort", "int", alias="local_path_port"), F("Protocol")), always=True)  # fmt: skip
_META = F("Meta", "str_map")


def _upstream(named: bool) -> tuple[Field, ...]:
    fields = [F("Name")] if named else []
    return (
        *fields,
        _no("Peer", why="cluster peering is not supported by Proconsul"),
        _no("EnvoyListenerJSON", "envoy_listener_json", "Envoy escape hatches do not apply to Proconsul's sidecar"),
        _no("EnvoyClusterJSON", "envoy_cluster_json", "Envoy escape hatches do not apply to Proconsul's sidecar"),
        F("Protocol"),
        F("ConnectTimeoutMs", "int", alias="connect_timeout_ms"),
        F("Limits", "struct", F("MaxConnections", "int", alias="max_connections", pointer=True),
          F("MaxPendingRequests", "int", alias="max_pending_requests", pointer=True),
          F("MaxConcurrentRequests", "int", alias="max_concurrent_requests", pointer=True), pointer=True),
        F("PassiveHealthCheck", "struct", F("Interval", "duration_ns"),
          F("MaxFailures", "uint", alias="max_failures"),
          F("EnforcingConsecutive5xx", "uint", alias="enforcing_consecutive_5xx", pointer=True),
          F("MaxEjectionPercent", "uint", alias="max_ejection_percent", pointer=True),
          F("BaseEjectionTime", "duration_ns", alias="base_ejection_time", pointer=True),
          alias="passive_health_check", pointer=True),
        F("MeshGateway", "struct", F("Mode"), alias="mesh_gateway", always=True),
        _no("BalanceOutboundConnections", "balance_outbound_connections"),
    )  # fmt: skip


SCHEMAS: dict[str, tuple[Field, ...]] = {
    SERVICE_DEFAULTS: (
        F("Name"), F("Protocol", always=True), F("Mode"), _TPROXY,
        _no("MutualTLSMode", "mutual_tls_mode"), _MESH_GATEWAY, _EXPOSE,
        _no("ExternalSNI", "external_sni"),
        F("UpstreamConfig", "struct", F("Overrides", "struct_list", *_upstream(True)),
          F("Defaults", "struct", *_upstream(False), pointer=True), alias="upstream_config", pointer=True),
        _no("Destination", why="terminating-gateway destinations are not supported by Proconsul"),
        F("MaxInboundConnections", "int", alias="max_inbound_connections"),
        F("LocalConnectTimeoutMs", "int", alias="local_connect_timeout_ms"),
        F("LocalRequestTimeoutMs", "int", alias="local_request_timeout_ms"),
        _no("BalanceInboundConnections", "balance_inbound_connections"),
        _no("RateLimits", "rate_limits"), _no("EnvoyExtensions", "envoy_extensions"),
        _META,
    ),
    PROXY_DEFAULTS: (
        F("Name"), F("Config", "any_map", always=True), F("Mode"), _TPROXY,
        _no("MutualTLSMode", "mutual_tls_mode"), _MESH_GATEWAY, _EXPOSE,
        _no("AccessLogs", "access_logs"), _no("EnvoyExtensions", "envoy_extensions"),
        _no("FailoverPolicy", "failover_policy"), _no("PrioritizeByLocality", "prioritize_by_locality"),
        _META,
    ),
    SERVICE_RESOLVER: (
        F("Name"),
        F("DefaultSubset", alias="default_subset"),
        F("Subsets", "struct_map", F("Filter"), F("OnlyPassing", "bool", alias="only_passing")),
        F("Redirect", "struct", F("Service"), F("ServiceSubset", alias="service_subset"), F("Namespace"),
          F("Partition"), _no("SamenessGroup", "sameness_group"), F("Datacenter"), F("Peer"), pointer=True),
        F("Failover", "struct_map", F("Service"), F("ServiceSubset", alias="service_subset"), F("Namespace"),
          _no("SamenessGroup", "sameness_group"), F("Datacenters", "str_list"),
          F("Targets", "struct_list", F("Service"), F("ServiceSubset", alias="service_subset"), F("Partition"),
            F("Namespace"), F("Datacenter"), F("Peer")),
          F("Policy", "struct", F("Mode"), F("Regions", "str_list"), pointer=True)),
        F("ConnectTimeout", "duration", alias="connect_timeout"),
        F("RequestTimeout", "duration", alias="request_timeout"),
        _no("PrioritizeByLocality", "prioritize_by_locality"),
        F("LoadBalancer", "struct", F("Policy"),
          F("RingHashConfig", "struct", F("MinimumRingSize", "uint", alias="minimum_ring_size"),
            F("MaximumRingSize", "uint", alias="maximum_ring_size"), alias="ring_hash_config", pointer=True),
          F("LeastRequestConfig", "struct", F("ChoiceCount", "uint", alias="choice_count"),
            alias="least_request_config", pointer=True),
          F("HashPolicies", "struct_list", F("Field"), F("FieldValue", alias="field_value"),
            F("CookieConfig", "struct", F("Session", "bool"), F("TTL", "duration_ns"), F("Path"),
              alias="cookie_config", pointer=True),
            F("SourceIP", "bool", alias="source_ip"), F("Terminal", "bool"), alias="hash_policies"),
          alias="load_balancer", pointer=True),
        _META,
    ),
    SERVICE_SPLITTER: (
        F("Name"),
        F("Splits", "struct_list", F("Weight", "float", always=True), F("Service"),
          F("ServiceSubset", alias="service_subset"), F("Namespace"), F("Partition"),
          F("RequestHeaders", "struct", *_HEADER_MODS, alias="request_headers", pointer=True),
          F("ResponseHeaders", "struct", *_HEADER_MODS, alias="response_headers", pointer=True)),
        _META,
    ),
    SERVICE_ROUTER: (
        F("Name"),
        F("Routes", "struct_list",
          F("Match", "struct",
            F("HTTP", "struct", F("PathExact", alias="path_exact"), F("PathPrefix", alias="path_prefix"),
              F("PathRegex", alias="path_regex"),
              F("Header", "struct_list", F("Name", always=True), F("Present", "bool"), F("Exact"), F("Prefix"),
                F("Suffix"), F("Regex"), F("Invert", "bool")),
              F("QueryParam", "struct_list", F("Name", always=True), F("Present", "bool"), F("Exact"),
                F("Regex"), alias="query_param"),
              F("Methods", "str_list"), pointer=True), pointer=True),
          F("Destination", "struct", F("Service"), F("ServiceSubset", alias="service_subset"), F("Namespace"),
            F("Partition"), F("PrefixRewrite", alias="prefix_rewrite"),
            F("RequestTimeout", "duration", alias="request_timeout"),
            F("IdleTimeout", "duration", alias="idle_timeout"),
            F("NumRetries", "uint", alias="num_retries"),
            F("RetryOnConnectFailure", "bool", alias="retry_on_connect_failure"),
            F("RetryOn", "str_list", alias="retry_on"),
            F("RetryOnStatusCodes", "uint_list", alias="retry_on_status_codes"),
            F("RequestHeaders", "struct", *_HEADER_MODS, alias="request_headers", pointer=True),
            F("ResponseHeaders", "struct", *_HEADER_MODS, alias="response_headers", pointer=True),
            pointer=True)),
        _META,
    ),
}  # fmt: skip

# Go's names for the types, as mapstructure's errors print them.
_GO_TYPES = {"str": "string", "int": "int", "uint": "uint32", "bool": "bool", "float": "float32",
             "duration": "time.Duration", "duration_ns": "time.Duration"}  # fmt: skip
_INT32_MAX = 2**31 - 1
_UINT32_MAX = 2**32 - 1
_INT64_MAX = 2**63 - 1


# ================================================================================= decoding


class _Decoder:
    def __init__(self) -> None:
        self.unused: list[str] = []
        self.errors: list[str] = []

    def struct(self, raw: Any, fields: tuple[Field, ...], path: str, top: bool = False) -> dict[str, Any] | None:
        raw = _unslice(raw)
        if not isinstance(raw, Mapping):
            self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
            return None
        by_name: dict[str, Field] = {}
        for f in fields:
            by_name[f.name.lower()] = f
        aliases = {f.alias: f for f in fields if f.alias}
        chosen: dict[str, tuple[str, Any]] = {}  # field name -> (key as given, value)
        for key, value in raw.items():
            k = str(key)
            low = k.lower()
            f = by_name.get(low)
            if f is not None:
                chosen[f.name] = (k, value)  # the canonical spelling wins over an alias
                continue
            f = aliases.get(low)
            if f is not None:
                chosen.setdefault(f.name, (k, value))
                continue
            if top and low in ("kind", "createindex", "modifyindex"):
                continue
            where = f"{path}.{k}" if path else k
            if top and low in ("namespace", "partition"):
                if value in (None, "", "default"):
                    continue
                if low == "namespace":
                    self.unused.append(f'invalid config key "{where}", namespaces are a consul enterprise feature')
                else:
                    self.unused.append(f'invalid config key "{where}", partitions are a consul enterprise feature')
                continue
            self.unused.append(f'invalid config key "{where}"')
        out: dict[str, Any] = {}
        for f in fields:
            got = chosen.get(f.name)
            where = f"{path}.{f.name}" if path else f.name
            if got is None:
                if f.always and f.kind == "struct":
                    out[f.name] = self.struct({}, f.sub, where) or {}
                elif f.always and f.kind == "any_map":
                    out[f.name] = None
                elif f.always:
                    out[f.name] = _ZERO.get(f.kind, "")
                continue
            value = got[1]
            if f.unsupported:
                if not _is_zero(value):
                    self.unused.append(f'invalid config key "{where}": {f.unsupported}')
                continue
            decoded = self.value(value, f, where)
            if decoded is _SKIP:
                continue
            if f.always or f.pointer or not _is_zero(decoded):
                out[f.name] = decoded
        return out

    def value(self, raw: Any, f: Field, path: str) -> Any:
        kind = f.kind
        if kind == "struct":
            if raw is None:
                return _SKIP
            got = self.struct(raw, f.sub, path)
            return _SKIP if got is None else got
        if kind == "struct_list":
            if raw is None:
                return _SKIP
            items = raw if isinstance(raw, list) else [raw]
            out = []
            for i, item in enumerate(items):
                got = self.struct(item, f.sub, f"{path}[{i}]")
                if got is not None:
                    out.append(got)
            return out
        if kind == "struct_map":
            raw = _unslice(raw)
            if raw is None:
                return _SKIP
            if not isinstance(raw, Mapping):
                self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
                return _SKIP
            out_map: dict[str, Any] = {}
            for k, item in raw.items():
                got = self.struct(item, f.sub, f"{path}[{k}]")
                if got is not None:
                    out_map[str(k)] = got
            return out_map
        if kind == "str_map":
            raw = _unslice(raw)
            if raw is None:
                return _SKIP
            if not isinstance(raw, Mapping):
                self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
                return _SKIP
            return {str(k): self.scalar(v, "str", f"{path}[{k}]") for k, v in raw.items()}
        if kind in ("str_list", "uint_list"):
            if raw is None:
                return _SKIP
            items = raw if isinstance(raw, list) else [raw]
            elem = "str" if kind == "str_list" else "uint"
            return [self.scalar(v, elem, f"{path}[{i}]") for i, v in enumerate(items)]
        if kind == "any_map":
            raw = _unslice(raw)
            if raw is None:
                return None
            if not isinstance(raw, Mapping):
                self.errors.append(f"'{path}' expected a map, got '{_go_kind(raw)}'")
                return _SKIP
            return _plain(raw)
        return self.scalar(_unslice(raw), kind, path)

    def scalar(self, raw: Any, kind: str, path: str) -> Any:
        try:
            return _convert(raw, kind)
        except _Unconvertible:
            self.errors.append(f"'{path}' expected type '{_GO_TYPES.get(kind, kind)}', got unconvertible type "
                               f"'{_go_kind(raw)}', value: '{_go_value(raw)}'")  # fmt: skip
            return _ZERO.get(kind, "")
        except ValueError as exc:
            self.errors.append(f"error decoding '{path}': {exc}")
            return _ZERO.get(kind, "")


_SKIP = object()
_ZERO: dict[str, Any] = {"str": "", "int": 0, "uint": 0, "bool": False, "float": 0, "duration": "",
                         "duration_ns": 0}  # fmt: skip


class _Unconvertible(Exception):
    pass


def _unslice(raw: Any) -> Any:
    # HookWeakDecodeFromSlice: a one-element list where a single value is expected is that value.
    if isinstance(raw, list) and len(raw) == 1:
        return raw[0]
    return raw


def _is_zero(value: Any) -> bool:
    return value is None or value == "" or value is False or (
        not isinstance(value, bool) and isinstance(value, int | float) and value == 0) or (
        isinstance(value, list | dict | Mapping) and not value)  # fmt: skip


def _plain(value: Any) -> Any:
    """A JSON-ready deep copy of an opaque value (proxy-defaults Config)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _go_kind(raw: Any) -> str:
    if isinstance(raw, bool):
        return "bool"
    if isinstance(raw, int):
        return "int"
    if isinstance(raw, float):
        return "float64"
    if isinstance(raw, str):
        return "string"
    if isinstance(raw, list):
        return "slice"
    if isinstance(raw, Mapping):
        return "map"
    return "ptr" if raw is None else type(raw).__name__


def _go_value(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, list):
        return "[" + " ".join(_go_value(v) for v in raw) + "]"
    if isinstance(raw, Mapping):
        return "map[" + " ".join(f"{k}:{_go_value(v)}" for k, v in raw.items()) + "]"
    return "<nil>" if raw is None else str(raw)


def _convert(raw: Any, kind: str) -> Any:
    """mapstructure's WeaklyTypedInput conversions for one scalar."""
    if kind == "str":
        if isinstance(raw, str):
            return raw
        if isinstance(raw, bool):
            return "1" if raw else "0"
        if isinstance(raw, int):
            return str(raw)
        if isinstance(raw, float):
            return repr(raw) if not raw.is_integer() else str(int(raw))
        raise _Unconvertible
    if kind in ("int", "uint"):
        if isinstance(raw, bool):
            return int(raw)
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise _Unconvertible
            raw = int(raw)
        if isinstance(raw, str):
            try:
                raw = int(raw.strip() or "0", 0)
            except ValueError:
                raise ValueError(f"cannot parse {raw!r} as {_GO_TYPES[kind]}") from None
        if not isinstance(raw, int):
            raise _Unconvertible
        if kind == "uint" and (raw < 0 or raw > _UINT32_MAX):
            raise ValueError(f"cannot parse {raw} as uint32: value out of range")
        if kind == "int" and abs(raw) > _INT64_MAX:
            raise ValueError(f"cannot parse {raw} as int: value out of range")
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int | float):
            return raw != 0
        if isinstance(raw, str):
            low = raw.strip()
            if low == "":
                return False
            if low in ("1", "t", "T", "TRUE", "true", "True"):
                return True
            if low in ("0", "f", "F", "FALSE", "false", "False"):
                return False
            raise ValueError(f"cannot parse {raw!r} as bool")
        raise _Unconvertible
    if kind == "float":
        if isinstance(raw, bool):
            return 1.0 if raw else 0.0
        if isinstance(raw, int | float):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip() or "0")
            except ValueError:
                raise ValueError(f"cannot parse {raw!r} as float32") from None
        else:
            raise _Unconvertible
        if not math.isfinite(value) or abs(value) > 3.4e38:
            raise ValueError(f"cannot parse {raw!r} as float32: value out of range")
        return value
    if kind in ("duration", "duration_ns"):
        if isinstance(raw, bool):
            raise _Unconvertible
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise _Unconvertible
            ns = int(raw)
        elif isinstance(raw, int):
            ns = raw
        elif isinstance(raw, str):
            ns = 0 if raw.strip() == "" else parse_duration_ns(raw.strip())
        else:
            raise _Unconvertible
        if abs(ns) > _INT64_MAX:
            raise ValueError("duration out of range")
        return format_duration_ns(ns) if kind == "duration" and ns else (ns if kind == "duration_ns" else "")
    raise _Unconvertible


def decode(raw: Any) -> dict[str, Any]:
    """Decode a config entry from its raw JSON (or HCL-derived) map into Consul's JSON shape.

    Raises ConfigEntryError with Consul's texts: a missing or non-string ``Kind``, an unknown kind, keys
    that name no field (all listed, go-multierror style), values of the wrong type."""
    if not isinstance(raw, Mapping):
        raise ConfigEntryError("Payload does not contain a kind/Kind key at the top level")
    if "Kind" in raw:
        kind_value = raw["Kind"]
    elif "kind" in raw:
        kind_value = raw["kind"]
    else:
        raise ConfigEntryError("Payload does not contain a kind/Kind key at the top level")
    if not isinstance(kind_value, str):
        raise ConfigEntryError("Kind value in payload is not a string")
    schema = SCHEMAS.get(kind_value)
    if schema is None:
        raise ConfigEntryError(f"invalid config entry kind: {kind_value}")
    d = _Decoder()
    body = d.struct(raw, schema, "", top=True) or {}
    if d.errors:
        # mapstructure's own wording for type errors.
        raise ConfigEntryError(f"{len(d.errors)} error(s) decoding:\n\n" + "\n".join(f"* {e}" for e in d.errors))
    if d.unused:
        raise ConfigEntryError(multierror(d.unused))
    entry: dict[str, Any] = {"Kind": kind_value}
    entry.update(body)
    if "Name" not in entry:
        entry["Name"] = ""
    return entry


# ================================================================================= Normalize, Validate


def _meta_errors(meta: Mapping[str, str] | None) -> list[str]:
    errs = []
    meta = meta or {}
    if len(meta) > META_MAX_KEY_PAIRS:
        errs.append(f"Meta exceeds maximum element count {META_MAX_KEY_PAIRS}")
    for k, v in meta.items():
        if len(k) > META_KEY_MAX_LENGTH:
            errs.append(f'Meta key "{k}" exceeds maximum length {META_KEY_MAX_LENGTH}')
        if len(v) > META_VALUE_MAX_LENGTH:
            errs.append(f'Meta value for key "{k}" exceeds maximum length {META_VALUE_MAX_LENGTH}')
    return errs


def _check_meta(entry: Mapping[str, Any]) -> None:
    errs = _meta_errors(entry.get("Meta"))
    if errs:
        raise ConfigEntryError(multierror(errs))


def _ns_errors(where: str, value: str | None) -> list[str]:
    # Consul CE's ValidateEnterprise: a namespace or partition other than the default needs Enterprise.
    out = []
    if value not in (None, "", "default"):
        out.append(f"{where}Setting Namespace requires Consul Enterprise")
    return out


def _partition_errors(where: str, value: str | None) -> list[str]:
    return [f"{where}Setting Partition requires Consul Enterprise"] if value not in (None, "", "default") else []


_VALID_MODES = ("", "direct", "transparent")
_GATEWAY_MODES = ("", "none", "local", "remote")


def _check_proxy_modes(entry: Mapping[str, Any]) -> None:
    mode = entry.get("Mode", "")
    if mode not in _VALID_MODES:
        raise ConfigEntryError(f'Invalid proxy mode "{mode}"')
    gw = (entry.get("MeshGateway") or {}).get("Mode", "")
    if gw not in _GATEWAY_MODES:
        raise ConfigEntryError(f'Invalid Mesh Gateway mode "{gw}"')


def _upstream_errors(cfg: dict[str, Any], named: bool) -> list[str]:
    errs: list[str] = []
    if named:
        if not cfg.get("Name"):
            return ["Name is required"]
        if cfg["Name"] == WILDCARD:
            return ["Wildcard name is not supported"]
    phc = cfg.get("PassiveHealthCheck")
    if phc is not None:
        if phc.get("Interval", 0) < 0:
            errs.append("passive health check interval cannot be negative")
        elif phc.get("EnforcingConsecutive5xx", 0) > 100:
            errs.append("passive health check enforcing_consecutive_5xx must be a percentage between 0 and 100")
        elif phc.get("MaxEjectionPercent", 0) > 100:
            errs.append("passive health check max_ejection_percent must be a percentage between 0 and 100")
        elif phc.get("BaseEjectionTime", 0) < 0:
            errs.append("passive health check base_ejection_time cannot be negative")
    limits = cfg.get("Limits")
    if limits is not None:
        if limits.get("MaxConnections", 0) < 0:
            errs.append("max connections cannot be negative")
        elif limits.get("MaxPendingRequests", 0) < 0:
            errs.append("max pending requests cannot be negative")
        elif limits.get("MaxConcurrentRequests", 0) < 0:
            errs.append("max concurrent requests cannot be negative")
    gw = (cfg.get("MeshGateway") or {}).get("Mode", "")
    if gw not in _GATEWAY_MODES:
        errs.append(f'Invalid Mesh Gateway mode "{gw}"')
    return errs


def _normalize_upstream(cfg: dict[str, Any]) -> None:
    if cfg.get("Protocol"):
        cfg["Protocol"] = cfg["Protocol"].lower()
    if cfg.get("ConnectTimeoutMs", 0) < 0:
        cfg.pop("ConnectTimeoutMs")


def _service_defaults(e: dict[str, Any]) -> None:
    e["Protocol"] = e.get("Protocol", "").lower()
    up = e.get("UpstreamConfig")
    if up is not None:
        for o in up.get("Overrides", []):
            _normalize_upstream(o)
        if up.get("Defaults") is not None:
            _normalize_upstream(up["Defaults"])
    if not e["Name"]:
        raise ConfigEntryError("Name is required")
    if e["Name"] == WILDCARD:
        raise ConfigEntryError("service-defaults name must be the name of a service, and not a wildcard")
    errs = _meta_errors(e.get("Meta"))
    if up is not None:
        for o in up.get("Overrides", []):
            for err in _upstream_errors(o, True):
                errs.append(f"error in upstream override for {o.get('Name', '')}: {err}")
        if up.get("Defaults") is not None:
            for err in _upstream_errors(up["Defaults"], False):
                errs.append(f"error in upstream defaults: {err}")
    for key in ("MaxInboundConnections", "LocalConnectTimeoutMs", "LocalRequestTimeoutMs"):
        if e.get(key, 0) < 0:
            errs.append(f"{key} cannot be negative")
    if errs:
        raise ConfigEntryError(multierror(errs))
    _check_proxy_modes(e)


def _proxy_defaults(e: dict[str, Any]) -> None:
    name = e.get("Name", "")
    if name not in ("", PROXY_GLOBAL):
        raise ConfigEntryError(f'invalid name ("{name}"), only "{PROXY_GLOBAL}" is supported')
    e["Name"] = PROXY_GLOBAL
    _check_meta(e)
    _check_proxy_modes(e)


_SUBSET_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
_HASH_FIELDS = ("header", "cookie", "query_parameter")


def _subset_error(name: str) -> str | None:
    """Consul's validateServiceSubset: subset names are DNS labels (they appear in SNI names)."""
    if not name or len(name) > 63:
        return "must be non-empty and 63 characters or fewer"
    if not _SUBSET_RE.match(name):
        return ("must be 63 characters or fewer, begin or end with lower case alphanumeric characters, and "
                "contain lower case alphanumeric characters or '-' in between")  # fmt: skip
    return None


def _duration_ns(value: str | int | None) -> int:
    if not value:
        return 0
    return value if isinstance(value, int) else parse_duration_ns(value)


def _service_resolver(e: dict[str, Any]) -> None:
    name = e["Name"]
    if not name:
        raise ConfigEntryError("Name is required")
    _check_meta(e)
    subsets: dict[str, Any] = e.get("Subsets") or {}
    for sname in sorted(subsets):
        if sname == "":
            raise ConfigEntryError("Subset defined with empty name")
        problem = _subset_error(sname)
        if problem:
            raise ConfigEntryError(f'Subset "{sname}" is invalid: {problem}')
        flt = subsets[sname].get("Filter", "")
        if flt:
            try:
                parse(flt)  # go-bexpr's CreateEvaluator with no data type: the syntax only
            except FilterError as exc:
                err = str(exc).removeprefix(ERROR_PREFIX)
                raise ConfigEntryError(f'Filter for subset "{sname}" is not a valid expression: {err}') from None

    def is_subset(s: str) -> bool:
        return s in subsets

    default_subset = e.get("DefaultSubset", "")
    if default_subset and not is_subset(default_subset):
        raise ConfigEntryError(f'DefaultSubset "{default_subset}" is not a valid subset')
    failover: dict[str, Any] = e.get("Failover") or {}
    r = e.get("Redirect")
    if r is not None:
        if r.get("Partition", "") not in ("", "default") and r.get("Datacenter"):
            raise ConfigEntryError("Cross-datacenter and cross-partition redirect is not supported")
        for err in _ns_errors("Redirect: ", r.get("Namespace")) + _partition_errors("Redirect: ", r.get("Partition")):
            raise ConfigEntryError(err)
        if failover:
            raise ConfigEntryError("Redirect and Failover cannot both be set")
        if not any(r.get(k) for k in ("Service", "ServiceSubset", "Namespace", "Partition", "Datacenter", "Peer")):
            raise ConfigEntryError("Redirect is empty")
        svc, sub, peer = r.get("Service", ""), r.get("ServiceSubset", ""), r.get("Peer", "")
        if peer and sub:
            raise ConfigEntryError("Redirect.Peer cannot be set with Redirect.ServiceSubset")
        if peer and r.get("Partition"):
            raise ConfigEntryError("Redirect.Partition cannot be set with Redirect.Peer")
        if peer and r.get("Datacenter"):
            raise ConfigEntryError("Redirect.Peer cannot be set with Redirect.Datacenter")
        if svc == "":
            for key in ("ServiceSubset", "Namespace", "Partition", "Peer"):
                if r.get(key):
                    raise ConfigEntryError(f"Redirect.{key} defined without Redirect.Service")
        elif sub and svc == name and not is_subset(sub):
            raise ConfigEntryError(f'Redirect.ServiceSubset "{sub}" is not a valid subset of "{name}"')
        if peer:
            raise ConfigEntryError("Redirect.Peer: cluster peering is not supported by Proconsul")
    for subset in sorted(failover):
        f = failover[subset]
        prefix = f'Bad Failover["{subset}"]: '
        for err in _ns_errors(prefix, f.get("Namespace")):
            raise ConfigEntryError(err)
        if subset != WILDCARD and not is_subset(subset):
            raise ConfigEntryError(prefix + "not a valid subset subset")
        if not any(f.get(k) for k in ("Service", "ServiceSubset", "Namespace", "Datacenters", "Targets")):
            raise ConfigEntryError(prefix + "one of Service, ServiceSubset, Namespace, Targets, or Datacenters "
                                   "is required")  # fmt: skip
        policy = f.get("Policy")
        if policy is not None and policy.get("Mode", "") not in ("", "default", "order-by-locality"):
            raise ConfigEntryError(prefix + "Policy must be one of '', 'default', or 'order-by-locality'")
        fsvc, fsub = f.get("Service", ""), f.get("ServiceSubset", "")
        if fsub and fsvc in ("", name) and not is_subset(fsub):
            raise ConfigEntryError(f'{prefix}ServiceSubset "{fsub}" is not a valid subset of "{fsvc}"')
        targets = f.get("Targets") or []
        if f.get("Datacenters") and targets:
            raise ConfigEntryError(prefix + "Targets cannot be set with Datacenters")
        if fsub and targets:
            raise ConfigEntryError(prefix + "Targets cannot be set with ServiceSubset")
        if fsvc and targets:
            raise ConfigEntryError(prefix + "Targets cannot be set with Service")
        for i, t in enumerate(targets):
            tp = f'Bad Failover["{subset}"].Targets[{i}]: '
            for err in _ns_errors(tp, t.get("Namespace")) + _partition_errors(tp, t.get("Partition")):
                raise ConfigEntryError(err)
            if t.get("Peer") and t.get("ServiceSubset"):
                raise ConfigEntryError(tp + "Peer cannot be set with ServiceSubset")
            if t.get("Peer") and t.get("Partition"):
                raise ConfigEntryError(tp + "Partition cannot be set with Peer")
            if t.get("Peer") and t.get("Datacenter"):
                raise ConfigEntryError(tp + "Peer cannot be set with Datacenter")
            if t.get("Partition") and t.get("Datacenter"):
                raise ConfigEntryError(tp + "Partition cannot be set with Datacenter")
            tsub = t.get("ServiceSubset", "")
            if tsub and t.get("Service", "") in ("", name) and not is_subset(tsub):
                raise ConfigEntryError(f'{tp}ServiceSubset "{tsub}" is not a valid subset of "{name}"')
            if t.get("Peer"):
                raise ConfigEntryError(tp + "cluster peering is not supported by Proconsul")
        for dc in f.get("Datacenters") or []:
            if dc == "":
                raise ConfigEntryError(f'Bad Failover["{subset}"].Datacenters: found empty datacenter')
    for key in ("ConnectTimeout", "RequestTimeout"):
        if _duration_ns(e.get(key)) < 0:
            raise ConfigEntryError(f"Bad {key} '{e[key]}', must be >= 0")
    lb = e.get("LoadBalancer")
    if lb is not None:
        policy = lb.get("Policy", "")
        if policy not in _LB_POLICIES:
            raise ConfigEntryError(f'Bad LoadBalancer policy: "{policy}" is not supported')
        if policy != "ring_hash" and lb.get("RingHashConfig") is not None:
            raise ConfigEntryError("Bad LoadBalancer configuration. RingHashConfig specified for incompatible "
                                   f'load balancing policy "{policy}"')  # fmt: skip
        if policy != "least_request" and lb.get("LeastRequestConfig") is not None:
            raise ConfigEntryError("Bad LoadBalancer configuration. LeastRequestConfig specified for "
                                   f'incompatible load balancing policy "{policy}"')  # fmt: skip
        hash_based = policy in ("ring_hash", "maglev")
        if not hash_based and lb.get("HashPolicies"):
            raise ConfigEntryError("Bad LoadBalancer configuration: HashPolicies specified for non-hash-based "
                                   f'Policy: "{policy}"')  # fmt: skip
        for i, hp in enumerate(lb.get("HashPolicies") or []):
            fld, value = hp.get("Field", ""), hp.get("FieldValue", "")
            p = f"Bad LoadBalancer HashPolicy[{i}]: "
            if fld and fld not in _HASH_FIELDS:
                raise ConfigEntryError(f'{p}"{fld}" is not a supported field')
            if hp.get("SourceIP") and fld:
                raise ConfigEntryError(f'{p}A single hash policy cannot hash both a source address and a "{fld}"')
            if hp.get("SourceIP") and value:
                raise ConfigEntryError(p + "A FieldValue cannot be specified when hashing SourceIP")
            if fld and not value:
                raise ConfigEntryError(f'{p}Field "{fld}" was specified without a FieldValue')
            if value and not fld:
                raise ConfigEntryError(p + "FieldValue requires a Field to apply to")
            cookie = hp.get("CookieConfig")
            if cookie is not None:
                if fld != "cookie":
                    raise ConfigEntryError(f'{p}cookie_config provided for "{fld}"')
                if cookie.get("Session") and cookie.get("TTL", 0) != 0:
                    raise ConfigEntryError(p + "a session cookie cannot have an associated TTL")


def _scale_weight(v: float) -> int:
    # Consul's scaleWeight: shares of 0.01%, rounded half away from zero (math.Round).
    x = v * 100.0
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def normalize_weight(v: float) -> float | int:
    """Consul's NormalizeServiceSplitWeight: the smallest weight is 0.01; whole numbers print as such."""
    w = _scale_weight(v) / 100.0
    return int(w) if w.is_integer() else w


def _service_splitter(e: dict[str, Any]) -> None:
    for split in e.get("Splits") or []:
        split["Weight"] = normalize_weight(split.get("Weight", 0))
    name = e["Name"]
    if not name:
        raise ConfigEntryError("Name is required")
    splits = e.get("Splits") or []
    if not splits:
        raise ConfigEntryError("no splits configured")
    _check_meta(e)
    seen: set[tuple[Any, ...]] = set()
    for split in splits:
        key = (split.get("Service") or name, split.get("ServiceSubset", ""), split.get("Namespace", ""),
               split.get("Partition", ""), repr(split.get("RequestHeaders")), repr(split.get("ResponseHeaders")))  # fmt: skip
        if key in seen:
            raise ConfigEntryError(
                f'split destination occurs more than once: service="{key[0]}", subset="{key[1]}", '
                f'namespace="{key[2]}", partition="{key[3]}"'
            )
        seen.add(key)
    total = sum(_scale_weight(s.get("Weight", 0)) for s in splits)
    if total != 100 * 100:
        raise ConfigEntryError(f"the sum of all split weights must be 100, not {total / 100:f}")
    for i, split in enumerate(splits):
        for err in _ns_errors(f"Splits[{i}]: ", split.get("Namespace")) + _partition_errors(
            f"Splits[{i}]: ", split.get("Partition")
        ):
            raise ConfigEntryError(err)
        if split["Weight"] < 0:
            raise ConfigEntryError(f"Splits[{i}]: Weight cannot be negative")


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
_RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
             "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")  # fmt: skip


def _regex_error(pattern: str) -> str | None:
    """Whether the sidecar can compile a route's regex. Consul leaves this to Envoy (which then rejects
    the whole listener); refusing it at write time keeps a typo from breaking routing later."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    return None


def _service_router(e: dict[str, Any]) -> None:
    for route in e.get("Routes") or []:
        http = (route.get("Match") or {}).get("HTTP")
        if http is not None and http.get("Methods"):
            http["Methods"] = [m.upper() for m in http["Methods"]]
    if not e["Name"]:
        raise ConfigEntryError("Name is required")
    _check_meta(e)
    for i, route in enumerate(e.get("Routes") or []):
        prefix_ok = False
        http = (route.get("Match") or {}).get("HTTP")
        if http is not None:
            parts = 0
            if http.get("PathExact"):
                prefix_ok = True
                parts += 1
                if not http["PathExact"].startswith("/"):
                    raise ConfigEntryError(f"Route[{i}] PathExact doesn't start with '/': \"{http['PathExact']}\"")
            if http.get("PathPrefix"):
                prefix_ok = True
                parts += 1
                if not http["PathPrefix"].startswith("/"):
                    raise ConfigEntryError(f"Route[{i}] PathPrefix doesn't start with '/': \"{http['PathPrefix']}\"")
            if http.get("PathRegex"):
                parts += 1
                err = _regex_error(http["PathRegex"])
                if err:
                    raise ConfigEntryError(f"Route[{i}] PathRegex is not a valid regular expression: {err}")
            if parts > 1:
                raise ConfigEntryError(f"Route[{i}] should only contain at most one of PathExact, PathPrefix, or "
                                       "PathRegex")  # fmt: skip
            for j, hdr in enumerate(http.get("Header") or []):
                if not hdr.get("Name"):
                    raise ConfigEntryError(f"Route[{i}] Header[{j}] missing required Name field")
                n = sum(1 for k in ("Present", "Exact", "Regex", "Prefix", "Suffix") if hdr.get(k))
                if n != 1:
                    raise ConfigEntryError(f"Route[{i}] Header[{j}] should only contain one of Present, Exact, "
                                           "Prefix, Suffix, or Regex")  # fmt: skip
                if hdr.get("Regex") and (err := _regex_error(hdr["Regex"])):
                    raise ConfigEntryError(f"Route[{i}] Header[{j}] Regex is not a valid regular expression: {err}")
            for j, qp in enumerate(http.get("QueryParam") or []):
                if not qp.get("Name"):
                    raise ConfigEntryError(f"Route[{i}] QueryParam[{j}] missing required Name field")
                n = sum(1 for k in ("Present", "Exact", "Regex") if qp.get(k))
                if n != 1:
                    raise ConfigEntryError(f"Route[{i}] QueryParam[{j}] should only contain one of Present, Exact, "
                                           "or Regex")  # fmt: skip
                if qp.get("Regex") and (err := _regex_error(qp["Regex"])):
                    raise ConfigEntryError(
                        f"Route[{i}] QueryParam[{j}] Regex is not a valid regular expression: {err}")
            found: set[str] = set()
            for m in http.get("Methods") or []:
                if m not in _HTTP_METHODS:
                    raise ConfigEntryError(f'Route[{i}] Methods contains an invalid method "{m}"')
                if m in found:
                    raise ConfigEntryError(f'Route[{i}] Methods contains "{m}" more than once')
                found.add(m)
        dest = route.get("Destination")
        if dest is not None:
            if dest.get("PrefixRewrite") and not prefix_ok:
                raise ConfigEntryError(f"Route[{i}] cannot make use of PrefixRewrite without configuring either "
                                       "PathExact or PathPrefix")  # fmt: skip
            for r in dest.get("RetryOn") or []:
                if r not in _RETRY_ON:
                    raise ConfigEntryError(f'Route[{i}] contains an invalid retry condition: "{r}"')
            for key in ("RequestTimeout", "IdleTimeout"):
                if _duration_ns(dest.get(key)) < 0:
                    raise ConfigEntryError(f"Route[{i}] {key} cannot be negative")
            for err in _ns_errors(f"Route[{i}] Destination: ", dest.get("Namespace")) + _partition_errors(
                f"Route[{i}] Destination: ", dest.get("Partition")
            ):
                raise ConfigEntryError(err)


def normalize_and_validate(entry: dict[str, Any]) -> dict[str, Any]:
    """Apply the kind's Normalize then Validate to a decoded entry (in place; also returned). Raises
    ConfigEntryError with Consul's text."""
    kind = entry["Kind"]
    if kind == SERVICE_DEFAULTS:
        _service_defaults(entry)
    elif kind == PROXY_DEFAULTS:
        _proxy_defaults(entry)
    elif kind == SERVICE_RESOLVER:
        _service_resolver(entry)
    elif kind == SERVICE_SPLITTER:
        _service_splitter(entry)
    elif kind == SERVICE_ROUTER:
        _service_router(entry)
    else:
        raise ConfigEntryError(f"invalid config entry kind: {kind}")
    return entry


def parse_entry(raw: Any) -> dict[str, Any]:
    """decode + normalize_and_validate: the canonical entry, ready to be stored."""
    return normalize_and_validate(decode(raw))


# ================================================================================= relations


def related_services(entry: Mapping[str, Any]) -> list[str]:
    """Consul's ListRelatedServices: the other services a router, splitter or resolver names (sorted);
    writing the entry needs service:read on each, and a change to any of them re-checks this chain."""
    kind, name = entry.get("Kind"), entry.get("Name", "")
    found: set[str] = set()
    if kind == SERVICE_ROUTER:
        for route in entry.get("Routes") or []:
            dest = route.get("Destination")
            if dest is not None:
                found.add(dest.get("Service") or name)
    elif kind == SERVICE_SPLITTER:
        for split in entry.get("Splits") or []:
            found.add(split.get("Service") or name)
    elif kind == SERVICE_RESOLVER:
        redirect = entry.get("Redirect")
        if redirect is not None:
            found.add(redirect.get("Service") or name)
        for f in (entry.get("Failover") or {}).values():
            targets = f.get("Targets") or []
            if not targets:
                found.add(f.get("Service") or name)
            for t in targets:
                if not t.get("Peer"):
                    found.add(t.get("Service") or name)
    found.discard(name)
    return sorted(found)


def proxy_protocol(proxy_defaults: Mapping[str, Any] | None) -> str:
    """The ``protocol`` key of proxy-defaults' opaque ``Config`` (Consul's proxyConfig, weakly decoded:
    any key spelled ``protocol`` in any case), or ""."""
    if proxy_defaults is None:
        return ""
    cfg = proxy_defaults.get("Config") or {}
    for k, v in cfg.items():
        if str(k).lower() == "protocol" and isinstance(v, str | int | float | bool):
            return _convert(v, "str")
    return ""
