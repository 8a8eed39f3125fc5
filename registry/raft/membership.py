"""Membership: bootstrap, joining a running cluster, learner promotion, removal and leadership transfer.

Servers find each other with ``hello`` (Consul's retry_join over the server port) and either bootstrap
together once ``bootstrap_expect`` of them know no configuration, or ask the leader to ``join``. A new
server enters as a learner (non-voter) and is promoted once it has caught up, as Consul's autopilot
adds servers as non-voters first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from registry.raft import node as raftnode
from registry.raft.base import SM, ServerInfo, log
from registry.raft.errors import RPCError
from registry.raft.messages import (
    ConfChange,
    ConfChangeKind,
)
from registry.raft.storage import Storage


@dataclass(frozen=True, slots=True)
class ServerView:
    """One server as the leader sees it: ``last_contact`` is seconds since the leader last heard from it (0
    for the leader), ``last_index`` the highest index it is known to hold (its match index) and
    ``last_term`` the term of that entry in the leader's log (0 when compacted away)."""

    id: str
    name: str
    address: str
    voter: bool
    leader: bool
    last_contact: float
    last_index: int
    last_term: int


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The leader's view of the configuration at one moment (what hashicorp/raft-autopilot gathers as its
    inputs: the leader's last index and term, and each server's stats)."""

    leader_id: str
    last_index: int
    last_term: int
    servers: tuple[ServerView, ...]


REJOIN_AFTER_TICKS = 40  # silence from any leader (2 s at the default tick) before asking to be added again
REJOIN_EVERY = 0.5  # seconds between two attempts: a healed server is back within one membership round


class Membership(Storage[SM]):
    def _learn(self, info: dict[str, Any]) -> None:
        sid, addr = info.get("id"), info.get("address")
        if not isinstance(sid, str) or not isinstance(addr, str) or not sid or not addr:
            return
        current = self.servers.get(sid)
        if current is None or current.address != addr or (info.get("http") and current.http != info.get("http")):
            self.servers[sid] = ServerInfo(sid, addr, str(info.get("name", "")), str(info.get("http", "")))
            self._save_servers()

    def _hello_payload(self) -> dict[str, Any]:
        me = self.servers[self.id]
        leader = self._leader_info()
        return {
            **me.wire(),
            "known": {s.id: s.wire() for s in self.servers.values()},
            "configured": self.node is not None and bool(self.node.configuration.members()),
            "leader": leader.wire() if leader else None,
            "members": sorted(self.node.configuration.members()) if self.node is not None else [],
        }

    async def _handle_join(self, info: dict[str, Any]) -> Any:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            raise RPCError("not the leader", 503)
        self._learn(info)
        sid = str(info["id"])
        if sid in node.configuration.members():
            return True
        ctx = msgpack.packb({"a": info["address"], "n": info.get("name", ""), "h": info.get("http", "")})
        try:
            node.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, sid, ctx))
        except raftnode.ConfigChangeError as exc:
            raise RPCError(str(exc), 409) from exc
        self._wake.set()
        log.info("adding server as learner", server=sid, address=info["address"])
        return True

    def _bootstrap(self, voters: list[str]) -> None:
        state = raftnode.PersistentState.bootstrap(voters)
        # Persist the founding state (the initial configuration is log entry 1) before the first Ready.
        if self._wal is not None:
            self._wal.append((e.index, e.term, int(e.kind), e.data) for e in state.entries)
            self._wal.sync()
        else:
            self._mem_entries.extend(state.entries)
        if self._stable is not None:
            self._stable.save(state.hard_state.term, state.hard_state.vote)
        self._save_servers()
        log.info("bootstrapping cluster", voters=sorted(voters))
        self._build_node(state)

    def _join_empty(self) -> None:
        """Become a server that waits for a leader to add it (state persisted once a snapshot arrives)."""
        self._build_node(raftnode.PersistentState.empty())

    async def _bootstrap_loop(self) -> None:
        """Find the other servers (retry_join) and either bootstrap together or join a running cluster."""
        opts = self.opts
        if opts.bootstrap or (opts.bootstrap_expect == 1 and not opts.join):
            self._bootstrap([self.id])
            return
        delay = 0.1
        while self.node is None:
            joined = await self._try_join()
            if joined or self.node is not None:
                return
            known = sorted(self.servers)
            if opts.bootstrap_expect and len(known) == opts.bootstrap_expect and await self._peers_unconfigured():
                self._bootstrap(known)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def _peers_unconfigured(self) -> bool:
        for s in list(self.servers.values()):
            if s.id == self.id:
                continue
            try:
                reply = await self.rpc_client(s.address).call("hello", self._hello_payload(), timeout=2)
            except RPCError:
                return False
            if reply.get("configured"):
                return False
        return True

    async def _try_join(self) -> bool:
        for addr in self.opts.join + [s.address for s in self.servers.values() if s.id != self.id]:
            if addr == self.opts.address:
                continue
            try:
                reply = await self.rpc_client(addr).call("hello", self._hello_payload(), timeout=2)
            except RPCError:
                continue
            if not isinstance(reply, dict):
                continue
            self._learn(reply)
            for info in (reply.get("known") or {}).values():
                if isinstance(info, dict):
                    self._learn(info)
            if reply.get("configured") and reply.get("leader"):
                leader = reply["leader"]
                try:
                    await self.rpc_client(leader["address"]).call("join", self.servers[self.id].wire(), timeout=5)
                except RPCError as exc:
                    log.info("join not accepted yet", leader=leader.get("address"), error=exc.message)
                    continue
                if self.node is None:
                    self._join_empty()
                return True
        return False

    async def _membership_loop(self) -> None:
        """On the leader: promote caught-up learners (non-voters catch up before they vote). On any other
        server that has heard from no leader for a while: ask to be added again (``_rejoin``)."""
        last_rejoin = 0.0
        while True:
            await asyncio.sleep(0.5)
            node = self.node
            if node is None:
                continue
            if node.role is not raftnode.Role.LEADER:
                now = time.monotonic()
                if now - last_rejoin >= REJOIN_EVERY and self._cut_off(node):
                    last_rejoin = now
                    await self._rejoin(node)
                continue
            for learner in sorted(node.configuration.learners):
                try:
                    node.propose_config_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, learner))
                    log.info("promoting learner to voter", server=learner)
                    self._wake.set()
                    break
                except raftnode.RaftError:
                    continue

    @staticmethod
    def _cut_off(node: raftnode.RaftNode) -> bool:
        """Removed from the configuration, or silent from every leader long enough that it may have been
        (a server the leader removed while it was down or cut off never hears of its removal)."""
        status = node.status()
        return node.id not in status.configuration.members() or status.ticks_since_leader_contact > REJOIN_AFTER_TICKS

    async def _rejoin(self, node: raftnode.RaftNode) -> None:
        """Ask the servers we know whether a leader's configuration still holds us; if one does not, ask that
        leader to add us again (as a learner, promoted once caught up), as a Consul server that Serf sees
        come back is added again by the leader's reconciliation after autopilot removed it."""
        for s in list(self.servers.values()):
            if s.id == self.id:
                continue
            try:
                reply = await self.rpc_client(s.address).call("hello", self._hello_payload(), timeout=1)
            except RPCError:
                continue
            leader = reply.get("leader") if isinstance(reply, dict) else None
            members = reply.get("members") if isinstance(reply, dict) else None
            if not isinstance(leader, dict) or not isinstance(members, list) or leader.get("id") == self.id:
                continue
            if self.id in members:
                return  # still a member: only a partition keeps us apart, and Raft heals that itself
            try:
                await self.rpc_client(str(leader["address"])).call("join", self.servers[self.id].wire(), timeout=5)
                log.info("asked the leader to add this server again", leader=leader.get("address"))
            except RPCError as exc:
                log.info("rejoin not accepted yet", leader=leader.get("address"), error=exc.message)
            return

    def leader_view(self) -> ClusterView | None:
        """On the leader, what it knows of every server of the configuration; None elsewhere."""
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            return None
        status = node.status()
        conf = status.configuration
        tick = self.opts.tick
        servers = []
        for sid in conf.sorted_members():
            info = self.servers.get(sid, ServerInfo(sid, ""))
            if sid == self.id:
                contact, index, term = 0.0, status.last_index, status.last_term
            elif sid in status.peers:
                peer = status.peers[sid]
                contact, index = peer.ticks_since_heard * tick, peer.match_index
                term = node.log.term(index) or 0
            else:
                contact, index, term = -1.0, 0, 0  # unknown: raft-autopilot counts a negative contact unhealthy
            servers.append(ServerView(sid, info.name or sid, info.address, sid in conf.voters, sid == self.id,
                                      contact, index, term))  # fmt: skip
        return ClusterView(self.id, status.last_index, status.last_term, tuple(servers))

    def configuration(self) -> list[dict[str, Any]]:
        node = self.node
        if node is None:
            return []
        conf = node.configuration
        leader = node.leader_id
        status = node.status()
        out = []
        for sid in conf.sorted_members():
            info = self.servers.get(sid, ServerInfo(sid, ""))
            last = status.last_index if sid == self.id else (status.peers[sid].match_index if sid in status.peers else 0)
            out.append({"ID": sid, "Node": info.name or sid, "Address": info.address, "Leader": sid == leader,
                        "Voter": sid in conf.voters, "ProtocolVersion": "3", "LastIndex": last})  # fmt: skip
        return out

    async def remove_server(self, server_id: str = "", address: str = "") -> None:
        """Remove a server from the configuration, named by ID or by address (Consul's
        RemoveRaftPeerByID/ByAddress). A follower checks the name against its configuration and asks the
        leader, which proposes the change."""
        servers = self.configuration()
        if address and not server_id:
            match = [s for s in servers if s["Address"] == address]
            if not match:
                raise RPCError(f"address {address!r} was not found in the Raft configuration", 400)
            server_id = match[0]["ID"]
        if server_id not in {s["ID"] for s in servers}:
            raise RPCError(f"id {server_id!r} was not found in the Raft configuration", 400)
        sid = server_id
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            leader = await self._await_leader()
            await self.rpc_client(leader.address).call("remove_server", sid, timeout=10)
            return
        # A change still committing (a learner's promotion, this leader's first entry) only delays us.
        deadline = time.monotonic() + 10
        while True:
            try:
                node.propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, sid))
                break
            except raftnode.ConfigChangeError as exc:
                if "retry" not in str(exc) or time.monotonic() > deadline:
                    raise RPCError(str(exc), 400) from exc
            except raftnode.NotLeaderError as exc:
                raise RPCError("not the leader", 503) from exc
            await asyncio.sleep(0.05)
        self._wake.set()

    async def transfer_leadership(self, target: str | None) -> str:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            raise RPCError("Cannot transfer leadership: this server is not the leader", 500)
        if target is None:
            candidates = [v for v in sorted(node.configuration.voters) if v != self.id]
            if not candidates:
                raise RPCError("Cannot transfer leadership: no other voter", 500)
            status = node.status()
            target = max(candidates, key=lambda v: status.peers[v].match_index if v in status.peers else 0)
        try:
            node.transfer_leadership(target)
        except raftnode.RaftError as exc:
            raise RPCError(str(exc), 400) from exc
        self._wake.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if node.leader_id == target:
                return target
        raise RPCError("leadership transfer did not complete in time", 500)
