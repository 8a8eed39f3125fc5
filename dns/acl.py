"""What the DNS interface may see under ACLs: the catalog view filtered by the agent's default token.

Consul's DNS server asks the catalog over RPC with the agent's ``acl.tokens.default`` (else the anonymous
token), and the server filters the answer as it filters any read (agent/dns.go, ``coalesceDNSToken``;
agent/consul/acl.go ``filterCheckServiceNodes``, ``filterNodeServices``, ``filterNodes``):

- a service instance is kept only when the token may ``service:read`` its service and ``node:read`` its
  node; a Connect lookup also needs ``service:read`` on the service it asks proxies for
  (``Health.ServiceNodes``); nothing left is "no such name": NXDOMAIN with the SOA, exactly as a name that
  does not exist, so an answer never tells a token what exists beyond what it may read;
- a node lookup needs ``node:read`` on the node (``Catalog.NodeServices`` answers no node otherwise), and so
  does a node found by its address in a reverse lookup (``Catalog.ListNodes``);
- a token the servers do not know fails the RPC ("ACL not found") and Consul answers SERVFAIL
  (``rCodeFromError``): ``ACLUnavailable`` from this view, which the engine turns into SERVFAIL.
  ``<hex>.addr`` names read no catalog and answer whatever the token.

The filter is an input of the pure resolution, like the store: the engine builds one ``ACLView`` per
answer it computes around its recording view, and drops every cached answer when the authorizer changes.
"""

from __future__ import annotations

from collections.abc import Callable

from dns.resolver import CatalogReader
from registry.acl.authorizer import Authorizer
from registry.prepared_query import PreparedQuery
from registry.structs import Check, Node, Service

__all__ = ["ACLUnavailable", "ACLView"]


class ACLUnavailable(Exception):
    """The agent's DNS token could not be resolved (unknown, or the servers unreachable): SERVFAIL."""


class ACLView:
    """A ``CatalogReader`` that shows only what ``authz`` may read; with ``authz`` None, nothing at all
    (every read raises ``ACLUnavailable``). ``token_authz`` resolves a prepared query's own token (None
    when the token is unknown, or when this agent cannot resolve a token synchronously: such a query
    answers SERVFAIL, never as another token would)."""

    def __init__(self, inner: CatalogReader, authz: Authorizer | None,
                 token_authz: Callable[[str], Authorizer | None] | None = None) -> None:  # fmt: skip
        self._inner = inner
        self._authz = authz
        self._token_authz = token_authz

    def _authorizer(self) -> Authorizer:
        if self._authz is None:
            raise ACLUnavailable()
        return self._authz

    def service_names(self, folded: str, connect: bool = False) -> tuple[str, ...]:
        self._authorizer()
        return self._inner.service_names(folded, connect)

    def instances(self, name: str, connect: bool = False) -> list[tuple[Node, Service]]:
        authz = self._authorizer()
        if connect and not authz.service_read(name):
            return []
        return [(node, svc) for node, svc in self._inner.instances(name, connect)
                if authz.service_read(svc.service) and authz.node_read(node.node)]  # fmt: skip

    def prepared_query(self, id_or_name: str) -> PreparedQuery | None:
        """Executing a query needs no rule on the query itself (Consul's PreparedQuery.Execute)."""
        self._authorizer()
        return self._inner.prepared_query(id_or_name)

    def query_instances(self, query: PreparedQuery, name: str, connect: bool) -> list[tuple[Node, Service]]:
        """A query's instances as its own token may read them (else as the DNS token), as Consul's Execute
        filters its answer with the query's token when it has one."""
        authz = self._authorizer()
        if query.token:
            found = self._token_authz(query.token) if self._token_authz is not None else None
            if found is None:
                raise ACLUnavailable()
            authz = found
        return [(node, svc) for node, svc in self._inner.query_instances(query, name, connect)
                if authz.service_read(svc.service) and authz.node_read(node.node)]  # fmt: skip

    def checks_for_instance(self, node: str, service_id: str) -> list[Check]:
        # Only asked for instances this view already let through.
        return self._inner.checks_for_instance(node, service_id)

    def node_names(self, folded: str) -> tuple[str, ...]:
        authz = self._authorizer()
        return tuple(n for n in self._inner.node_names(folded) if authz.node_read(n))

    def node(self, name: str) -> Node | None:
        authz = self._authorizer()
        return self._inner.node(name) if authz.node_read(name) else None

    def all_nodes(self) -> list[Node]:
        authz = self._authorizer()
        return [n for n in self._inner.all_nodes() if authz.node_read(n.node)]

    def all_services(self) -> list[Service]:
        authz = self._authorizer()
        return [s for s in self._inner.all_services() if authz.service_read(s.service) and authz.node_read(s.node)]
