"""The asyncio driver of a gossip member: sockets and a timer around the pure ``GossipNode``.

One UDP socket and one TCP listener on the same port (Serf's LAN port, ``serf_lan``, 8301 by default), as
memberlist's NetTransport binds them.  UDP carries probes, acks and piggybacked news; TCP carries
push-pull state exchanges and the fallback ping.  Every packet and frame passes through the
``PacketCodec`` the driver is given (the encryption seam) and the bounded decoder; garbage, truncated,
oversized or rejected input is dropped and counted in ``stats``, never raised.

A stream frame on TCP is a 4-byte big-endian length and that many bytes of sealed frame; one request and
one reply per connection.

Consumers read ``members()`` and subscribe to membership events with ``events()``.  Serf's queries:
``query()`` asks the pool and gathers the answers until the deadline (or until as many as expected came);
``handle_query(name, handler)`` answers the queries of one name on this member.  Round-trip times of
direct probes feed the member's Vivaldi coordinate (``registry.coordinate``), whose encoding rides in our
acks as Serf's ping delegate does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from registry.coordinate import Client as CoordinateClient
from registry.coordinate import decode_coordinate, encode_coordinate
from registry.gcpause import GCHold
from registry.gossip.codec import PacketCodec, PacketRejected, PlainCodec
from registry.gossip.config import GossipConfig
from registry.gossip.core import (
    GossipNode,
    Member,
    MemberEvent,
    Packet,
    QueryAnswer,
    QueryError,
    QueryEvent,
    StreamRequest,
)
from registry.gossip.messages import (
    MAX_PACKET_BYTES,
    MAX_STREAM_BYTES,
    Address,
    MessageDecodeError,
    PushPull,
    StreamMessage,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)

__all__ = ["GossipDriver", "EventStream", "QueryResult", "QueryHandler", "DEFAULT_SERF_LAN_PORT", "UDP_RCVBUF"]

log = structlog.get_logger("proconsul.gossip")

DEFAULT_SERF_LAN_PORT = 8301
UDP_RCVBUF = 2 * 1024 * 1024  # memberlist's setUDPRecvBuf asks for 2 MiB
MAX_INBOUND_STREAMS = 128  # memberlist's maxPushPullRequests
# A push-pull of the whole member list is decoded and encoded in a worker thread once it is this large (a
# pool of 10,000 is about 880 KB and tens of ms of building its states, which on the event loop would hold
# up every packet and request meanwhile; in a thread the interpreter hands the loop its turn every 5 ms).
BIG_STREAM_BYTES = 64 * 1024
BIG_STREAM_STATES = 512
BIG_WORK_SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005
_FRAME_HEADER = struct.Struct(">I")


class BigWork:
    """Holds the process quiet while a whole member list is decoded or encoded in a worker thread, and
    (for one received) merged on the event loop: no cyclic garbage collection (``registry.gcpause``), and
    the interpreter lock handed between threads every ``BIG_WORK_SWITCH_INTERVAL`` rather than every 5 ms.

    A pool of 10,000 decodes into some 30,000 containers. With the collector on, they lived through
    young collections while the exchange ran, were promoted, and each exchange set off a full collection
    of the server's whole heap: 60-120 ms with nothing to collect, every push-pull, on all three servers
    (bench.fleet, traced). Held, they are freed by reference counting when the merge is done and no
    collection sees them. And while the worker thread decodes, the event loop waited up to the 5 ms
    switch interval for the lock each time it woke (a KV write wakes it several times).

    The switch interval is the process's, so holds are counted like the collector's. ``acquire`` and
    ``release`` run on the event loop's thread and may be repeated."""

    _holds = 0
    _switch_interval = 0.005

    def __init__(self) -> None:
        self._gc = GCHold()

    def acquire(self) -> None:
        if self._gc.held:
            return
        self._gc.acquire()
        if BigWork._holds == 0:
            BigWork._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(BIG_WORK_SWITCH_INTERVAL)
        BigWork._holds += 1

    def release(self) -> None:
        if not self._gc.held:
            return
        self._gc.release()
        BigWork._holds -= 1
        if BigWork._holds == 0:
            sys.setswitchinterval(BigWork._switch_interval)

    @staticmethod
    def holding() -> int:
        """How many holds are taken (0: the switch interval is as it was)."""
        return BigWork._holds


