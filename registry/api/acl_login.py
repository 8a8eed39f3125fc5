"""/v1/acl/login and /v1/acl/logout: how a workload trades a JWT for an ACL token, and gives it back.

Consul's ``ACLLogin``/``ACLLogout`` handlers and ``ACL.Login``/``ACL.Logout`` RPCs (agent/acl_endpoint.go,
agent/consul/acl_endpoint.go):

* ``POST /v1/acl/login`` with ``{"AuthMethod", "BearerToken", "Meta"}`` needs no ACL token (the bearer
  token is the credential); the auth method is looked up (``ACL not found: auth method "x" not found``),
  the JWT verified, the method's binding rules applied, and a token created: ``200`` with the token's JSON.
  A refused JWT answers 403 with the reason (Consul passes the validator's error through); a login that
  binds to nothing answers 403 ``Permission denied``.
* ``POST /v1/acl/logout`` deletes the token presented with the request (``X-Consul-Token``, ``Authorization:
  Bearer`` or ``?token=``), only if a login created it: ``ACL not found`` for an unknown or missing token,
  ``Permission denied`` for any other token; ``true`` once deleted.

The ACL tables are reached through ``LoginBackend``. ``StoreBackend`` is the one over this agent's state
store and its one proposer, the two things every /v1/acl handler uses; with ACLs on, the first login or
logout builds the ``LoginService`` over it and keeps it as ``Api.acl_login`` (a test may set another one
first). With ACLs off both answer Consul's 401 ``ACL support disabled``; a client agent never gets here:
it forwards both to a server, as it forwards every /v1/acl call but ``token/self``. Verification is the
pure ``registry.acl.jwt``; JWKS keys come through ``registry.api.jwks``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from registry.acl.binding import BindingRule, BindingRuleError
from registry.acl.errors import ACLNotFound, PermissionDenied
from registry.acl.jwt import LoginError
from registry.acl.login import LoginToken, plan_login
from registry.acl.objects import AuthMethod, TokenRow
from registry.api.acl import token_json
from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import request_secret
from registry.api.errors import HTTPError
from registry.api.jwks import JWKSCache, JWKSError
from registry.api.routing import Route, route
from registry.commands import ACLTokenDelete, ACLTokenSet, Command

if TYPE_CHECKING:
    from registry.api.http import Api
    from registry.state.store import StateStore

__all__ = ["ROUTES", "LoginBackend", "LoginService", "StoreBackend"]

ACL_DISABLED = "ACL support disabled"
MAX_LOGIN_BODY = 256 * 1024


class LoginBackend(Protocol):
    """What login and logout need of the ACL state (``StoreBackend`` over the tables; tests may use dicts)."""

    def auth_method(self, name: str) -> AuthMethod | None:
        """The auth method ``name`` as stored (checked, its Config parsed, when written); None if absent."""

    def binding_rules(self, method: str) -> Sequence[BindingRule]:
        """The binding rules of auth method ``method`` as stored (checked and compiled when written)."""

    def role_by_name(self, name: str) -> tuple[str, str] | None:
        """``(ID, Name)`` of the role called ``name``; None if there is none."""

    def policy_by_name(self, name: str) -> tuple[str, str] | None:
        """``(ID, Name)`` of the policy called ``name``; None if there is none."""

    async def create_token(self, token: LoginToken) -> Mapping[str, Any]:
        """Create the token (through the log, as any token write) and answer its ``ACLToken`` JSON."""

    async def delete_login_token(self, secret: str) -> None:
        """Delete the token with this secret. Raises ACLNotFound when there is none, PermissionDenied when
        it was not created by a login (its AuthMethod is empty)."""


@dataclass
class StoreBackend:
    """``LoginBackend`` over this server's ACL tables and the one proposer (Consul's ``TokenWriter`` as
    ``ACL.Login``/``ACL.Logout`` use it): reads from the replica, writes through the log."""

    store: Callable[[], StateStore]
    propose: Callable[[Command], Awaitable[Any]]

    def auth_method(self, name: str) -> AuthMethod | None:
        return self.store().acl_auth_method_get(name)

    def binding_rules(self, method: str) -> Sequence[BindingRule]:
        return self.store().acl_binding_rule_list(None, method)

    def role_by_name(self, name: str) -> tuple[str, str] | None:
        row = self.store().acl_role_by_name(name)
        return (row.id, row.name) if row is not None else None

    def policy_by_name(self, name: str) -> tuple[str, str] | None:
        row = self.store().acl_policy_by_name(name)
        return (row.id, row.name) if row is not None else None

    async def create_token(self, token: LoginToken) -> Mapping[str, Any]:
        """``ACLTokenSet(create, from_login)``: the tables drop links to roles gone since the plan and
        refuse a token left with nothing (403), as Consul's ``TokenWriter.Create`` with ``fromLogin``."""
        row = TokenRow(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()), description=token.description,
                       policies=token.policies, roles=token.roles, service_identities=token.service_identities,
                       node_identities=token.node_identities, templated_policies=token.templated_policies,
                       local=token.local, auth_method=token.auth_method, expiration_ttl_ns=token.expiration_ttl_ns,
                       create_time_ns=time.time_ns())  # fmt: skip
        result = await self.propose(ACLTokenSet(row, create=True, from_login=True))
        store = self.store()
        return token_json(store, TokenRow.from_wire(result))

    async def delete_login_token(self, secret: str) -> None:
        """Consul's ``TokenWriter.Delete(secret, fromLogout=true)``: an expired login token may still be
        logged out (it is being deleted anyway); a token no login created is refused."""
        row = self.store().acl_token_by_secret(secret)
        if row is None:
            raise ACLNotFound()
        if not row.auth_method:
            raise PermissionDenied(cause="token wasn't created via login")
        await self.propose(ACLTokenDelete((row.accessor_id,)))


