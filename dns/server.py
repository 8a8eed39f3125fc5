"""The DNS listener: asyncio UDP and TCP on the agent's DNS port, around the pure engine.

The agent builds it (``registry.agent.listeners.start_dns``) from the DNS config and a store reader; this
module knows nothing of the agent.

Shape of the IO (everything else is in ``dns.engine``):

- UDP: one datagram in, at most one out; anything the engine drops or fails on is dropped, and an exception
  is logged, never raised into the loop. The socket is read directly when the loop reports it readable,
  a batch of datagrams per wakeup (measured no slower than a DatagramProtocol on uvloop, and it reads the
  clock once per batch); the receive buffer is raised so bursts are queued, not lost.
- TCP (RFC 7766): two-byte length-prefixed messages, pipelining allowed. A connection that sends a length
  under 12 is closed; one that takes longer than ``tcp_idle_timeout`` to complete a message (a huge length
  prefix and then a trickle, or nothing at all) is closed; a client that stops reading its responses has
  its reading paused (so it cannot make us buffer without bound); at most ``max_tcp_connections`` at once.
- Recursors: names outside the domain are sent to each recursor in turn (sequential, or a random order)
  over the client's transport, with ``recursor_timeout`` each; the first NOERROR/NXDOMAIN reply that matches
  what we sent is passed back under the client's ID; SERVFAIL when none answers. The number of forwards
  in flight is bounded; beyond it the answer is SERVFAIL at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import structlog

from dns.config import DNSConfig, Recursor
from dns.engine import MAX_TCP_MESSAGE, Engine, Forward

__all__ = ["DNSListener", "DNSServer"]

log = structlog.get_logger("proconsul.dns")

UDP_RCVBUF = 4 * 1024 * 1024
# The largest UDP query read whole. Queries are small (a name, maybe an OPT record); anything longer is cut
# and then fails to parse (FORMERR), which is what it deserves. Reading 64 KiB buffers for 40-byte queries
# costs a large allocation per datagram.
RECV_SIZE = 4096


class DNSServer:
    def __init__(
        self,
        engine: Engine,
        cfg: DNSConfig,
        *,
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 512,
        max_forwards: int = 256,
        clock: Any = time.time,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        # Told (queries, seconds) for each batch of queries answered: a UDP wakeup's batch, or one TCP
        # message. The agent turns it into Consul's dns.domain_query timer, each query credited its batch's
        # mean, so a busy listener pays for two clock readings per batch, not per query.
        self.observe = observe
        self.cfg = cfg
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_forwards = max_forwards
        self._clock = clock
        self._rng = random.Random(os.urandom(16))
        self._udp: list[_UDPReader] = []
        self._tcp_servers: list[asyncio.base_events.Server] = []
        self._conns: set[_TCPConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwards = 0
        self.addresses: list[tuple[str, int]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self, hosts: list[str], port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind_all(loop, hosts, port)
                break
            except OSError:
                await self._close_transports()
                if attempt == attempts - 1:
                    raise
        return self.addresses[0]

    async def _bind_all(self, loop: asyncio.AbstractEventLoop, hosts: list[str], port: int) -> None:
        # Port 0: the first UDP bind picks the port and everything else binds the same one; if TCP finds
        # it taken, start() tries again with a fresh port.
        chosen = port
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
                sock.bind((host, chosen))
            except OSError:
                sock.close()
                raise
            chosen = sock.getsockname()[1]
            self._udp.append(_UDPReader(self, sock, loop))
            server = await loop.create_server(lambda: _TCPConnection(self), host, chosen, reuse_address=True)
            self._tcp_servers.append(server)
            self.addresses.append((host, chosen))

    async def _close_transports(self) -> None:
        for t in self._udp:
            t.close()
        self._udp.clear()
        for s in self._tcp_servers:
            s.close()
        for s in self._tcp_servers:
            await s.wait_closed()
        self._tcp_servers.clear()
        self.addresses.clear()

    async def close(self) -> None:
        """Stop accepting, drop open connections, cancel forwards in flight."""
        for s in self._tcp_servers:
            s.close()
        for c in list(self._conns):
            c.abort()
        for t in self._udp:
            t.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for s in self._tcp_servers:
            await s.wait_closed()
        self._udp.clear()
        self._tcp_servers.clear()

    # ------------------------------------------------------------------ queries

    def answer(self, data: bytes, tcp: bool) -> bytes | Forward | None:
        try:
            return self.engine.handle(data, tcp, self._clock())
        except Exception:  # noqa: BLE001 - one bad query must never take the listener down
            log.exception("dns query failed", size=len(data), tcp=tcp)
            return None

    def spawn_forward(self, fw: Forward, reply: Any) -> None:
        """Resolve ``fw`` through the recursors in the background and hand the bytes to ``reply``."""
        if self._forwards >= self.max_forwards:
            reply(self.engine.servfail(fw))
            return
        self._forwards += 1
        task = asyncio.get_running_loop().create_task(self._forward(fw, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, fw: Forward, reply: Any) -> None:
        try:
            out = await self.resolve_upstream(fw)
            reply(out)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("dns forwarding failed")
        finally:
            self._forwards -= 1

    async def resolve_upstream(self, fw: Forward) -> bytes:
        recursors = list(self.cfg.recursors)
        if self.cfg.recursor_strategy == "random":
            self._rng.shuffle(recursors)
        for r in recursors:
            upstream_id = self._rng.getrandbits(16)
            request = Engine.forward_request(fw, upstream_id)
            try:
                async with asyncio.timeout(self.cfg.recursor_timeout):
                    raw = await (_exchange_tcp(r, request) if fw.tcp else _exchange_udp(r, request, upstream_id))
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.debug("recursor failed", recursor=str(r), error=repr(exc))
                continue
            out = Engine.forward_reply(fw, raw, upstream_id)
            if out is not None:
                return out
            log.debug("recursor reply unusable", recursor=str(r))
        log.warning("all recursors failed", name=b".".join(fw.query.labels).decode("ascii", "replace"))
        return Engine.servfail(fw)


async def _exchange_udp(r: Recursor, request: bytes, upstream_id: int) -> bytes:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(fut, upstream_id), remote_addr=(r.host, r.port)
    )
    try:
        transport.sendto(request)
        return await fut
    finally:
        transport.close()


async def _exchange_tcp(r: Recursor, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(r.host, r.port)
    try:
        writer.write(struct.pack("!H", len(request)) + request)
        await writer.drain()
        (n,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(n)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes], upstream_id: int) -> None:
        self.fut = fut
        self.upstream_id = upstream_id

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Ignore anything that is not a reply to our ID; the engine checks the rest.
        if len(data) >= 2 and (data[0] << 8 | data[1]) == self.upstream_id and not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: fail now rather than wait for the timeout.
        if not self.fut.done():
            self.fut.set_exception(exc)


class _UDPReader:
    """UDP without a transport: when the socket is readable, drain it (up to a batch, so TCP and timers get
    their turn) with plain recvfrom/sendto. One event-loop wakeup serves a burst of queries."""

    BATCH = 256

    def __init__(self, server: DNSServer, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.sock = sock
        self.loop = loop
        self.closed = False
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        observe = self.server.observe
        if observe is None:
            self._serve()
            return
        started = time.perf_counter()
        served = self._serve()
        if served:
            observe(served, time.perf_counter() - started)

    def _serve(self) -> int:
        """Answer what the socket holds (up to a batch); the number of queries answered."""
        sock = self.sock
        handle = self.server.engine.handle
        now = self.server._clock()  # one reading per batch: a batch takes well under a millisecond
        served = 0
        for _ in range(self.BATCH):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return served
            except OSError:
                continue  # an error queued on the socket (ICMP about an earlier reply): skip it
            try:
                out = handle(data, False, now)
            except Exception:  # noqa: BLE001 - one bad query must never take the listener down
                log.exception("dns query failed", size=len(data), tcp=False)
                continue
            if out is None:
                continue
            served += 1
            if type(out) is bytes:
                try:
                    sock.sendto(out, addr)
                except OSError:
                    pass  # send buffer full or the client is gone: UDP clients retry
            else:
                self.server.spawn_forward(out, lambda resp, addr=addr: self._send(resp, addr))  # type: ignore[arg-type]
        return served

    def _send(self, out: bytes, addr: Any) -> None:
        if self.closed:
            return
        try:
            self.sock.sendto(out, addr)
        except OSError:
            pass  # send buffer full or the client is gone: UDP clients retry

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _TCPConnection(asyncio.Protocol):
    MAX_PENDING = 16  # forwarded queries in flight on one connection

    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.pending = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server._conns) >= self.server.max_tcp_connections:
            transport.abort()  # type: ignore[attr-defined]
            self.closed = True
            return
        self.server._conns.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.server.tcp_idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.pending and not self.buf:
            self._arm()  # waiting on the recursors for this client, not on the client
            return
        # No complete message for too long: idle, or a slow/partial sender holding a slot.
        self.abort()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if n < 12:
                self.abort()  # not even a header: nothing sensible can follow on this stream
                return
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            self._arm()
            observe = self.server.observe
            started = time.perf_counter() if observe is not None else 0.0
            out = self.server.answer(msg, True)
            if observe is not None and out is not None:
                observe(1, time.perf_counter() - started)
            if out is None:
                continue
            if type(out) is bytes:
                self._send(out)
            else:
                if self.pending >= self.MAX_PENDING:
                    self._send(self.server.engine.servfail(out))  # type: ignore[arg-type]
                    continue
                self.pending += 1
                self._arm()

                def reply(resp: bytes) -> None:
                    self.pending -= 1
                    self._send(resp)

                self.server.spawn_forward(out, reply)  # type: ignore[arg-type]

    def _send(self, out: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        if len(out) > MAX_TCP_MESSAGE:
            return  # cannot be framed; the engine never builds one, but a reply is never cut mid-way
        self.transport.write(struct.pack("!H", len(out)) + out)
        if self.pending:
            self._arm()  # answers still owed (forwarded queries): the connection is not idle

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its questions until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close our side too once the client has finished

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()


class DNSListener:
    """What the agent keeps in its listener list: ``close()`` stops the DNS server."""

    def __init__(self, server: DNSServer) -> None:
        self.server = server

    async def close(self) -> None:
        await self.server.close()

