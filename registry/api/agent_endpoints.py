"""/v1/agent/*: the local agent's services, checks, maintenance, membership and lifecycle."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from registry import filtering
from registry.agent.agent import VERSION, Agent, AgentError
from registry.agent.checks import MIN_INTERVAL, CheckSpec
from registry.api import views
from registry.api.catalog import query_filter
from registry.api.decode import (
    CHECK_SCHEMA,
    SERVICE_SCHEMA,
    DecodeError,
    decode,
    parse_json,
    validate_meta,
)
from registry.api.errors import HTTPError
from registry.api.http import read_body
from registry.api.routing import Route, route
from registry.fsm import service_from
from registry.structs import CHECK_STATUSES, HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

if TYPE_CHECKING:
    from registry.api.http import Api

MIN_DEREGISTER_AFTER = 60.0  # Consul raises DeregisterCriticalServiceAfter to one minute
SIDECAR_PORT_MIN, SIDECAR_PORT_MAX = 21000, 21255


# ---------------------------------------------------------------------- building registrations


def _check_type(d: dict[str, Any]) -> str:
    if d.get("Args") or d.get("ScriptArgs"):
        return "script"
    if d.get("HTTP"):
        return "http"
    if d.get("TCP"):
        return "tcp"
    if d.get("TTL"):
        return "ttl"
    for key, kind in (("GRPC", "grpc"), ("H2PING", "h2ping"), ("UDP", "udp"), ("DockerContainerID", "docker"),
                      ("AliasService", "alias"), ("AliasNode", "alias"), ("OSService", "os_service")):  # fmt: skip
        if d.get(key):
            return kind
    return ""


def build_check_spec(
    agent: Agent, d: dict[str, Any], *, check_id: str, name: str, service_id: str, status_error: str
) -> CheckSpec:
    """Validate a decoded check definition as Consul's CheckType.Validate does, and resolve defaults."""
    kind = _check_type(d)
    interval = d.get("Interval") or 0.0
    ttl = d.get("TTL") or 0.0
    interval_check = kind in ("script", "http", "tcp", "grpc", "h2ping", "udp", "os_service", "docker")
    if interval and ttl:
        raise HTTPError(400, "Invalid check: Interval and TTL cannot both be specified")
    if interval_check and interval <= 0:
        raise HTTPError(400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks")
    if not kind:
        raise HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
    if kind not in ("script", "http", "tcp", "ttl"):
        raise HTTPError(400, f"Invalid check: {kind} checks are not supported by Proconsul (supported: HTTP, TCP, TTL, script)")
    if kind == "script" and not (agent.config.enable_script_checks or agent.config.enable_local_script_checks):
        raise HTTPError(
            400,
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or "
            "'enable_local_script_checks' to true",
        )
    status = d.get("Status") or HEALTH_CRITICAL
    if status not in CHECK_STATUSES:
        raise HTTPError(400, status_error)
    output_max = d.get("OutputMaxSize")
    if output_max is None or output_max == 0:
        output_max = agent.config.check_output_max_size
    if output_max < 0:
        raise HTTPError(400, "Invalid check: MaxOutputMaxSize must be positive")
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
    )
    if dereg := d.get("DeregisterCriticalServiceAfter"):
        spec.deregister_after = max(dereg, MIN_DEREGISTER_AFTER)
    if kind == "http":
        url = d["HTTP"]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HTTPError(400, f"Invalid check: HTTP must be an http:// or https:// URL, got {url!r}")
        spec.http = url
        spec.method = (d.get("Method") or "GET").upper()
        spec.header = d.get("Header") or {}
        spec.body = d.get("Body") or ""
        spec.tls_skip_verify = bool(d.get("TLSSkipVerify"))
        spec.tls_server_name = d.get("TLSServerName") or ""
        spec.disable_redirects = d.get("DisableRedirects", True) is not False
    elif kind == "tcp":
        addr = d["TCP"]
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HTTPError(400, f"Invalid check: TCP must be host:port, got {addr!r}")
        spec.tcp = addr
    elif kind == "script":
        spec.args = list(d.get("Args") or d.get("ScriptArgs") or [])
    return spec


def build_check_registration(agent: Agent, raw: Any) -> CheckSpec:
    try:
        d = decode(raw, CHECK_SCHEMA)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    name = d.get("Name") or ""
    if not name:
        raise HTTPError(400, "Missing check name")
    check_id = d.get("CheckID") or d.get("ID") or name
    return build_check_spec(agent, d, check_id=check_id, name=name, service_id=d.get("ServiceID") or "",
                            status_error="Bad check status")  # fmt: skip


