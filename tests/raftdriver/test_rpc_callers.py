"""The RPC router's caller checks, over a real socket: server-only methods refuse a caller that is not a
server, the token a call carries reaches the handlers that ask for it, and a malformed token is dropped."""

from __future__ import annotations

from typing import Any

import pytest

from registry.raft.errors import RPCError
from registry.raft.listener import ServerListener
from registry.raft.rpc import LOCAL, Caller, RPCRouter
from registry.raft.transport import RPCClient


def make_router() -> RPCRouter:
    router = RPCRouter()

    async def apply(args: Any) -> Any:
        return "applied"

    async def whoami(args: Any, caller: Caller) -> Any:
        return [caller.token, caller.server]

    router.register("apply", apply, server_only=True)
    router.register("whoami", whoami, with_caller=True)
    return router


async def test_server_only_methods_refuse_a_client_caller() -> None:
    router = make_router()
    assert await router.dispatch("apply", None) == "applied"  # in-process: LOCAL, a server
    assert await router.dispatch("whoami", None, Caller("t", server=False)) == ["t", False]
    with pytest.raises(RPCError) as info:
        await router.dispatch("apply", None, Caller("t", server=False))
    assert info.value.status == 403 and "served to servers only" in info.value.message
    assert router.server_only() == ["apply"] and LOCAL.server


@pytest.mark.parametrize("is_server", [True, False])
async def test_the_listener_passes_the_token_and_the_connections_role(is_server: bool) -> None:
    router = make_router()
    listener = ServerListener(lambda m: None, router.dispatch, None, server_auth=lambda ssl_object: is_server)
    host, port = await listener.start("127.0.0.1", 0)
    client = RPCClient(f"{host}:{port}")
    try:
        assert await client.call("whoami", None, token="secret") == ["secret", is_server]
        assert await client.call("whoami", None) == ["", is_server]
        if is_server:
            assert await client.call("apply", None) == "applied"
        else:
            with pytest.raises(RPCError, match="served to servers only"):
                await client.call("apply", None)
    finally:
        await client.close()
        await listener.close()
