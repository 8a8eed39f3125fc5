"""Deterministic simulator of a gossip pool (the raft simulator's sibling, tests/raft/sim.py).

One ``random.Random(seed)`` decides everything: each node's own generator, packet latency (hence
reordering) and loss; the test decides the faults: partitions, killed nodes (their socket closed: packets
vanish, TCP is refused), paused nodes (no CPU: packets wait in the socket buffer, TCP connects but is not
answered, timers do not run; on resume the backlog is read first, as a process woken from SIGSTOP does).

Virtual time only; the cores are ``registry.gossip.core.GossipNode`` exactly as the driver runs them.
Packets travel as message objects for speed; ``wire=True`` sends every packet and stream frame through
encode/decode so the codec carries real traffic.  Every membership event any node reports is recorded
with the virtual time, which is what the tests assert on.

Replay a run: ``.venv/bin/python -m tests.gossip.sim --seed 7 --nodes 100 --seconds 60 --loss 0.1``.
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from registry.gossip.config import GossipConfig
from registry.gossip.core import (
    EventKind,
    GossipNode,
    MemberEvent,
    Packet,
    QueryAnswer,
    QueryDone,
    QueryEvent,
    StreamRequest,
)
from registry.gossip.messages import (
    Address,
    Message,
    PushPull,
    StreamMessage,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)

INBOX_LIMIT = 2000  # packets a paused node's socket buffer holds (~200 KiB of small packets)


class Status(Enum):
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"


@dataclass
class SimNode:
    name: str
    addr: Address
    core: GossipNode
    status: Status = Status.RUNNING
    scheduled: float = float("inf")
    inbox: deque[tuple[str, object]] = field(default_factory=deque)
    pending: set[int] = field(default_factory=set)  # stream tokens awaiting a reply or a timeout
    # Query handlers by query name: the answer's payload, or None for no answer.
    handlers: dict[str, Callable[[QueryEvent], bytes | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Observed:
    observer: str
    event: MemberEvent

    @property
    def kind(self) -> EventKind:
        return self.event.kind

    @property
    def subject(self) -> str:
        return self.event.member.name


class Simulator:
    def __init__(
        self,
        seed: int,
        *,
        config: GossipConfig | None = None,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.0005, 0.005),
        wire: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or GossipConfig()
        self.loss = loss
        self.latency = latency
        self.wire = wire
        self.now = 0.0
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Address, str] = {}
        self.log: list[Observed] = []
        self.partition: dict[str, int] = {}  # node -> side; nodes on different sides cannot talk
        # Queries: what each member was asked (member, query), and each origin's answers and completion.
        self.queries_seen: list[tuple[str, QueryEvent]] = []
        self.answers: dict[tuple[str, int], list[QueryAnswer]] = {}
        self.done: dict[tuple[str, int], QueryDone] = {}
        self.packets = 0
        self.dropped = 0
        self._heap: list[tuple[float, int, str, tuple[object, ...]]] = []
        self._serial = 0
        self._next_port = 10000

    # -- building a pool -------------------------------------------------------------------------------

    def add(self, name: str, tags: dict[str, str] | None = None) -> SimNode:
        self._next_port += 1
        hi, lo = divmod(self._next_port, 256)
        addr = Address(f"10.0.{hi}.{lo}", 8301)
        core = GossipNode(name, addr, now=self.now, rng=random.Random(self.rng.getrandbits(64)),
                          config=self.config, tags=tags or {"role": "node"})  # fmt: skip
        node = SimNode(name, addr, core)
        self.nodes[name] = node
        self.by_addr[addr] = name
        self._after(node)
        return node

    def converged_pool(self, n: int, prefix: str = "n") -> list[str]:
        """``n`` members that already know each other, as if each had just finished a push-pull."""
        names = [f"{prefix}{i}" for i in range(n)]
        for name in names:
            self.add(name)
        states = [s for name in names for s in self.nodes[name].core._local_states()]  # noqa: SLF001
        for name in names:
            node = self.nodes[name]
            node.core.handle_stream(self.now, PushPull(False, name, tuple(states)))
            node.core.take_events()
            self._after(node)
        return names

    def join(self, name: str, seeds: Iterable[str]) -> None:
        node = self.nodes[name]
        node.core.join(self.now, [self.nodes[s].addr for s in seeds])
        self._after(node)

    # -- faults ----------------------------------------------------------------------------------------

    def kill(self, name: str) -> None:
        self.nodes[name].status = Status.KILLED
        self.nodes[name].inbox.clear()

    def pause(self, name: str) -> None:
        self.nodes[name].status = Status.PAUSED

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        node.status = Status.RUNNING
        node.scheduled = float("inf")
        while node.inbox:
            kind, payload = node.inbox.popleft()
            self._handle(node, kind, payload)
        self._after(node)

    def query(self, name: str, query_name: str, payload: bytes = b"", **kwargs: object) -> int:
        """Start a query at member ``name`` (``GossipNode.query``'s keyword arguments); returns its id."""
        node = self.nodes[name]
        qid = node.core.query(self.now, query_name, payload, **kwargs)  # type: ignore[arg-type]
        self.answers[(name, qid)] = []
        self._after(node)
        return qid

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        node.core.leave(self.now)
        self._after(node)

    def split(self, *sides: Iterable[str]) -> None:
        self.partition = {name: i for i, side in enumerate(sides) for name in side}

    def heal(self) -> None:
        self.partition = {}

    def _blocked(self, a: str, b: str) -> bool:
        return bool(self.partition) and self.partition.get(a, -1) != self.partition.get(b, -1)

    # -- running ---------------------------------------------------------------------------------------

    def run_until(self, t: float, stop: Callable[[], bool] | None = None, check_every: float = 0.05) -> None:
        """Run to virtual time ``t``, or until ``stop()`` (asked every ``check_every`` virtual seconds)."""
        next_check = self.now
        while self._heap and self._heap[0][0] <= t:
            when, _, kind, payload = heapq.heappop(self._heap)
            self.now = when
            self._dispatch(kind, payload)
            if stop is not None and self.now >= next_check:
                next_check = self.now + check_every
                if stop():
                    return
        self.now = max(self.now, t)

    def run_for(self, seconds: float, stop: Callable[[], bool] | None = None) -> None:
        self.run_until(self.now + seconds, stop)

    def _at(self, when: float, kind: str, payload: tuple[object, ...]) -> None:
        self._serial += 1
        heapq.heappush(self._heap, (when, self._serial, kind, payload))

    def _delay(self) -> float:
        lo, hi = self.latency
        return lo + (hi - lo) * self.rng.random()

    def _dispatch(self, kind: str, payload: tuple[object, ...]) -> None:
        if kind == "wake":
            name, when = payload
            node = self.nodes[name]  # type: ignore[index]
            if node.status is Status.RUNNING and node.scheduled == when:
                node.scheduled = float("inf")
                node.core.tick(self.now)
                self._after(node)
            return
        if kind == "stream_timeout":
            name, token = payload
            node = self.nodes[name]  # type: ignore[index]
            if token in node.pending:
                self._deliver(node, "reply", (token, None))
            return
        to = self.nodes.get(payload[0])  # type: ignore[arg-type]
        if to is not None:
            self._deliver(to, kind, payload[1:])

    def _deliver(self, node: SimNode, kind: str, payload: object) -> None:
        if node.status is Status.KILLED:
            return
        if node.status is Status.PAUSED:
            if kind != "packet" or len(node.inbox) < INBOX_LIMIT:
                node.inbox.append((kind, payload))
            return
        self._handle(node, kind, payload)

    def _handle(self, node: SimNode, kind: str, payload: object) -> None:
        core = node.core
        if kind == "packet":
            (messages,) = payload  # type: ignore[misc]
            if self.wire:
                messages = decode_packet(messages)
            core.receive(self.now, messages)
        elif kind == "stream":
            caller, token, message = payload  # type: ignore[misc]
            if self.wire:
                message = decode_stream(message)
            reply = core.handle_stream(self.now, message)
            if self.wire and reply is not None:
                reply = encode_stream(reply)
            self._at(self.now + self._delay(), "reply", (caller, token, reply))
        elif kind == "reply":
            token, reply = payload  # type: ignore[misc]
            if token not in node.pending:
                return
            node.pending.discard(token)
            if self.wire and reply is not None:
                reply = decode_stream(reply)
            core.stream_response(self.now, token, reply)
        self._after(node)

    def _after(self, node: SimNode) -> None:
        """Route what the core emitted and schedule its next wake-up."""
        core = node.core
        for q in core.take_queries():
            self.queries_seen.append((node.name, q))
            handler = node.handlers.get(q.name)
            payload = handler(q) if handler is not None else None
            if payload is not None:
                core.respond(self.now, q.id, q.origin, payload)
        for r in core.take_query_results():
            if isinstance(r, QueryDone):
                self.done[(node.name, r.id)] = r
            else:
                self.answers.setdefault((node.name, r.id), []).append(r)
        for out in core.take_outbox():
            if isinstance(out, Packet):
                self._send_packet(node, out)
            else:
                self._send_stream(node, out)
        for event in core.take_events():
            self.log.append(Observed(node.name, event))
        core.take_pings()
        deadline = max(core.next_deadline(), self.now)
        if deadline < node.scheduled:
            node.scheduled = deadline
            self._at(deadline, "wake", (node.name, deadline))

    def _send_packet(self, node: SimNode, packet: Packet) -> None:
        self.packets += 1
        dest = self.by_addr.get(packet.to)
        if dest is None or self._blocked(node.name, dest) or self.rng.random() < self.loss:
            self.dropped += 1
            return
        messages: object = packet.messages
        if self.wire:
            messages = encode_packet([encode_message(m) for m in packet.messages])
        self._at(self.now + self._delay(), "packet", (dest, messages))

    def _send_stream(self, node: SimNode, req: StreamRequest) -> None:
        node.pending.add(req.token)
        self._at(self.now + self.config.tcp_timeout, "stream_timeout", (node.name, req.token))
        dest = self.by_addr.get(req.to)
        if dest is None or self._blocked(node.name, dest) or self.nodes[dest].status is Status.KILLED:
            if dest is not None and not self._blocked(node.name, dest):  # refused at once
                self._at(self.now + self._delay(), "reply", (node.name, req.token, None))
            return
        message: StreamMessage | bytes = req.message
        if self.wire:
            message = encode_stream(req.message)
        self._at(self.now + self._delay(), "stream", (dest, node.name, req.token, message))

    # -- what the tests look at ------------------------------------------------------------------------

    def events(self, kind: EventKind, subject: str | None = None) -> list[Observed]:
        return [o for o in self.log if o.kind is kind and (subject is None or o.subject == subject)]

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.status is Status.RUNNING]

    def states_of(self, subject: str) -> dict[str, str]:
        """How every running node sees ``subject`` (Serf status), those that know it."""
        out = {}
        for n in self.live():
            m = n.core.member(subject)
            if m is not None:
                out[n.name] = m.state.name
        return out

    def all_see(self, subject: str, state: str, among: Iterable[str] | None = None) -> bool:
        """Every running member (of ``among``) but the subject sees it in ``state``: a MemberState name
        (ALIVE, SUSPECT, DEAD, LEFT) or a Serf status (alive, failed, left)."""
        names = set(among) if among is not None else {n.name for n in self.live()}
        names.discard(subject)
        for name in names:
            m = self.nodes[name].core.member(subject)
            if m is None or state not in (m.state.name, m.status):
                return False
        return True


def _main() -> None:
    ap = argparse.ArgumentParser(description="Run a simulated gossip pool and report what happened.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--kill", type=int, default=0, help="kill this many members at t=10 s")
    args = ap.parse_args()
    sim = Simulator(args.seed, loss=args.loss)
    names = sim.converged_pool(args.nodes)
    sim.run_for(10)
    for name in names[: args.kill]:
        sim.kill(name)
    sim.run_for(args.seconds - 10)
    failed = sim.events(EventKind.FAILED)
    false = [o for o in failed if sim.nodes[o.subject].status is Status.RUNNING]
    print(f"packets {sim.packets} dropped {sim.dropped} failed-events {len(failed)} false {len(false)}")


if __name__ == "__main__":
    _main()


__all__ = ["Simulator", "SimNode", "Status", "Observed", "Message"]
