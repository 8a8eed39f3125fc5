"""/v1/acl/*, /v1/agent/token/* and /v1/internal/acl/authorize: Consul's ACL API.

Paths, JSON shapes, status codes and texts follow Consul's agent/acl_endpoint.go and
agent/consul/acl_endpoint.go:

* every /v1/acl endpoint answers 401 ``ACL support disabled`` while ``acl.enabled`` is off;
* a token, policy or role that does not exist answers 403 ``ACL not found`` (Consul's ``acl.ErrNotFound``);
  a missing auth method or binding rule answers 404, as Consul does;
* writes return the object as stored (``CreateIndex``/``ModifyIndex``, ``Hash``); deletes return ``true``;
* lists are sorted by their primary key (Consul's memdb ``id`` index order) and never carry secrets
  unless the caller may ``acl:write`` (Consul redacts them to ``<hidden>`` otherwise, as it does for a
  token read by AccessorID); expired tokens are neither read nor listed;
* no ACL answer goes into the HTTP hot cache: what a caller sees depends on its token;
* the refusals Consul words as RPC errors (a name taken, a link to nothing, a reserved ID) answer 400
  with Consul's text: they are the caller's mistakes. (Consul itself answers them with 500.)

Who may call what is declared in ``ROUTES`` (``acl:read`` for reads, ``acl:write`` for writes) and
enforced by the dispatch; the handlers here only resolve the caller's token where the answer depends on
it (``/token/self``, redaction, the authorize batch, refusing to delete the caller's own token).

On a client agent, ``/v1/acl/token/self`` and ``/v1/internal/acl/authorize`` are answered through this
agent's resolver (Consul's clients resolve tokens for themselves too); everything else is forwarded to a
server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from registry.acl.authorizer import OPERATIONS, Authorizer
from registry.acl.binding import BindingRule
from registry.acl.errors import ACLNotFound, ACLObjectError
from registry.acl.identities import TEMPLATES, template_rules
from registry.acl.objects import (
    AuthMethod,
    PolicyRow,
    RoleRow,
    TokenRow,
    is_uuid,
)
from registry.acl.rules import render_hcl
from registry.api.decode import depth_error
from registry.api.enforce import request_secret
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import (
    ACLAuthMethodDelete,
    ACLAuthMethodSet,
    ACLBindingRuleDelete,
    ACLBindingRuleSet,
    ACLBootstrap,
    ACLPolicyDelete,
    ACLPolicySet,
    ACLRoleDelete,
    ACLRoleSet,
    ACLTokenDelete,
    ACLTokenSet,
    CommandError,
)
from registry.gocompat import format_duration_ns, format_go_time, parse_duration_ns, parse_go_time
from registry.state.acl_table import BOOTSTRAP_DESCRIPTION
from registry.state.base import StoreError

if TYPE_CHECKING:
    from registry.api.http import Api
    from registry.state.store import StateStore
    from registry.state.topics import WatchSet

REDACTED = "<hidden>"
BOOTSTRAP_RESET_FILE = "acl-bootstrap-reset"
MAX_AUTHORIZATIONS = 64  # Consul's maxAuthorizationsPerRequest


class AgentTokenSetter(Protocol):
    """The agent's token store as ``PUT /v1/agent/token/<kind>`` needs it."""

    def set(self, kind: str, secret: str) -> bool: ...


# ------------------------------------------------------------------------------------------- helpers


async def caller(api: Api, request: web.Request) -> Authorizer:
    """The caller's authorizer; 403 ``ACL not found`` for an unknown or expired token."""
    try:
        return await api.acl.resolve(request_secret(api, request))
    except ACLNotFound as exc:
        raise HTTPError(403, str(exc)) from None


def _require_enabled(api: Api) -> None:
    if not api.config.acl.get("enabled"):
        raise HTTPError(401, "ACL support disabled")


# The field names of the ACL objects; Go's JSON decoding matches them case-insensitively ("name" is Name).
_FIELDS = {k.lower(): k for k in (
    "ID", "Name", "Description", "Rules", "Datacenters", "AccessorID", "SecretID", "Policies", "Roles",
    "ServiceIdentities", "NodeIdentities", "TemplatedPolicies", "ServiceName", "NodeName", "Datacenter",
    "TemplateName", "TemplateVariables", "Local", "AuthMethod", "ExpirationTime", "ExpirationTTL", "Type",
    "DisplayName", "MaxTokenTTL", "TokenLocality", "Config", "Selector", "BindType", "BindName", "BindVars",
    "Token", "Resource", "Segment", "Access",
)}  # fmt: skip


