"""/v1/agent/*: the local agent's services, checks, maintenance, membership and lifecycle."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import CONSUL_VERSION, filtering
from registry.api import views
from registry.api.catalog import query_filter
from registry.api.decode import parse_json
from registry.api.enforce import filter_list, request_authz
from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.commands import CommandError
from registry.config import ConfigError
from registry.gocompat import format_duration
from registry.logs import Monitor, level_number
from registry.posture import insecure_reasons
from registry.raft.base import raft_tick, raft_timings
from registry.registration import (
    DecodeError,
    build_check_registration,
    build_service_registration,
    decode,
    sidecar_registration,
)
from registry.structs import CHECK_STATUSES, HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, aggregate_status

if TYPE_CHECKING:
    from registry.api.http import Api, LocalAgent

# ---------------------------------------------------------------------- handlers


async def _json_body(api: Api, request: web.Request) -> Any:
    body = await api.read_body(request)
    try:
        return parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc


async def service_register(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    agent = api.agent
    raw = await _json_body(api, request)
    if raw is None:
        raise HTTPError(400, "Request decode failed: EOF")
    rules = agent.registration_rules()
    service, specs = build_service_registration(rules, raw)
    sidecar = None
    connect_raw = next((v for k, v in raw.items() if k.replace("_", "").lower() == "connect"), None)
    if isinstance(connect_raw, dict):
        sc = next((v for k, v in connect_raw.items() if k.replace("_", "").lower() == "sidecarservice"), None)
        if sc is not None:
            ports = {sid: s.service.port for sid, s in agent.services.items()}
            sidecar = sidecar_registration(rules, service, sc, ports)
    authz = request_authz(request)
    if authz is not None:
        # Consul's vetServiceRegisterWithAuthorizer: service:write on the service, and a proxy (or the
        # sidecar registered with it) also on the service it fronts.
        for svc in (service, sidecar[0] if sidecar is not None else None):
            if svc is None:
                continue
            authz.check("service_write", svc.service)
            destination = (svc.proxy or {}).get("DestinationServiceName")
            if svc.kind == "connect-proxy" and destination:
                authz.check("service_write", destination)
    replace = request.query.get("replace-existing-checks", None)
    replace_checks = replace is not None and replace.lower() in ("", "true", "1")
    await agent.add_service(service, specs, replace_checks)
    if sidecar is not None:
        await agent.add_service(sidecar[0], sidecar[1], replace_checks)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def service_deregister(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing service ID")
    await api.agent.remove_service(sid)
    sidecar = f"{sid}-sidecar-proxy"
    svc = api.agent.services.get(sidecar)
    if svc is not None and (svc.service.proxy or {}).get("DestinationServiceID") == sid:
        await api.agent.remove_service(sidecar)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _local_service_json(api: Api, sid: str) -> dict[str, Any]:
    return views.agent_service_json(api.agent.services[sid].service, api.config.datacenter)


async def services(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    flt = query_filter(None, request, filtering.AGENT_SERVICE)
    agent = api.agent
    sids = sorted(agent.services)
    authz = request_authz(request)
    if authz is not None:
        sids = filter_list(request, sids, lambda sid: authz.service_read(agent.services[sid].name))
    out = {sid: _local_service_json(api, sid) for sid in sids}
    return api.json(request, flt.select_values(out) if flt is not None else out)


async def service_get(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    agent = api.agent
    if sid not in agent.services:
        raise HTTPError(404, f"unknown service ID: {sid}")
    out = _local_service_json(api, sid)
    content_hash = hashlib.blake2b(json.dumps(out, sort_keys=True).encode(), digest_size=8).hexdigest()
    out["ContentHash"] = content_hash
    resp = api.json(request, out)
    resp.headers["X-Consul-ContentHash"] = content_hash
    return resp


def _local_check_json(agent: LocalAgent, cid: str) -> dict[str, Any]:
    chk = agent.checks[cid]
    svc = agent.services.get(chk.spec.service_id)
    row = chk.row(agent.node_name)
    return {
        "Node": agent.node_name,
        "CheckID": cid,
        "Name": row.name,
        "Status": chk.status,
        "Notes": row.notes,
        "Output": chk.output,
        "ServiceID": chk.spec.service_id,
        "ServiceName": svc.name if svc else "",
        "ServiceTags": list(svc.service.tags) if svc else [],
        "Type": row.type,
        "Interval": row.interval,
        "Timeout": row.timeout,
        "ExposedPort": 0,
        "Definition": row.definition,
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


async def checks(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    flt = query_filter(None, request, filtering.HEALTH_CHECK)
    agent = api.agent
    cids = sorted(agent.checks)
    authz = request_authz(request)
    if authz is not None:

        def allowed(cid: str) -> bool:
            sid = agent.checks[cid].spec.service_id
            svc = agent.services.get(sid) if sid else None
            return authz.service_read(svc.name) if svc is not None else authz.node_read(agent.node_name)

        cids = filter_list(request, cids, allowed)
    out = {cid: _local_check_json(agent, cid) for cid in cids}
    return api.json(request, flt.select_values(out) if flt is not None else out)


async def check_register(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    raw = await _json_body(api, request)
    if raw is None:
        raise HTTPError(400, "Request decode failed: EOF")
    spec = build_check_registration(api.agent.registration_rules(), raw)
    authz = request_authz(request)
    if authz is not None:
        # Consul's vetCheckRegisterWithAuthorizer: a service's check needs service:write on that service,
        # a node check node:write on this node.
        svc = api.agent.services.get(spec.service_id) if spec.service_id else None
        if svc is not None:
            authz.check("service_write", svc.name)
        elif spec.service_id:
            authz.check("service_write", spec.service_id)
        else:
            authz.check("node_write", api.agent.node_name)
    await api.agent.add_check(spec)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def check_deregister(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
    await api.agent.remove_check(cid)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _ttl_handler(status: str):  # noqa: ANN202
    async def handler(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
        note = request.query.get("note", "")
        await api.agent.update_ttl(cid, status, note)
        return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})

    return handler


async def check_update(api: Api, request: web.Request, cid: str) -> web.StreamResponse:
    raw = await _json_body(api, request)
    try:
        d = decode(raw if raw is not None else {}, {"Status": "str", "Output": "str"})
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    status = d.get("Status") or ""
    if status not in CHECK_STATUSES:
        raise HTTPError(400, f"Invalid check status: '{status}'")
    await api.agent.update_ttl(cid, status, d.get("Output") or "")
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
    await api.agent.set_service_maintenance(sid, enable, request.query.get("reason", ""))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


_STATUS_CODE = {HEALTH_PASSING: 200, HEALTH_WARNING: 429, HEALTH_CRITICAL: 503}


def _local_health(api: Api, sid: str) -> dict[str, Any]:
    agent = api.agent
    node_checks = [c for c in agent.checks.values() if not c.spec.service_id]
    svc_checks = [c for c in agent.checks.values() if c.spec.service_id == sid]
    status = aggregate_status([c.status for c in node_checks + svc_checks])
    return {
        "AggregatedStatus": status,
        "Service": _local_service_json(api, sid),
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
    return _health_response(api, request, entries, aggregate_status([e["AggregatedStatus"] for e in entries]))


async def health_by_id(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing serviceID")
    if sid not in api.agent.services:
        if request.query.get("format") == "text":
            return web.Response(status=404, text=f"ServiceId {sid} not found")
        return api.json(request, None, status=404)
    entry = _local_health(api, sid)
    return _health_response(api, request, entry, entry["AggregatedStatus"])


SERF_WAN_PORT = 8302  # Consul's default ports.serf_wan: the WAN pool's port on a server

async def self_info(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    agent = api.agent
    cfg = api.config
    from registry import __version__

    # This agent's own entry: the first member is only "us" on a single-node dev agent, and a client
    # agent keeps no catalog at all, so it describes itself from its configuration.
    insecure = insecure_reasons(cfg)
    member = next((m for m in agent.members() if m["Name"] == cfg.node_name), None) or {
        "Name": cfg.node_name, "Addr": cfg.advertise, "Port": cfg.ports.serf_lan, "Status": 1,
        "Tags": {"role": "consul" if cfg.server else "node", "dc": cfg.datacenter, "id": cfg.node_id,
                 "build": f"{CONSUL_VERSION}:proconsul", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "segment": ""},
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
                "Version": CONSUL_VERSION,
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
                # Consul's enable_debug: whether /debug/pprof is served, which `consul debug` reads before
                # asking for profiles. Proconsul serves none whatever the key says, so false: Consul's own
                # CLI then skips its pprof target with a warning instead of failing on 404s.
                "EnableDebug": False,
                # Consul's runtime config field: what decides a connection no intention matches (with
                # the ACL default policy when empty); sidecars decide in process and read it here.
                "DefaultIntentionPolicy": cfg.default_intention_policy,
                "ProconsulVersion": __version__,
                # Proconsul's: an agent running without ACLs (default deny) or mutual TLS, and why
                # (registry/posture.py); -dev is open by design and reports false.
                "Insecure": bool(insecure),
                "InsecureReasons": insecure,
                **_debug_config(api),
            },
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": member,
            "Stats": _stats(api),
            "Meta": {"consul-network-segment": "", **cfg.node_meta},
            # No "xDS": Consul leaves it out when the agent runs no xDS server (Self.XDS is omitempty).
        },
    )


def _addrs(scheme: str, host: str, port: int) -> list[str]:
    """A listener as RuntimeConfig's sanitized addresses print it ("tcp://127.0.0.1:8500"); none when off."""
    return [f"{scheme}://{host}:{port}"] if port > 0 else []


