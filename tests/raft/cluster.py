"""A hand-driven cluster for scripted Raft scenarios: every message sits in one FIFO queue until a test
delivers it, drops it, or lets a partition swallow it.  Persistence follows the driver contract exactly
(tests/raft/sim.py's Storage), so crashes and restarts see only what Readies persisted."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable

from registry.raft.messages import Entry, EntryKind, Message, Snapshot, TimeoutNow
from registry.raft.node import PersistentState, RaftConfig, RaftNode, ReadState, Role
from tests.raft.sim import Storage

MessageFilter = Callable[[Message], bool]


class Cluster:
    def __init__(
        self,
        ids: Iterable[str] = ("n1", "n2", "n3"),
        config: RaftConfig | None = None,
        states: dict[str, PersistentState] | None = None,
        seed: int = 0,
    ) -> None:
        self.ids = list(ids)
        self.config = config or RaftConfig(election_tick=10, heartbeat_tick=1)
        self.rng = random.Random(seed)
        boot = PersistentState.bootstrap(self.ids)
        self.storage: dict[str, Storage] = {}
        for i in self.ids:
            st = (states or {}).get(i, boot)
            self.storage[i] = Storage(
                st.hard_state, Snapshot(st.snapshot, b"") if st.snapshot else None, list(st.entries)
            )
        self.nodes: dict[str, RaftNode | None] = {}
        self.applied: dict[str, list[Entry]] = {}
        self.read_states: dict[str, list[ReadState]] = {}
        self.dropped_reads: dict[str, list[bytes]] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []  # every message any Ready asked to send, for assertions
        self.blocked: set[tuple[str, str]] = set()
        self.drop: MessageFilter | None = None  # messages for which this returns True are lost
        for i in self.ids:
            self.start(i)

    # ------------------------------------------------------------------ membership of the harness

    def start(self, node_id: str) -> RaftNode:
        if node_id not in self.storage:
            self.storage[node_id] = Storage()
            self.ids.append(node_id)
        st = self.storage[node_id]
        node = RaftNode(
            node_id,
            self.config,
            random.Random(self.rng.getrandbits(64)),
            st.persistent_state(),
            snapshot_source=lambda: st.snapshot if st.snapshot and st.snapshot.meta.index else None,
        )
        self.nodes[node_id] = node
        self.applied.setdefault(node_id, [])
        self.read_states.setdefault(node_id, [])
        self.dropped_reads.setdefault(node_id, [])
        return node

    def crash(self, node_id: str) -> None:
        self.nodes[node_id] = None

    def node(self, node_id: str) -> RaftNode:
        node = self.nodes[node_id]
        assert node is not None, f"{node_id} is down"
        return node

    def up(self) -> list[RaftNode]:
        return [n for i in self.ids if (n := self.nodes.get(i)) is not None]

    # ------------------------------------------------------------------ network

    def isolate(self, node_id: str, inbound: bool = True, outbound: bool = True) -> None:
        for other in self.ids:
            if other != node_id:
                if outbound:
                    self.blocked.add((node_id, other))
                if inbound:
                    self.blocked.add((other, node_id))

    def heal(self) -> None:
        self.blocked.clear()
        self.drop = None

    # ------------------------------------------------------------------ driving

    def process(self) -> None:
        """Run every pending Ready through the driver contract: persist, send, apply, advance."""
        busy = True
        while busy:
            busy = False
            for i in list(self.ids):
                node = self.nodes.get(i)
                if node is None or not node.has_ready():
                    continue
                busy = True
                rd = node.ready()
                st = self.storage[i]
                if rd.snapshot is not None:
                    st.install(rd.snapshot)
                    self.applied[i] = [Entry(rd.snapshot.meta.term, rd.snapshot.meta.index, EntryKind.NORMAL, b"<snapshot>")]
                st.write_entries(rd.entries)
                if rd.hard_state is not None:
                    st.hard_state = rd.hard_state
                self.queue.extend(rd.messages)
                self.sent.extend(rd.messages)
                self.applied[i].extend(rd.committed_entries)
                self.read_states[i].extend(rd.read_states)
                self.dropped_reads[i].extend(rd.dropped_reads)
                node.advance(rd)

    def deliver(self) -> int:
        """Deliver (or lose) every message queued right now; returns how many arrived."""
        self.process()
        batch = list(self.queue)
        self.queue.clear()
        arrived = 0
        for msg in batch:
            node = self.nodes.get(msg.dst)
            if node is None or (msg.src, msg.dst) in self.blocked or (self.drop is not None and self.drop(msg)):
                continue
            node.step(msg)
            arrived += 1
        self.process()
        return arrived

    def stabilize(self, max_rounds: int = 1000) -> None:
        for _ in range(max_rounds):
            self.process()
            if not self.queue:
                return
            self.deliver()
        raise AssertionError("cluster did not quiesce")

    def tick(self, n: int = 1, ids: Iterable[str] | None = None) -> None:
        chosen = list(ids) if ids is not None else list(self.ids)
        for _ in range(n):
            for i in chosen:
                node = self.nodes.get(i)
                if node is not None:
                    node.tick()
            self.stabilize()

    def leader(self) -> str | None:
        leaders = [n for n in self.up() if n.role is Role.LEADER]
        if not leaders:
            return None
        top = max(n.term for n in leaders)
        current = [n.id for n in leaders if n.term == top]
        assert len(current) == 1
        return current[0]

    def elect_any(self, max_ticks: int = 200) -> str:
        """Tick everyone until some server leads and its first entry has committed."""
        for _ in range(max_ticks):
            self.tick()
            lead = self.leader()
            if lead is not None and self.node(lead).status().commit_index >= self.node(lead).last_index:
                return lead
        raise AssertionError("no leader emerged")

    def force_campaign(self, node_id: str) -> None:
        """Make ``node_id`` campaign now, as a leadership transfer would (TimeoutNow)."""
        node = self.node(node_id)
        other = next(i for i in self.ids if i != node_id)
        node.step(TimeoutNow(node.term, other, node_id))
        self.stabilize()

    def sent_of(self, kind: type, src: str | None = None, dst: str | None = None) -> list[Message]:
        return [
            m
            for m in self.sent
            if isinstance(m, kind) and (src is None or m.src == src) and (dst is None or m.dst == dst)
        ]
