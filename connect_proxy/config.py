"""What a proxy does, resolved from a connect-proxy registration or from command-line flags.

Pure module: no IO, no clock. The keys and defaults are those of Consul's built-in proxy
(``Proxy.Config``: ``bind_address``, ``bind_port``, ``local_service_address``, ``handshake_timeout_ms``,
``local_connect_timeout_ms``; ``Proxy.Upstreams``: ``DestinationName``, ``LocalBindAddress``,
``LocalBindPort``, ``Datacenter``). The metrics listener is Consul's ``envoy_prometheus_bind_addr``
(``prometheus_bind_addr`` is accepted too): Prometheus text at ``/metrics`` on that address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ca.spiffe import is_valid_name

DEFAULT_BIND_ADDRESS = "0.0.0.0"  # Consul's default: the public listener is mTLS-only
DEFAULT_UPSTREAM_ADDRESS = "127.0.0.1"  # upstream listeners are plaintext: loopback only by default
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_LOCAL_CONNECT_TIMEOUT = 1.0
DEFAULT_DRAIN_TIMEOUT = 5.0  # SIGTERM: how long open connections may finish after the listeners close


class ConfigError(ValueError):
    """The registration or the flags do not describe a proxy we can run; the text says what to fix."""


@dataclass(frozen=True, slots=True)
class Upstream:
    destination: str
    bind_address: str
    bind_port: int
    datacenter: str = ""  # empty: the proxy's own datacenter


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    service: str  # the service this proxy speaks for: its identity on the mesh
    proxy_id: str = ""  # the connect-proxy registration it came from, if any
    public: tuple[str, int] | None = None  # where the mTLS public listener binds
    local_service: tuple[str, int] | None = None  # where inbound connections go
    upstreams: tuple[Upstream, ...] = field(default_factory=tuple)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    local_connect_timeout: float = DEFAULT_LOCAL_CONNECT_TIMEOUT
    metrics_addr: tuple[str, int] | None = None  # Prometheus text on GET /metrics, when set
    access_log: bool = False  # one structured log line per connection
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` with a port in 1..65535."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {value!r} must be host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = _port(port_text, f"{what} {value!r}")
    if not port:
        raise ConfigError(f"{what} {value!r} must have a port in 1-65535")
    _check_host(host, f"{what} {value!r}")
    return host, port


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: port must be a number")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range 1-65535")
    return port


def _check_host(host: str, what: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or not all(lb and len(lb) <= 63 and lb.replace("-", "").isalnum() for lb in labels):
        raise ConfigError(f"{what}: {host!r} is not an IP address or host name")


def _service_name(value: Any, what: str) -> str:
    if not is_valid_name(value):
        raise ConfigError(f"{what} {value!r} is not a valid service name")
    return str(value)


def parse_upstream_flag(value: str) -> Upstream:
    """``-upstream name:port`` (or ``name:host:port``): listen on 127.0.0.1:port (or host:port) and
    send each connection to a healthy instance of ``name``."""
    name, sep, addr = value.partition(":")
    if not sep or not name or not addr:
        raise ConfigError(f"-upstream {value!r} must be name:port, such as db:8181")
    if ":" in addr:
        host, port = parse_host_port(addr, "-upstream address")
    else:
        host, port = DEFAULT_UPSTREAM_ADDRESS, _port(addr, f"-upstream {value!r}")
        if not port:
            raise ConfigError(f"-upstream {value!r} must have a port in 1-65535")
    return Upstream(_service_name(name, "-upstream service"), host, port)


def config_from_flags(
    service: str, service_addr: str | None, listen: str | None, upstreams: Iterable[str]
) -> ProxyConfig:
    """The manual form: ``-service web -service-addr 127.0.0.1:8080 -listen :21000 -upstream db:9191``."""
    if not service:
        raise ConfigError("-service must be set (or use -sidecar-for <service-id>)")
    name = _service_name(service, "-service")
    if bool(listen) != bool(service_addr):
        raise ConfigError("-listen and -service-addr must be given together: the public listener forwards "
                          "authorized connections to -service-addr")  # fmt: skip
    ups = tuple(parse_upstream_flag(u) for u in upstreams)
    if not listen and not ups:
        raise ConfigError("nothing to proxy: give -listen with -service-addr, and/or -upstream name:port")
    public = None
    if listen:
        # Consul accepts ":21000" for "all addresses"
        public = parse_host_port(listen if not listen.startswith(":") else DEFAULT_BIND_ADDRESS + listen, "-listen")
    local = parse_host_port(service_addr, "-service-addr") if service_addr else None
    _check_ports(public, ups)
    return ProxyConfig(service=name, public=public, local_service=local, upstreams=ups)


def _check_ports(public: tuple[str, int] | None, ups: tuple[Upstream, ...]) -> None:
    seen: dict[int, str] = {}
    if public:
        seen[public[1]] = "the public listener"
    for u in ups:
        if u.bind_port in seen:
            raise ConfigError(f"upstream {u.destination} and {seen[u.bind_port]} both want port {u.bind_port}")
        seen[u.bind_port] = f"upstream {u.destination}"


def _ci(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Case-insensitive lookup (Consul's JSON decoding is case-insensitive; HCL keys are snake_case)."""
    want = key.lower().replace("_", "")
    for k, v in data.items():
        if str(k).lower().replace("_", "") == want:
            return v
    return default


