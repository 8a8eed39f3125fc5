"""Agent configuration with Consul's keys, from config files (HCL, JSON, or YAML: ``registry.config_files``
reads and checks them) plus command-line flags.

Precedence, as in Consul: defaults < config files (in order) < flags. ``apply_mapping`` merges one
file's keys into the Config: later scalars win, blocks merge key by key, lists append. Keys of Consul's
that Proconsul does not implement are reported once as a warning, not an error, so that a Consul config
with knobs we do not have still starts; malformed values of known keys are errors.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from registry.gocompat import DurationError, parse_duration


class ConfigError(ValueError):
    pass


# The keys Proconsul implements. A key of Consul's outside this set is accepted (so a Consul config starts),
# kept in ``extra`` and named in ``unknown_keys``, which the agent logs as not implemented; keys Consul does
# not know are refused before this (registry.config_files). ``telemetry`` is carried for the metrics.
KNOWN_TOP_KEYS = {
    "node_name", "node_id", "datacenter", "data_dir", "server", "bootstrap", "bootstrap_expect", "bind_addr",
    "advertise_addr", "client_addr", "ports", "addresses", "retry_join", "start_join", "enable_script_checks",
    "enable_local_script_checks", "domain", "alt_domain", "recursors", "dns_config", "acl", "log_level",
    "log_json", "node_meta", "check_output_max_size", "kv_max_value_size", "limits", "default_query_time",
    "max_query_time", "ae_interval", "check_reap_interval", "tls", "connect", "dev", "telemetry", "services",
    "checks", "service", "check", "default_intention_policy", "recursor_timeout", "nodes", "session_ttl_min",
    "insecure", "watches", "leave_on_terminate", "skip_leave_on_interrupt",
}  # fmt: skip
# Raft's log compaction on the servers (registry.raft.storage): snapshot every raft_snapshot_threshold entries,
# looked at every one to two raft_snapshot_interval, keeping raft_trailing_logs entries behind each snapshot.
KNOWN_TOP_KEYS |= {"raft_snapshot_threshold", "raft_snapshot_interval", "raft_trailing_logs"}
# The LAN gossip pool (registry/agent/membership.py): its bind address, joining and rejoining, and its timings
# (``gossip_lan``, read from ``Config.extra`` by ``registry.agent.membership.gossip_config``; ``gossip_wan`` is
# checked the same way and has no effect: Proconsul runs no WAN pool).
KNOWN_TOP_KEYS |= {"serf_lan", "retry_interval", "retry_max", "rejoin_after_leave", "gossip_lan", "gossip_wan"}
# Blocks whose owners read them from ``Config.extra`` and validate them (registry/logs.py, registry/autopilot.py,
# registry/ui/settings.py).
KNOWN_TOP_KEYS |= {"autopilot", "log_file", "log_rotate_bytes", "log_rotate_duration", "log_rotate_max_files",
                   "enable_syslog", "syslog_facility"}  # fmt: skip
# Read from ``Config.extra`` by registry/agent/coordinates.py (its ``consul`` block: ``coordinate`` only).
KNOWN_TOP_KEYS |= {"disable_coordinates", "sync_coordinate_interval_min", "sync_coordinate_rate_target", "consul"}
# Gossip encryption (registry/agent/gossip_keys.py) and the agent command's own keys (registry/cli/agent.py);
# disable_host_node_id is what Proconsul always does (a random node ID, kept in the data dir).
KNOWN_TOP_KEYS |= {"encrypt", "encrypt_verify_incoming", "encrypt_verify_outgoing", "disable_keyring_file",
                   "pid_file", "disable_host_node_id"}  # fmt: skip
# ``performance``: raft_multiplier scales the Raft timings (registry.raft.base.raft_tick); its other keys
# (leave_drain_time, rpc_hold_timeout) are accepted and reported as not implemented.
KNOWN_TOP_KEYS |= {"performance"}
KNOWN_TOP_KEYS |= {"ui", "ui_config", "ui_content_path"}  # the web UI's settings (registry/ui/settings.py)
KNOWN_TOP_KEYS |= {"ca_file", "ca_path", "cert_file", "key_file", "verify_incoming", "verify_incoming_rpc", "verify_incoming_https", "verify_outgoing", "verify_server_hostname", "tls_min_version"}  # Consul's flat TLS keys (registry/tls.py)


@dataclass
class Ports:
    dns: int = 8600
    http: int = 8500
    https: int = -1
    server: int = 8300
    serf_lan: int = 8301
    grpc: int = -1


RATE_LIMIT_MODES = ("disabled", "permissive", "enforcing")


@dataclass
class Limits:
    """Consul's ``limits`` block, the parts the HTTP API enforces (agent/config/runtime.go).

    ``http_max_conns_per_client`` is Consul's (default 200): connections from one client IP beyond it are
    answered 429 and closed at accept. ``http_read_timeout`` is Proconsul's addition (Consul's Go HTTP
    server sets none, and ``https_handshake_timeout`` only bounds the TLS handshake): the time a client
    has to send a request's headers once it connects or its previous response is written, and the
    longest pause while it sends a body. The default, 2 minutes, is longer than the idle time of the
    usual clients' connection pools (Go's 90 s, aiohttp's 15 s), so the server never closes a pooled
    connection a client is about to reuse. ``request_limits`` is Consul's global read/write rate limit
    (``mode`` disabled | permissive | enforcing; rates in requests per second, -1 for no limit)."""

    http_max_conns_per_client: int = 200
    http_read_timeout: float = 120.0
    request_mode: str = "disabled"
    read_rate: float = -1.0
    write_rate: float = -1.0


@dataclass
class Telemetry:
    """Consul's ``telemetry`` block, the keys Proconsul honours (agent/config/runtime.go's Telemetry):
    ``prometheus_retention_time`` (0: no Prometheus output, Consul's default), ``disable_hostname`` (gauges
    carry the host name unless set), ``metrics_prefix``, ``prefix_filter`` ("+name" allows, "-name"
    blocks, the longest matching rule wins) with ``filter_default`` for names no rule matches, and
    ``disable_compat_1.9`` (false: also emit Consul 1.9's ``consul.http.<METHOD>.<path>`` timers; true
    since Consul 1.12). Consul's sink keys (statsd, dogstatsd, circonus...) are reported as unknown keys:
    Proconsul serves its metrics over HTTP only."""

    prometheus_retention_time: float = 0.0
    disable_hostname: bool = False
    metrics_prefix: str = "consul"
    prefix_filter: list[str] = field(default_factory=list)
    filter_default: bool = True
    disable_compat_1_9: bool = True


@dataclass
class Config:
    node_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    datacenter: str = "dc1"
    data_dir: str | None = None
    dev: bool = False
    server: bool = False
    bootstrap: bool = False
    bootstrap_expect: int = 0
    bind_addr: str = "0.0.0.0"
    advertise_addr: str = ""
    client_addr: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    retry_join: list[str] = field(default_factory=list)
    # Consul's serf_lan (the gossip pool's bind address; bind_addr when empty), retry_interval, retry_max
    # (0: retry for ever) and rejoin_after_leave.
    serf_lan: str = ""
    retry_interval: float = 30.0
    retry_max: int = 0
    rejoin_after_leave: bool = False
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False
    domain: str = "consul."
    alt_domain: str = ""
    recursors: list[str] = field(default_factory=list)
    dns_config: dict[str, Any] = field(default_factory=dict)
    acl: dict[str, Any] = field(default_factory=dict)
    log_level: str = "info"
    log_json: bool = False
    node_meta: dict[str, str] = field(default_factory=dict)
    check_output_max_size: int = 4096
    kv_max_value_size: int = 512 * 1024
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    ae_interval: float = 60.0
    check_reap_interval: float = 30.0
    session_ttl_min: float = 10.0  # Consul's session_ttl_min: the shortest session TTL the servers accept
    # Consul's performance.raft_multiplier (1..10, checked once every file is merged); None: not set, the
    # Raft timings keep Proconsul's defaults (registry.raft.base.raft_tick).
    raft_multiplier: int | None = None
    # Consul's raft_snapshot_threshold, raft_snapshot_interval and raft_trailing_logs; None: not set, the
    # Raft defaults (registry.raft.base: 8192 entries, 30 s, 2048 entries).
    raft_snapshot_threshold: int | None = None
    raft_snapshot_interval: float | None = None
    raft_trailing_logs: int | None = None
    # Proconsul's addition: start a server outside -dev without ACLs (default deny) or mutual TLS, and
    # say so (registry/posture.py).
    insecure: bool = False
    limits: Limits = field(default_factory=Limits)
    telemetry: Telemetry = field(default_factory=Telemetry)
    tls: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)
    default_intention_policy: str = ""
    services: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)

    @property
    def advertise(self) -> str:
        if self.advertise_addr:
            return self.advertise_addr
        if self.bind_addr not in ("0.0.0.0", "::", ""):
            return self.bind_addr
        return "127.0.0.1"

    @property
    def serf_lan_bind(self) -> str:
        """Where the LAN gossip pool binds: ``serf_lan``, else ``bind_addr`` (Consul's default)."""
        return self.serf_lan or self.bind_addr

    @property
    def acl_default_policy(self) -> str:
        if not self.acl.get("enabled"):
            return "allow"
        return str(self.acl.get("default_policy", "allow"))

    @property
    def server_address(self) -> str:
        return f"{self.advertise}:{self.ports.server}"


def load_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"Error reading config file {p}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"Error parsing config file {p}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Error parsing config file {p}: the top level must be a map of config keys")
    return data


def _dur(value: Any, key: str) -> float:
    try:
        return parse_duration(value, field=key)
    except DurationError as exc:
        raise ConfigError(str(exc)) from exc


def apply_mapping(cfg: Config, data: dict[str, Any], source: str = "config") -> None:
    """Apply Consul config keys from a mapping onto ``cfg`` (later calls override earlier ones)."""
    for key, value in data.items():
        if key not in KNOWN_TOP_KEYS:
            cfg.unknown_keys.append(f"{source}: {key}")
            cfg.extra[key] = value
            continue
        try:
            _apply_key(cfg, key, value)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: invalid value for {key!r}: {value!r} ({exc})") from exc


def _merge(into: dict[str, Any], value: dict[str, Any]) -> None:
    """Merge a block into what earlier files set, key by key and down into nested blocks, as Consul merges
    config files: a later ``tls { internal_rpc { verify_incoming } }`` keeps the earlier ``tls { defaults
    { ca_file } }`` and a node section can add its own ``cert_file`` to the shared ``tls.defaults``."""
    for k, v in value.items():
        old = into.get(k)
        if isinstance(old, dict) and isinstance(v, dict):
            merged = dict(old)
            _merge(merged, v)
            into[k] = merged
        else:
            into[k] = v


def _apply_key(cfg: Config, key: str, value: Any) -> None:
    if key == "ports":
        if not isinstance(value, dict):
            raise ConfigError("ports must be a map, e.g. {http: 8500, dns: 8600}")
        for pk, pv in value.items():
            if not hasattr(cfg.ports, pk):
                cfg.unknown_keys.append(f"ports.{pk}")
                continue
            if not isinstance(pv, int) or isinstance(pv, bool) or not -1 <= pv <= 65535:
                raise ConfigError(f"ports.{pk} must be a port number (or -1 to disable), got {pv!r}")
            setattr(cfg.ports, pk, pv)
    elif key == "addresses":
        if isinstance(value, dict) and isinstance(value.get("http"), str):
            cfg.client_addr = value["http"]
    elif key == "limits":
        _apply_limits(cfg.limits, value)
        if "kv_max_value_size" in value:  # where Consul keeps it; the top-level key is read too
            _apply_key(cfg, "kv_max_value_size", value["kv_max_value_size"])
    elif key == "telemetry":
        _apply_telemetry(cfg, value)
    elif key == "nodes":
        pass  # per-node sections are applied once the node name is known (apply_node_section)
    elif key in ("retry_join", "start_join", "recursors"):
        items = [value] if isinstance(value, str) else list(value)
        target = "recursors" if key == "recursors" else "retry_join"
        getattr(cfg, target).extend(str(i) for i in items)
    elif key in ("default_query_time", "max_query_time", "ae_interval", "check_reap_interval", "session_ttl_min",
                 "retry_interval"):  # fmt: skip
        setattr(cfg, key, _dur(value, key))
    elif key in ("dns_config", "acl", "tls", "connect", "node_meta"):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a map")
        _merge(getattr(cfg, key), value)
    elif key in ("gossip_lan", "gossip_wan"):
        # Merged key by key across files, as Consul merges blocks; the owner (registry.agent.membership)
        # checks the values.
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a map, e.g. {{probe_interval = \"1s\"}}")
        _merge(cfg.extra.setdefault(key, {}), value)
    elif key == "performance":
        _apply_performance(cfg, value)
    elif key in ("services", "checks"):
        getattr(cfg, key).extend(value if isinstance(value, list) else [value])
    elif key in ("service", "check"):
        getattr(cfg, key + "s").append(value)
    elif key in ("server", "bootstrap", "enable_script_checks", "enable_local_script_checks", "log_json", "dev",
                 "insecure", "rejoin_after_leave"):  # fmt: skip
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        setattr(cfg, key, value)
    elif key in ("raft_snapshot_threshold", "raft_trailing_logs"):
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "raft_snapshot_threshold" else 0):
            raise ConfigError(f"{key} must be a {'positive' if key == 'raft_snapshot_threshold' else 'non-negative'} "
                              f"integer, got {value!r}")  # fmt: skip
        setattr(cfg, key, value)
    elif key == "raft_snapshot_interval":
        interval = _dur(value, key)
        if interval < 0.005:
            raise ConfigError(f"raft_snapshot_interval must be at least 5ms, got {value!r}")
        cfg.raft_snapshot_interval = interval
    elif key in ("bootstrap_expect", "check_output_max_size", "kv_max_value_size", "retry_max"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {value!r}")
        setattr(cfg, key, value)
    elif key == "domain" or key == "alt_domain":
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string")
        setattr(cfg, key, value if value.endswith(".") or not value else value + ".")
    elif key == "default_intention_policy":
        if value not in ("allow", "deny", ""):
            raise ConfigError("default_intention_policy must be \"allow\" or \"deny\"")
        cfg.default_intention_policy = value
    elif key in ("node_name", "node_id", "datacenter", "data_dir", "bind_addr", "advertise_addr", "client_addr",
                 "log_level", "serf_lan"):  # fmt: skip
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        setattr(cfg, key, value)
    else:
        cfg.extra[key] = value


def _apply_performance(cfg: Config, value: Any) -> None:
    """The ``performance`` block: ``raft_multiplier`` is kept (its range is checked after every file is
    merged, as Consul's builder checks the merged value); the other keys are reported as not implemented."""
    if not isinstance(value, dict):
        raise ConfigError("performance must be a map, e.g. {raft_multiplier = 1}")
    for key, v in value.items():
        if key == "raft_multiplier":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(
                    f"performance.raft_multiplier must be a whole number between 1 and 10, got {v!r}"
                )
            cfg.raft_multiplier = v
        else:
            cfg.unknown_keys.append(f"performance.{key}")
            cfg.extra.setdefault("performance", {})[key] = v


def _apply_telemetry(cfg: Config, value: Any) -> None:
    """The ``telemetry`` block: its keys merge into what earlier files set, as Consul merges blocks."""
    if not isinstance(value, dict):
        raise ConfigError("telemetry must be a map, e.g. {prometheus_retention_time: \"60s\"}")
    t = cfg.telemetry
    for key, v in value.items():
        where = f"telemetry.{key}"
        if key == "prometheus_retention_time":
            t.prometheus_retention_time = _dur(v, where)
        elif key in ("disable_hostname", "filter_default", "disable_compat_1.9"):
            if not isinstance(v, bool):
                raise ConfigError(f"{where} must be true or false, got {v!r}")
            setattr(t, key.replace(".", "_"), v)
        elif key == "metrics_prefix":
            if not isinstance(v, str):
                raise ConfigError(f"{where} must be a string, got {v!r}")
            t.metrics_prefix = v
        elif key == "prefix_filter":
            if not isinstance(v, list) or not all(isinstance(r, str) for r in v):
                raise ConfigError(f"{where} must be a list of rules such as [\"+consul.raft\", \"-consul.http\"]")
            t.prefix_filter = list(v)
        else:
            cfg.unknown_keys.append(where)


def _rate(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (value < 0 and value != -1):
        raise ConfigError(f"limits.request_limits.{key} must be a number of requests per second (or -1 for no "
                          f"limit), got {value!r}")  # fmt: skip
    return float(value)


def _apply_limits(limits: Limits, value: Any) -> None:
    """The ``limits`` block; keys of Consul's block that Proconsul does not enforce are accepted and ignored
    (as unknown top-level keys are), malformed values of the ones it enforces are refused."""
    if not isinstance(value, dict):
        raise ConfigError("limits must be a map, e.g. {http_max_conns_per_client: 200}")
    for key, v in value.items():
        if key == "http_max_conns_per_client":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"limits.http_max_conns_per_client must be a non-negative integer (0 for no "
                                  f"limit), got {v!r}")  # fmt: skip
            limits.http_max_conns_per_client = v
        elif key == "http_read_timeout":
            limits.http_read_timeout = _dur(v, "limits.http_read_timeout")
            if limits.http_read_timeout <= 0:
                raise ConfigError("limits.http_read_timeout must be positive")
        elif key == "request_limits":
            if not isinstance(v, dict):
                raise ConfigError("limits.request_limits must be a map of mode, read_rate and write_rate")
            mode = v.get("mode", limits.request_mode)
            if mode not in RATE_LIMIT_MODES:
                raise ConfigError(f"limits.request_limits.mode must be one of disabled, permissive, enforcing; "
                                  f"got {mode!r}")  # fmt: skip
            limits.request_mode = mode
            if "read_rate" in v:
                limits.read_rate = _rate(v["read_rate"], "read_rate")
            if "write_rate" in v:
                limits.write_rate = _rate(v["write_rate"], "write_rate")


def apply_node_section(cfg: Config, data: dict[str, Any], source: str) -> None:
    """Proconsul's one addition to Consul's keys: ``nodes: {<name>: {<consul keys>}}`` lets one file
    describe a whole cluster; ``-node <name>`` picks the section that applies to this agent."""
    nodes = data.get("nodes")
    if nodes is None:
        return
    if not isinstance(nodes, dict):
        raise ConfigError(f"{source}: nodes must be a map of node name -> config keys")
    section = nodes.get(cfg.node_name)
    if section is None:
        raise ConfigError(
            f"{source} describes nodes {sorted(nodes)}; start one of them with -node <name> (got {cfg.node_name!r})"
        )
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: nodes.{cfg.node_name} must be a map of config keys")
    apply_mapping(cfg, section, f"{source} (nodes.{cfg.node_name})")


def join_address(addr: str, default_port: int = 8300) -> str:
    """A retry_join entry as host:port of a server's RPC port (Consul's bare hosts mean the default port)."""
    addr = addr.strip()
    if addr.startswith("[") and "]:" in addr:
        return addr
    if addr.count(":") == 1:
        return addr
    return f"{addr}:{default_port}"


def dev_defaults(cfg: Config) -> None:
    """What `-dev` means: a bootstrapped in-memory server on loopback with debug logging."""
    cfg.dev = True
    cfg.server = True
    cfg.bootstrap = True
    cfg.bind_addr = "127.0.0.1"
    cfg.log_level = "debug"
    cfg.connect.setdefault("enabled", True)


ConfigValidator = Callable[[Config], None]


def validate(cfg: Config, validators: Sequence[ConfigValidator] = ()) -> None:
    """Refuse a configuration that cannot work, before anything starts (ConfigError), as Consul's
    ``config.Builder.Validate`` does. The blocks other parts own (``connect``, ``tls``) are checked by
    the validators those parts provide, which the caller building the agent passes in: this module
    knows the keys, not what every block means."""
    if not cfg.dev and not cfg.data_dir and cfg.server:
        raise ConfigError("data_dir is required for a server; set -data-dir (or use -dev for an in-memory agent)")
    if cfg.log_level.lower() not in ("trace", "debug", "info", "warn", "warning", "error", "off"):
        raise ConfigError(f"log_level {cfg.log_level!r} is not one of trace, debug, info, warn, error")
    if cfg.acl.get("default_policy", "allow") not in ("allow", "deny"):
        raise ConfigError("acl.default_policy must be \"allow\" or \"deny\"")
    if not cfg.node_name or any(c.isspace() for c in cfg.node_name):
        raise ConfigError(f"node_name {cfg.node_name!r} is not a valid node name")
    if cfg.raft_multiplier is not None:
        from registry.raft.base import raft_tick  # the range and Consul's text live with the timings

        try:
            raft_tick(cfg.raft_multiplier)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for check in validators:
        check(cfg)
