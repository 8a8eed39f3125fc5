"""Connect on a client agent: it keeps no replica, so it asks the servers over the RPC port.

- ``ConnectCA.Roots``     a blocking call (``MinIndex``, ``Wait``) answering the public roots JSON and
                          its index; the client keeps the latest copy for /v1/agent/connect/ca/roots,
                          for naming services in CSRs (trust domain) and for spotting a root change.
- ``ConnectCA.Sign``      the leaf cache's signer: the CSR goes to the leader, the certificate comes back
                          (``registry.connect.signer``). The key never leaves the client agent.
- ``ConnectCA.Authorize`` the authorize decision, made by a server against its intentions.

The server side registers these methods on the agent's RPC router (``Connect._register_rpc``); this module
is the client's half.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ca.provider import LeafResult
from registry.connect.leaf import TrustInfo
from registry.connect.signer import RPC_SIGN, RateLimited, SignError, leaf_from_wire

log = structlog.get_logger("proconsul.connect.remote")

RPC_ROOTS = "ConnectCA.Roots"
RPC_AUTHORIZE = "ConnectCA.Authorize"
ROOTS_WAIT = 30.0  # seconds a roots call may block on the server waiting for a change

CallLeader = Callable[..., Awaitable[Any]]


class RemoteCA:
    def __init__(self, call_leader: CallLeader, on_change: Callable[[], None] | None = None,
                 token: Callable[[], str] = lambda: "") -> None:  # fmt: skip
        self._call = call_leader
        self._token = token  # the agent's token, which the server checks before it signs
        self._on_change = on_change
        self.roots: dict[str, Any] = {"ActiveRootID": "", "TrustDomain": "", "Roots": []}
        self.index = 0
        self.changed = asyncio.Event()
        self._trust: TrustInfo | None = None

    def trust(self) -> TrustInfo | None:
        return self._trust

    def _set(self, roots: dict[str, Any], index: int) -> bool:
        changed = index != self.index or roots != self.roots
        self.roots, self.index = roots, index
        active = next((r for r in roots.get("Roots", []) if r.get("Active")), None)
        self._trust = TrustInfo(roots["TrustDomain"], active["SigningKeyID"]) if active else None
        return changed

    async def refresh(self, wait: float = 0.0) -> bool:
        """One roots call (blocking up to ``wait`` for a change); True if the roots changed."""
        reply = await self._call(RPC_ROOTS, {"MinIndex": self.index if wait else 0, "Wait": wait},
                                 timeout=wait + 10)  # fmt: skip
        if not isinstance(reply, dict) or not isinstance(reply.get("Roots"), dict):
            raise SignError(500, "malformed ConnectCA.Roots reply")
        changed = self._set(reply["Roots"], int(reply.get("Index", 0)))
        if changed:
            self.changed.set()
            if self._on_change is not None:
                self._on_change()
        return changed

    async def run(self) -> None:
        """Follow the servers' roots with blocking calls, backing off while no server answers."""
        delay = 0.5
        while True:
            try:
                await self.refresh(ROOTS_WAIT if self.index else 0.0)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no leader yet, a server restarting
                log.debug("connect roots refresh failed", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def sign(self, csr_pem: str, service: str) -> LeafResult:
        from registry.consensus import NotLeaderError, RPCError

        try:
            args = {"CSR": csr_pem, "Service": service}
            token = self._token()
            if token:
                args["Token"] = token
            reply = await self._call(RPC_SIGN, args, timeout=30)
        except RPCError as exc:
            if exc.status == 429:
                raise RateLimited(1.0) from None
            if exc.status == 403:
                raise SignError(403, exc.message) from None
            raise SignError(400 if exc.status == 400 else 500, exc.message) from None
        except NotLeaderError as exc:
            raise SignError(500, str(exc)) from None
        return leaf_from_wire(reply)

    async def authorize(self, target: str, uri: str) -> tuple[int, Any]:
        """(HTTP status, body) of the authorize decision made by a server."""
        from registry.consensus import NotLeaderError, RPCError

        try:
            reply = await self._call(RPC_AUTHORIZE, {"Target": target, "ClientCertURI": uri}, timeout=10)
        except RPCError as exc:
            return (exc.status if exc.status in (400, 403) else 500), exc.message
        except NotLeaderError as exc:
            return 500, str(exc)
        return 200, reply
