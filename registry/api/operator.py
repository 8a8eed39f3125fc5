"""/v1/operator/raft/* and /v1/snapshot: Raft membership, leadership transfer, backup and restore."""

from __future__ import annotations

import gzip
import io
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.commands import SnapshotRestore
from registry.consensus import RPCError

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
    route("GET", "/v1/snapshot", snapshot_get, "write", "acl", "unnamed", "Save a snapshot of the state"),
    route("PUT", "/v1/snapshot", snapshot_put, "write", "acl", "unnamed", "Restore a snapshot"),
)