def _debug_config(api: Api) -> dict[str, Any]:
    """The DebugConfig fields tools read (Consul's sanitized RuntimeConfig): the listeners as they are bound,
    a port that is off as -1 (GRPCPort: Proconsul serves no gRPC/xDS), the server and Connect settings."""
    cfg = api.config
    agent = api.agent
    http_port = agent.http_addr[1] if agent.http_addr else cfg.ports.http
    dns_port = agent.dns_addr[1] if agent.dns_addr else cfg.ports.dns
    host = cfg.client_addr
    return {
        "Datacenter": cfg.datacenter,
        "PrimaryDatacenter": cfg.datacenter,
        "NodeName": cfg.node_name,
        "NodeID": cfg.node_id,
        "ServerMode": cfg.server or cfg.dev,
        "Bootstrap": cfg.bootstrap,
        "BootstrapExpect": cfg.bootstrap_expect,
        "ACLsEnabled": api.acl_on,
        "ConnectEnabled": bool(cfg.connect.get("enabled", False)),
        "GRPCPort": cfg.ports.grpc if cfg.ports.grpc > 0 else -1,
        "GRPCTLSPort": -1,
        "HTTPSPort": cfg.ports.https if cfg.ports.https > 0 else -1,
        "ServerPort": cfg.ports.server,
        "SerfPortLAN": cfg.ports.serf_lan,
        "SerfPortWAN": SERF_WAN_PORT if cfg.server or cfg.dev else -1,
        "DNSAddrs": _addrs("tcp", host, dns_port) + _addrs("udp", host, dns_port),
        "HTTPAddrs": _addrs("tcp", host, http_port),
        "HTTPSAddrs": _addrs("tcp", host, cfg.ports.https),
        "GRPCAddrs": _addrs("tcp", host, cfg.ports.grpc),
        **_raft_timings(cfg.raft_multiplier),
    }


