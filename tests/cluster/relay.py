"""A fault-injecting TCP relay between Raft servers on loopback.

Each server k binds its server port on ``127.0.0.(110+k)`` and advertises ``127.0.0.(10+k)`` on the same
port number; the relay listens on the advertised address and forwards to the bound one. Servers dial their
peers from their advertise address, so the relay knows both ends of every connection: the source from the
peer IP of the accepted socket, the destination from the listener that accepted it. (The brief's scheme was
127.0.0.k / 127.0.0.(100+k); k+10 keeps 127.0.0.1 free, because the test process and client agents dial
from it and must never be mistaken for server 1.)

Faults are per directed link (src -> dst): bytes *from* src *to* dst. A connection opened by a to b carries
a -> b requests and b -> a replies, so each of its directions follows its own link:

- ``drop``: the link's connections are reset at once and new ones from src are accepted and reset, so the
  sender sees errors and reconnects (a crashed route, a firewall answering RST);
- ``blackhole``: bytes are read and discarded, nothing errors, the sender learns nothing (a dead switch
  port). A connection that lost bytes can no longer be framed correctly, so it is closed when the link
  heals and the sender reconnects, as after a real TCP timeout.

Both symmetric and asymmetric partitions are combinations of links. The relay runs its own event loop in
a daemon thread, so the test's own work (checking a history, waiting on processes) never stalls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["drop", "blackhole"]
BUFFER = 256 * 1024


def advertise_ip(k: int) -> str:
    return f"127.0.0.{10 + k}"


def bind_ip(k: int) -> str:
    return f"127.0.0.{110 + k}"


def _server_of(ip: str) -> int | None:
    parts = ip.split(".")
    if len(parts) == 4 and parts[:3] == ["127", "0", "0"] and 11 <= int(parts[3]) <= 99:
        return int(parts[3]) - 10
    return None


@dataclass(eq=False)
class _Conn:
    src: int | None  # the dialling server; None: not a server (test process, client agent)
    dst: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tainted: bool = False  # bytes were discarded: the stream cannot be resumed

    def carries(self, src: int, dst: int) -> bool:
        return (self.src, self.dst) in ((src, dst), (dst, src))

    def abort(self) -> None:
        for w in self.writers:
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # RST instead of FIN: the peer sees the failure at once
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class FaultRelay:
    """Relays for servers 1..n; ``block``/``heal`` change links while traffic flows."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-relay", daemon=True)
        self._thread.start()
        self._servers: dict[int, asyncio.base_events.Server] = {}
        self._links: dict[tuple[int, int], Mode] = {}
        self._conns: set[_Conn] = set()
        self.accepted = 0
        self.forwarded: dict[tuple[int | None, int | None], int] = {}

    # ------------------------------------------------------------------ control (any thread)

    def _call(self, fn: Any, *args: Any) -> Any:
        fut: Future[Any] = Future()

        def run() -> None:
            try:
                result = fn(*args)
                if asyncio.iscoroutine(result):
                    task = self._loop.create_task(result)
                    task.add_done_callback(
                        lambda t: fut.set_exception(t.exception()) if t.exception() else fut.set_result(t.result())
                    )
                else:
                    fut.set_result(result)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    def add_server(self, k: int, port: int) -> None:
        """Listen on advertise_ip(k):port and forward to bind_ip(k):port."""
        self._call(self._add_server, k, port)

    def block(self, src: int, dst: int, mode: Mode = "drop") -> None:
        """Stop bytes from server src reaching server dst (one direction)."""
        self._call(self._set_links, [(src, dst)], mode)

    def partition(self, group_a: Iterable[int], group_b: Iterable[int], mode: Mode = "drop",
                  symmetric: bool = True) -> None:  # fmt: skip
        """Cut group_a off from group_b (a -> b; and b -> a when symmetric)."""
        a, b = list(group_a), list(group_b)
        links = [(x, y) for x in a for y in b]
        if symmetric:
            links += [(y, x) for x in a for y in b]
        self._call(self._set_links, links, mode)

    def isolate(self, k: int, others: Iterable[int], mode: Mode = "drop") -> None:
        self.partition([k], others, mode)

    def heal(self) -> None:
        """Restore every link; connections that lost bytes are closed so senders reconnect."""
        self._call(self._heal)

    def blocked(self) -> dict[tuple[int, int], Mode]:
        return dict(self._call(lambda: dict(self._links)))

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    # ------------------------------------------------------------------ on the relay's loop

    async def _add_server(self, k: int, port: int) -> None:
        old = self._servers.pop(k, None)
        if old is not None:
            old.close()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(k, port, reader, writer)

        self._servers[k] = await asyncio.start_server(accept, advertise_ip(k), port, reuse_address=True)

    def _set_links(self, links: list[tuple[int, int]], mode: Mode) -> None:
        for link in links:
            self._links[link] = mode
        if mode == "drop":
            for conn in list(self._conns):
                if any(conn.carries(*link) for link in links):
                    self._drop(conn)

    def _heal(self) -> None:
        self._links.clear()
        for conn in list(self._conns):
            if conn.tainted:
                self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        conn.abort()

    async def _close(self) -> None:
        for server in self._servers.values():
            server.close()
        for conn in list(self._conns):
            self._drop(conn)
        self._servers.clear()

    async def _relay(self, dst: int, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        peer = writer.get_extra_info("peername")
        src = _server_of(peer[0]) if peer else None
        conn = _Conn(src, dst, [writer])
        if src is not None and self._links.get((src, dst)) == "drop":
            conn.abort()
            return
        self._conns.add(conn)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(bind_ip(dst), port), 5)
        except (OSError, TimeoutError):
            self._drop(conn)  # the server is down: the dialler sees the connection reset
            return
        conn.writers.append(up_writer)
        if conn not in self._conns:  # dropped while connecting
            conn.abort()
            return
        loop = asyncio.get_running_loop()
        forward = loop.create_task(self._pump(conn, reader, up_writer, src, dst))
        backward = loop.create_task(self._pump(conn, up_reader, writer, dst, src))
        conn.tasks += [forward, backward]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([forward, backward], return_when=asyncio.FIRST_COMPLETED)
        self._drop(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    src: int | None, dst: int | None) -> None:  # fmt: skip
        with contextlib.suppress(OSError, ConnectionError, asyncio.CancelledError):
            while True:
                data = await reader.read(BUFFER)
                if not data:
                    return
                mode = self._links.get((src, dst)) if src is not None and dst is not None else None
                if mode is None:
                    self.forwarded[(src, dst)] = self.forwarded.get((src, dst), 0) + len(data)
                    writer.write(data)
                    await writer.drain()
                elif mode == "drop":
                    return
                else:
                    conn.tainted = True  # blackholed: swallowed without a trace
