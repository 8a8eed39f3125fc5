"""Named RPC handlers for the server port.

The port's owner (the agent) builds one router; each part registers what it serves: the Raft server its
own methods (``apply``, ``hello``, ``join``...), the agent its liveness calls, Connect the CA's, as
Consul's server registers its endpoints (``Status``, ``Catalog``, ``ConnectCA``...) on one RPC server. A
handler takes the call's arguments (plain msgpack values) and returns a msgpack-ready value, or raises
``RPCError`` with the status the caller should see.

Every call comes with a ``Caller``: the token the call carries (Consul's ``QueryOptions.Token`` /
``WriteRequest.Token``, sent by a client agent with its agent token) and the role the connection proved.
Methods registered ``server_only`` (Raft's ``apply``, ``join``, ``read_index``, the operator's calls) are
refused to a caller that is not a server (CVE-2021-37219: a client agent with a certificate from the same
CA reached server-only functions; Consul now authorizes by the certificate's role). Handlers registered
``with_caller`` receive the caller to check its token themselves.

Methods registered ``leader`` are answered by the leader only. When the port's owner has installed a
forwarder (``forward_with``), a server that does not lead hands such a call to it instead of its handler, and
the forwarder has the leader answer it (Consul's ``srv.forward``: a client agent may send any call to any
server). Without a forwarder the handler runs and decides for itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from registry.raft.errors import RPCError
from registry.raft.observe import NO_OBSERVER, RPCObserver

__all__ = ["LOCAL", "Caller", "RPCHandler", "RPCRouter", "CallerHandler", "Forwarder"]

RPCHandler = Callable[[Any], Awaitable[Any]]
CallerHandler = Callable[[Any, "Caller"], Awaitable[Any]]
# (method, args, caller) -> the leader's answer; installed with ``RPCRouter.forward_with``.
Forwarder = Callable[[str, Any, "Caller"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a call. ``server``: the connection is trusted as a server's -- it presented a verified
    ``server.<dc>.<domain>`` certificate, or the port does not verify incoming certificates, in which case
    nothing tells servers from client agents (as Consul's ``AuthorizeServerConn`` lets every connection
    through without ``verify_incoming``). A server caller is trusted with server-only methods and its calls
    are not checked against a token: servers write through the log directly, by role."""

    token: str = ""
    server: bool = True


LOCAL = Caller()  # a call made inside this process (the dev agent's own log, tests)


class RPCRouter:
    def __init__(self, observer: RPCObserver = NO_OBSERVER) -> None:
        self._handlers: dict[str, tuple[Callable[..., Awaitable[Any]], bool, bool, bool]] = {}
        self.observer = observer  # told of every call and every error answered (Consul's rpc.request*)
        self._should_forward: Callable[[], bool] | None = None
        self._forward: Forwarder | None = None

    def register(self, name: str, handler: Callable[..., Awaitable[Any]], *, server_only: bool = False,
                 with_caller: bool = False, leader: bool = False) -> None:  # fmt: skip
        """Serve ``name``: ``handler(args)``, or ``handler(args, caller)`` with ``with_caller``; with
        ``leader``, on the leader only (calls elsewhere go to the forwarder, when one is installed)."""
        if name in self._handlers:
            raise ValueError(f"rpc method {name!r} already registered")
        self._handlers[name] = (handler, server_only, with_caller, leader)

    def forward_with(self, should_forward: Callable[[], bool], forward: Forwarder) -> None:
        """Hand the ``leader`` methods' calls to ``forward`` whenever ``should_forward()`` says this server
        does not lead."""
        self._should_forward = should_forward
        self._forward = forward

    def leader_methods(self) -> list[str]:
        return sorted(name for name, entry in self._handlers.items() if entry[3])

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def server_only(self) -> list[str]:
        return sorted(name for name, entry in self._handlers.items() if entry[1])

    async def dispatch(self, method: str, args: Any, caller: Caller = LOCAL, *, forward: bool = True) -> Any:
        """Run ``method``'s handler; ``forward=False`` runs it here even on a server that does not lead (a
        call already forwarded once is never forwarded again)."""
        observer = self.observer
        observer.request(method)
        try:
            entry = self._handlers.get(method)
            if entry is None:
                raise RPCError(f"unknown rpc method {method!r}", 400)
            handler, server_only, with_caller, leader = entry
            if server_only and not caller.server:
                raise RPCError(f"Permission denied: rpc method {method!r} is served to servers only", 403)
            if forward and leader and self._forward is not None and self._should_forward is not None \
                    and self._should_forward():  # fmt: skip
                return await self._forward(method, args, caller)
            if with_caller:
                return await handler(args, caller)
            return await handler(args)
        except Exception:
            observer.request_error(method)
            raise