def _raft_timings(multiplier: int | None) -> dict[str, str]:
    """RuntimeConfig's Raft timings as this agent's Raft counts them (performance.raft_multiplier applied):
    a follower's time without a leader before it stands for election (the shortest election timeout, both
    of Consul's heartbeat and election timeouts), and the leader's lease."""
    election, _, lease = raft_timings(raft_tick(multiplier))
    return {"ConsulRaftElectionTimeout": format_duration(election), "ConsulRaftHeartbeatTimeout": format_duration(election),
            "ConsulRaftLeaderLeaseTimeout": format_duration(lease)}  # fmt: skip


def _stats(api: Api) -> dict[str, dict[str, str]]:
    """Consul's agent Stats, which ``proconsul info`` prints: the ``consul`` block a server reports
    (agent/consul/server.go Stats: server, leader, leader_addr, bootstrap, known_datacenters, acl) or a client
    (client.go: server, known_servers, acl), the ``agent`` block (local checks and services), ``build``,
    ``runtime``, ``serf_lan`` and on a server ``raft``, with the facts this agent has; every value a string."""
    import os
    import platform

    from registry import __version__

    cfg = api.config
    consensus = api.consensus
    acl = "enabled" if api.acl_on else "disabled"
    leader = consensus.is_leader()
    if api.is_client:
        consul = {"server": "false", "known_servers": str(api.agent.known_servers()), "acl": acl}
    else:
        consul = {
            "server": "true",
            "leader": str(leader).lower(),
            "leader_addr": consensus.leader_address(),
            "bootstrap": str(cfg.bootstrap).lower(),
            "known_datacenters": "1",
            "acl": acl,
        }
    checks = api.agent.checks.values()
    members = api.agent.members()
    stats = {
        "consul": consul,
        "agent": {
            "check_monitors": str(sum(1 for c in checks if c.spec.type == "script")),
            "check_ttls": str(sum(1 for c in checks if c.spec.type == "ttl")),
            "checks": str(len(api.agent.checks)),
            "services": str(len(api.agent.services)),
        },
        "build": {"prerelease": "", "revision": "proconsul", "version": CONSUL_VERSION,
                  "version_metadata": f"proconsul-{__version__}"},
        "runtime": {"arch": platform.machine(), "cpu_count": str(os.cpu_count() or 1),
                    "os": platform.system().lower(), "version": f"python{platform.python_version()}"},
        "serf_lan": {"members": str(len(members)), "failed": str(sum(m["Status"] == 4 for m in members)),
                     "left": str(sum(m["Status"] == 3 for m in members))},
    }  # fmt: skip
    if not api.is_client:
        contact = consensus.last_contact_ms()
        stats["raft"] = {"state": "Leader" if leader else "Follower", "applied_index": str(api.store.index),
                         "num_peers": str(max(0, len(consensus.peers()) - 1)),
                         "last_contact": "0" if leader else f"{contact}ms"}  # fmt: skip
    return stats


