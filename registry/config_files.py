"""Reading config files as Consul's agent reads them (agent/config/builder.go and config.go).

* Which files: ``-config-file`` and ``-config-dir`` name files or directories, loaded in the order given.
  A file's format comes from its extension (``.hcl``, ``.json``; Proconsul also reads ``.yaml``/``.yml``,
  its own format for ``cluster.yaml``), or from ``-config-format hcl|json`` for every file. A named file
  with another extension is an error; in a directory (not recursed into) such files are skipped with a
  warning, and the others are read in lexical order of their names. An empty file is skipped.
* How they read: HCL through python-hcl2, shaped as Consul's HCL1 decoder shapes it (a block is a list of
  maps), then checked against Consul's keys (``registry.config_schema``) the way Consul's ``mapstructure``
  decode with its hooks does: a list holding one block where a single block belongs is that block
  (``HookWeakDecodeFromSlice``), a key matches its field case-insensitively (so ``"Name"`` in a JSON
  service is ``name``), the older spellings of check fields (``ServiceID``, ``ScriptArgs``,
  ``DeregisterCriticalServiceAfter``, ...) are their new names (``HookTranslateKeys``), and any other key
  fails the file with ``invalid config key <path>`` (``services[0].bogus``, ``ports.foo``).
* Deprecated keys are read into the keys that replace them, with Consul's warning text.

The result is one mapping per file, keyed by Consul's snake_case names; ``registry.config.apply_mapping``
merges them in order (later scalars win, blocks merge key by key, lists append).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import yaml
from hcl2.utils import SerializationOptions
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from registry.config import ConfigError
from registry.config_schema import (
    ANY,
    ANY_LIST,
    DEPRECATED,
    DEPRECATED_IGNORED,
    DEPRECATED_NESTED,
    MAP,
    TOP,
    VALUE,
    Block,
    Blocks,
    Kind,
    MapOf,
)

CONFIG_FORMATS = ("hcl", "json")


@dataclass(frozen=True)
class Source:
    """One file, read and checked: ``data`` holds Consul's canonical keys."""

    name: str
    data: dict[str, Any]


@dataclass
class Loaded:
    sources: list[Source] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def format_from_extension(name: str) -> str:
    if name.endswith(".json"):
        return "json"
    if name.endswith(".hcl"):
        return "hcl"
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    return ""


def check_format(config_format: str) -> None:
    if config_format not in ("", *CONFIG_FORMATS):
        raise ConfigError("config: -config-format must be either 'hcl' or 'json'")


def files_from_path(path: str, config_format: str, warnings: list[str]) -> list[str]:
    """The files one ``-config-file``/``-config-dir`` argument names, as Consul's ``sourcesFromPath``."""
    p = Path(path)
    try:
        is_dir = p.is_dir()
        if not is_dir and not p.exists():
            raise FileNotFoundError(2, "no such file or directory")
    except OSError as exc:
        raise ConfigError(f"config: Open failed on {path}. open {path}: {exc.strerror}") from exc
    if not is_dir:
        if not config_format and not format_from_extension(path):
            raise ConfigError(f"file {path} has unknown extension; must be .hcl or .json, or config format must be set")
        return [path]
    try:
        entries = sorted(p.iterdir(), key=lambda e: e.name)
    except OSError as exc:
        raise ConfigError(f"config: Readdir failed on {path}. {exc.strerror}") from exc
    files = []
    for entry in entries:
        try:
            if entry.resolve().is_dir():
                continue  # Consul does not recurse into sub-directories
        except OSError as exc:
            raise ConfigError(f"config: Stat failed on {entry}. {exc.strerror}") from exc
        if not config_format and not format_from_extension(entry.name):
            warnings.append(f"skipping file {entry}, extension must be .hcl or .json, or config format must be set")
            continue
        files.append(str(entry))
    return files


def load_paths(paths: Sequence[str], config_format: str = "") -> Loaded:
    """Read every file the ``-config-file``/``-config-dir`` arguments name, in order; ConfigError with
    Consul's text for the first file that cannot be read."""
    check_format(config_format)
    loaded = Loaded()
    for path in paths:
        for name in files_from_path(path, config_format, loaded.warnings):
            source = load_source(name, config_format, loaded.warnings)
            if source is not None:
                loaded.sources.append(source)
    return loaded


def load_source(name: str, config_format: str, warnings: list[str]) -> Source | None:
    """One file, parsed and checked (None for an empty file, which Consul skips)."""
    try:
        text = Path(name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"config: failed to read {name}: {reason}") from exc
    if text == "":
        return None
    fmt = config_format or format_from_extension(name)
    raw = parse_text(text, fmt, name)
    return Source(name, check_keys(raw, name, warnings))