class EventStream:
    """One subscriber's membership events, in order.  A subscriber that falls more than ``maxsize`` behind
    loses the oldest events (counted in ``dropped``) and should re-read ``members()``."""

    def __init__(self, driver: GossipDriver, maxsize: int) -> None:
        self._driver = driver
        self._queue: asyncio.Queue[MemberEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _put(self, event: MemberEvent | None) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1

    def __aiter__(self) -> AsyncIterator[MemberEvent]:
        return self

    async def __anext__(self) -> MemberEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: float | None = None) -> MemberEvent | None:
        """The next event, or None at the end of the stream (or after ``timeout``)."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def discard(self) -> int:
        """Drop every queued event (a subscriber about to re-read ``members()``, which is newer than all of
        them); how many were dropped.  The end of the stream, if queued, stays."""
        n = 0
        while not self._queue.empty():
            if self._queue.get_nowait() is None:
                self._queue.put_nowait(None)
                break
            n += 1
        return n

    def close(self) -> None:
        self._driver._subscribers.discard(self)  # noqa: SLF001 - the driver's own helper
        self._put(None)


# Answers one query on this member: the response's payload, or None to send none.
QueryHandler = Callable[[QueryEvent], bytes | None]


@dataclass
class QueryResult:
    """What came back for one query: each member's answer and who acknowledged it (Serf's
    QueryResponse channels, gathered)."""

    id: int
    responses: dict[str, bytes] = field(default_factory=dict)
    acks: set[str] = field(default_factory=set)
    # The members expected to answer (alive, passing the filters, when it was asked).
    expected: frozenset[str] = frozenset()
    until_all: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def _add(self, answer: QueryAnswer) -> None:
        if answer.ack:
            self.acks.add(answer.node)
        else:
            self.responses[answer.node] = answer.payload
            if self.until_all and self.expected <= self.responses.keys():
                self.done.set()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, driver: GossipDriver) -> None:
        self._driver = driver

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._driver._on_packet(data)  # noqa: SLF001

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like, reported by Linux on the next socket call.
        self._driver.stats["udp_errors"] += 1


class GossipDriver:
    """A running gossip member.  ``await start()``, ``await join(...)``, ``members()``, ``events()``,
    and ``await leave()`` (graceful) or ``await stop()`` (as a crash looks to others)."""

    def __init__(
        self,
        name: str,
        *,
        bind: Address,
        advertise: Address | None = None,
        tags: Mapping[str, str] | None = None,
        config: GossipConfig | None = None,
        codec: PacketCodec | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config or GossipConfig()
        self.codec: PacketCodec = codec or PlainCodec()
        self._bind = bind
        self._advertise = advertise
        self._tags = dict(tags or {})
        self._rng = rng or random.Random()
        self._core: GossipNode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribers: set[EventStream] = set()
        self._join_waiters: dict[int, asyncio.Future[bool]] = {}
        self._inbound = 0
        self._left = asyncio.Event()
        self._stopped = False
        self.coordinate = CoordinateClient(rng=random.Random(self._rng.getrandbits(64)))
        self._query_handlers: dict[str, QueryHandler] = {}
        self._query_results: dict[int, QueryResult] = {}
        self.stats: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> Address:
        """Bind UDP and TCP on the same port (a free one for port 0) and start the protocol.  Returns the
        address advertised to others."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        host, port = self._bind
        for attempt in range(10):
            try:
                await self._bind_sockets(loop, host, port)
                break
            except OSError:
                if port != 0 or attempt == 9:
                    raise
        assert self._udp is not None
        bound = self._udp.get_extra_info("sockname")
        advertise = self._advertise or Address(host, bound[1])
        if self._advertise is None and host in ("0.0.0.0", "::"):
            raise ValueError("an advertise address is required when binding to all interfaces")
        if advertise.port == 0:
            advertise = Address(advertise.host, bound[1])
        self._core = GossipNode(self.name, advertise, now=loop.time(), rng=self._rng, config=self.config,
                                tags=self._tags, packet_overhead=self.codec.overhead)  # fmt: skip
        self._core.set_ack_payload(encode_coordinate(self.coordinate.coordinate))
        self._flush()
        return advertise

    async def _bind_sockets(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server = await asyncio.start_server(self._on_stream, host, port, family=family, reuse_address=True)
        chosen = server.sockets[0].getsockname()[1]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            sock.bind((host, chosen))
        except OSError:
            sock.close()
            server.close()
            await server.wait_closed()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=sock)
        self._tcp = server
        self._udp = transport

    async def stop(self) -> None:
        """Close the sockets at once, without a word to anyone: to the pool this member has failed."""
        if self._stopped:
            return
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
        for fut in self._join_waiters.values():
            if not fut.done():
                fut.set_result(False)
        for result in self._query_results.values():
            result.done.set()
        for sub in list(self._subscribers):
            sub.close()

    async def leave(self, timeout: float = 5.0) -> bool:
        """Announce a graceful leave, wait (up to ``timeout``, Serf's BroadcastTimeout) until the
        announcement was gossiped its full number of times, then stop.  True if it was."""
        core = self._require()
        core.leave(self._now())
        self._flush()
        done = True
        if not core.leave_propagated:
            try:
                await asyncio.wait_for(self._left.wait(), timeout)
            except TimeoutError:
                done = False
        await self.stop()
        return done

    async def join(self, addresses: Sequence[Address | str], timeout: float | None = None) -> int:
        """Push-pull with each address (host, host:port, or an Address; port 8301 by default); returns how
        many answered (memberlist Join).  Names are resolved here, off the protocol's hot path."""
        core = self._require()
        targets: list[Address] = []
        for a in addresses:
            addr = parse_address(a) if isinstance(a, str) else a
            resolved = await self._resolve(addr)
            if resolved is not None:
                targets.append(resolved)
        if not targets:
            return 0
        tokens = core.join(self._now(), targets)
        loop = asyncio.get_running_loop()
        futures = []
        for token in tokens:
            fut: asyncio.Future[bool] = loop.create_future()
            self._join_waiters[token] = fut
            futures.append(fut)
        self._flush()
        done = await asyncio.wait_for(asyncio.gather(*futures), timeout or self.config.tcp_timeout + 1)
        return sum(done)

    async def _resolve(self, addr: Address) -> Address | None:
        if _is_ip(addr.host):
            return addr
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)
        except OSError:
            self.stats["unresolved"] += 1
            return None
        return Address(str(infos[0][4][0]), addr.port)

    # -- views ---------------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return self._require().members()

    @property
    def local_member(self) -> Member:
        return self._require().local_member

    @property
    def core(self) -> GossipNode:
        return self._require()

    def events(self, maxsize: int = 10000) -> EventStream:
        """Subscribe to membership events from now on."""
        sub = EventStream(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def force_leave(self, name: str, prune: bool = False) -> bool:
        """A failed member becomes left (``GossipNode.force_leave``); False when no member has the name."""
        found = self._require().force_leave(self._now(), name, prune)
        self._flush()
        return found

    def handle_query(self, name: str, handler: QueryHandler) -> None:
        """Answer the queries named ``name`` with ``handler`` (Serf's internal query handlers, or a user's).
        Queries without a handler are still acknowledged when asked, and answered by no one."""
        self._query_handlers[name] = handler

    async def query(self, name: str, payload: bytes = b"", *, timeout: float | None = None, ack: bool = False,
                    filter_nodes: Sequence[str] = (), filter_tags: Mapping[str, str] | None = None,
                    relay_factor: int = 0, until_all: bool = False) -> QueryResult:  # fmt: skip
        """Ask the pool (Serf's Query) and gather the answers until the query's deadline, or, with
        ``until_all``, as soon as every member expected to answer has (Serf always waits out the timeout;
        an operation whose every member answers need not).  Raises QueryError (too large, too many in
        flight)."""
        core = self._require()
        qid = core.query(self._now(), name, payload, timeout=timeout, ack=ack, filter_nodes=filter_nodes,
                         filter_tags=filter_tags, relay_factor=relay_factor)  # fmt: skip
        result = QueryResult(qid, expected=core.query_expected(qid), until_all=until_all)
        self._query_results[qid] = result
        self._flush()  # this member's own answer comes here
        try:
            await result.done.wait()
        finally:
            self._query_results.pop(qid, None)
        return result

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._require().set_tags(self._now(), tags)
        self._flush()

    # -- plumbing ------------------------------------------------------------------------------------

    def _require(self) -> GossipNode:
        if self._core is None:
            raise RuntimeError("the gossip driver is not started")
        return self._core

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_packet(self, data: bytes) -> None:
        if self._stopped or self._core is None:
            return
        self.stats["packets_in"] += 1
        self.stats["bytes_in"] += len(data)
        try:
            if len(data) > MAX_PACKET_BYTES:
                raise MessageDecodeError("oversized")
            messages = decode_packet(self.codec.open(data))
        except (PacketRejected, MessageDecodeError):
            self.stats["packets_dropped"] += 1
            return
        self._core.receive(self._now(), messages)
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._stopped or self._core is None:
            return
        self._core.tick(self._now())
        self._flush()

    def _flush(self) -> None:
        """Send what the core emitted, hand out its events and round trips, and re-arm the timer."""
        core = self._core
        if core is None or self._stopped:
            return
        for query in core.take_queries():
            self._answer_query(core, query)
        for item in core.take_query_results():
            result = self._query_results.get(item.id)
            if result is None:
                continue
            if isinstance(item, QueryAnswer):
                result._add(item)  # noqa: SLF001 - the driver's own helper
            else:
                result.done.set()
        for out in core.take_outbox():
            if isinstance(out, Packet):
                self._send_packet(out)
            else:
                self._spawn(self._stream_call(out))
        for event in core.take_events():
            self.stats[f"member_{event.kind.value}"] += 1
            for sub in self._subscribers:
                sub._put(event)  # noqa: SLF001
        pings = core.take_pings()
        for ping in pings:
            other = decode_coordinate(ping.payload)
            if other is not None:
                self.coordinate.update(ping.node, other, ping.rtt)
        if pings:
            core.set_ack_payload(encode_coordinate(self.coordinate.coordinate))
        if core.leave_propagated:
            self._left.set()
        deadline = core.next_deadline()
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = deadline
            if deadline != float("inf"):
                assert self._loop is not None
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _answer_query(self, core: GossipNode, query: QueryEvent) -> None:
        handler = self._query_handlers.get(query.name)
        if handler is None:
            return
        try:
            payload = handler(query)
            if payload is not None:
                core.respond(self._now(), query.id, query.origin, payload)
        except QueryError as exc:
            self.stats["query_responses_refused"] += 1
            log.warning("query response refused", query=query.name, error=str(exc))
        except Exception:  # noqa: BLE001 - a handler's bug must not stop the member
            self.stats["query_handler_errors"] += 1
            log.exception("query handler failed", query=query.name)

    def _send_packet(self, packet: Packet) -> None:
        if self._udp is None or not _is_ip(packet.to.host):
            self.stats["packets_unsendable"] += 1
            return
        data = self.codec.seal(encode_packet([encode_message(m) for m in packet.messages]))
        self.stats["packets_out"] += 1
        self.stats["bytes_out"] += len(data)
        try:
            self._udp.sendto(data, (packet.to.host, packet.to.port))
        except OSError:
            self.stats["udp_errors"] += 1

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream_call(self, req: StreamRequest) -> None:
        reply: StreamMessage | None = None
        work = BigWork()
        try:
            try:
                reply = await asyncio.wait_for(self._exchange(req, work), self.config.tcp_timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, PacketRejected, MessageDecodeError):
                self.stats["streams_failed"] += 1
            if self._stopped or self._core is None:
                return
            ok = self._core.stream_response(self._now(), req.token, reply)
            reply = None
        finally:
            work.release()
        waiter = self._join_waiters.pop(req.token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)
        self._flush()

    async def _exchange(self, req: StreamRequest, work: BigWork) -> StreamMessage:
        reader, writer = await asyncio.open_connection(req.to.host, req.to.port)
        self.stats["tcp_connect"] += 1
        try:
            await self._write_frame(writer, req.message)
            return await self._read_frame(reader, work)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _write_frame(self, writer: asyncio.StreamWriter, msg: StreamMessage) -> None:
        if isinstance(msg, PushPull) and len(msg.states) >= BIG_STREAM_STATES:
            work = BigWork()
            work.acquire()
            try:
                encoded = await asyncio.to_thread(encode_stream, msg)
            finally:
                work.release()
        else:
            encoded = encode_stream(msg)
        data = self.codec.seal(encoded)
        writer.write(_FRAME_HEADER.pack(len(data)) + data)
        await writer.drain()
        self.stats["stream_bytes_out"] += len(data) + 4

    async def _read_frame(self, reader: asyncio.StreamReader, work: BigWork) -> StreamMessage:
        """One frame; a large one is decoded in a worker thread with ``work`` held (the caller releases it
        once it has merged what was read)."""
        (size,) = _FRAME_HEADER.unpack(await reader.readexactly(4))
        if size > MAX_STREAM_BYTES + self.codec.overhead:
            raise MessageDecodeError("oversized frame")
        data = await reader.readexactly(size)
        self.stats["stream_bytes_in"] += size + 4
        body = self.codec.open(data)  # on the loop: the replay cache is the loop's
        if len(body) >= BIG_STREAM_BYTES:
            work.acquire()
            return await asyncio.to_thread(decode_stream, body)
        return decode_stream(body)

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stopped or self._inbound >= MAX_INBOUND_STREAMS:
            self.stats["streams_refused"] += 1
            writer.close()
            return
        self._inbound += 1
        self.stats["tcp_accept"] += 1
        work = BigWork()
        try:
            msg = await asyncio.wait_for(self._read_frame(reader, work), self.config.tcp_timeout)
            if self._stopped or self._core is None:
                return
            reply = self._core.handle_stream(self._now(), msg)
            del msg
            work.release()
            self._flush()
            if reply is not None:
                await asyncio.wait_for(self._write_frame(writer, reply), self.config.tcp_timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, PacketRejected, MessageDecodeError):
            self.stats["streams_dropped"] += 1
        finally:
            work.release()
            self._inbound -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(text: str, default_port: int = DEFAULT_SERF_LAN_PORT) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (Consul's -join forms), port 8301 by default."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"not an address: {text!r}")
    return Address(host, port)
