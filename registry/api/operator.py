"""/v1/operator/raft/*, /v1/operator/autopilot/*, /v1/operator/usage and /v1/snapshot: Raft membership,
leadership transfer, the servers' health and autopilot's configuration, usage counts, backup and restore."""

from __future__ import annotations

import gzip
import io
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from registry.api.decode import DecodeError, parse_json
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.autopilot import AutopilotConfigError, from_api
from registry.commands import AutopilotSetConfig, SnapshotRestore
from registry.consensus import RPCError
from registry.gocompat import go_quote
from registry.state.autopilot_table import autopilot_config
from registry.state.store import StateStore
from registry.state.topics import WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api

SNAPSHOT_MAGIC = b"PROCONSUL-SNAPSHOT\n"
_HDR = struct.Struct(">II")  # version, crc32 of the payload
SNAPSHOT_VERSION = 1
MAX_RESTORE = 256 * 1024 * 1024


async def raft_configuration(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    consensus = api.consensus
    if "stale" in request.query or consensus.is_leader():
        servers = consensus.configuration()
    else:
        # the leader knows every peer's progress
        servers = await consensus.call_leader("raft_configuration", None, 5.0)
    return api.json(request, {"Servers": servers, "Index": api.store.index})


async def raft_remove_peer(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    consensus = api.consensus
    sid = request.query.get("id", "")
    address = request.query.get("address", "")
    if not sid and not address:
        raise HTTPError(400, "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    try:
        await consensus.remove_server(sid, address)
    except RPCError as exc:
        raise HTTPError(exc.status if exc.status < 500 else 500, exc.message) from exc
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def raft_transfer_leader(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    consensus = api.consensus
    target = request.query.get("id") or None
    try:
        if not consensus.is_leader():
            await consensus.call_leader("transfer_leader", target, 10.0)
        else:
            await consensus.transfer_leadership(target)
    except RPCError as exc:
        raise HTTPError(500, exc.message) from exc
    return api.json(request, {"Success": True})


# ---------------------------------------------------------------------- autopilot


def _autopilot(api: Api) -> Any:
    if api.autopilot is None:  # a client agent forwards /v1/operator/* to a server before routing
        raise HTTPError(500, "autopilot runs on the servers only")
    return api.autopilot


async def autopilot_get_config(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's Operator.AutopilotGetConfiguration: the stored configuration (read as a default-mode read,
    or from this server's replica with ``?stale``); 500 before a leader has stored one."""
    await api.consensus.barrier_read("stale" if "stale" in request.query else "default")
    config = autopilot_config(api.store)
    if config is None:
        raise HTTPError(500, "autopilot config not initialized yet")
    return api.json(request, config.to_api())


async def autopilot_set_config(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's OperatorAutopilotConfiguration PUT: the body over the defaults, ``?cas`` for a
    check-and-set; the answer is ``true``, or with ``?cas`` whether the write applied."""
    body = await api.read_body(request)
    try:
        try:
            decoded = parse_json(body)
        except DecodeError as exc:
            raise AutopilotConfigError(str(exc)) from None
        decoded = {} if decoded is None else decoded
        if not isinstance(decoded, dict):
            raise AutopilotConfigError(f"json: cannot unmarshal {type(decoded).__name__} into Go value of type "
                                       f"api.AutopilotConfiguration")  # fmt: skip
        config = from_api(decoded)
    except AutopilotConfigError as exc:
        raise HTTPError(400, f"Error parsing autopilot config: {exc}") from None
    cas = "cas" in request.query
    index = 0
    if cas:
        raw = request.query.get("cas", "")
        if not raw.isdigit() or int(raw) >= 2**64:
            reason = "value out of range" if raw.isdigit() else "invalid syntax"
            raise HTTPError(400, f"Error parsing cas value: strconv.ParseUint: parsing {go_quote(raw)}: {reason}")
        index = int(raw)
    applied = await api.propose(AutopilotSetConfig(config, cas=cas, index=index))
    return api.json(request, bool(applied) if cas else True)


async def autopilot_health(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's OperatorServerHealth: every server's health from the leader; 429 when any is unhealthy."""
    reply = await _autopilot(api).health()
    return api.json(request, reply, status=200 if reply.get("Healthy") else 429)


async def autopilot_state(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's OperatorAutopilotState: the leader's autopilot state."""
    return api.json(request, await _autopilot(api).state_body())


# ---------------------------------------------------------------------- keyring


def _keyring_request(request: web.Request, body: bytes) -> str:
    """The ``Key`` of a keyring write and the query parameters, checked as Consul's
    OperatorKeyringEndpoint checks them (400 with its words)."""
    query = request.query
    if "relay-factor" in query:
        raw = query["relay-factor"]
        relay = int(raw) if raw.lstrip("+-").isdigit() else None
        if relay is None:
            raise HTTPError(400, f"Error parsing relay factor: strconv.Atoi: parsing {go_quote(raw)}: invalid syntax")
        if not 0 <= relay <= 5:
            raise HTTPError(400, "Invalid relay-factor: Relay factor must be in range: [0, 5]")
    if "local-only" in query:
        raw = query["local-only"]
        bools = {"1": True, "t": True, "T": True, "true": True, "TRUE": True, "True": True,
                 "0": False, "f": False, "F": False, "false": False, "FALSE": False, "False": False}  # fmt: skip
        if raw not in bools:
            raise HTTPError(400, f"Error parsing local-only: strconv.ParseBool: parsing {go_quote(raw)}: invalid syntax")
        if bools[raw] and request.method != "GET":
            raise HTTPError(400, "Invalid use of local-only: local-only can only be set for list requests")
    if request.method == "GET":
        return ""
    try:
        decoded = parse_json(body) if body.strip() else {}
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from None
    if decoded is None:
        decoded = {}
    if not isinstance(decoded, dict):
        raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {_json_kind(decoded)} into Go "
                             f"value of type agent.keyringArgs")  # fmt: skip
    key = decoded.get("Key", "")
    if not isinstance(key, str):
        raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {_json_kind(key)} into Go struct "
                             f"field keyringArgs.Key of type string")  # fmt: skip
    return key


def _json_kind(value: Any) -> str:
    """The JSON kind Go's decoder names in its errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "string" if isinstance(value, str) else "object"


async def operator_keyring(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's OperatorKeyringEndpoint: GET lists the keys, POST installs one, PUT makes one primary, DELETE
    removes one, each across the LAN pool (a Serf query every member answers; ``local-only`` lists this
    agent's keys alone). A failure anywhere in the pool answers 500 with Consul's error text (the pool's error,
    then each member's message); a write answers an empty 200."""
    if api.keyring is None:
        raise HTTPError(500, "keyring operations are not available on this agent")
    body = b"" if request.method == "GET" else await api.read_body(request)
    key = _keyring_request(request, body)
    op = {"GET": "list", "POST": "install", "PUT": "use", "DELETE": "remove"}[request.method]
    local_only = request.query.get("local-only", "") in ("1", "t", "T", "true", "TRUE", "True")
    responses, error = await api.keyring.run(op, key, local_only)
    if error:
        raise HTTPError(500, error)
    if op == "list":
        return api.json(request, responses)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


# ---------------------------------------------------------------------- usage

CONNECT_KINDS = ("connect-native", "connect-proxy", "ingress-gateway", "mesh-gateway", "terminating-gateway")
_GATEWAYS_AND_PROXIES = frozenset(CONNECT_KINDS) - {"connect-native"}


def usage_counts(store: StateStore, ws: WatchSet) -> dict[str, Any]:
    """Consul's state usage (agent/consul/state/usage.go): unique service names, instances, Connect
    instances by kind (sidecar proxies and gateways by their kind, natively integrated services as
    ``connect-native``), and the billable instances: every instance but proxies, gateways and the servers'
    own ``consul`` service."""
    services = store.service_table(ws)
    connect = dict.fromkeys(CONNECT_KINDS, 0)
    instances = 0
    billable = 0
    for node_services in store.services.values():
        for svc in node_services.values():
            instances += 1
            if svc.kind in _GATEWAYS_AND_PROXIES:
                connect[svc.kind] += 1
                continue
            if svc.connect and svc.connect.get("Native"):
                connect["connect-native"] += 1
            if svc.service != "consul":
                billable += 1
    return {"Services": len(services), "ServiceInstances": instances, "ConnectServiceInstances": connect,
            "BillableServiceInstances": billable}  # fmt: skip


async def operator_usage(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's OperatorUsage: this datacenter's counts under ``Usage.<dc>``, with the query metadata in
    the body as Consul's ``structs.Usage`` carries it (blocking, every consistency mode)."""
    consensus = api.consensus
    dc = api.config.datacenter
    mode = "stale" if "stale" in request.query else "consistent" if "consistent" in request.query else "leader"

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        counts = usage_counts(store, ws)
        index = max(ws.index, 1)
        return ReadResult(lambda: {
            "Usage": {dc: counts}, "Index": index, "LastContact": consensus.last_contact_ms() * 1_000_000,
            "KnownLeader": consensus.known_leader(), "ConsistencyLevel": mode, "NotModified": False,
            "Backend": 0, "ResultsFilteredByACLs": False,
        })  # fmt: skip

    return await api.read(request, run)


def encode_snapshot(index: int, dump: dict[str, Any]) -> bytes:
    payload = msgpack.packb({"index": index, "created": time.time(), "store": dump}, use_bin_type=True)
    return gzip.compress(SNAPSHOT_MAGIC + _HDR.pack(SNAPSHOT_VERSION, zlib.crc32(payload)) + payload, 6)


def decode_snapshot(blob: bytes) -> dict[str, Any]:
    """Verify and decode a snapshot file; raises ValueError saying what is wrong."""
    try:
        raw = gzip.GzipFile(fileobj=io.BytesIO(blob)).read(MAX_RESTORE + 1)
    except (OSError, EOFError) as exc:
        raise ValueError(f"not a Proconsul snapshot (gzip: {exc})") from exc
    if len(raw) > MAX_RESTORE:
        raise ValueError("snapshot is too large")
    if not raw.startswith(SNAPSHOT_MAGIC):
        raise ValueError("not a Proconsul snapshot (bad header)")
    body = raw[len(SNAPSHOT_MAGIC):]
    if len(body) < _HDR.size:
        raise ValueError("snapshot is truncated")
    version, crc = _HDR.unpack_from(body)
    payload = body[_HDR.size:]
    if version != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported snapshot version {version}")
    if zlib.crc32(payload) != crc:
        raise ValueError("snapshot checksum mismatch: the file is corrupt")
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if not isinstance(data, dict) or not isinstance(data.get("store"), dict):
            raise ValueError("missing store")
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"snapshot payload is malformed: {exc}") from exc
    return data


async def snapshot_get(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    consensus = api.consensus
    if "stale" not in request.query:
        await consensus.barrier_read("leader")
    store = api.store
    body = encode_snapshot(store.index, store.to_snapshot())
    return web.Response(body=body, headers={"Content-Type": "application/octet-stream",
                                            "X-Consul-Index": str(max(store.index, 1)),
                                            "X-Consul-Default-ACL-Policy": api.acl_policy})  # fmt: skip


async def snapshot_put(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    blob = await api.read_body(request, MAX_RESTORE)
    try:
        data = decode_snapshot(blob)
        from registry.state.store import StateStore

        StateStore.from_snapshot(data["store"])  # validate fully before anything is proposed
    except ValueError as exc:
        raise HTTPError(400, f"Snapshot restore failed: {exc}") from exc
    await api.propose(SnapshotRestore(data["store"]))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/operator/raft/configuration", raft_configuration, "read", "operator", "unnamed",
          "The Raft servers and which one leads"),
    route("DELETE", "/v1/operator/raft/peer", raft_remove_peer, "write", "operator", "unnamed",
          "Remove a server from the Raft configuration"),
    route("POST", "/v1/operator/raft/transfer-leader", raft_transfer_leader, "write", "operator", "unnamed",
          "Hand leadership to another server"),
    route("GET", "/v1/operator/autopilot/configuration", autopilot_get_config, "read", "operator", "unnamed",
          "Autopilot's configuration"),
    route("PUT", "/v1/operator/autopilot/configuration", autopilot_set_config, "write", "operator", "unnamed",
          "Replace autopilot's configuration (?cas for a check-and-set)"),
    route("GET", "/v1/operator/autopilot/health", autopilot_health, "read", "operator", "unnamed",
          "Every server's health from the leader (429 when any is unhealthy)"),
    route("GET", "/v1/operator/autopilot/state", autopilot_state, "read", "operator", "unnamed",
          "The leader's autopilot state"),
    route("GET", "/v1/operator/keyring", operator_keyring, "read", "keyring", "unnamed",
          "The gossip encryption keys installed in the pool, and the primary ones"),
    route("POST", "/v1/operator/keyring", operator_keyring, "write", "keyring", "unnamed",
          "Install a gossip encryption key"),
    route("PUT", "/v1/operator/keyring", operator_keyring, "write", "keyring", "unnamed",
          "Make an installed gossip encryption key the primary key"),
    route("DELETE", "/v1/operator/keyring", operator_keyring, "write", "keyring", "unnamed",
          "Remove a gossip encryption key (never the primary key)"),
    route("GET", "/v1/operator/usage", operator_usage, "read", "operator", "unnamed",
          "Counts of services and instances in this datacenter"),
    route("GET", "/v1/snapshot", snapshot_get, "write", "acl", "unnamed", "Save a snapshot of the state"),
    route("PUT", "/v1/snapshot", snapshot_put, "write", "acl", "unnamed", "Restore a snapshot"),
)