def parse_text(text: str, fmt: str, name: str) -> dict[str, Any]:
    """The file's text as a map (HCL in HCL1's shape: blocks are lists of maps)."""
    data: Any
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"failed to parse {name}: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"failed to parse {name}: invalid JSON") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"failed to parse {name}: json: cannot unmarshal {_json_kind(data)} into Go value of "
                              f"type map[string]interface {{}}")  # fmt: skip
        return data
    if fmt == "hcl":
        return parse_hcl(text, name)
    if fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"failed to parse {name}: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"failed to parse {name}: the top level must be a map of config keys")
        return data
    raise ConfigError(f"failed to parse {name}: invalid format: {fmt}")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "null"
    return "number"


# ----------------------------------------------------------------------------------------------- HCL


_HCL_OPTIONS = SerializationOptions(with_comments=False)


def parse_hcl(text: str, name: str) -> dict[str, Any]:
    """HCL text -> Python values: blocks as lists of maps (HCL1's shape), strings decoded, numbers, bools."""
    try:
        tree = hcl2.loads(text, serialization_options=_HCL_OPTIONS)
    except UnexpectedInput as exc:
        raise ConfigError(f"failed to parse {name}: At {exc.line}:{exc.column}: {_lark_message(exc)}") from None
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - whatever the parser raises is bad input
        raise ConfigError(f"failed to parse {name}: {exc}") from None
    value = _hcl_value(tree, name)
    assert isinstance(value, dict)
    return value


def _lark_message(exc: UnexpectedInput) -> str:
    if isinstance(exc, UnexpectedCharacters):
        return f"illegal char {exc.char!r}"
    if isinstance(exc, UnexpectedToken):
        return "unexpected end of input" if exc.token.type == "$END" else f"unexpected token {str(exc.token)!r}"
    if isinstance(exc, UnexpectedEOF):
        return "unexpected end of input"
    return "invalid syntax"


_ESCAPE = re.compile(r'\\(["\\nrt/]|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8})|\$\$\{|%%\{')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "/": "/"}
_HEREDOC = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_-]*)\n(.*?)\n?[ \t]*\2\Z", re.DOTALL)
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")


def _unescape(raw: str) -> str:
    def one(m: re.Match[str]) -> str:
        whole, esc = m.group(0), m.group(1)
        if whole == "$${":
            return "${"
        if whole == "%%{":
            return "%{"
        if esc in _SIMPLE:
            return _SIMPLE[esc]
        code = int(esc[1:], 16)
        return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else whole

    return _ESCAPE.sub(one, raw)


def _hcl_string(value: str, name: str) -> Any:
    """python-hcl2 gives a string literal with its quotes and escapes, a heredoc inside quotes, and any
    other expression as its text (``${...}`` around it). Consul's HCL1 has literals only."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        inner = value[1:-1]
        doc = _HEREDOC.match(inner) if inner.startswith("<<") else None
        if doc is None:
            return _unescape(inner)
        lines = doc.group(3).split("\n")
        if doc.group(1):  # <<-EOT: the common indentation goes
            indent = min((len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()), default=0)
            lines = [ln[indent:] for ln in lines]
        return "\n".join(lines) + "\n"
    expr = value[2:-1] if value.startswith("${") and value.endswith("}") else value
    if _NUMBER.match(expr.strip()):
        number = float(expr)
        return int(number) if number.is_integer() and "." not in expr and "e" not in expr.lower() else number
    raise ConfigError(f"failed to parse {name}: unsupported expression {expr!r}: Consul's config files take "
                      f"literal values only (quote strings)")  # fmt: skip


def _hcl_key(key: str) -> str:
    return _unescape(key[1:-1]) if len(key) >= 2 and key[0] == '"' and key[-1] == '"' else key


def _hcl_value(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        return {_hcl_key(k): _hcl_value(v, name) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_hcl_value(v, name) for v in value]
    if isinstance(value, str):
        return _hcl_string(value, name)
    return value


# ------------------------------------------------------------------------------------- the key check


def _go_errors(errors: Sequence[str]) -> str:
    """go-multierror's text, as Consul prints it after ``failed to parse <file>:``."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


