"""The load generator of ``bench.fleet``: thousands of simulated client agents in one process, speaking the
real gossip protocol to three real servers.

Run by ``bench.fleet`` as ``python -m bench.fleet_sim --servers ... --key ... --port ...`` pinned to its own
core; it reads one JSON command a line on stdin and answers one JSON line each on stdout.

What is real and what is modelled
=================================

Every simulated agent is a ``GossipNode`` (``registry.gossip.core``) with its own name, incarnation, probe
schedule, suspicion timers and broadcast queue, at its own address ``127.77.x.y:PORT``.  Everything between
a simulated agent and a server is the real thing: the wire codec (``messages``), AES-GCM sealing with the
servers' key (``EncryptedCodec``), UDP for probes, acks, ping-reqs and gossip, TCP for push-pull and the
fallback ping.  Two things are modelled, because the real thing is quadratic and a pool of 10,000 agents
would need 10,000 machines' memory and CPU:

* **Partial views.**  A real agent knows every member (10,000 x 10,000 member records here would take tens
  of GB, and disseminating each join to every member 10^8 message deliveries).  A simulated agent knows the
  ``view`` members it was introduced to when it joined (a symmetric random graph of degree about
  ``--view``), and news about anyone else is filtered out before its core sees it.  It still probes one
  member per probe interval, so each member is probed about once an interval by its neighbours, as in a
  full pool.  The servers know everyone, as they do in a real pool, and are in no agent's view: a real
  server is probed about once a probe interval by a random member, which the generator does explicitly
  (``_probe_servers``), where letting every view include the servers would probe each of them N / view
  times an interval.
* **The pool's dissemination toward the servers.**  In a real pool each piece of news reaches a given
  member (a server too) about ``retransmit_limit`` times, from random members over a few gossip rounds.
  The generator taps the news its agents exchange and sends each distinct piece to every server that many
  times, a few packets per gossip interval (``_pump``), sealed like any agent's packets.

Packets between two simulated agents are delivered in memory as message objects (encoded once to count
their bytes, not sealed or decoded): per-agent figures are the generator's CPU and those bytes, divided
by the agents.  A server's push-pull with an agent (and the agents' own push-pulls that land on servers,
one per server per scaled interval) carry the whole fleet's member list, as a real exchange would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import random
import socket
import struct
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry import CONSUL_VERSION
from registry.gossip.broadcast import BroadcastQueue
from registry.gossip.codec import PacketRejected
from registry.gossip.config import GossipConfig, push_pull_interval, retransmit_limit
from registry.gossip.core import PACKET_OVERHEAD, GossipNode, Packet
from registry.gossip.keyring import Keyring, decode_key
from registry.gossip.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    MemberState,
    Message,
    MessageDecodeError,
    Ping,
    PushPull,
    PushState,
    StreamMessage,
    Suspect,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)
from registry.gossip.security import OVERHEAD, EncryptedCodec

IP_PKTINFO = 8  # Linux's socket option number (the socket module does not export it)
_FRAME = struct.Struct(">I")
SERVER_PROBE_SEQ = 1 << 31  # the generator's own probes of servers use sequence numbers from here up
PUMP_INTERVAL = 0.2  # the pool's gossip interval
PUMP_PACKETS = 3  # gossip packets a server receives per interval while news flows (gossip_nodes)
BUDGET = 1400 - PACKET_OVERHEAD - OVERHEAD


def member_host(i: int) -> str:
    """The loopback address of simulated agent ``i`` (all of 127/8 reaches the local host on Linux)."""
    if not 0 <= i < 250 * 250:
        raise ValueError("at most 62,500 simulated agents")
    return f"127.77.{i // 250}.{i % 250 + 1}"


def member_name(i: int) -> str:
    return f"sim-{i:05d}"


def client_tags(rng: random.Random, datacenter: str = "dc1") -> dict[str, str]:
    """A client agent's Serf tags, as ``registry.agent.membership.member_tags`` gives them."""
    return {"acls": "0", "build": f"{CONSUL_VERSION}:proconsul", "dc": datacenter,
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "role": "node", "segment": "",
            "vsn": "2", "vsn_max": "3", "vsn_min": "2"}  # fmt: skip


