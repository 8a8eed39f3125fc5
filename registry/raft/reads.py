"""Reads: the barrier a read waits behind, by consistency mode.

``?stale`` is served from local state. The default mode is a lease read on the leader (no network round
while a quorum acknowledged a heartbeat within the lease; see the clock assumption in node.py), and on a
follower a read index fetched from the leader. ``?consistent`` is always a ReadIndex quorum round (Raft
thesis 6.4; Consul's ``consistent`` mode). Either way the read waits until this server has applied the
read index, so a new leader never answers before it has applied everything committed before its term.
"""

from __future__ import annotations

import asyncio
import os

from registry.raft import node as raftnode
from registry.raft.base import SM, ServerBase
from registry.raft.errors import NotLeaderError, RPCError


class Reads(ServerBase[SM]):
    def _lease_clock_ok(self) -> bool:
        """Trust the lease (counted in ticks) only while the node's clock keeps pace with real time: its
        latest tick is at most two intervals behind, and no ticks were skipped within an election timeout.
        After a stall or a SIGSTOP the loop may serve a queued read before the ticker catches up, and a
        deposed leader cut off from the new one would answer from stale state; a ReadIndex round instead
        cannot complete there."""
        now = asyncio.get_running_loop().time()
        return now - self._tick_due <= 2 * self.opts.tick and now >= self._lease_embargo_until

    async def _wait_applied(self, index: int, timeout: float = 10.0) -> None:
        assert self.node is not None
        if self.node.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_waiters.append((index, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise NotLeaderError(None) from exc

    async def _leader_read_index(self, consistent: bool) -> int:
        node = self.node
        assert node is not None
        if not consistent and self._lease_clock_ok():
            idx = node.lease_read_index()
            if idx is not None:
                return idx
        return await self._read_index_round()

    def fast_read_ok(self) -> bool:
        """True when a default-mode read may be answered from local state right now with no waiting: this
        server leads, its lease holds, its clock keeps pace, and it has applied everything the lease covers.
        The HTTP layer's hot cache serves only under this condition."""
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER or not self._lease_clock_ok():
            return False
        idx = node.lease_read_index()
        return idx is not None and node.applied_index >= idx

    async def _read_index_round(self) -> int:
        """A ReadIndex round (thesis 6.4): on the leader a heartbeat round acknowledged by a quorum; on a
        follower the core forwards the request to the leader. Returns the index the read must wait for."""
        node = self.node
        assert node is not None
        ctx = next(self._read_ids).to_bytes(8, "big") + os.urandom(4)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            node.read_index(ctx)
        except raftnode.RaftError as exc:
            self._reads.pop(ctx, None)
            raise NotLeaderError(None) from exc
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, 5.0)
        except TimeoutError as exc:
            self._reads.pop(ctx, None)
            raise NotLeaderError(None) from exc

    async def barrier_read(self, consistency: str) -> None:
        node = self.node
        if consistency == "stale":
            return
        if node is None:
            raise NotLeaderError(None)
        if node.role is raftnode.Role.LEADER:
            index = await self._leader_read_index(consistency == "consistent")
        elif consistency == "consistent":
            index = await self._follower_read_index()
        else:
            leader = await self._await_leader()
            if leader.id == self.id:
                index = await self._leader_read_index(False)
            else:
                try:
                    index = int(await self.rpc_client(leader.address).call("read_index", False, timeout=5))
                except RPCError as exc:
                    raise NotLeaderError(None) from exc
        await self._wait_applied(index)

    async def _follower_read_index(self) -> int:
        await self._await_leader()
        return await self._read_index_round()