@dataclass
class LoginService:
    """The backend plus what login keeps between calls: the JWKS cache (the methods themselves are stored
    parsed, so nothing is rebuilt per login)."""

    backend: LoginBackend
    datacenter: str
    jwks: JWKSCache = field(default_factory=JWKSCache)

    def method(self, name: str) -> AuthMethod:
        found = self.backend.auth_method(name)
        if found is None:
            raise HTTPError(403, f'ACL not found: auth method "{name}" not found')
        return found

    async def login(self, method_name: str, bearer: str, meta: Mapping[str, str] | None, *,
                    now: float) -> Mapping[str, Any]:  # fmt: skip
        method = self.method(method_name)
        validator = method.validator()
        try:
            if validator.needs_jwks:
                keys = await self.jwks.keys(method.config)
                try:
                    identity = validator.validate_login(bearer, now=now, jwks=keys)
                except LoginError:
                    # Keys rotate: a signature no cached key checks gets one refetch (rate-limited).
                    keys = await self.jwks.keys(method.config, refresh=True)
                    identity = validator.validate_login(bearer, now=now, jwks=keys)
            else:
                identity = validator.validate_login(bearer, now=now)
            planned = plan_login(method, self.backend.binding_rules(method.name), identity,
                                 datacenter=self.datacenter, meta=meta, role_by_name=self.backend.role_by_name,
                                 policy_by_name=self.backend.policy_by_name)  # fmt: skip
        except (LoginError, BindingRuleError, PermissionDenied) as exc:
            raise HTTPError(403, str(exc)) from None
        except JWKSError as exc:
            raise HTTPError(500, str(exc)) from None
        return await self.backend.create_token(planned)


def _service(api: Api) -> LoginService:
    """This agent's login service: 401 while ACLs are off; else built once, over the ACL tables."""
    service = api.acl_login
    if service is None:
        if not api.config.acl.get("enabled"):
            raise HTTPError(401, ACL_DISABLED)
        service = api.acl_login = LoginService(StoreBackend(lambda: api.store, api.propose), api.config.datacenter)
    return service


def _login_body(raw: bytes) -> tuple[str, str, dict[str, str] | None]:
    try:
        body = parse_json(raw)
    except DecodeError as exc:
        raise HTTPError(400, f"Failed to decode request body: {exc}") from None
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise HTTPError(400, "Failed to decode request body: json: cannot unmarshal into Go value of type "
                             "structs.ACLLoginParams")  # fmt: skip
    fields = {k.lower(): v for k, v in body.items()}
    method = fields.get("authmethod") or ""
    bearer = fields.get("bearertoken") or ""
    meta = fields.get("meta")
    if not isinstance(method, str) or not isinstance(bearer, str):
        raise HTTPError(400, "Failed to decode request body: AuthMethod and BearerToken must be strings")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise HTTPError(400, "Failed to decode request body: Meta must be a map of strings")
    return method, bearer, meta


async def login(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    service = _service(api)
    method, bearer, meta = _login_body(await api.read_body(request, MAX_LOGIN_BODY))
    token = await service.login(method, bearer, meta, now=time.time())
    return api.json(request, dict(token))


async def logout(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    service = _service(api)
    secret = request_secret(api, request)
    if not secret:
        raise HTTPError(403, str(ACLNotFound()))
    try:
        await service.backend.delete_login_token(secret)
    except (ACLNotFound, PermissionDenied) as exc:
        raise HTTPError(403, str(exc)) from None
    return api.json(request, True)


ROUTES: tuple[Route, ...] = (
    route("POST", "/v1/acl/login", login, "write", "none", "none",
          "Trade a bearer JWT for an ACL token through an auth method (the JWT is the credential)"),
    route("POST", "/v1/acl/logout", logout, "write", "none", "none",
          "Delete the login token presented with the request"),
)  # fmt: skip
