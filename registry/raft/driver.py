"""The asyncio driver around the pure Raft core: disk, network, clock and the FSM.

It implements the ``Consensus`` protocol the API uses (``propose``, ``barrier_read``, leader and peer
status), so a server cluster and the single-node dev log are interchangeable behind the API.

The loop follows the core's contract (see ``registry.raft.node``): for each Ready, persist (WAL append +
one fsync for the whole batch: group commit; term and vote through the stable store), then send, then
apply committed entries to the FSM and answer the proposals and reads waiting on them, then advance.
Proposals arriving while the loop works are batched into the next Ready; a follower forwards them to
the leader.

The rest of the server lives beside this module: ``storage`` (disk and recovery), ``membership``,
``reads`` and ``handlers`` (its RPC methods), over the shared state in ``base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgpack

from registry.raft import node as raftnode
from registry.raft.base import (
    ELECTION_TICKS,
    FORWARD_CATCH_UP,
    LEADER_WAIT,
    PROPOSAL_TIMEOUT,
    SM,
    Proposal,
    RaftOptions,
    ServerInfo,
    log,
    log_task_failure,
)
from registry.raft.errors import NotLeaderError, RPCError
from registry.raft.fsm import CommandCodec
from registry.raft.handlers import RPCHandlers
from registry.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChangeKind,
    Entry,
    EntryKind,
    Heartbeat,
    Message,
    decode_config_entry,
)
from registry.raft.observe import NO_OBSERVER, Observer
from registry.raft.transport import PeerSender, ServerTransport

__all__ = ["LEADER_WAIT", "PROPOSAL_TIMEOUT", "RaftOptions", "RaftServer", "ServerInfo"]


class RaftServer(RPCHandlers[SM]):
    """One Raft server: built from its options, the state machine, the server port and a command codec,
    as hashicorp/raft's ``NewRaft(conf, fsm, logs, stable, snaps, trans)`` is."""

    def __init__(self, opts: RaftOptions, fsm: SM, transport: ServerTransport,
                 codec: CommandCodec | None = None, observer: Observer = NO_OBSERVER) -> None:  # fmt: skip
        super().__init__(opts, fsm, transport, codec, observer)
        self._register_rpc()

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(log_task_failure)
        self._tasks.append(task)

    async def start(self) -> None:
        self._open_storage()
        self._transport.inbox.attach(self._on_message)
        await self._transport.port.start(*self.opts.bind)
        state = self._load_state()
        if state is not None:
            self._build_node(state)
        self._spawn(self._ticker(), "raft-ticker")
        self._spawn(self._loop(), "raft-loop")
        if self.node is None:
            self._spawn(self._bootstrap_loop(), "raft-bootstrap")
        self._spawn(self._membership_loop(), "raft-membership")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self._transport.port.close()
        for s in self._senders.values():
            await s.close()
        for c in self._rpc.values():
            await c.close()
        self._fail_all(NotLeaderError(None))
        if self._wal is not None:
            self._wal.close()

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        ticks = 0
        while True:
            next_at += self.opts.tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > 5 * self.opts.tick:
                next_at = loop.time()  # the loop stalled; do not fire a burst of catch-up ticks
                # ...but then the node's clock lags real time, and a lease counted in its ticks could
                # outlive the followers' election timeout: no lease reads for one election timeout.
                self._lease_embargo_until = next_at + ELECTION_TICKS * self.opts.tick
            self._expire_proposals(loop.time())
            if self.node is not None:
                self.node.tick()
                self._tick_due = next_at
                self._wake.set()
                self._check_links()
                ticks += 1
                if ticks % ELECTION_TICKS == 0:
                    self._observe_contact()

    def _observe_contact(self) -> None:
        """Once per election timeout on the leader, as hashicorp/raft's lease check does: how long ago each
        follower was last heard from."""
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            return
        tick = self.opts.tick
        for peer, st in node.status().peers.items():
            if peer != self.id:
                self.observer.leader_contact(peer, st.ticks_since_heard * tick)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._process()
            except Exception:  # noqa: BLE001 - a storage failure must stop this server, loudly
                log.exception("raft loop failed; this server stops participating")
                self._fail_all(RuntimeError("raft storage failure"))
                raise

    async def _process(self) -> None:
        node = self.node
        if node is None:
            return
        if self._pending or self._deferred:
            pending, self._pending = self._pending, []
            if self._deferred:
                # Refused during a leadership transfer: try again, ahead of the newer ones. A transfer ends
                # within an election timeout; the proposer's own timeout bounds the wait in any case.
                pending = [p for p in self._deferred if not p[1].done()] + pending
                self._deferred = []
            if node.role is raftnode.Role.LEADER:
                try:
                    indexes = node.propose_batch(d for d, _ in pending)
                except raftnode.ProposalDroppedError as exc:
                    if node.status().lead_transferee is not None:
                        # Leadership is being handed over. Nothing was appended, so each proposal is tried
                        # again once the transfer ends: here if it failed, else forwarded to the new leader,
                        # and the client sees a write, not the hand-over.
                        self._deferred = pending
                    else:
                        self._refuse(pending, exc)
                except raftnode.RaftError as exc:
                    self._refuse(pending, NotLeaderError(self.leader_address() or None) if isinstance(
                        exc, raftnode.NotLeaderError) else exc)  # fmt: skip
                else:
                    appended = time.perf_counter()
                    for i, (_, fut) in zip(indexes, pending, strict=True):
                        self._proposals[i] = Proposal(node.term, fut, appended)
                    self.observer.proposed(len(pending))
            else:
                for data, fut in pending:
                    asyncio.get_running_loop().create_task(self._forward(data, fut))
        while node.has_ready():
            rd = node.ready()
            self._persist(rd)
            # A leader's AppendEntries promise nothing about its own disk (the core counts its own entries
            # only once advance() says they are durable), so they go out before the fsync: followers write
            # while the leader writes. Votes and acknowledgements wait for the fsync.
            later = []
            for msg in rd.messages:
                if isinstance(msg, AppendEntries | Heartbeat):
                    self._send(msg)
                else:
                    later.append(msg)
            if rd.must_sync and self._wal is not None:
                # In a thread, so the event loop keeps parsing requests that join the next batch.
                await asyncio.to_thread(self._wal.sync)
            for msg in later:
                self._send(msg)
            for e in rd.committed_entries:
                self._apply(e)
            for rs in rd.read_states:
                fut = self._reads.pop(rs.context, None)
                if fut is not None and not fut.done():
                    fut.set_result(rs.index)
            for ctx in rd.dropped_reads:
                fut = self._reads.pop(ctx, None)
                if fut is not None and not fut.done():
                    fut.set_exception(NotLeaderError(None))
            node.advance(rd)
        self._wake_appliers(node.applied_index)
        if node.role is not self._role:
            self._report_role(node.role)
        is_leader = node.role is raftnode.Role.LEADER
        if is_leader != self._was_leader:
            self._was_leader = is_leader
            self._leader_since = time.monotonic() if is_leader else None
            log.info("raft role changed", role=node.role.value, term=node.term)
            if not is_leader:
                # Proposals may still commit under the new leader: keep waiting for them (their entries'
                # terms tell), but reads in flight on this leader are gone.
                for fut in list(self._reads.values()):
                    if not fut.done():
                        fut.set_exception(NotLeaderError(None))
                self._reads.clear()
            for cb in self._leader_callbacks:
                cb(is_leader)
        self._maybe_snapshot()

    def _report_role(self, role: raftnode.Role) -> None:
        """Tell the observer the role changed. A leader is always elected as a candidate first, even when
        the election finished before the loop saw the candidate (a single server wins its own vote)."""
        previous, self._role = self._role, role
        if role is raftnode.Role.PRE_CANDIDATE:
            return  # hashicorp/raft has no pre-vote state to count
        if role is raftnode.Role.LEADER and previous is not raftnode.Role.CANDIDATE:
            self.observer.role_changed(raftnode.Role.CANDIDATE.value)
        self.observer.role_changed(role.value)
        if role is not raftnode.Role.LEADER:
            self._unacked.clear()

    @staticmethod
    def _refuse(pending: list[tuple[bytes, asyncio.Future[Any]]], exc: Exception) -> None:
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(exc)

    def _apply(self, e: Entry) -> None:
        if e.kind == EntryKind.NORMAL:
            started = time.perf_counter()
            result = self.fsm.apply(e.index, e.data)
            self.observer.fsm_applied(time.perf_counter() - started)
        else:
            self.fsm.advance(e.index)
            result = None
            if e.kind == EntryKind.CONFIG:
                conf, change = decode_config_entry(e.data)
                if change.context:
                    with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):
                        info = msgpack.unpackb(change.context, raw=False)
                        self.servers[change.node_id] = ServerInfo(change.node_id, str(info["a"]), str(info.get("n", "")),
                                                                  str(info.get("h", "")))  # fmt: skip
                        self._save_servers()
                if change.kind is ConfChangeKind.REMOVE_NODE and change.node_id != self.id:
                    sender = self._senders.pop(change.node_id, None)
                    if sender is not None:
                        asyncio.get_running_loop().create_task(sender.close())
        prop = self._proposals.pop(e.index, None)
        if prop is not None and prop.appended:
            self.observer.committed(time.perf_counter() - prop.appended)
        if prop is not None and not prop.future.done():
            if prop.term == e.term:
                prop.future.set_result(result)
            else:
                prop.future.set_exception(NotLeaderError(None))  # overwritten by another leader's entry

    def _wake_appliers(self, applied: int) -> None:
        if not self._apply_waiters:
            return
        keep = []
        for index, fut in self._apply_waiters:
            if applied >= index:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, fut))
        self._apply_waiters = keep

    def _fail_all(self, exc: Exception) -> None:
        for p in self._proposals.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self._proposals.clear()
        self._refuse(self._pending, exc)
        self._pending.clear()
        self._refuse(self._deferred, exc)
        self._deferred.clear()

    # ------------------------------------------------------------------ network

    def _send(self, msg: Message) -> None:
        if type(msg) is AppendEntries and msg.entries:
            unacked = self._unacked.get(msg.dst)
            self._unacked[msg.dst] = (time.perf_counter(), len(msg.entries)) if unacked is None \
                else (unacked[0], unacked[1] + len(msg.entries))  # fmt: skip
        sender = self._senders.get(msg.dst)
        if sender is None:
            dst = msg.dst
            sender = self._senders[dst] = PeerSender(
                dst, lambda: self.servers[dst].address if dst in self.servers else None,
                self.opts.ssl_client, self.opts.server_hostname, self.opts.source_ip, self._link_timeouts,
            )  # fmt: skip
        sender.send(msg)

    def _check_links(self) -> None:
        """Once a tick: reset the stream to any peer that has gone silent while bytes wait on it
        (``registry.raft.links``), so that after a heal nothing fresh queues behind a stale backlog."""
        node = self.node
        if node is None or not self._senders:
            return
        policy = self._links
        status = node.status()
        self._last_leader = policy.followed(status.leader_id, self.id, self._last_leader)
        for peer in policy.silent_peers(status, self._last_leader):
            sender = self._senders.get(peer)
            if sender is None:
                continue
            age = sender.connected_for()
            if age is not None and policy.should_reset(sender.outstanding(), age / self.opts.tick):
                silent = status.peers[peer].ticks_since_heard if peer in status.peers \
                    else status.ticks_since_leader_contact  # fmt: skip
                sender.reset(f"nothing heard from it for {silent * self.opts.tick:.2f}s while bytes waited")

    def _on_message(self, msg: Message) -> None:
        if self.node is None:
            if self.opts.bootstrap_expect or self.opts.join:
                # A leader is reaching out: we were added to an existing cluster while bootstrapping.
                self._join_empty()
            else:
                return
        assert self.node is not None
        if msg.dst != self.id:
            return
        if type(msg) is AppendEntriesResponse and self._unacked:
            unacked = self._unacked.pop(msg.src, None)
            if unacked is not None and not msg.reject:
                self.observer.replicated(msg.src, unacked[1], time.perf_counter() - unacked[0])
        try:
            self.node.step(msg)
        except raftnode.RaftError as exc:
            log.warning("raft message refused", error=str(exc), type=type(msg).__name__)
            return
        self._wake.set()

    async def _forward(self, data: bytes, fut: asyncio.Future[Any]) -> None:
        """Send a follower's proposal to the leader. Retried only when it certainly did not reach a leader
        (connection refused, or "not the leader"): a call that may have been delivered is never resent,
        its outcome is reported unknown instead."""
        deadline = time.monotonic() + self.opts.leader_wait
        try:
            while True:
                leader = await self._await_leader()
                if leader.id == self.id:
                    self._pending.append((data, fut))
                    self._wake.set()
                    return
                try:
                    reply = await self.rpc_client(leader.address).call("apply", data, timeout=PROPOSAL_TIMEOUT)
                except RPCError as exc:
                    retryable = exc.status == 503 or exc.message.startswith("cannot reach server")
                    if not retryable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
                    continue
                result = self.codec.decode_result(reply)
                # Read your writes here: a caller that next reads from (or presents a token it just created
                # to) this server must see the write, so wait until this server has applied up to the
                # leader's read index, which the write's own index cannot exceed.
                with contextlib.suppress(TimeoutError, NotLeaderError, RPCError):
                    async with asyncio.timeout(FORWARD_CATCH_UP):
                        await self.barrier_read("default")
                if not fut.done():
                    fut.set_result(result)
                return
        except RPCError as exc:
            if not fut.done():
                fut.set_exception(NotLeaderError(None) if exc.status == 503 else exc)
        except Exception as exc:  # noqa: BLE001
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ Consensus protocol

    async def propose(self, cmd: Any) -> Any:
        if self.node is None:
            raise NotLeaderError(None)
        return await self._propose_bytes(self.codec.encode_command(cmd))

    def leader_address(self) -> str:
        info = self._leader_info()
        return info.address if info else ""

    def peers(self) -> list[str]:
        if self.node is None:
            return []
        return [self.servers[v].address for v in sorted(self.node.configuration.voters) if v in self.servers]

    def known_leader(self) -> bool:
        return self._leader_info() is not None

    def last_contact_ms(self) -> int:
        if self.node is None:
            return 0
        if self.node.role is raftnode.Role.LEADER:
            return 0
        return int(self.node.status().ticks_since_leader_contact * self.opts.tick * 1000)

    def is_leader(self) -> bool:
        return self.node is not None and self.node.role is raftnode.Role.LEADER

    def on_leader_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(leading)`` from the loop whenever this server gains or loses leadership (as
        hashicorp/raft's ``LeaderCh``)."""
        self._leader_callbacks.append(callback)

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        """Call an RPC method on the leader, waiting up to ``leader_wait`` for one to be known."""
        leader = await self._await_leader()
        return await self.rpc_client(leader.address).call(method, args, timeout=timeout)

    def advertise_http(self, address: str) -> None:
        """This server's HTTP address once its listener is bound (port 0 picks one), told in ``hello``."""
        self.servers[self.id].http = address

    def http_target(self) -> str | None:
        info = self._leader_info()
        return info.http if info is not None and info.http else None

    async def refresh(self) -> bool:
        return self.known_leader()

    def forget_leader(self) -> None:
        return None  # the core tracks the leader from its messages
