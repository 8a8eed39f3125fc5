"""DNS settings: Consul's ``domain``, ``alt_domain``, ``recursors`` and ``dns_config`` keys, validated once.

The agent config keeps ``dns_config`` as the raw mapping the user wrote; this module turns it into a frozen
value with Consul's defaults (agent/config/default.go) and refuses malformed values with an error that names
the key and says what is expected. Keys Consul has but Proconsul does not act on (``use_cache``,
``prefer_namespace``...) are accepted and ignored so a Consul config file still starts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.config import Config, ConfigError
from registry.gocompat import DurationError, parse_duration

__all__ = ["DNSConfig", "Recursor", "from_agent_config", "parse_dns_config", "parse_recursor", "split_domain"]

# Consul's dns_config keys. The first group changes answers; the second is accepted for compatibility.
_ACTIVE_KEYS = {
    "allow_stale", "max_stale", "node_ttl", "service_ttl", "udp_answer_limit", "a_record_limit",
    "enable_truncate", "only_passing", "recursor_timeout", "recursor_strategy", "disable_compression",
    "enable_additional_node_meta_txt", "soa",
}  # fmt: skip
_INERT_KEYS = {"use_cache", "cache_max_age", "prefer_namespace", "default_namespace", "default_partition"}
_SOA_KEYS = ("refresh", "retry", "expire", "min_ttl")
_SOA_DEFAULTS = {"refresh": 3600, "retry": 600, "expire": 86400, "min_ttl": 0}
_U32 = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Recursor:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DNSConfig:
    domain: str = "consul."  # lower case, with the trailing dot
    alt_domain: str = ""
    datacenter: str = "dc1"
    node_name: str = ""
    recursors: tuple[Recursor, ...] = ()
    recursor_timeout: float = 2.0
    recursor_strategy: str = "sequential"
    allow_stale: bool = True
    max_stale: float = 87600 * 3600.0
    only_passing: bool = False
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    enable_truncate: bool = False
    disable_compression: bool = False
    node_meta_txt: bool = True
    node_ttl: int = 0  # seconds, as DNS carries them
    service_ttl_exact: Mapping[str, int] = field(default_factory=dict)
    # ("prefix", ttl) pairs from keys ending in "*", longest prefix first, so the first match wins.
    service_ttl_prefixes: tuple[tuple[str, int], ...] = ()
    soa_refresh: int = 3600
    soa_retry: int = 600
    soa_expire: int = 86400
    soa_min_ttl: int = 0

    def service_ttl(self, service: str) -> int:
        """Consul's rule: an exact key wins, then the longest ``prefix*`` key (``*`` alone matches all)."""
        ttl = self.service_ttl_exact.get(service)
        if ttl is not None:
            return ttl
        for prefix, value in self.service_ttl_prefixes:
            if service.startswith(prefix):
                return value
        return 0

    @property
    def domain_labels(self) -> tuple[bytes, ...]:
        return split_domain(self.domain)

    @property
    def alt_domain_labels(self) -> tuple[bytes, ...]:
        return split_domain(self.alt_domain)


def split_domain(domain: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in domain.lower().strip(".").split(".") if label)


def _ttl_seconds(value: Any, key: str) -> int:
    try:
        seconds = parse_duration(value, field=f"dns_config.{key}")
    except DurationError as exc:
        raise ConfigError(str(exc)) from exc
    # DNS TTLs are whole seconds in an unsigned 32-bit field (RFC 2181 caps them at 2^31-1).
    return min(int(seconds), 2**31 - 1)


def _duration(value: Any, key: str) -> float:
    try:
        return parse_duration(value, field=f"dns_config.{key}")
    except DurationError as exc:
        raise ConfigError(str(exc)) from exc


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"dns_config.{key} must be true or false, got {value!r}")
    return value


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"dns_config.{key} must be an integer from {lo} to {hi}, got {value!r}")
    return value


def _domain(value: str, key: str) -> str:
    text = value.strip().lower()
    if not text:
        return ""
    if not text.endswith("."):
        text += "."
    labels = text[:-1].split(".")
    if text == "." or any(not label or len(label.encode()) > 63 for label in labels) or len(text) > 253:
        raise ConfigError(f"{key} {value!r} is not a valid DNS domain (e.g. \"consul.\")")
    return text


