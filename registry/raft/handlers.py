"""The Raft server's own methods on the server port's RPC router.

``apply`` (a follower's forwarded proposal), ``hello`` (discovery), ``join``, ``read_index`` (a follower's
default-mode read), ``raft_configuration``, ``transfer_leader`` and ``remove_server`` (the operator's
calls, made on any server and served by the leader). The application registers its own methods on the
same router.

Everything but ``hello`` is served to servers only (``server_only``: the router refuses a caller whose
connection is not a server's). ``hello`` answers anyone -- client agents find the leader with it -- but
learns server addresses only from servers: a client agent must not plant a server in the membership.
"""

from __future__ import annotations

from typing import Any

from registry.raft import node as raftnode
from registry.raft.base import SM
from registry.raft.errors import RPCError
from registry.raft.membership import Membership
from registry.raft.reads import Reads
from registry.raft.rpc import Caller


class RPCHandlers(Membership[SM], Reads[SM]):
    def _register_rpc(self) -> None:
        """Serve the server-to-server methods on the port's router (the application adds its own)."""
        register = self._transport.router.register
        register("apply", self._rpc_apply, server_only=True)
        register("hello", self._rpc_hello, with_caller=True)
        register("join", self._rpc_join, server_only=True)
        register("read_index", self._rpc_read_index, server_only=True)
        register("raft_configuration", self._rpc_configuration, server_only=True)
        register("transfer_leader", self._rpc_transfer_leader, server_only=True)
        register("remove_server", self._rpc_remove_server, server_only=True)

    def _require_leader(self) -> raftnode.RaftNode:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            # Let the caller re-resolve the leader (no forwarding chains).
            raise RPCError("not the leader", 503)
        return node

    async def _rpc_apply(self, args: Any) -> Any:
        if not isinstance(args, bytes):
            raise RPCError("apply needs a command", 400)
        self._require_leader()
        return self.codec.encode_result(await self._propose_bytes(args))

    async def _rpc_hello(self, args: Any, caller: Caller) -> Any:
        if isinstance(args, dict) and caller.server:
            self._learn(args)
            for info in (args.get("known") or {}).values():
                if isinstance(info, dict):
                    self._learn(info)
        return self._hello_payload()

    async def _rpc_join(self, args: Any) -> Any:
        if not isinstance(args, dict):
            raise RPCError("join needs server info", 400)
        return await self._handle_join(args)

    async def _rpc_read_index(self, args: Any) -> Any:
        self._require_leader()
        return await self._leader_read_index(bool(args))

    async def _rpc_configuration(self, args: Any) -> Any:
        self._require_leader()
        return self.configuration()

    async def _rpc_transfer_leader(self, args: Any) -> Any:
        return await self.transfer_leadership(args if isinstance(args, str) else None)

    async def _rpc_remove_server(self, args: Any) -> Any:
        if not isinstance(args, str):
            raise RPCError("remove_server needs a server id", 400)
        await self.remove_server(args)
        return True
