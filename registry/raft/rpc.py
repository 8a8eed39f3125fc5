"""Named RPC handlers for the server port.

The port's owner (the agent) builds one router; each part registers what it serves: the Raft server its
own methods (``apply``, ``hello``, ``join``...), the agent its liveness calls, Connect the CA's, as
Consul's server registers its endpoints (``Status``, ``Catalog``, ``ConnectCA``...) on one RPC server. A
handler takes the call's arguments (plain msgpack values) and returns a msgpack-ready value, or raises
``RPCError`` with the status the caller should see.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from registry.raft.errors import RPCError

RPCHandler = Callable[[Any], Awaitable[Any]]


class RPCRouter:
    def __init__(self) -> None:
        self._handlers: dict[str, RPCHandler] = {}

    def register(self, name: str, handler: RPCHandler) -> None:
        if name in self._handlers:
            raise ValueError(f"rpc method {name!r} already registered")
        self._handlers[name] = handler

    def methods(self) -> list[str]:
        return sorted(self._handlers)

    async def dispatch(self, method: str, args: Any) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            raise RPCError(f"unknown rpc method {method!r}", 400)
        return await handler(args)