def _validate_address(addr: str) -> None:
    if not addr:
        return
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return  # hostnames are allowed (DNS answers them as CNAME)
    if ip.is_unspecified:
        raise HTTPError(400, "Invalid service address")


def build_service_registration(agent: Agent, raw: Any) -> tuple[dict[str, Any], list[CheckSpec]]:
    """A /v1/agent/service/register body -> (catalog service definition, check specs). Raises HTTPError."""
    try:
        d = decode(raw, SERVICE_SCHEMA)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    name = d.get("Name") or d.get("Service") or ""
    if not name:
        raise HTTPError(400, "Missing service name")
    sid = d.get("ID") or name
    address = d.get("Address") or ""
    _validate_address(address)
    port = d.get("Port") or 0
    if not 0 <= port <= 65535:
        raise HTTPError(400, f"Invalid service port {port}: must be between 0 and 65535")
    weights = d.get("Weights")
    if weights is not None:
        passing, warning = weights.get("Passing", 1), weights.get("Warning", 1)
        if passing is None or passing <= 0:
            raise HTTPError(400, "Invalid Weights: Passing must be greater than 0")
        if warning is None or warning < 0:
            raise HTTPError(400, "Invalid Weights: Warning must be greater or equal than 0")
        weights = {"Passing": passing, "Warning": warning}
    else:
        weights = {"Passing": 1, "Warning": 1}
    meta = d.get("Meta") or {}
    try:
        validate_meta(meta)
    except DecodeError as exc:
        raise HTTPError(400, f"Invalid Service Meta: {exc}") from exc
    for tag_addr in (d.get("TaggedAddresses") or {}).values():
        _validate_address(tag_addr.get("Address", ""))
    kind = d.get("Kind") or ""
    if kind not in ("", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"):
        raise HTTPError(400, f"Invalid service kind: {kind!r}")
    proxy = d.get("Proxy")
    connect = d.get("Connect")
    if proxy is not None and not isinstance(proxy, dict):
        raise HTTPError(400, "Request decode failed: Proxy: expected a JSON object")
    if connect is not None and not isinstance(connect, dict):
        raise HTTPError(400, "Request decode failed: Connect: expected a JSON object")
    if kind == "connect-proxy":
        if not port:
            raise HTTPError(400, "Validation failed: Port must be set for a Connect proxy")
        if not proxy or not proxy.get("DestinationServiceName"):
            raise HTTPError(400, "Validation failed: Proxy.DestinationServiceName must be set for a Connect proxy")
    elif proxy and kind == "":
        raise HTTPError(400, "Validation failed: Proxy is only valid for connect-proxy and gateway services")
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
        specs.append(build_check_spec(agent, c, check_id=cid, name=cname, service_id=sid, status_error=status_error))
    try:
        service_from(agent.node_name, definition)
    except Exception as exc:  # noqa: BLE001
        raise HTTPError(400, f"Validation failed: {exc}") from exc
    return definition, specs


def sidecar_registration(
    agent: Agent, parent: dict[str, Any], sidecar: Any
) -> tuple[dict[str, Any], list[CheckSpec]]:
    """Connect.SidecarService: a connect-proxy registration for ``parent``, with Consul's defaults."""
    if not isinstance(sidecar, dict):
        raise HTTPError(400, "Invalid SidecarService: expected a JSON object")
    raw = dict(sidecar)
    sid = raw.get("ID") or f"{parent['ID']}-sidecar-proxy"
    raw.setdefault("Name", f"{parent['Service']}-sidecar-proxy")
    raw["ID"] = sid
    raw["Kind"] = "connect-proxy"
    if not raw.get("Port"):
        used = {s.definition.get("Port") for s in agent.services.values() if s.id != sid}
        free = next((p for p in range(SIDECAR_PORT_MIN, SIDECAR_PORT_MAX + 1) if p not in used), None)
        if free is None:
            raise HTTPError(400, "Invalid SidecarService: no sidecar port available in 21000-21255")
        raw["Port"] = free
    proxy = dict(raw.get("Proxy") or {})
    proxy.setdefault("DestinationServiceName", parent["Service"])
    proxy.setdefault("DestinationServiceID", parent["ID"])
    proxy.setdefault("LocalServiceAddress", "127.0.0.1")
    proxy.setdefault("LocalServicePort", parent.get("Port") or 0)
    raw["Proxy"] = proxy
    if not raw.get("Check") and not raw.get("Checks"):
        addr = raw.get("Address") or parent.get("Address") or "127.0.0.1"
        raw["Checks"] = [{"Name": "Connect Sidecar Listening", "TCP": f"{addr}:{raw['Port']}", "Interval": "10s"}]
    definition, specs = build_service_registration(agent, raw)
    for i, spec in enumerate(specs, start=1):
        if spec.check_id.startswith("service:"):
            spec.check_id = f"service:{sid}:{i}"
    return definition, specs


# ---------------------------------------------------------------------- handlers


async def _json_body(request: web.Request) -> Any:
    body = await read_body(request)
    try:
        return parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc


def _agent_error(exc: AgentError) -> HTTPError:
    return HTTPError(exc.status, exc.message)


async def service_register(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    agent = api.agent
    raw = await _json_body(request)
    if raw is None:
        raise HTTPError(400, "Request decode failed: EOF")
    definition, specs = build_service_registration(agent, raw)
    sidecar = None
    connect_raw = next((v for k, v in raw.items() if k.replace("_", "").lower() == "connect"), None)
    if isinstance(connect_raw, dict):
        sc = next((v for k, v in connect_raw.items() if k.replace("_", "").lower() == "sidecarservice"), None)
        if sc is not None:
            sidecar = sidecar_registration(agent, definition, sc)
    replace = request.query.get("replace-existing-checks", None)
    replace_checks = replace is not None and replace.lower() in ("", "true", "1")
    try:
        await agent.add_service(definition, specs, replace_checks)
        if sidecar is not None:
            await agent.add_service(sidecar[0], sidecar[1], replace_checks)
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def service_deregister(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing service ID")
    try:
        await api.agent.remove_service(sid)
        sidecar = f"{sid}-sidecar-proxy"
        svc = api.agent.services.get(sidecar)
        if svc is not None and (svc.definition.get("Proxy") or {}).get("DestinationServiceID") == sid:
            await api.agent.remove_service(sidecar)
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _local_service_json(agent: Agent, sid: str) -> dict[str, Any]:
    svc = agent.services[sid]
    return views.agent_service_json(service_from(agent.node_name, svc.definition), agent.config.datacenter)


async def services(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    flt = query_filter(None, request, filtering.AGENT_SERVICE)
    agent = api.agent
    out = {sid: _local_service_json(agent, sid) for sid in sorted(agent.services)}
    return api.json(request, flt.select_values(out) if flt is not None else out)


async def service_get(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    agent = api.agent
    if sid not in agent.services:
        raise HTTPError(404, f"unknown service ID: {sid}")
    out = _local_service_json(agent, sid)
    content_hash = hashlib.blake2b(json.dumps(out, sort_keys=True).encode(), digest_size=8).hexdigest()
    out["ContentHash"] = content_hash
    resp = api.json(request, out)
    resp.headers["X-Consul-ContentHash"] = content_hash
    return resp


def _local_check_json(agent: Agent, cid: str) -> dict[str, Any]:
    chk = agent.checks[cid]
    svc = agent.services.get(chk.spec.service_id)
    d = chk.command_dict(agent.node_name)
    return {
        "Node": agent.node_name,
        "CheckID": cid,
        "Name": d["Name"],
        "Status": chk.status,
        "Notes": d["Notes"],
        "Output": chk.output,
        "ServiceID": chk.spec.service_id,
        "ServiceName": svc.name if svc else "",
        "ServiceTags": list(svc.definition.get("Tags") or []) if svc else [],
        "Type": d["Type"],
        "Interval": d["Interval"],
        "Timeout": d["Timeout"],
        "ExposedPort": 0,
        "Definition": d["Definition"],
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


async def checks(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    flt = query_filter(None, request, filtering.HEALTH_CHECK)
    agent = api.agent
    out = {cid: _local_check_json(agent, cid) for cid in sorted(agent.checks)}
    return api.json(request, flt.select_values(out) if flt is not None else out)


async def check_register(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    raw = await _json_body(request)
    if raw is None:
        raise HTTPError(400, "Request decode failed: EOF")
    spec = build_check_registration(api.agent, raw)
    try:
        await api.agent.add_check(spec)
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def check_deregister(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
    try:
        await api.agent.remove_check(cid)
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _ttl_handler(status: str):  # noqa: ANN202
    async def handler(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
        note = request.query.get("note", "")
        try:
            await api.agent.update_ttl(cid, status, note)
        except AgentError as exc:
            raise _agent_error(exc) from exc
        return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})

    return handler


async def check_update(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
    raw = await _json_body(request)
    try:
        d = decode(raw if raw is not None else {}, {"Status": "str", "Output": "str"})
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    status = d.get("Status") or ""
    if status not in CHECK_STATUSES:
        raise HTTPError(400, f"Invalid check status: '{status}'")
    try:
        await api.agent.update_ttl(cid, status, d.get("Output") or "")
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _enable_param(request: web.Request) -> bool:
    value = request.query.get("enable")
    if value is None or value == "":
        raise HTTPError(400, "Missing value for enable")
    if value.lower() not in ("true", "false", "1", "0", "t", "f"):
        raise HTTPError(400, f"Invalid value for enable: {value!r}")
    return value.lower() in ("true", "1", "t")


async def node_maintenance(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    enable = _enable_param(request)
    await api.agent.set_node_maintenance(enable, request.query.get("reason", ""))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def service_maintenance(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing service ID")
    enable = _enable_param(request)
    try:
        await api.agent.set_service_maintenance(sid, enable, request.query.get("reason", ""))
    except AgentError as exc:
        raise _agent_error(exc) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _aggregate(statuses: list[str]) -> str:
    if HEALTH_CRITICAL in statuses:
        return HEALTH_CRITICAL
    if HEALTH_WARNING in statuses:
        return HEALTH_WARNING
    return HEALTH_PASSING


_STATUS_CODE = {HEALTH_PASSING: 200, HEALTH_WARNING: 429, HEALTH_CRITICAL: 503}


def _local_health(api: Api, sid: str) -> dict[str, Any]:
    agent = api.agent
    node_checks = [c for c in agent.checks.values() if not c.spec.service_id]
    svc_checks = [c for c in agent.checks.values() if c.spec.service_id == sid]
    status = _aggregate([c.status for c in node_checks + svc_checks])
    return {
        "AggregatedStatus": status,
        "Service": _local_service_json(agent, sid),
        "Checks": [_local_check_json(agent, c.spec.check_id) for c in svc_checks],
    }


def _health_response(api: Api, request: web.Request, body: Any, status: str) -> web.StreamResponse:
    code = _STATUS_CODE[status]
    if request.query.get("format") == "text" or request.headers.get("Accept", "").startswith("text/plain"):
        return web.Response(status=code, text=status, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})
    return api.json(request, body, status=code)


async def health_by_name(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing service Name")
    sids = sorted(sid for sid, s in api.agent.services.items() if s.name == name)
    if not sids:
        if request.query.get("format") == "text":
            return web.Response(status=404, text=f"ServiceName {name} Not Found")
        return api.json(request, [], status=404)
    entries = [_local_health(api, sid) for sid in sids]
    return _health_response(api, request, entries, _aggregate([e["AggregatedStatus"] for e in entries]))


async def health_by_id(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing serviceID")
    if sid not in api.agent.services:
        if request.query.get("format") == "text":
            return web.Response(status=404, text=f"ServiceId {sid} not found")
        return api.json(request, None, status=404)
    entry = _local_health(api, sid)
    return _health_response(api, request, entry, entry["AggregatedStatus"])


async def self_info(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    agent = api.agent
    cfg = agent.config
    from registry import __version__

    # This agent's own entry: the first member is only "us" on a single-node dev agent, and a client
    # agent keeps no catalog at all, so it describes itself from its configuration.
    member = next((m for m in agent.members() if m["Name"] == cfg.node_name), None) or {
        "Name": cfg.node_name, "Addr": cfg.advertise, "Port": cfg.ports.serf_lan, "Status": 1,
        "Tags": {"role": "consul" if cfg.server else "node", "dc": cfg.datacenter, "id": cfg.node_id,
                 "build": f"{VERSION}:proconsul", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "segment": ""},
    }  # fmt: skip
    return api.json(
        request,
        {
            "Config": {
                "Datacenter": cfg.datacenter,
                "PrimaryDatacenter": cfg.datacenter,
                "NodeName": cfg.node_name,
                "NodeID": cfg.node_id,
                "Revision": "proconsul",
                "Server": cfg.server,
                "Version": VERSION,
                "BuildDate": "2026-11-25T00:00:00Z",
            },
            "DebugConfig": {
                "DevMode": cfg.dev,
                "DataDir": cfg.data_dir or "",
                "ClientAddrs": [cfg.client_addr],
                "HTTPPort": agent.http_addr[1] if agent.http_addr else cfg.ports.http,
                "DNSPort": agent.dns_addr[1] if agent.dns_addr else cfg.ports.dns,
                "DNSDomain": cfg.domain,
                "EnableScriptChecks": cfg.enable_script_checks,
                "ProconsulVersion": __version__,
            },
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": member,
            "Stats": {"consul": {"server": str(cfg.server).lower(), "leader": str(agent.consensus.is_leader()).lower()}},
            "Meta": {"consul-network-segment": "", **cfg.node_meta},
            "xDS": None,
        },
    )


async def members(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, api.agent.members())


async def version(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    from registry import __version__

    return api.json(request, {"SHA": "", "BuildDate": "2026-11-25T00:00:00Z", "HumanVersion": VERSION,
                              "FIPS": "", "Proconsul": __version__})  # fmt: skip


async def reload(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    agent = api.agent
    if agent.config.config_files:
        from registry.config import ConfigError, apply_mapping, load_file

        try:
            for path in agent.config.config_files:
                data = load_file(path)
                # Reload applies what can change at run time: services, checks and log level.
                fresh = type(agent.config)()
                apply_mapping(fresh, data, path)
                agent.config.log_level = fresh.log_level or agent.config.log_level
        except ConfigError as exc:
            raise HTTPError(500, f"Failed reloading config: {exc}") from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def leave(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    await api.agent.leave()
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/agent/self", self_info, "read", "agent", "local-node",
          "This agent's configuration, member record and build"),
    route("GET", "/v1/agent/members", members, "read", "node", "each", "The cluster members this agent sees"),
    route("GET", "/v1/agent/version", version, "read", "none", "none", "This agent's version"),
    route("GET", "/v1/agent/services", services, "read", "service", "each", "The services registered with this agent"),
    route("GET", "/v1/agent/service/", service_get, "read", "service", "path-id", "One local service, by ID"),
    route("GET", "/v1/agent/checks", checks, "read", "node", "each", "The checks registered with this agent"),
    route("PUT", "/v1/agent/service/register", service_register, "write", "service", "body:Name",
          "Register a local service (and its checks and sidecar)"),
    route("PUT", "/v1/agent/service/deregister/", service_deregister, "write", "service", "path-id",
          "Deregister a local service"),
    route("PUT", "/v1/agent/service/maintenance/", service_maintenance, "write", "service", "path-id",
          "Put a local service in or out of maintenance"),
    route("PUT", "/v1/agent/maintenance", node_maintenance, "write", "node", "local-node",
          "Put this node in or out of maintenance"),
    route("PUT", "/v1/agent/check/register", check_register, "write", "node", "local-node",
          "Register a local check (service:write instead when it names a ServiceID)"),
    route("PUT", "/v1/agent/check/deregister/", check_deregister, "write", "node", "path-id",
          "Deregister a local check"),
    route("PUT", "/v1/agent/check/pass/", _ttl_handler(HEALTH_PASSING), "write", "node", "path-id",
          "Set a TTL check passing"),
    route("PUT", "/v1/agent/check/warn/", _ttl_handler(HEALTH_WARNING), "write", "node", "path-id",
          "Set a TTL check warning"),
    route("PUT", "/v1/agent/check/fail/", _ttl_handler(HEALTH_CRITICAL), "write", "node", "path-id",
          "Set a TTL check critical"),
    route("PUT", "/v1/agent/check/update/", check_update, "write", "node", "path-id",
          "Set a TTL check's status and output"),
    route("GET", "/v1/agent/health/service/name/", health_by_name, "read", "service", "path",
          "Aggregated local health of a service, by name"),
    route("GET", "/v1/agent/health/service/id/", health_by_id, "read", "service", "path-id",
          "Aggregated local health of a service instance, by ID"),
    route("PUT", "/v1/agent/reload", reload, "write", "agent", "local-node", "Reload this agent's configuration"),
    route("PUT", "/v1/agent/leave", leave, "write", "agent", "local-node", "Leave the cluster gracefully and shut down"),
)