async def members(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """The LAN members, or with ``?wan=<anything>`` the WAN pool as Consul's agent shows it: only servers
    are in it, named ``<node>.<datacenter>`` on the WAN Serf port; a client agent is in no WAN pool and
    answers null (its WANMembers is nil), and a segment does not apply to the WAN (400)."""
    out: list[dict[str, Any]] | None = api.agent.members()
    if request.query.get("wan"):
        segment = request.query.get("segment", "")
        if segment not in ("", "_all"):
            raise HTTPError(400, "Cannot provide a segment with wan=true")
        if api.is_client:
            return api.json(request, None)
        out = [{**m, "Name": f"{m['Name']}.{m['Tags']['dc']}", "Port": SERF_WAN_PORT}
               for m in out or [] if m["Tags"].get("role") == "consul"]  # fmt: skip
    assert out is not None
    authz = request_authz(request)
    if authz is not None:
        out = filter_list(request, out, lambda m: authz.node_read(m["Name"]))
    return api.json(request, out)


async def version(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    from registry import __version__

    return api.json(request, {"SHA": "", "BuildDate": "2026-11-25T00:00:00Z", "HumanVersion": CONSUL_VERSION,
                              "FIPS": "", "Proconsul": __version__})  # fmt: skip


async def host(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's ``GET /v1/agent/host`` (operator:read): the machine's memory, CPUs, host and root disk, as
    ``consul debug`` captures them into host.json. Read off the event loop: it walks /proc."""
    from registry.hostinfo import collect

    return api.json(request, await asyncio.get_running_loop().run_in_executor(None, collect))


async def reload(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's ``PUT /v1/agent/reload``: the agent re-reads its config sources and applies what can change
    while it runs; an error (the config does not load or validate) is a 500 with its text, and the running
    config stays."""
    try:
        await api.agent.reload()
    except ConfigError as exc:
        raise HTTPError(500, str(exc).rstrip()) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def leave(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    await api.agent.leave()
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


def _multierror(errors: list[str]) -> str:
    """Errors as hashicorp/go-multierror prints them (memberlist's Join returns one)."""
    head = "1 error occurred:" if len(errors) == 1 else f"{len(errors)} errors occurred:"
    return head + "".join(f"\n\t* {e}" for e in errors) + "\n\n"


async def join(api: Api, request: web.Request, address: str) -> web.StreamResponse:
    """Consul's AgentJoin: join the LAN pool through ``address`` (host or host:port, 8301 by default); with
    ``?wan`` the WAN pool, which only a server is in (Consul's error for a client agent)."""
    if request.query.get("wan"):
        if api.is_client:
            raise HTTPError(500, "Must be a server to join WAN cluster")
        raise HTTPError(500, "WAN join is not supported: this Proconsul cluster has one datacenter")
    joined, errors = await api.agent.join([address])
    if not joined:
        raise HTTPError(500, _multierror(errors or [f"Failed to join {address}"]))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def force_leave(api: Api, request: web.Request, node: str) -> web.StreamResponse:
    """Consul's AgentForceLeave: a failed member becomes left (``?prune``: and is forgotten at once); an
    unknown name gets Consul's error."""
    if "wan" in request.query and api.is_client:
        raise HTTPError(500, "Must be a server to force-leave a node from the WAN cluster")
    try:
        api.agent.force_leave(node, "prune" in request.query)
    except CommandError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


MONITOR_POLL = 1.0  # seconds between checks that the monitor's client is still there when no line comes


async def monitor(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's AgentMonitor: stream this agent's log lines from now on, at ``?loglevel`` (default INFO) and
    above, as text or (``?logjson``) JSON lines, until the client goes. A slow client never holds the agent
    up: lines beyond the monitor's buffer are dropped and the stream says how many."""
    level_name = request.query.get("loglevel", "") or "INFO"
    level = level_number(level_name)
    if level is None:
        raise HTTPError(400, f"Unknown log level: {level_name}")
    router = api.logs
    if router is None:
        raise HTTPError(500, "Streaming not supported")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain; charset=utf-8",
                                                   "X-Consul-Default-ACL-Policy": api.acl_policy})  # fmt: skip
    await resp.prepare(request)
    stream = Monitor(level, "logjson" in request.query)
    router.attach(stream)
    try:
        while request.transport is not None and not request.transport.is_closing():
            try:
                lines = await asyncio.wait_for(stream.next_lines(), MONITOR_POLL)
            except TimeoutError:
                continue
            await resp.write("".join(lines).encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away mid-write
    finally:
        router.detach(stream)
    return resp


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/agent/self", self_info, "read", "agent", "local-node",
          "This agent's configuration, member record and build"),
    route("GET", "/v1/agent/members", members, "read", "node", "each", "The cluster members this agent sees"),
    route("GET", "/v1/agent/version", version, "read", "none", "none", "This agent's version"),
    route("GET", "/v1/agent/host", host, "read", "operator", "unnamed",
          "The machine this agent runs on: memory, CPUs, host, root disk (what consul debug saves as host.json)"),
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
    route("PUT", "/v1/agent/check/register", check_register, "write", "node", "each",
          "Register a local check (node:write on this node, or service:write when it names a ServiceID)"),
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
    route("GET", "/v1/agent/monitor", monitor, "read", "agent", "local-node",
          "Stream this agent's log lines (?loglevel, ?logjson)"),
    route("PUT", "/v1/agent/reload", reload, "write", "agent", "local-node", "Reload this agent's configuration"),
    route("PUT", "/v1/agent/leave", leave, "write", "agent", "local-node", "Leave the cluster gracefully and shut down"),
    route("PUT", "/v1/agent/join/", join, "write", "agent", "local-node",
          "Join the LAN gossip pool through an address (host or host:port)"),
    route("PUT", "/v1/agent/force-leave/", force_leave, "write", "operator", "unnamed",
          "Force a failed member into the left state (?prune: forget it)"),
)
