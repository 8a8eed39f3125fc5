"""The DNS interface's token: the agent's ``acl.tokens.default`` (else anonymous), resolved for the engine.

Consul's DNS server sends every catalog RPC with ``coalesceDNSToken()``: the agent's default token, or the
anonymous token when none is set (agent/dns.go). The engine (``dns.engine``) is pure and synchronous, so it
cannot resolve a token itself: this follower resolves it through the agent's ``TokenResolver`` and hands
the engine the ``Authorizer`` (``Engine.set_acl``), again whenever the resolver reports that ACL state moved
(an ACL write on a server, the servers' ACL index on a client agent) or the default token is replaced
(``PUT /v1/agent/token/default``). Each hand-over drops the engine's cached answers.

A token that cannot be resolved (unknown, expired, or the servers unreachable) is handed over as None:
Consul's catalog RPC fails and the DNS answer is SERVFAIL. Failures to reach the servers are retried with
a backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from registry.acl.authorizer import Authorizer
from registry.acl.errors import ACLNotFound
from registry.acl.resolver import TokenResolver

__all__ = ["DNSToken"]

log = structlog.get_logger("proconsul.dns")

RETRY_MAX = 5.0


class DNSToken:
    """Keeps ``apply(authorizer)`` in step with the default token's permissions."""

    def __init__(self, resolver: TokenResolver, apply: Callable[[Authorizer | None], None]) -> None:
        self._resolver = resolver
        self._apply = apply
        self._changed = asyncio.Event()
        self.resolutions = 0

    def changed(self) -> None:
        """Something the default token resolves to may have changed: resolve it again (soon, once)."""
        self._changed.set()

    async def refresh(self) -> bool:
        """Resolve the default token now and hand the result to the engine; False when it failed for a
        reason worth retrying (the servers unreachable)."""
        self._changed.clear()
        self.resolutions += 1
        try:
            authz: Authorizer | None = await self._resolver.resolve(self._resolver.default_secret())
            ok = True
        except ACLNotFound:
            log.warning("the agent's default token (used by DNS) is not a known ACL token: DNS answers SERVFAIL")
            authz, ok = None, True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - no leader, a server restarting: retried
            log.info("could not resolve the DNS token", error=type(exc).__name__)
            authz, ok = None, False
        self._apply(authz)
        return ok

    async def run(self) -> None:
        """Resolve again on every change; after a failure, retry with a backoff until it works."""
        delay = 0.2
        while True:
            if await self.refresh():
                delay = 0.2
                await self._changed.wait()
            else:
                try:
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                delay = min(delay * 2, RETRY_MAX)
