"""PUT /v1/txn: KV operations applied atomically (Consul's transaction endpoint, KV part).

The body is decoded the way Consul's Go code decodes it (field names match case-insensitively, ``Value`` is
standard base64, ``Flags``/``Index`` are unsigned 64-bit), with its status codes and texts: 413 for a body,
an operation count or a value over the limits, 400 ("Failed to parse body: ...") for anything that does not
decode. Node, Service and Check operations are refused with 400: Proconsul's transactions hold KV operations
only, and an operation it cannot run is never skipped silently.

A transaction with a write verb goes through the log as one ``Txn`` command (``registry.txn``); one of reads
only is answered from the local store in the request's consistency mode, without blocking, with
``X-Consul-KnownLeader`` and ``X-Consul-LastContact`` and the query metadata Consul's read reply carries.
Either answers 200 with ``Results`` or, when an operation failed, 409 with ``Errors`` (``OpIndex``, ``What``).
The transaction's results are data (``registry.txn.entry_data``); ``render_results`` turns them into
Consul's JSON (``{"KV": <entry>}``, the value in base64).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import txn
from registry.acl.authorizer import Authorizer
from registry.acl.errors import PermissionDenied
from registry.api.decode import depth_error
from registry.api.enforce import mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.api.views import kv_json
from registry.commands import KVOp, Txn
from registry.gocompat import go_quote
from registry.structs import KVEntry

if TYPE_CHECKING:
    from registry.api.http import Api

TXN_MAX_REQ_LEN = 512 * 1024  # Consul's txn_max_req_len default (raft's suggested entry size)
_LIMIT_DOC = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"
_UNSUPPORTED = ("node", "service", "check")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUES = {c: i for i, c in enumerate(_B64)}


class _Num(str):
    """A JSON number that is not an integer, kept as written (Go's errors quote the literal)."""


class ParseError(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ParseError(f"invalid character {go_quote(name[0])[1:-1]!r} looking for beginning of value")


def _json_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float | _Num):
        return "number"
    return "string"


def go_b64decode(s: str) -> bytes:
    """Go's base64.StdEncoding.DecodeString: padded, CR/LF ignored; raises ParseError with Go's text."""
    out = bytearray()
    si, n = 0, len(s)
    while si < n:
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == n:
                if quantum:  # input ends inside a quantum: padding is required
                    raise ParseError(f"illegal base64 data at input byte {si - len(quantum)}")
                return bytes(out)
            ch = s[si]
            si += 1
            if ch in _B64_VALUES:
                quantum.append(_B64_VALUES[ch])
                continue
            if ch in "\r\n":
                continue
            if ch != "=" or len(quantum) < 2:
                raise ParseError(f"illegal base64 data at input byte {si - 1}")
            if len(quantum) == 2:  # "==" expected
                while si < n and s[si] in "\r\n":
                    si += 1
                if si == n:
                    raise ParseError(f"illegal base64 data at input byte {n}")
                if s[si] != "=":
                    raise ParseError(f"illegal base64 data at input byte {si - 1}")
                si += 1
            while si < n and s[si] in "\r\n":
                si += 1
            if si < n:
                raise ParseError(f"illegal base64 data at input byte {si}")
            bits = 0
            for i, v in enumerate(quantum):
                bits |= v << (18 - 6 * i)
            out += bits.to_bytes(3, "big")[: len(quantum) - 1]
            return bytes(out)
        bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += bits.to_bytes(3, "big")
    return bytes(out)


def _field_error(value: Any, field: str, gotype: str) -> ParseError:
    what = _json_kind(value)
    if what == "number" and gotype == "uint64":
        what = f"number {value}"
    return ParseError(f"json: cannot unmarshal {what} into Go struct field KVTxnOp.KV.{field} of type {gotype}")


def _decode_kv(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ParseError(f"json: cannot unmarshal {_json_kind(raw)} into Go struct field TxnOp.KV of type api.KVTxnOp")
    op: dict[str, Any] = {"Verb": "", "Key": "", "Value": None, "Flags": 0, "Index": 0, "Session": ""}
    names = {k.lower(): k for k in op}
    for k, v in raw.items():
        name = names.get(k.lower())
        if name is None or v is None:
            continue  # unknown fields are ignored and null leaves the zero value, as Go's decoder does
        if name in ("Verb", "Key", "Session"):
            if not isinstance(v, str) or isinstance(v, _Num):
                raise _field_error(v, name, "api.KVOp" if name == "Verb" else "string")
            op[name] = v
        elif name == "Value":
            if not isinstance(v, str) or isinstance(v, _Num):
                raise _field_error(v, name, "[]uint8")
            op[name] = go_b64decode(v)
        else:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**64:
                raise _field_error(v, name, "uint64")
            op[name] = v
    return op


def parse_ops(body: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The request body -> (KV operations, unsupported operations as (index, kind)); raises ParseError."""
    if not body.strip():
        raise ParseError("EOF")
    too_deep = depth_error(body)
    if too_deep is not None:
        raise ParseError(too_deep)
    try:
        doc = json.loads(body, parse_float=_Num, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(str(exc)) from None
    if doc is None:
        return [], []
    if not isinstance(doc, list):
        raise ParseError(f"json: cannot unmarshal {_json_kind(doc)} into Go value of type api.TxnOps")
    ops: list[dict[str, Any]] = []
    unsupported: list[tuple[int, str]] = []
    for i, item in enumerate(doc):
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise ParseError(f"json: cannot unmarshal {_json_kind(item)} into Go value of type api.TxnOp")
        kv = None
        for k, v in item.items():
            low = k.lower()
            if low == "kv" and v is not None:
                kv = _decode_kv(v)
            elif low in _UNSUPPORTED and v is not None:
                unsupported.append((i, low.capitalize()))
        if kv is None and not any(j == i for j, _ in unsupported):
            unsupported.append((i, ""))
        ops.append(kv or {})
    return ops, unsupported


async def put(api: Api, request: web.Request, _suffix: str) -> web.StreamResponse:
    cfg = api.config
    value_limit = cfg.kv_max_value_size
    limit = max(TXN_MAX_REQ_LEN, value_limit)  # Consul: the larger of txn_max_req_len and kv_max_value_size
    if request.content_length is not None:
        too_large = f"Request body({{size}} bytes) too large, max size: {limit} bytes. See {_LIMIT_DOC}."
    else:
        too_large = f"Request body too large, max size: {limit} bytes. See {_LIMIT_DOC}."
    body = await api.read_body(request, limit, too_large=too_large)
    try:
        ops, unsupported = parse_ops(body)
    except ParseError as exc:
        raise HTTPError(400, f"Failed to parse body: {exc}") from None
    if len(ops) > txn.MAX_OPS:
        raise HTTPError(413, f"Transaction contains too many operations ({len(ops)} > {txn.MAX_OPS})")
    bad = dict(unsupported)
    for i, op in enumerate(ops):
        if i in bad:
            kind = bad[i]
            if kind:
                raise HTTPError(400, f"Operation {i} is a {kind} operation: Proconsul's /v1/txn supports only KV "
                                     "operations (Node, Service and Check operations are not implemented)")  # fmt: skip
            raise HTTPError(400, f"Operation {i} has no KV operation: Proconsul's /v1/txn supports only KV operations")
        if op["Value"] is not None and len(op["Value"]) > value_limit:
            raise HTTPError(
                413, f"Value for key {go_quote(op['Key'])} is too large ({len(op['Value'])} > {value_limit} bytes)"
            )
    kv_ops = [KVOp(op["Verb"], op["Key"], op["Value"], op["Flags"], op["Index"], op["Session"]) for op in ops]
    authz = request_authz(request)
    if authz is not None:
        denied = acl_precheck(authz, kv_ops)
        if denied:
            return api.json(request, {"Results": None, "Errors": denied}, status=409)
    writes = sum(1 for op in kv_ops if txn.is_write(op.verb))
    if writes == 0:
        return await _read(api, request, kv_ops)
    errors = txn.precheck(kv_ops)
    if errors:
        return api.json(request, {"Results": None, "Errors": errors}, status=409)
    result = await api.propose(Txn(tuple(kv_ops)))
    results = result.get("Results")
    if authz is not None and results:
        results = _readable(request, authz, results)
    reply = {"Results": render_results(results), "Errors": result.get("Errors")}
    return api.json(request, reply, status=409 if reply["Errors"] else 200)


def acl_precheck(authz: Authorizer, ops: list[KVOp]) -> list[dict[str, Any]]:
    """Every operation checked on its own key before anything is applied (Consul's kvsPreApply per
    operation, CVE-2021-38698): a tree delete needs write on every key under its prefix, index and session
    checks need key:read, gets are filtered on the way out, everything else needs key:write. A denial is
    the operation's error, as Consul reports it (409 with ``OpIndex`` and ``What``)."""
    errors = []
    for i, op in enumerate(ops):
        verb = op.verb
        if verb in ("get", "get-tree"):
            continue
        if verb == "delete-tree":
            operation = "key_write_prefix"
        elif verb in ("check-index", "check-session", "get-or-empty"):
            operation = "key_read"
        else:
            operation = "key_write"
        try:
            authz.check(operation, op.key)
        except PermissionDenied as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return errors


def _readable(request: web.Request, authz: Authorizer, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results of keys the token may not read are left out (Consul's FilterTxnResults)."""
    kept = [r for r in results if authz.key_read(r["Key"])]
    if len(kept) != len(results):
        mark_filtered(request)
    return kept


def render_entry(data: dict[str, Any]) -> dict[str, Any]:
    """One result entry (``registry.txn.entry_data``) -> Consul's KV JSON."""
    return kv_json(KVEntry(data["Key"], data["Value"], data["Flags"], data["Session"], data["LockIndex"],
                           data["CreateIndex"], data["ModifyIndex"]))  # fmt: skip


def render_results(results: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A transaction's results as Consul's TxnResults JSON (None stays None: Consul's ``"Results": null``)."""
    if results is None:
        return None
    return [{"KV": render_entry(r)} for r in results]


async def _read(api: Api, request: web.Request, ops: list[KVOp]) -> web.StreamResponse:
    """Consul's Txn.Read: the consistency mode of the request, no blocking, no log entry."""
    _, _, mode = api.query_options(request)
    consensus = api.consensus
    await consensus.barrier_read(mode)
    errors = txn.precheck(ops)
    results: list[dict[str, Any]] | None = None
    if not errors:
        results, errors = txn.run(api.store, ops)
        authz = request_authz(request)
        if authz is not None and results:
            results = _readable(request, authz, results)
        results = render_results(results)
    known_leader = consensus.known_leader()
    last_contact_ms = consensus.last_contact_ms()
    # Consul's TxnReadResponse embeds QueryMeta, so its fields follow Results and Errors in the JSON.
    reply = {
        "Results": None if errors else results,
        "Errors": errors or None,
        "Index": 0,
        "LastContact": last_contact_ms * 1_000_000,
        "KnownLeader": known_leader,
        "ConsistencyLevel": "",
        "NotModified": False,
        "Backend": 0,
        "ResultsFilteredByACLs": False,
    }
    resp = api.json(request, reply, status=409 if errors else 200)
    resp.headers["X-Consul-KnownLeader"] = "true" if known_leader else "false"
    resp.headers["X-Consul-LastContact"] = str(last_contact_ms)
    return resp


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/txn", put, "write", "key", "each",
          "Apply KV operations as one transaction (each operation checked on its key; reads filtered)"),
)