def pick_view(candidates: list[str], degree: Callable[[str], int], want: int, cap: int,
              rng: random.Random) -> list[str]:  # fmt: skip
    """Up to ``want`` distinct neighbours for a joiner, among ``candidates`` whose degree is under ``cap``
    (so the first members do not end up knowing everyone)."""
    if len(candidates) <= want:
        return [c for c in candidates if degree(c) < cap] or list(candidates)
    chosen: set[str] = set()
    for _ in range(want * 8):
        c = candidates[rng.randrange(len(candidates))]
        if c not in chosen and degree(c) < cap:
            chosen.add(c)
            if len(chosen) == want:
                break
    return sorted(chosen)


def in_view(view: set[str], me: str, msg: Message) -> bool:
    """Whether a simulated agent with ``view`` takes ``msg``: news only about itself or its view."""
    match msg:
        case Alive() | Suspect() | Dead():
            return msg.node == me or msg.node in view
    return True


def news_key(msg: Message) -> tuple[Any, ...] | None:
    """What makes two pieces of news the same piece (a suspicion from another accuser is a confirmation)."""
    match msg:
        case Alive():
            return ("alive", msg.node, msg.incarnation)
        case Suspect():
            return ("suspect", msg.node, msg.incarnation, msg.source)
        case Dead():
            return ("dead", msg.node, msg.incarnation, msg.left)
    return None


@dataclass(slots=True)
class Sim:
    index: int
    name: str
    addr: Address
    core: GossipNode
    tags: dict[str, str]
    view: set[str] = field(default_factory=set)
    state: str = "alive"  # alive | dead | paused
    backlog: list[list[Message]] = field(default_factory=list)
    due: float = float("inf")


@dataclass(slots=True)
class ServerLink:
    name: str
    addr: Address
    news: BroadcastQueue = field(default_factory=BroadcastQueue)