class _Check:
    """One file's walk: the keys no field took (``unused``) and values of the wrong shape (``problems``)."""

    def __init__(self) -> None:
        self.unused: list[str] = []
        self.problems: list[str] = []

    def value(self, value: Any, kind: Kind, path: str) -> Any:
        if isinstance(kind, Block):
            return self.block(value, kind, path)
        if isinstance(kind, Blocks):
            items = [value] if isinstance(value, dict) else value
            if not isinstance(items, list):
                self.problems.append(f"'{path}': source data must be an array or slice, got {_json_kind(items)}")
                return None
            return [self.block(v, kind.item, f"{path}[{i}]") for i, v in enumerate(items)]
        if isinstance(kind, MapOf):
            one = self.single(value, path)
            if one is None:
                return None
            return {k: self.block(v, kind.item, f"{path}[{k}]") for k, v in one.items()}
        if kind == MAP:
            one = self.single(value, path)
            return None if one is None else {k: _unslice(v) for k, v in one.items()}
        if kind == ANY:
            return _unslice(value)
        if kind == ANY_LIST:
            items = [value] if isinstance(value, dict) else value
            if not isinstance(items, list):
                self.problems.append(f"'{path}': source data must be an array or slice, got {_json_kind(items)}")
                return None
            return [_unslice(v) for v in items]
        assert kind == VALUE
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            value = value[0]
        if isinstance(value, dict):
            self.problems.append(f"'{path}' expected a value, got a block")
            return None
        return value

    def single(self, value: Any, path: str) -> dict[str, Any] | None:
        """A block where one belongs: HCL's list of one block is that block (HookWeakDecodeFromSlice)."""
        if isinstance(value, list):
            if not value:
                return None
            if len(value) == 1:
                value = value[0]
        if not isinstance(value, dict):
            got = "slice" if isinstance(value, list) else _json_kind(value)
            self.problems.append(f"'{path}' expected a map, got '{got}'")
            return None
        return value

    def block(self, value: Any, kind: Block, path: str) -> dict[str, Any] | None:
        one = self.single(value, path)
        if one is None:
            return None
        by_lower = {f.lower(): f for f in kind.fields}
        out: dict[str, Any] = {}
        aliased: dict[str, Any] = {}
        for key, v in one.items():
            canonical = key if key in kind.fields else None
            alias = kind.aliases.get(key.lower()) if canonical is None else None
            if alias is not None:
                aliased.setdefault(alias, v)
                continue
            if canonical is None:
                canonical = by_lower.get(key.lower())
            if canonical is None:
                self.unused.append(f"{path}.{key}" if path else key)
                continue
            decoded = self.value(v, kind.fields[canonical], f"{path}.{canonical}" if path else canonical)
            if decoded is not None:
                out[canonical] = decoded
        for canonical, v in aliased.items():
            if canonical not in out:  # the canonical spelling wins, as in HookTranslateKeys
                decoded = self.value(v, kind.fields[canonical], f"{path}.{canonical}" if path else canonical)
                if decoded is not None:
                    out[canonical] = decoded
        return out


def _unslice(value: Any) -> Any:
    """Opaque data keeps its shape, except that HCL's single blocks become maps (Consul's unSlice)."""
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict):
            return _unslice(value[0])
        return [_unslice(v) for v in value]
    if isinstance(value, dict):
        return {k: _unslice(v) for k, v in value.items()}
    return value


def deprecation_warning(old: str, new: str) -> str:
    return f"The '{old}' field is deprecated. Use the '{new}' field instead."


# Deprecated top-level ACL keys, moved into the acl block where Proconsul reads them.
_ACL_MOVES: dict[str, tuple[str, ...]] = {
    "acl_agent_master_token": ("tokens", "agent_recovery"), "acl_agent_token": ("tokens", "agent"),
    "acl_token": ("tokens", "default"), "acl_master_token": ("tokens", "initial_management"),
    "acl_replication_token": ("tokens", "replication"), "acl_enable_key_list_policy": ("enable_key_list_policy",),
    "enable_acl_replication": ("enable_token_replication",), "acl_default_policy": ("default_policy",),
    "acl_down_policy": ("down_policy",), "acl_ttl": ("token_ttl",),
}  # fmt: skip


def _apply_deprecated(data: dict[str, Any], warnings: list[str]) -> None:
    """Consul's ``applyDeprecatedConfig``: each deprecated key sets its replacement unless the file sets
    that too, and says so. The flat TLS keys and ``start_join`` stay where ``registry.tls`` and
    ``registry.config`` read them, with the same precedence."""
    for old, new in DEPRECATED.items():
        if old not in data:
            continue
        warnings.append(deprecation_warning(old, new))
        if old in _ACL_MOVES:
            value = data.pop(old)
            block = data.setdefault("acl", {})
            *parents, leaf = _ACL_MOVES[old]
            for p in parents:
                block = block.setdefault(p, {})
            block.setdefault(leaf, value)
            if old == "acl_replication_token":
                data["acl"].setdefault("enable_token_replication", True)
        elif old == "acl_datacenter":
            data.setdefault("primary_datacenter", data.pop(old))
            data.setdefault("acl", {})["enabled"] = True
    for old in DEPRECATED_IGNORED:
        if old in data:
            warnings.append(f"The '{old}' field is deprecated and will be ignored.")
    tokens = (data.get("acl") or {}).get("tokens") or {}
    for dotted, new in DEPRECATED_NESTED.items():
        if dotted.rsplit(".", 1)[1] in tokens:
            warnings.append(deprecation_warning(dotted, new))


def check_keys(raw: dict[str, Any], name: str, warnings: list[str]) -> dict[str, Any]:
    """Check one file's keys against Consul's (``invalid config key <path>``) and shape its values;
    the file's canonical mapping."""
    walk = _Check()
    data = walk.block(raw, TOP, "") or {}
    if walk.unused:
        raise ConfigError(f"failed to parse {name}: " + _go_errors([f"invalid config key {k}" for k in sorted(walk.unused)]))
    if walk.problems:
        problems = "\n".join(f"* {p}" for p in walk.problems)
        raise ConfigError(f"failed to parse {name}: {len(walk.problems)} error(s) decoding:\n\n{problems}")
    _apply_deprecated(data, warnings)
    return data
