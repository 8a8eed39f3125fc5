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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from registry.raft.errors import RPCError
from registry.raft.observe import NO_OBSERVER, RPCObserver

__all__ = ["LOCAL", "Caller", "RPCHandler", "RPCRouter", "CallerHandler"]

RPCHandler = Callable[[Any], Awaitable[Any]]
CallerHandler = Callable[[Any, "Caller"], Awaitable[Any]]


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
        self._handlers: dict[str, tuple[Callable[..., Awaitable[Any]], bool, bool]] = {}
        self.observer = observer  # told of every call and every error answered (Consul's rpc.request*)

    def register(self, name: str, handler: Callable[..., Awaitable[Any]], *, server_only: bool = False,
                 with_caller: bool = False) -> None:  # fmt: skip
        """Serve ``name``: ``handler(args)``, or ``handler(args, caller)`` with ``with_caller``."""
        if name in self._handlers:
            raise ValueError(f"rpc method {name!r} already registered")
        self._handlers[name] = (handler, server_only, with_caller)

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    def server_only(self) -> list[str]:
        return sorted(name for name, (_, only, _) in self._handlers.items() if only)

    async def dispatch(self, method: str, args: Any, caller: Caller = LOCAL) -> Any:
        observer = self.observer
        observer.request(method)
        try:
            entry = self._handlers.get(method)
            if entry is None:
                raise RPCError(f"unknown rpc method {method!r}", 400)
            handler, server_only, with_caller = entry
            if server_only and not caller.server:
                raise RPCError(f"Permission denied: rpc method {method!r} is served to servers only", 403)
            if with_caller:
                return await handler(args, caller)
            return await handler(args)
        except Exception:
            observer.request_error(method)
            raise