class Fleet:
    def __init__(self, servers: list[tuple[str, Address]], key: str, port: int, view: int, seed: int) -> None:
        self.port = port
        self.view_size = view
        self.rng = random.Random(seed)
        self.codec = EncryptedCodec(Keyring([decode_key(key)]))
        self.config = GossipConfig()
        self.servers = [ServerLink(n, a) for n, a in servers]
        self.server_addrs = {s.addr for s in self.servers}
        self.sims: list[Sim] = []
        self.by_name: dict[str, Sim] = {}
        self.by_host: dict[str, Sim] = {}
        self.alive: list[str] = []
        self._alive_pos: dict[str, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._work: deque[tuple[Any, ...]] = deque()
        self._seen: dict[tuple[Any, ...], float] = {}
        self._probes: dict[int, tuple[str, float]] = {}
        self._seq = SERVER_PROBE_SEQ
        self._states_frame: tuple[int, bytes] | None = None
        self._version = 0
        self.stats: Counter[str] = Counter()
        self.rtts: list[float] = []
        self.joins: list[float] = []
        self.suspected: Counter[str] = Counter()  # suspicions of each agent seen in the fleet's traffic
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._accused: list[tuple[Sim, Message]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", self.port))
        sock.setblocking(False)
        self.sock = sock
        self.loop.add_reader(sock.fileno(), self._on_readable)
        self._tcp = await asyncio.start_server(self._on_stream, "0.0.0.0", self.port, reuse_address=True, backlog=512)
        for coro, name in ((self._clock(), "clock"), (self._pump(), "pump"), (self._probe_servers(), "probe"),
                           (self._push_pulls(), "push-pull")):  # fmt: skip
            self._tasks.append(self.loop.create_task(coro, name=name))

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    # ------------------------------------------------------------------ the agents

    def add(self) -> Sim:
        """A new agent: its core, its neighbours (who learn of it as a join's news), and its address."""
        i = len(self.sims)
        name, addr = member_name(i), Address(member_host(i), self.port)
        now = self.now()
        tags = client_tags(self.rng)
        core = GossipNode(name, addr, now=now, rng=random.Random(self.rng.getrandbits(64)), config=self.config,
                          tags=tags, packet_overhead=OVERHEAD)  # fmt: skip
        sim = Sim(i, name, addr, core, tags)
        neighbours = pick_view(self.alive, lambda n: len(self.by_name[n].view), self.view_size, 2 * self.view_size,
                               self.rng)  # fmt: skip
        sim.view.update(neighbours)
        self.sims.append(sim)
        self.by_name[name] = sim
        self.by_host[addr.host] = sim
        self._alive_pos[name] = len(self.alive)
        self.alive.append(name)
        self._version += 1
        if neighbours:
            states = tuple(PushState(n, self.by_name[n].addr, self.by_name[n].tags, self.by_name[n].core.incarnation,
                                     MemberState.ALIVE) for n in neighbours)  # fmt: skip
            core.handle_stream(now, PushPull(False, name, states))
        self._reschedule(sim)
        me = Alive(core.incarnation, name, addr, tags)
        for n in neighbours:
            other = self.by_name[n]
            other.view.add(name)
            self._work.append(("deliver", other, [me]))
        self._run()
        return sim

    def kill(self, count: int) -> list[str]:
        """Stop ``count`` random live agents dead: no more packets in or out, as a machine losing power."""
        victims = self.rng.sample(self.alive, min(count, len(self.alive)))
        for name in victims:
            self._drop_alive(name)
            self.by_name[name].state = "dead"
        self._version += 1
        return victims

    def pause(self, seconds: float, count: int) -> list[str]:
        """``count`` live agents stop running for ``seconds`` (a GC pause, SIGSTOP); then they read their
        backlogs."""
        assert self.loop is not None
        names = self.rng.sample(self.alive, min(count, len(self.alive)))
        for name in names:
            sim = self.by_name[name]
            sim.state = "paused"
            self.loop.call_later(seconds, self._resume, sim)
        return names

    def _resume(self, sim: Sim) -> None:
        sim.state = "alive"
        now = self.now()
        backlog, sim.backlog = sim.backlog, []
        sim.core.tick(now)
        for msgs in backlog:
            sim.core.receive(now, msgs)
        self._flush(sim)
        self._run()

    def _drop_alive(self, name: str) -> None:
        pos = self._alive_pos.pop(name)
        last = self.alive.pop()
        if last != name:
            self.alive[pos] = last
            self._alive_pos[last] = pos

    def describe(self, name: str) -> dict[str, Any]:
        sim = self.by_name[name]
        return {"name": name, "state": sim.state, "incarnation": sim.core.incarnation,
                "refuted": sim.core.stats["refuted_suspect"] + sim.core.stats["refuted_dead"],
                "stalls": sim.core.stats["stalls"], "suspicions_seen": self.suspected[name]}  # fmt: skip

    # ------------------------------------------------------------------ the protocol loop

    def _reschedule(self, sim: Sim) -> None:
        due = sim.core.next_deadline()
        if due != sim.due:
            sim.due = due
            if due != float("inf"):
                heapq.heappush(self._heap, (due, sim.index))
                if self._heap[0][1] == sim.index:
                    self._wake.set()

    async def _clock(self) -> None:
        while True:
            now = self.now()
            heap = self._heap
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                sim = self.sims[i]
                if sim.state != "alive" or sim.due != due:
                    continue
                sim.due = float("inf")
                sim.core.tick(now)
                self._flush(sim)
                self._run()
                self.stats["ticks"] += 1
            delay = min(0.05, heap[0][0] - self.now()) if heap else 0.05
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))

    def _flush(self, sim: Sim) -> None:
        core = sim.core
        for out in core.take_outbox():
            if isinstance(out, Packet):
                self.stats["agent_packets_out"] += 1
                encoded = [encode_message(m) for m in out.messages]
                self.stats["agent_bytes_out"] += len(encode_packet(encoded)) + OVERHEAD
                target = self.by_host.get(out.to.host)
                if target is not None and out.to.port == self.port:
                    self._tap(out.messages)
                    self._work.append(("deliver", target, list(out.messages)))
                elif out.to in self.server_addrs:
                    self._send(out.to, encoded)
                else:
                    self.stats["packets_unroutable"] += 1
            else:
                self._work.append(("stream", sim, out))
        core.take_events()
        core.take_pings()
        self._reschedule(sim)

    def _run(self) -> None:
        """Deliver what the agents sent each other (a queue, not recursion: a reply can cause a reply)."""
        work = self._work
        while work:
            item = work.popleft()
            if item[0] == "deliver":
                self._deliver(item[1], item[2])
            else:
                _, sim, req = item
                target = self.by_host.get(req.to.host)
                reply: StreamMessage | None = None
                if target is not None and target.state == "alive" and req.to.port == self.port:
                    reply = target.core.handle_stream(self.now(), self._filter_stream(target, req.message))
                    self._flush(target)
                if sim.state == "alive":
                    sim.core.stream_response(self.now(), req.token,
                                             None if reply is None else self._filter_stream(sim, reply))  # fmt: skip
                    self._flush(sim)

    def _deliver(self, sim: Sim, msgs: list[Message]) -> None:
        if sim.state == "dead":
            return
        kept = [m for m in msgs if in_view(sim.view, sim.name, m)]
        if not kept:
            return
        if sim.state == "paused":
            sim.backlog.append(kept)
            return
        sim.core.receive(self.now(), kept)
        self._flush(sim)

    def _filter_stream(self, sim: Sim, msg: StreamMessage) -> StreamMessage:
        if isinstance(msg, PushPull):
            keep = sim.view
            return PushPull(msg.join, msg.source, tuple(s for s in msg.states if s.name in keep or s.name == sim.name))
        return msg

    # ------------------------------------------------------------------ toward the servers

    def _tap(self, msgs: tuple[Message, ...] | list[Message], to_servers: bool = True) -> None:
        """News the agents exchange reaches the servers too (each server's own transmit-limited queue, as
        every member has), and an accusation reaches the accused (the epidemic reaches every member)."""
        now = self.now()
        for m in msgs:
            key = news_key(m)
            if key is None or key in self._seen:
                continue
            self._seen[key] = now
            assert isinstance(m, Alive | Suspect | Dead)
            if isinstance(m, Suspect | Dead) and m.node in self.by_name:
                if isinstance(m, Suspect):
                    self.suspected[m.node] += 1
                self._accused.append((self.by_name[m.node], m))
            if to_servers:
                size = len(encode_message(m))
                # Different accusers reach a server through different members: confirmations, not
                # replacements of each other in one queue.
                name = f"{m.node}\x00{m.source}" if isinstance(m, Suspect) else m.node
                for s in self.servers:
                    s.news.queue(name, m, size)
        if len(self._seen) > 200_000:
            horizon = now - 120.0
            self._seen = {k: t for k, t in self._seen.items() if t > horizon}

    def _take_news(self, link: ServerLink, budget: int) -> list[bytes]:
        limit = retransmit_limit(self.config.retransmit_mult, len(self.alive) + len(self.servers))
        return [encode_message(m) for m in link.news.take(budget, 2, limit)]

    def _send(self, to: Address, encoded: list[bytes]) -> None:
        assert self.sock is not None
        data = self.codec.seal(encode_packet(encoded))
        self.stats["server_packets_out"] += 1
        self.stats["server_bytes_out"] += len(data)
        try:
            self.sock.sendto(data, (to.host, to.port))
        except OSError:
            self.stats["udp_errors"] += 1

    async def _pump(self) -> None:
        while True:
            await asyncio.sleep(PUMP_INTERVAL)
            accused, self._accused = self._accused, []
            for sim, msg in accused:
                self._deliver(sim, [msg])
            self._run()
            for link in self.servers:
                for _ in range(PUMP_PACKETS):
                    news = self._take_news(link, BUDGET)
                    if not news:
                        break
                    self._send(link.addr, news)
            self.stats["news_queued"] = sum(len(s.news) for s in self.servers)

    async def _probe_servers(self) -> None:
        """Each server is probed about once a probe interval by a random member, with news piggybacked."""
        while True:
            await asyncio.sleep(self.config.probe_interval)
            now = self.now()
            for t in [s for s, (_, at) in self._probes.items() if now - at > 5.0]:
                del self._probes[t]
                self.stats["server_probes_lost"] += 1
            if not self.alive:
                continue
            for link in self.servers:
                sim = self.by_name[self.alive[self.rng.randrange(len(self.alive))]]
                self._seq += 1
                self._probes[self._seq] = (link.name, now)
                ping = encode_message(Ping(self._seq, link.name, sim.name, sim.addr))
                self._send(link.addr, [ping, *self._take_news(link, BUDGET - len(ping) - 40)])

    async def _push_pulls(self) -> None:
        """The agents' own push-pulls that land on a server: one per server per scaled interval."""
        while True:
            span = push_pull_interval(self.config.push_pull_interval, len(self.alive) + len(self.servers))
            await asyncio.sleep(span / max(1, len(self.servers)) * (0.5 + self.rng.random()))
            if self.alive:
                sim = self.by_name[self.alive[self.rng.randrange(len(self.alive))]]
                link = self.rng.choice(self.servers)
                with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                    await self.exchange(link.addr, self._fleet_frame(sim.name, False))

    def _fleet_states(self) -> tuple[PushState, ...]:
        return tuple(PushState(s.name, s.addr, s.tags, s.core.incarnation, MemberState.ALIVE)
                     for s in (self.by_name[n] for n in self.alive))  # fmt: skip

    def _fleet_frame(self, source: str, join: bool) -> bytes:
        """A push-pull carrying the whole fleet (encoded once per membership change, sealed per use)."""
        if self._states_frame is None or self._states_frame[0] != self._version:
            self._states_frame = (self._version, encode_message(PushPull(False, "", self._fleet_states())))
        # The cached encoding has an empty source and join=false: swap in the header fields.
        return self._restamp(self._states_frame[1], source, join)

    @staticmethod
    def _restamp(encoded: bytes, source: str, join: bool) -> bytes:
        # [6, join, source, states]: re-encode the small header and keep the states' bytes as they are.
        import msgpack

        head_empty = msgpack.packb([6, False, ""], use_bin_type=True)[1:]  # without the array header
        assert encoded[0] == 0x94 and encoded[1 : 1 + len(head_empty)] == head_empty
        head = msgpack.packb([6, join, source], use_bin_type=True)[1:]
        return bytes((1, 0x94)) + head + encoded[1 + len(head_empty) :]

    async def exchange(self, to: Address, frame: bytes) -> int:
        """One TCP exchange with a server: send a sealed frame, read the reply (opened, not decoded)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(to.host, to.port), 10.0)
        try:
            sealed = self.codec.seal(frame)
            writer.write(_FRAME.pack(len(sealed)) + sealed)
            await writer.drain()
            (size,) = _FRAME.unpack(await asyncio.wait_for(reader.readexactly(4), 10.0))
            data = await asyncio.wait_for(reader.readexactly(size), 10.0)
            self.codec.open(data)
            self.stats["stream_bytes_out"] += len(sealed) + 4
            self.stats["stream_bytes_in"] += size + 4
            return size
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def join(self, sim: Sim) -> None:
        """A joiner's push-pull with a server (its seed): only itself in it, the server's list back."""
        link = self.servers[sim.index % len(self.servers)]
        me = PushState(sim.name, sim.addr, sim.tags, sim.core.incarnation, MemberState.ALIVE)
        started = time.monotonic()
        for _ in range(5):
            try:
                await self.exchange(link.addr, encode_stream(PushPull(True, sim.name, (me,))))
                self.joins.append(time.monotonic() - started)
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError, PacketRejected):
                self.stats["join_retries"] += 1
                await asyncio.sleep(1.0)
        self.stats["joins_failed"] += 1

    # ------------------------------------------------------------------ sockets

    def _on_readable(self) -> None:
        assert self.sock is not None
        for _ in range(256):
            try:
                data, anc, _flags, _src = self.sock.recvmsg(65535, socket.CMSG_SPACE(12))
            except BlockingIOError:
                break
            except OSError:
                self.stats["udp_errors"] += 1
                break
            dst = ""
            for level, kind, value in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                    dst = socket.inet_ntoa(value[8:12])
            self.stats["server_packets_in"] += 1
            self.stats["server_bytes_in"] += len(data)
            sim = self.by_host.get(dst)
            if sim is None:
                self.stats["packets_stray"] += 1
                continue
            try:
                msgs = decode_packet(self.codec.open(data))
            except (PacketRejected, MessageDecodeError):
                self.stats["packets_dropped"] += 1
                continue
            kept: list[Message] = []
            now = self.now()
            for m in msgs:
                if isinstance(m, Ack) and m.seq in self._probes:
                    _, at = self._probes.pop(m.seq)
                    self.rtts.append(now - at)
                    continue
                kept.append(m)
            self._tap([m for m in kept if isinstance(m, Suspect | Dead)], to_servers=False)
            if kept:
                self._deliver(sim, kept)
                self._run()

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            dst = writer.get_extra_info("sockname")[0]
            sim = self.by_host.get(dst)
            (size,) = _FRAME.unpack(await asyncio.wait_for(reader.readexactly(4), 10.0))
            data = await asyncio.wait_for(reader.readexactly(size), 10.0)
            self.stats["stream_bytes_in"] += size + 4
            msg = decode_stream(self.codec.open(data))
            if sim is None or sim.state != "alive":
                return
            if isinstance(msg, PushPull):
                frame = self._fleet_frame(sim.name, False)
                self.stats["push_pulls_answered"] += 1
            else:
                reply = sim.core.handle_stream(self.now(), msg)
                self._flush(sim)
                self._run()
                if reply is None:
                    return
                frame = encode_stream(reply)
            sealed = self.codec.seal(frame)
            writer.write(_FRAME.pack(len(sealed)) + sealed)
            self.stats["stream_bytes_out"] += len(sealed) + 4
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, PacketRejected, MessageDecodeError):
            self.stats["streams_dropped"] += 1
        finally:
            writer.close()

    # ------------------------------------------------------------------ commands

    async def grow(self, to: int, rate: float, concurrency: int = 16) -> dict[str, Any]:
        started = time.monotonic()
        sem = asyncio.Semaphore(concurrency)
        pending: set[asyncio.Task[None]] = set()

        async def joined(sim: Sim) -> None:
            async with sem:
                await self.join(sim)

        n0 = len(self.sims)
        for k in range(to - n0):
            wait = started + k / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            sim = self.add()
            task = asyncio.get_running_loop().create_task(joined(sim))
            pending.add(task)
            task.add_done_callback(pending.discard)
        while pending:
            await asyncio.wait(set(pending))
        return {"members": len(self.sims), "seconds": time.monotonic() - started}

    def report(self) -> dict[str, Any]:
        t = os.times()
        rtts, self.rtts = self.rtts, []
        joins, self.joins = self.joins, []
        stalls = sum(s.core.stats["stalls"] for s in self.sims)
        return {"cpu": t.user + t.system, "at": time.monotonic(), "alive": len(self.alive), "stats": dict(self.stats),
                "rtts": rtts, "joins": joins, "stalls": stalls,
                "heap": len(self._heap), "rss_mb": _rss_mb()}  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def serve(args: argparse.Namespace) -> None:
    servers = []
    for item in args.servers.split(","):
        name, _, addr = item.partition("=")
        host, _, port = addr.rpartition(":")
        servers.append((name, Address(host, int(port))))
    fleet = Fleet(servers, args.key, args.port, args.view, args.seed)
    await fleet.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "grow":
            out: Any = await fleet.grow(int(cmd["to"]), float(cmd["rate"]))
        elif op == "kill":
            out = {"killed": fleet.kill(int(cmd["count"])), "at": time.monotonic()}
        elif op == "pause":
            out = {"paused": fleet.pause(float(cmd["seconds"]), int(cmd["count"])), "at": time.monotonic()}
        elif op == "describe":
            out = fleet.describe(cmd["name"])
        elif op == "report":
            out = fleet.report()
        else:
            break
        print(json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", required=True, help="name=host:port,... (the servers' serf_lan addresses)")
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--view", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
