"""What a server checks before it acts on a client agent's RPC: the token the call carries (the client's
agent token), against the catalog as it stands.

Consul's client agents write through ``Catalog.Register`` / ``Catalog.Deregister`` with a token, and the
server vets each request (agent/consul/catalog_endpoint.go ``vetRegisterWithAuthorizer`` and
``vetDeregisterWithAuthorizer``):

- a registration needs ``node:write`` on the node when it creates or changes the node; ``service:write``
  on the service it registers (and on the service it would replace under the same ID, when that has
  another name); for each check ``service:write`` on the check's service, or ``node:write`` on the node
  for a node check;
- a deregistration needs ``node:write`` for the whole node, ``service:write`` on the service it removes,
  and for a check what registering that check would need; a check update (the client's health results)
  is vetted as its check;
- nothing else may be proposed by a client agent: the rest of the log (KV, sessions, ACLs, the CA) is
  written by servers, behind the HTTP API that checks the caller's own token.

Pure: an ``Authorizer`` and a store in, ``PermissionDenied`` out.
"""

from __future__ import annotations

from registry.acl.authorizer import Authorizer
from registry.acl.errors import PermissionDenied
from registry.commands import CheckUpdate, Command, Deregister, Register
from registry.state.store import StateStore
from registry.structs import Check

__all__ = ["CLIENT_COMMANDS", "vet_client_command"]

CLIENT_COMMANDS = (Register, Deregister, CheckUpdate)


def vet_client_command(cmd: Command, authz: Authorizer, store: StateStore) -> None:
    """Raise ``PermissionDenied`` unless ``authz`` may make this write on behalf of a client agent."""
    if isinstance(cmd, Register):
        _vet_register(cmd, authz, store)
    elif isinstance(cmd, Deregister):
        _vet_deregister(cmd, authz, store)
    elif isinstance(cmd, CheckUpdate):
        existing = store.checks.get(cmd.node, {}).get(cmd.check_id)
        if existing is None:
            authz.check("node_write", cmd.node)  # an unknown check: the FSM refuses it; never unchecked
        else:
            _vet_check(existing, authz, store)
    else:
        raise PermissionDenied(authz.accessor_id, cause=f"a client agent may not propose {cmd.TYPE!r}")


def _vet_register(cmd: Register, authz: Authorizer, store: StateStore) -> None:
    node = cmd.node
    stored = store.nodes.get(node.node)
    if stored is None or (not cmd.skip_node_update and not stored.same_as(node)):
        authz.check("node_write", node.node)
    svc = cmd.service
    if svc is not None:
        authz.check("service_write", svc.service)
        previous = store.services.get(node.node, {}).get(svc.id)
        if previous is not None and previous.service != svc.service:
            authz.check("service_write", previous.service)
    for chk in cmd.checks:
        if chk.service_id and svc is not None and chk.service_id == svc.id:
            continue  # the service's own check: covered by service:write above
        _vet_check(chk, authz, store)


def _vet_check(chk: Check, authz: Authorizer, store: StateStore) -> None:
    if not chk.service_id:
        authz.check("node_write", chk.node)
        return
    owner = store.services.get(chk.node, {}).get(chk.service_id)
    # A check of a service that is not registered: Consul refuses it in the FSM; here the name it claims.
    authz.check("service_write", owner.service if owner is not None else chk.service_name or chk.service_id)


def _vet_deregister(cmd: Deregister, authz: Authorizer, store: StateStore) -> None:
    if cmd.service_id:
        svc = store.services.get(cmd.node, {}).get(cmd.service_id)
        if svc is not None:
            authz.check("service_write", svc.service)
        else:
            authz.check("node_write", cmd.node)
        return
    if cmd.check_id:
        chk = store.checks.get(cmd.node, {}).get(cmd.check_id)
        if chk is not None:
            _vet_check(chk, authz, store)
        else:
            authz.check("node_write", cmd.node)
        return
    authz.check("node_write", cmd.node)