def config_from_registration(svc: Mapping[str, Any]) -> ProxyConfig:
    """A proxy's configuration from its registration (GET /v1/agent/service/<proxy id>)."""
    sid = str(svc.get("ID") or "")
    if svc.get("Kind") != "connect-proxy":
        raise ConfigError(f"service {sid!r} is not a connect-proxy (Kind is {svc.get('Kind') or 'typical'!r})")
    proxy = svc.get("Proxy")
    if not isinstance(proxy, Mapping):
        raise ConfigError(f"connect-proxy {sid!r} has no Proxy block")
    name = _service_name(proxy.get("DestinationServiceName"), f"{sid}: Proxy.DestinationServiceName")
    opts = proxy.get("Config") or {}
    if not isinstance(opts, Mapping):
        raise ConfigError(f"{sid}: Proxy.Config must be an object")

    bind_addr = _ci(opts, "bind_address") or svc.get("Address") or DEFAULT_BIND_ADDRESS
    bind_port = _port(_ci(opts, "bind_port") or svc.get("Port") or 0, f"{sid}: bind_port")
    public = None
    if bind_port:
        _check_host(str(bind_addr), f"{sid}: bind_address")
        public = (str(bind_addr), bind_port)
    local_text = _ci(opts, "local_service_address")
    local = None
    if local_text:
        local = parse_host_port(str(local_text), f"{sid}: local_service_address")
    elif proxy.get("LocalServicePort"):
        host = str(proxy.get("LocalServiceAddress") or "127.0.0.1")
        local = (host, _port(proxy["LocalServicePort"], f"{sid}: Proxy.LocalServicePort"))
    if public and not local:
        raise ConfigError(f"{sid}: Proxy.LocalServicePort must be set: the public listener has nowhere to "
                          "send connections")  # fmt: skip

    ups = []
    for i, raw in enumerate(proxy.get("Upstreams") or []):
        what = f"{sid}: Proxy.Upstreams[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{what} must be an object")
        kind = raw.get("DestinationType") or "service"
        if kind != "service":
            raise ConfigError(f"{what}: DestinationType {kind!r} is not supported (only 'service')")
        port = _port(raw.get("LocalBindPort") or 0, what)
        if not port:
            raise ConfigError(f"{what}: LocalBindPort must be set")
        host = str(raw.get("LocalBindAddress") or DEFAULT_UPSTREAM_ADDRESS)
        _check_host(host, what)
        dc = raw.get("Datacenter") or ""
        if dc and not is_valid_name(dc):
            raise ConfigError(f"{what}: Datacenter {dc!r} is not valid")
        ups.append(Upstream(_service_name(raw.get("DestinationName"), f"{what}: DestinationName"), host, port, dc))
    _check_ports(public, tuple(ups))
    return ProxyConfig(
        service=name,
        proxy_id=sid,
        public=public,
        local_service=local,
        upstreams=tuple(ups),
        handshake_timeout=_ms(_ci(opts, "handshake_timeout_ms"), DEFAULT_HANDSHAKE_TIMEOUT, what=sid),
        local_connect_timeout=_ms(_ci(opts, "local_connect_timeout_ms"), DEFAULT_LOCAL_CONNECT_TIMEOUT, what=sid),
        metrics_addr=_metrics_addr(opts, sid),
    )


def _metrics_addr(opts: Mapping[str, Any], sid: str) -> tuple[str, int] | None:
    value = _ci(opts, "envoy_prometheus_bind_addr") or _ci(opts, "prometheus_bind_addr")
    if not value:
        return None
    return parse_host_port(str(value), f"{sid}: envoy_prometheus_bind_addr")


def parse_metrics_addr(value: str) -> tuple[str, int]:
    """``-metrics-addr host:port`` (``:port`` for loopback: metrics are not for the network by default)."""
    return parse_host_port("127.0.0.1" + value if value.startswith(":") else value, "-metrics-addr")


def _ms(value: Any, default: float, *, what: str) -> float:
    if value in (None, "", 0):
        return default
    try:
        ms = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: timeouts in Proxy.Config are milliseconds, got {value!r}") from None
    if ms <= 0:
        raise ConfigError(f"{what}: timeouts must be positive, got {value!r}")
    return ms / 1000.0


def find_sidecar(services: Mapping[str, Mapping[str, Any]], target_id: str) -> str:
    """The ID of the one connect-proxy whose Proxy.DestinationServiceID is ``target_id``
    (GET /v1/agent/services), with Consul's errors for none and for several."""
    found = sorted(
        sid
        for sid, svc in services.items()
        if svc.get("Kind") == "connect-proxy" and (svc.get("Proxy") or {}).get("DestinationServiceID") == target_id
    )
    if not found:
        raise ConfigError(f"No sidecar proxy registered for {target_id}")
    if len(found) > 1:
        raise ConfigError(f"More than one sidecar proxy registered for {target_id}.\n"
                          f"    Start proxy with -proxy-id and one of the following IDs: {', '.join(found)}")  # fmt: skip
    return found[0]