def _canonical(value: Any) -> Any:
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = _FIELDS.get(k.lower(), k) if isinstance(k, str) else k
        out[key] = v if key == "Config" else _canonical(v)  # an auth method's Config is its own business
    return out


async def _body(api: Api, request: web.Request, what: str) -> dict[str, Any]:
    raw = await api.read_body(request)
    if not raw.strip():
        return {}
    too_deep = depth_error(raw)
    if too_deep is not None:
        raise HTTPError(400, f"{what} decoding failed: {too_deep}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, f"{what} decoding failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPError(400, f"{what} decoding failed: the body must be a JSON object")
    return _canonical(data)  # type: ignore[no-any-return]


def _obj(decode: Callable[[Any], Any], data: Any) -> Any:
    try:
        return decode(data)
    except ACLObjectError as exc:
        raise HTTPError(400, str(exc)) from None


def _new_id() -> str:
    return str(uuid.uuid4())


def _now_ns(api: Api) -> int:
    """Now, by the clock the agent's token resolver judges expiry with: a token the resolver refuses as
    expired is also expired to the reads here (by AccessorID, the list, token/self); the wall clock for a
    resolver without one."""
    clock = api.acl.clock_ns
    return clock() if clock is not None else time.time_ns()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def go_time(ns: int) -> str:
    return format_go_time(_EPOCH + timedelta(microseconds=ns // 1000))


def _time_ns(value: Any, field: str, what: str) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"{what} decoding failed: {field} must be an RFC 3339 time")
    try:
        t = parse_go_time(value)
    except ValueError as exc:
        raise HTTPError(400, f"{what} decoding failed: {exc}") from None
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _duration_ns(value: Any, field: str, what: str) -> int:
    """A Go duration as Consul's JSON decoders take it: a string ("10m") or nanoseconds."""
    if value is None or value == "":
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return parse_duration_ns(value)
        except ValueError as exc:
            raise HTTPError(400, f"{what} decoding failed: {exc}") from None
    raise HTTPError(400, f"{what} decoding failed: {field} must be a duration")


# -------------------------------------------------------------------------------------- rendering


def _policy_links(store: StateStore, links: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """Links with the policies' current names; links to deleted policies are left out (as Consul)."""
    return [{"ID": pid, "Name": p.name} for pid, _ in links if (p := store.acl_policies.get(pid)) is not None]


def _role_links(store: StateStore, links: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"ID": rid, "Name": r.name} for rid, _ in links if (r := store.acl_roles.get(rid)) is not None]


def _identities(row: Any, out: dict[str, Any]) -> None:
    if row.service_identities:
        out["ServiceIdentities"] = [
            {"ServiceName": s.service_name, **({"Datacenters": list(s.datacenters)} if s.datacenters else {})}
            for s in row.service_identities
        ]
    if row.node_identities:
        out["NodeIdentities"] = [{"NodeName": n.node_name, "Datacenter": n.datacenter} for n in row.node_identities]
    if row.templated_policies:
        out["TemplatedPolicies"] = [
            {"TemplateName": t.template_name, **({"TemplateVariables": {"Name": t.name}} if t.name else {}),
             **({"Datacenters": list(t.datacenters)} if t.datacenters else {})}
            for t in row.templated_policies
        ]  # fmt: skip


def token_json(store: StateStore, t: TokenRow, *, secret: bool = True) -> dict[str, Any]:
    """Consul's ACLToken JSON (omitempty fields left out when empty)."""
    out: dict[str, Any] = {"AccessorID": t.accessor_id, "SecretID": t.secret_id if secret else REDACTED,
                           "Description": t.description}  # fmt: skip
    policies, roles = _policy_links(store, t.policies), _role_links(store, t.roles)
    if policies:
        out["Policies"] = policies
    if roles:
        out["Roles"] = roles
    _identities(t, out)
    out["Local"] = t.local
    if t.auth_method:
        out["AuthMethod"] = t.auth_method
    if t.expiration_time_ns is not None:
        out["ExpirationTime"] = go_time(t.expiration_time_ns)
    out["CreateTime"] = go_time(t.create_time_ns)
    out["Hash"] = t.hash
    out["CreateIndex"] = t.create_index
    out["ModifyIndex"] = t.modify_index
    return out


def policy_json(p: PolicyRow, *, stub: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": p.id, "Name": p.name, "Description": p.description}
    if not stub:
        out["Rules"] = p.rules
    out["Datacenters"] = list(p.datacenters) or None
    out.update({"Hash": p.hash, "CreateIndex": p.create_index, "ModifyIndex": p.modify_index})
    return out


def role_json(store: StateStore, r: RoleRow) -> dict[str, Any]:
    out: dict[str, Any] = {"ID": r.id, "Name": r.name, "Description": r.description}
    policies = _policy_links(store, r.policies)
    if policies:
        out["Policies"] = policies
    _identities(r, out)
    out.update({"Hash": r.hash, "CreateIndex": r.create_index, "ModifyIndex": r.modify_index})
    return out


def auth_method_json(m: AuthMethod, *, stub: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"Name": m.name, "Type": m.type}
    if m.display_name:
        out["DisplayName"] = m.display_name
    if m.description:
        out["Description"] = m.description
    if m.max_token_ttl_ns:
        out["MaxTokenTTL"] = format_duration_ns(m.max_token_ttl_ns)
    if m.token_locality:
        out["TokenLocality"] = m.token_locality
    if not stub:
        out["Config"] = dict(m.config.wire)
    out.update({"CreateIndex": m.create_index, "ModifyIndex": m.modify_index})
    return out


def binding_rule_json(b: BindingRule) -> dict[str, Any]:
    return b.to_wire()


def _may_see_secrets(authz: Authorizer) -> bool:
    return authz.acl_write()


# ----------------------------------------------------------------------------------------- bootstrap


def _reset_index_file(api: Api) -> Path | None:
    data_dir = api.config.data_dir
    return Path(data_dir) / BOOTSTRAP_RESET_FILE if data_dir else None


def _read_reset_index(path: Path | None) -> int:
    """The index an operator wrote to reset bootstrapping (Consul reads it with ``%d``); 0 if none."""
    if path is None:
        return 0
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


async def acl_bootstrap(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    allowed, reset_index = api.store.acl_can_bootstrap()
    specified = 0
    if not allowed:
        path = _reset_index_file(api)
        specified = _read_reset_index(path)
        if specified == 0:
            raise HTTPError(403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {reset_index})")
        if specified != reset_index:
            raise HTTPError(400, f"Invalid bootstrap reset index (specified {specified}, reset index: {reset_index})")
        # Used once, whatever happens next: a snapshot restore must not re-open bootstrapping.
        if path is not None:
            path.unlink(missing_ok=True)
    token = TokenRow(_new_id(), _new_id(), BOOTSTRAP_DESCRIPTION, create_time_ns=_now_ns(api))
    try:
        result = await api.propose(ACLBootstrap(token, specified))
    except CommandError as exc:
        if exc.status == 403:
            raise HTTPError(403, f"Permission denied: {exc.message}") from None
        raise
    row = TokenRow.from_wire(result)
    body = token_json(api.store, row)
    return api.json(request, {"ID": row.secret_id, **body})


# -------------------------------------------------------------------------------------------- tokens


def _token_input(data: Mapping[str, Any], what: str = "Token") -> dict[str, Any]:
    """An HTTP token body in the store's wire form (times and durations as nanoseconds)."""
    d = dict(data)
    d["ExpirationTime"] = _time_ns(data.get("ExpirationTime"), "ExpirationTime", what)
    d["ExpirationTTL"] = _duration_ns(data.get("ExpirationTTL"), "ExpirationTTL", what)
    for k in ("CreateTime", "Hash", "CreateIndex", "ModifyIndex"):
        d.pop(k, None)
    return d


async def _not_found_as_403(api: Api, request: web.Request, run: Callable[[StateStore, WatchSet], ReadResult]
                            ) -> web.StreamResponse:  # fmt: skip
    resp = await api.read(request, run, cacheable=False)
    if resp.status == 404:
        return api.text(403, "ACL not found")
    return resp


async def token_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    data = _token_input(await _body(api, request, "Token"))
    data["AccessorID"] = data.get("AccessorID") or _new_id()
    data["SecretID"] = data.get("SecretID") or _new_id()
    data["CreateTime"] = _now_ns(api)
    row = _obj(TokenRow.from_wire, data)
    result = await api.propose(ACLTokenSet(row, create=True))
    return api.json(request, token_json(api.store, TokenRow.from_wire(result)))


async def token_self(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    secret = request_secret(api, request)
    if api.is_client:
        # This agent's resolver says first whether the token is alive (a revoked token is refused here
        # the moment this agent learns of the change); a server then answers with the token itself.
        try:
            await api.acl.resolve(secret)
        except ACLNotFound:
            return api.text(403, "ACL not found")
        return await api.forward(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        row = store.acl_token_by_secret(secret or "anonymous", ws)
        if row is None or row.expired(_now_ns(api)):
            return ReadResult(lambda: None, 404)
        return ReadResult(lambda: token_json(store, row))

    return await _not_found_as_403(api, request, run)


async def token_item(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    """GET/PUT/DELETE /v1/acl/token/:AccessorID and PUT /v1/acl/token/:AccessorID/clone."""
    _require_enabled(api)
    method = request.method
    if method == "PUT" and suffix.endswith("/clone"):
        return await _token_clone(api, request, suffix[: -len("/clone")])
    if not suffix:
        raise HTTPError(400, "Missing token ID")
    if method in ("GET", "HEAD"):
        authz = await caller(api, request)
        show = _may_see_secrets(authz)

        def run(store: StateStore, ws: WatchSet) -> ReadResult:
            row = store.acl_token_get(suffix, ws)
            if row is None or row.expired(_now_ns(api)):
                return ReadResult(lambda: None, 404)
            return ReadResult(lambda: token_json(store, row, secret=show))

        return await _not_found_as_403(api, request, run)
    if method == "DELETE":
        if not is_uuid(suffix):
            raise HTTPError(400, "Accessor ID is missing or an invalid UUID")
        store = api.store
        row = store.acl_token_get(suffix)
        if row is not None and row.secret_id == request_secret(api, request):
            raise HTTPError(400, "Deletion of the request's authorization token is not permitted")
        if row is not None or suffix == "00000000-0000-0000-0000-000000000002":
            await api.propose(ACLTokenDelete((suffix,)))
        return api.json(request, True)
    # PUT: update
    data = _token_input(await _body(api, request, "Token"))
    if data.get("AccessorID") and data["AccessorID"] != suffix:
        raise HTTPError(400, "Token Accessor ID in URL and payload do not match")
    data["AccessorID"] = suffix
    row = _obj(TokenRow.from_wire, data)
    result = await api.propose(ACLTokenSet(row, create=False))
    return api.json(request, token_json(api.store, TokenRow.from_wire(result)))


async def _token_clone(api: Api, request: web.Request, accessor: str) -> web.StreamResponse:
    data = await _body(api, request, "Token")
    description = data.get("Description") or ""
    if not isinstance(description, str):
        raise HTTPError(400, "Token decoding failed: Description must be a string")
    src = api.store.acl_token_get(accessor)
    if src is None or src.expired(_now_ns(api)):
        return api.text(403, "ACL not found")
    if src.auth_method:
        raise HTTPError(400, "Cannot clone a token created from an auth method")
    row = replace(src, accessor_id=_new_id(), secret_id=_new_id(), description=description or src.description,
                  create_time_ns=_now_ns(api), hash="", create_index=0, modify_index=0)  # fmt: skip
    result = await api.propose(ACLTokenSet(row, create=True))
    return api.json(request, token_json(api.store, TokenRow.from_wire(result)))


async def token_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    q = request.query
    show = _may_see_secrets(await caller(api, request))
    filters = {"policy": q.get("policy", ""), "role": q.get("role", ""), "auth_method": q.get("authmethod", ""),
               "service_name": q.get("servicename", "")}  # fmt: skip

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        now = _now_ns(api)
        rows = [t for t in store.acl_token_list(ws, **filters) if not t.expired(now)]
        return ReadResult(lambda: [token_json(store, t, secret=show) for t in rows])

    return await api.read(request, run, cacheable=False)


# ------------------------------------------------------------------------------------------ policies


async def policy_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    data = await _body(api, request, "Policy")
    if data.get("ID"):
        raise HTTPError(400, "Cannot specify the ID when creating a new policy")
    data["ID"] = _new_id()
    row = _obj(PolicyRow.from_wire, data)
    result = await api.propose(ACLPolicySet(row, create=True))
    return api.json(request, policy_json(PolicyRow.from_wire(result)))


async def policy_item(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    _require_enabled(api)
    method = request.method
    if not suffix and method != "PUT":
        raise HTTPError(400, "Missing policy ID")
    if method in ("GET", "HEAD"):
        return await _policy_read(api, request, lambda store, ws: store.acl_policy_get(suffix, ws))
    if method == "DELETE":
        await api.propose(ACLPolicyDelete(suffix))
        return api.json(request, True)
    data = await _body(api, request, "Policy")
    if data.get("ID") and data["ID"] != suffix:
        raise HTTPError(400, "Policy ID in URL and payload do not match")
    data["ID"] = suffix
    row = _obj(PolicyRow.from_wire, data)
    result = await api.propose(ACLPolicySet(row, create=False))
    return api.json(request, policy_json(PolicyRow.from_wire(result)))


async def _policy_read(api: Api, request: web.Request, find: Callable[[StateStore, WatchSet], PolicyRow | None]
                       ) -> web.StreamResponse:  # fmt: skip
    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        row = find(store, ws)
        if row is None:
            return ReadResult(lambda: None, 404)
        return ReadResult(lambda: policy_json(row))

    return await _not_found_as_403(api, request, run)


async def policy_by_name(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    _require_enabled(api)
    if not name:
        raise HTTPError(400, "Missing policy Name")
    return await _policy_read(api, request, lambda store, ws: store.acl_policy_by_name(name, ws))


async def policy_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.acl_policy_list(ws)
        return ReadResult(lambda: [policy_json(p, stub=True) for p in rows])

    return await api.read(request, run, cacheable=False)


# --------------------------------------------------------------------------------------------- roles


async def role_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    data = await _body(api, request, "Role")
    if data.get("ID"):
        raise HTTPError(400, "Cannot specify the ID when creating a new role")
    data["ID"] = _new_id()
    row = _obj(RoleRow.from_wire, data)
    result = await api.propose(ACLRoleSet(row, create=True))
    return api.json(request, role_json(api.store, RoleRow.from_wire(result)))


async def role_item(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    _require_enabled(api)
    method = request.method
    if not suffix and method != "PUT":
        raise HTTPError(400, "Missing role ID")
    if method in ("GET", "HEAD"):
        return await _role_read(api, request, lambda store, ws: store.acl_role_get(suffix, ws))
    if method == "DELETE":
        await api.propose(ACLRoleDelete(suffix))
        return api.json(request, True)
    data = await _body(api, request, "Role")
    if data.get("ID") and data["ID"] != suffix:
        raise HTTPError(400, "Role ID in URL and payload do not match")
    data["ID"] = suffix
    row = _obj(RoleRow.from_wire, data)
    result = await api.propose(ACLRoleSet(row, create=False))
    return api.json(request, role_json(api.store, RoleRow.from_wire(result)))


async def _role_read(api: Api, request: web.Request, find: Callable[[StateStore, WatchSet], RoleRow | None]
                     ) -> web.StreamResponse:  # fmt: skip
    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        row = find(store, ws)
        if row is None:
            return ReadResult(lambda: None, 404)
        return ReadResult(lambda: role_json(store, row))

    return await _not_found_as_403(api, request, run)


async def role_by_name(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    _require_enabled(api)
    if not name:
        raise HTTPError(400, "Missing role Name")
    return await _role_read(api, request, lambda store, ws: store.acl_role_by_name(name, ws))


async def role_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    policy = request.query.get("policy", "")

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.acl_role_list(ws, policy)
        return ReadResult(lambda: [role_json(store, r) for r in rows])

    return await api.read(request, run, cacheable=False)


# -------------------------------------------------------------------------------------- auth methods


def _rows_first(check: Callable[[], Any]) -> Any:
    """A check that needs the stored rows before the object can be built (Consul's endpoints read the
    state first too); the tables check it again when the write applies."""
    try:
        return check()
    except StoreError as exc:
        raise HTTPError(exc.status, str(exc)) from None


async def _auth_method_write(api: Api, request: web.Request, data: dict[str, Any]) -> web.StreamResponse:
    """Consul's AuthMethodSet: an update may leave Type out (the stored one stays) but not change it; then
    the method is checked, its ``jwt`` Config parsed, once, here."""
    name, mtype = data.get("Name"), data.get("Type")
    if isinstance(name, str) and isinstance(mtype, str | None):
        data["Type"] = _rows_first(lambda: api.store.acl_auth_method_type(name, mtype or ""))
    row = _obj(AuthMethod.from_wire, data)
    result = await api.propose(ACLAuthMethodSet(row))
    return api.json(request, auth_method_json(AuthMethod.from_wire(result)))


async def auth_method_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    return await _auth_method_write(api, request, await _body(api, request, "AuthMethod"))


async def auth_method_item(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    _require_enabled(api)
    method = request.method
    if not name and method != "PUT":
        raise HTTPError(400, "Missing auth method name")
    if method in ("GET", "HEAD"):
        def run(store: StateStore, ws: WatchSet) -> ReadResult:
            row = store.acl_auth_method_get(name, ws)
            if row is None:
                return ReadResult(lambda: None, 404)
            return ReadResult(lambda: auth_method_json(row))

        return await api.read(request, run, cacheable=False)
    if method == "DELETE":
        await api.propose(ACLAuthMethodDelete(name))
        return api.json(request, True)
    data = await _body(api, request, "AuthMethod")
    if data.get("Name") and data["Name"] != name:
        raise HTTPError(400, "AuthMethod Name in URL and payload do not match")
    data["Name"] = name
    return await _auth_method_write(api, request, data)


async def auth_method_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.acl_auth_method_list(ws)
        return ReadResult(lambda: [auth_method_json(m, stub=True) for m in rows])

    return await api.read(request, run, cacheable=False)


# ------------------------------------------------------------------------------------- binding rules


async def _binding_rule_write(api: Api, request: web.Request, data: dict[str, Any], *,
                              create: bool) -> web.StreamResponse:  # fmt: skip
    """Consul's BindingRuleSet: the rule's auth method is found first (an update keeps its rule's), then
    the Selector, BindType and BindName are checked against that method's blank identity, here, once."""
    auth_method = data.get("AuthMethod") or ""
    if not isinstance(auth_method, str):
        raise HTTPError(400, "Invalid Binding Rule: fields must be strings")
    method = _rows_first(lambda: api.store.acl_binding_rule_method(data["ID"], auth_method, create=create))
    data["AuthMethod"] = method.name
    blank = method.blank_identity()
    row = _obj(lambda d: BindingRule.from_wire(d, blank), data)
    result = await api.propose(ACLBindingRuleSet(row, create=create))
    return api.json(request, binding_rule_json(BindingRule.from_wire(result, None)))


async def binding_rule_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    data = await _body(api, request, "BindingRule")
    if data.get("ID"):
        raise HTTPError(400, "Cannot specify the ID when creating a new binding rule")
    data["ID"] = _new_id()
    return await _binding_rule_write(api, request, data, create=True)


async def binding_rule_item(api: Api, request: web.Request, rid: str) -> web.StreamResponse:
    _require_enabled(api)
    method = request.method
    if not rid and method != "PUT":
        raise HTTPError(400, "Missing binding rule ID")
    if method in ("GET", "HEAD"):
        def run(store: StateStore, ws: WatchSet) -> ReadResult:
            row = store.acl_binding_rule_get(rid, ws)
            if row is None:
                return ReadResult(lambda: None, 404)
            return ReadResult(lambda: binding_rule_json(row))

        return await api.read(request, run, cacheable=False)
    if method == "DELETE":
        await api.propose(ACLBindingRuleDelete(rid))
        return api.json(request, True)
    data = await _body(api, request, "BindingRule")
    if data.get("ID") and data["ID"] != rid:
        raise HTTPError(400, "BindingRule ID in URL and payload do not match")
    if not is_uuid(rid):
        raise HTTPError(400, "Binding Rule ID invalid UUID")
    data["ID"] = rid
    return await _binding_rule_write(api, request, data, create=False)


async def binding_rule_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    auth_method = request.query.get("authmethod", "")

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.acl_binding_rule_list(ws, auth_method)
        return ReadResult(lambda: [binding_rule_json(b) for b in rows])

    return await api.read(request, run, cacheable=False)


# --------------------------------------------------------------------------------- templated policies

_NAME_SCHEMA = json.dumps({
    "type": "object",
    "properties": {"name": {"type": "string", "$ref": "#/definitions/min-length-one"}},
    "required": ["name"],
    "definitions": {"min-length-one": {"type": "string", "minLength": 1}},
}, indent=4)  # fmt: skip


def _template_json(name: str) -> dict[str, Any]:
    t = TEMPLATES[name]
    return {"TemplateName": t.name, "Schema": _NAME_SCHEMA if t.needs_name else "",
            "Template": render_hcl(template_rules(t.name, "{{.Name}}" if t.needs_name else "")),
            "Description": t.description}  # fmt: skip


async def templated_policies(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _require_enabled(api)
    return api.json(request, {name: _template_json(name) for name in sorted(TEMPLATES)})


async def templated_policy(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    _require_enabled(api)
    if name not in TEMPLATES:
        raise HTTPError(400, f"Invalid templated policy Name: {name}")
    return api.json(request, _template_json(name))


# Go's zero time.Time, as Consul's JSON writes an ACLReplicationStatus time that never happened.
_ZERO_TIME = "0001-01-01T00:00:00Z"


async def replication_status(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's ``GET /v1/acl/replication``. Replication copies a primary datacenter's ACLs into a secondary;
    a Proconsul cluster is its own primary and has no secondaries, so replication is never enabled and the
    answer is the one a Consul primary gives. No token needed: monitoring checks poll it (Consul asks for
    none either, as the status leaks nothing)."""
    _require_enabled(api)
    return api.json(request, {
        "Enabled": False, "Running": False, "SourceDatacenter": "", "ReplicationType": "", "ReplicatedIndex": 0,
        "ReplicatedRoleIndex": 0, "ReplicatedTokenIndex": 0, "LastSuccess": _ZERO_TIME, "LastError": _ZERO_TIME,
        "LastErrorMessage": "",
    })  # fmt: skip


# ----------------------------------------------------------------------------------------- authorize

# (resource, access) -> the authorizer's operation, for the operations asked by their plain name.
_AUTHORIZE_OPS = {(res, lvl): op for op, (res, lvl, _named) in OPERATIONS.items() if op == f"{res}_{lvl}"}


async def internal_authorize(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's ``/v1/internal/acl/authorize`` (used by the UI): each {Resource, Segment, Access} answered
    with ``Allow`` for the caller's token, by this agent's resolver."""
    _require_enabled(api)
    raw = await api.read_body(request)
    too_deep = depth_error(raw)
    if too_deep is not None:
        raise HTTPError(400, f"Failed to decode request body: {too_deep}")
    try:
        batch = json.loads(raw) if raw.strip() else []
    except (ValueError, RecursionError) as exc:
        raise HTTPError(400, f"Failed to decode request body: {exc}") from None
    if not isinstance(batch, list):
        raise HTTPError(400, "Failed to decode request body: the body must be a list")
    if len(batch) > MAX_AUTHORIZATIONS:
        raise HTTPError(400, f"Refusing to process more than {MAX_AUTHORIZATIONS} authorizations at once")
    authz = await caller(api, request)
    out = []
    for item in batch:
        if not isinstance(item, dict):
            raise HTTPError(400, "Failed to decode request body: each authorization must be an object")
        resource, segment, access = item.get("Resource"), item.get("Segment", "") or "", item.get("Access")
        if not all(isinstance(v, str) for v in (resource, segment, access)):
            raise HTTPError(400, "Resource, Segment and Access must be strings")
        op = _AUTHORIZE_OPS.get((resource, access))
        if op is None:
            if not any(r == resource for r, _lvl in _AUTHORIZE_OPS):
                raise HTTPError(400, f'Invalid ACL resource requested: "{resource}"')
            raise HTTPError(400, f"Invalid access level for {resource} resource: {access}")
        allowed = authz.allowed(op, segment if OPERATIONS[op][2] else None)
        out.append({"Resource": resource, "Segment": segment, "Access": access, "Allow": allowed})
    return api.json(request, out)


# -------------------------------------------------------------------------------------- agent tokens


async def agent_token(api: Api, request: web.Request, kind: str) -> web.StreamResponse:
    """PUT /v1/agent/token/<kind> (Consul's AgentToken): set one of this agent's tokens."""
    _require_enabled(api)
    data = await _body(api, request, "Request")
    secret = data.get("Token", "")
    if not isinstance(secret, str):
        raise HTTPError(400, "Request decode failed: Token must be a string")
    if api.acl_tokens is None or not api.acl_tokens.set(kind, secret):
        raise HTTPError(404, f'Token "{kind}" is unknown')
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/acl/bootstrap", acl_bootstrap, "write", "none", "none",
          "Create the first management token, once (403 after that, with the reset index)"),
    route("PUT", "/v1/acl/token", token_create, "write", "acl", "unnamed", "Create a token"),
    route("GET", "/v1/acl/token/self", token_self, "read", "none", "none",
          "The token the request carries (needs no rule: knowing the secret is enough)"),
    route("GET", "/v1/acl/token/", token_item, "read", "acl", "unnamed", "Read a token by AccessorID"),
    route("PUT,DELETE", "/v1/acl/token/", token_item, "write", "acl", "unnamed",
          "Update or delete a token by AccessorID; PUT <AccessorID>/clone clones it"),
    route("GET", "/v1/acl/tokens", token_list, "read", "acl", "unnamed",
          "List tokens (?policy, ?role, ?authmethod, ?servicename)"),
    route("PUT", "/v1/acl/policy", policy_create, "write", "acl", "unnamed", "Create a policy"),
    route("GET", "/v1/acl/policy/name/", policy_by_name, "read", "acl", "unnamed", "Read a policy by name"),
    route("GET", "/v1/acl/policy/", policy_item, "read", "acl", "unnamed", "Read a policy by ID"),
    route("PUT,DELETE", "/v1/acl/policy/", policy_item, "write", "acl", "unnamed", "Update or delete a policy"),
    route("GET", "/v1/acl/policies", policy_list, "read", "acl", "unnamed", "List policies"),
    route("PUT", "/v1/acl/role", role_create, "write", "acl", "unnamed", "Create a role"),
    route("GET", "/v1/acl/role/name/", role_by_name, "read", "acl", "unnamed", "Read a role by name"),
    route("GET", "/v1/acl/role/", role_item, "read", "acl", "unnamed", "Read a role by ID"),
    route("PUT,DELETE", "/v1/acl/role/", role_item, "write", "acl", "unnamed", "Update or delete a role"),
    route("GET", "/v1/acl/roles", role_list, "read", "acl", "unnamed", "List roles (?policy)"),
    route("PUT", "/v1/acl/auth-method", auth_method_create, "write", "acl", "unnamed", "Create an auth method"),
    route("GET", "/v1/acl/auth-method/", auth_method_item, "read", "acl", "unnamed", "Read an auth method"),
    route("PUT,DELETE", "/v1/acl/auth-method/", auth_method_item, "write", "acl", "unnamed",
          "Update or delete an auth method (deleting it deletes its binding rules and tokens)"),
    route("GET", "/v1/acl/auth-methods", auth_method_list, "read", "acl", "unnamed", "List auth methods"),
    route("PUT", "/v1/acl/binding-rule", binding_rule_create, "write", "acl", "unnamed", "Create a binding rule"),
    route("GET", "/v1/acl/binding-rule/", binding_rule_item, "read", "acl", "unnamed", "Read a binding rule"),
    route("PUT,DELETE", "/v1/acl/binding-rule/", binding_rule_item, "write", "acl", "unnamed",
          "Update or delete a binding rule"),
    route("GET", "/v1/acl/binding-rules", binding_rule_list, "read", "acl", "unnamed",
          "List binding rules (?authmethod)"),
    route("GET", "/v1/acl/templated-policies", templated_policies, "read", "acl", "unnamed",
          "The built-in policy templates"),
    route("GET", "/v1/acl/templated-policy/name/", templated_policy, "read", "acl", "unnamed",
          "One built-in policy template"),
    route("GET", "/v1/acl/replication", replication_status, "read", "none", "none",
          "ACL replication status (never enabled: a Proconsul cluster is its own primary)"),
    route("POST", "/v1/internal/acl/authorize", internal_authorize, "read", "none", "none",
          "Answer a batch of {Resource, Segment, Access} for the caller's token (the UI's check)"),
    route("PUT", "/v1/agent/token/", agent_token, "write", "agent", "local-node",
          "Set one of this agent's ACL tokens (default, agent, agent_recovery, replication, "
          "config_file_service_registration)"),
)
