"""Request bodies -> validated canonical dicts.

Consul decodes JSON with Go's encoding/json (field names match case-insensitively) and, for agent service
and check registration, also accepts snake_case names. We match a key by lower-casing it and dropping
underscores, then check its type. User-data maps (Meta, TaggedAddresses' keys, Header) keep their keys.
Every problem raises ``DecodeError`` with a message naming the field; nothing is half-decoded.
"""

from __future__ import annotations

import json
import re
from typing import Any

from registry.gocompat import DurationError, format_duration, parse_duration


class DecodeError(ValueError):
    pass


def parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(str(exc)) from exc


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