def parse_recursor(text: str) -> Recursor:
    """``"8.8.8.8"``, ``"8.8.8.8:53"``, ``"::1"``, ``"[::1]:5353"``: an IP address, port 53 unless given."""
    s = text.strip()
    host, port = s, 53
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"Invalid recursor address {text!r}: missing ']'")
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(f"Invalid recursor address {text!r}: expected [ip]:port")
            port = int(rest[1:])
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        if not p.isdigit():
            raise ConfigError(f"Invalid recursor address {text!r}: port must be a number")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"Invalid recursor address {text!r}: {host!r} is not an IP address") from exc
    if not 1 <= port <= 65535:
        raise ConfigError(f"Invalid recursor address {text!r}: port must be 1-65535")
    return Recursor(host, port)


def parse_dns_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a ``dns_config`` mapping; return DNSConfig keyword arguments."""
    if not isinstance(raw, Mapping):
        raise ConfigError("dns_config must be a map")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INERT_KEYS:
            continue
        if key not in _ACTIVE_KEYS:
            raise ConfigError(f"dns_config: unknown key {key!r}")
        if key in ("allow_stale", "only_passing", "enable_truncate", "disable_compression"):
            out[key] = _bool(value, key)
        elif key == "enable_additional_node_meta_txt":
            out["node_meta_txt"] = _bool(value, key)
        elif key == "udp_answer_limit":
            out[key] = _int(value, key, 1, 65535)
        elif key == "a_record_limit":
            out[key] = _int(value, key, 0, 65535)
        elif key == "node_ttl":
            out[key] = _ttl_seconds(value, key)
        elif key in ("max_stale", "recursor_timeout"):
            out[key] = _duration(value, key)
            if key == "recursor_timeout" and out[key] <= 0:
                raise ConfigError("dns_config.recursor_timeout must be positive, e.g. \"2s\"")
        elif key == "recursor_strategy":
            if value not in ("sequential", "random"):
                raise ConfigError(f"dns_config.recursor_strategy must be \"sequential\" or \"random\", got {value!r}")
            out[key] = value
        elif key == "service_ttl":
            if not isinstance(value, Mapping):
                raise ConfigError("dns_config.service_ttl must be a map of service name (or prefix*) to duration")
            exact: dict[str, int] = {}
            prefixes: list[tuple[str, int]] = []
            for name, ttl in value.items():
                if not isinstance(name, str):
                    raise ConfigError(f"dns_config.service_ttl: key {name!r} must be a string")
                seconds = _ttl_seconds(ttl, f"service_ttl[{name!r}]")
                if name.endswith("*"):
                    prefixes.append((name[:-1], seconds))
                else:
                    exact[name] = seconds
            prefixes.sort(key=lambda p: len(p[0]), reverse=True)
            out["service_ttl_exact"] = exact
            out["service_ttl_prefixes"] = tuple(prefixes)
        elif key == "soa":
            if not isinstance(value, Mapping):
                raise ConfigError("dns_config.soa must be a map with refresh, retry, expire, min_ttl")
            for sk, sv in value.items():
                if sk not in _SOA_KEYS:
                    raise ConfigError(f"dns_config.soa: unknown key {sk!r} (expected {', '.join(_SOA_KEYS)})")
                out[f"soa_{sk}"] = _int(sv, f"soa.{sk}", 0, _U32)
    return out


def from_agent_config(cfg: Config) -> DNSConfig:
    domain = _domain(cfg.domain or "consul.", "domain")
    alt = _domain(cfg.alt_domain, "alt_domain") if cfg.alt_domain else ""
    if alt == domain:
        alt = ""
    kwargs = parse_dns_config(cfg.dns_config)
    # Consul also reads recursor_timeout at the top level of old config files.
    if "recursor_timeout" not in kwargs and "recursor_timeout" in cfg.extra:
        kwargs["recursor_timeout"] = _duration(cfg.extra["recursor_timeout"], "recursor_timeout")
    return DNSConfig(
        domain=domain,
        alt_domain=alt,
        datacenter=cfg.datacenter.lower(),
        node_name=cfg.node_name,
        recursors=tuple(parse_recursor(r) for r in cfg.recursors),
        **kwargs,
    )
