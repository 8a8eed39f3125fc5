"""Server-port networking: length-prefixed frames over asyncio TCP (optionally TLS), the dialing side.

Every connection to a server's port starts with one byte saying what it carries, as Consul's RPC port
does: ``R`` a one-way stream of Raft messages, ``C`` request/response RPC. Frames are a 4-byte big-endian
length and a msgpack body; a length beyond the limit closes the connection. Nothing received is ever
unpickled or evaluated: Raft frames go through ``decode_message`` (which validates every field) and RPC
frames must be a msgpack array of [id, method, args] with plain types.

Outbound Raft traffic uses one connection per peer, reused: a message goes straight onto the socket when
nothing is waiting ahead of it, else into a queue bounded in messages and in bytes: when a peer is slow or
gone the queue drops the oldest messages (Raft tolerates loss; it never tolerates a blocked leader).

A path that drops packets silently raises nothing for many minutes, while the bytes queued on it wait for
TCP's backed-off retransmission; after the path heals they, and every fresh message behind them, would
arrive only at the next retransmission, later the longer the outage lasted. So every connection here
(dialled or accepted) is built to notice a dead path within about a second and be replaced:

- ``TCP_USER_TIMEOUT``: the kernel aborts a connection whose bytes have gone unacknowledged that long
  (acknowledgements come from the peer's kernel, so a busy peer process does not trip it);
- TCP keepalive on idle connections (a follower's stream to another follower, an agent's RPC connection
  between calls), so a dead one is found before it is needed;
- the Raft server resets a stream to a peer it has not heard from (``registry.raft.links`` says when):
  ``PeerSender.reset`` drops the connection with everything queued on it (``SO_LINGER`` 0 makes the
  kernel discard its unsent bytes too and send a reset rather than a FIN), and the sender redials;
- dials are short: a TCP connect that has not completed in ``LinkTimeouts.connect`` is abandoned and
  retried (the kernel would retransmit its SYN only after 1 s, then 3 s, 7 s...), so after a heal the next
  attempt gets through within a few hundred milliseconds. The TLS handshake, which needs the peer's event
  loop, has a longer limit of its own.

The listening side (``registry.raft.listener``) is built by the application that owns the port and handed
to the Raft server as a ``ServerTransport``, as hashicorp/raft's ``NewRaft`` takes its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import structlog

from registry.raft.errors import RPCError
from registry.raft.messages import Message, encode_message
from registry.raft.rpc import Caller, RPCRouter

try:  # the kernel's count of unacknowledged bytes (Linux; elsewhere a silent peer's link is reset anyway)
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - POSIX without TIOCOUTQ
    _OUTQ = None

log = structlog.get_logger("proconsul.transport")

KIND_RAFT = b"R"
KIND_RPC = b"C"
RPC_MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
_LINGER_RESET = struct.pack("ii", 1, 0)
PEER_QUEUE = 8192  # messages waiting for a peer's connection...
PEER_QUEUE_BYTES = 16 * 1024 * 1024  # ...and their bytes: a long outage or a slow peer costs at most this
DIRECT_WRITE_LIMIT = 256 * 1024  # unsent bytes above which messages wait in the (lossy) queue instead
SHORT_LIVED = 1.0  # a Raft stream that ends sooner than this after connecting counts as a failed dial
RPC_CONNECT_TIMEOUT = 1.5  # an RPC caller's dial: one SYN retransmission (after 1 s) fits


@dataclass(frozen=True, slots=True)
class LinkTimeouts:
    """How connections on the server port notice a dead path and come back, in seconds.

    ``user_timeout`` is ``LinkPolicy.user_timeout_ticks`` at the default tick (the longest election
    timeout); ``connect`` plus ``redial_max`` is how long after a heal a dialer waiting on a dead path gets
    through. ``keepalive_idle`` and ``keepalive_interval`` are whole seconds (the kernel's unit)."""

    connect: float = 0.25
    handshake: float = 3.0
    user_timeout: float = 1.0
    keepalive_idle: int = 2
    keepalive_interval: int = 1
    keepalive_count: int = 3
    redial_min: float = 0.02
    redial_max: float = 0.1


LINK = LinkTimeouts()


def tune_socket(sock: Any, timeouts: LinkTimeouts = LINK) -> None:
    """Set the options that make a dead path noticed (see the module docstring) on a connected or
    connecting TCP socket (a plain socket or the one a transport exposes); options the platform lacks are
    skipped."""
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(timeouts.user_timeout * 1000)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), timeouts.keepalive_idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), timeouts.keepalive_interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), timeouts.keepalive_count),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, name, value)


def unacknowledged(writer: asyncio.StreamWriter) -> int:
    """Bytes sent on the connection and not yet acknowledged by the peer's kernel, or not yet sent (the
    transport's buffer and the kernel's send queue); 1 when the platform cannot tell."""
    pending = writer.transport.get_write_buffer_size()
    sock = writer.get_extra_info("socket")
    if _OUTQ is None or sock is None:
        return pending or 1
    try:
        (queued,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))
    except (OSError, ValueError):
        return pending or 1
    return pending + queued


def abort(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once, with whatever it still had to send: a stale backlog must never reach
    the peer ahead of fresh messages on a new connection, nor hold the old one open."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


async def _resolve(host: str, port: int) -> tuple[int, Any]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host}") from None
        return infos[0][0], infos[0][4]
    return (socket.AF_INET6, (host, port)) if ip.version == 6 else (socket.AF_INET, (host, port))


async def dial(address: str, ssl_ctx: ssl.SSLContext | None, server_hostname: str | None,
               source_ip: str | None = None, timeouts: LinkTimeouts = LINK,
               connect_timeout: float | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # fmt: skip
    """Connect to a server port ``host:port``: the TCP handshake within ``connect_timeout`` (by default
    ``timeouts.connect``), then TLS within ``timeouts.handshake``, on a socket tuned by ``tune_socket``.
    Raises OSError (TimeoutError included) or ssl.SSLError."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    if ssl_ctx is not None and not server_hostname:
        raise ValueError("a TLS dial needs the server name to check (tls server_name)")
    family, sockaddr = await _resolve(host, int(port_text))
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        tune_socket(sock, timeouts)
        if source_ip:
            sock.bind((source_ip, 0))
        await asyncio.wait_for(loop.sock_connect(sock, sockaddr), connect_timeout or timeouts.connect)
    except BaseException:
        sock.close()
        raise
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(sock=sock, ssl=ssl_ctx, server_hostname=server_hostname if ssl_ctx else None),
            timeouts.handshake,
        )
    except BaseException:
        # The loop's transport took the descriptor and closed it on this failure (a TLS handshake refused
        # or timed out). asyncio's transport closes the socket object too; uvloop's leaves the object
        # holding the number, which the OS may already have handed to another connection, and closing it
        # here (or its garbage collection) would close that one (MagicStack/uvloop#738): forget it instead.
        if sock.fileno() != -1:
            sock.detach()
        raise


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    header = await reader.readexactly(4)
    (length,) = _LEN.unpack(header)
    if length > limit:
        raise ValueError(f"frame of {length} bytes exceeds the {limit}-byte limit")
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


class PeerSender:
    """One outbound Raft stream to a peer, fed by a bounded queue; ``reset`` when the peer has gone silent
    while bytes wait on it."""

    def __init__(self, peer_id: str, address: Callable[[], str | None], ssl_ctx: ssl.SSLContext | None,
                 server_hostname: str | None, source_ip: str | None = None,
                 timeouts: LinkTimeouts = LINK) -> None:  # fmt: skip
        self.peer_id = peer_id
        self._source = source_ip
        self._address = address
        self._ssl = ssl_ctx
        self._hostname = server_hostname
        self._timeouts = timeouts
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._enqueued = 0  # messages ever queued...
        self._dequeued = 0  # ...and taken off the queue (sent or dropped): the difference is what waits
        self._event = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None  # the live connection, while there is one
        self._connected_at = 0.0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"raft-send:{peer_id}")
        self.dropped = 0  # messages the bounded queue let go
        self.resets = 0  # connections dropped by ``reset``

    def send(self, msg: Message) -> None:
        data = frame(encode_message(msg))
        writer = self._writer
        if writer is not None and not self._queue and not writer.is_closing() \
                and writer.transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT:  # fmt: skip
            # Nothing queued ahead of it (the sender task writes what it pops at once, so order holds):
            # straight onto the socket, saving a wake-up of the sender task on every hop of a commit.
            try:
                writer.write(data)
                return
            except (RuntimeError, OSError):
                pass  # closed under us: the queue and the sender task's reconnect take over
        queue = self._queue
        queue.append(data)
        self._enqueued += 1
        self._queued_bytes += len(data)
        while len(queue) > 1 and (len(queue) > PEER_QUEUE or self._queued_bytes > PEER_QUEUE_BYTES):
            self._pop()
            self.dropped += 1
        self._event.set()

    def connected_for(self) -> float | None:
        """Seconds the current connection has been up, or None while there is none."""
        return self._loop.time() - self._connected_at if self._writer is not None else None

    def outstanding(self) -> bool:
        """Whether anything sent to the peer is still on its way: queued here, or on the connection and
        not acknowledged by the peer's kernel."""
        if self._queue:
            return True
        writer = self._writer
        return writer is not None and unacknowledged(writer) > 0

    def reset(self, why: str) -> None:
        """Drop the connection and everything waiting on it; the sender task redials at once."""
        self._clear()
        writer = self._writer
        if writer is not None and not writer.is_closing():
            self.resets += 1
            log.info("raft peer link stalled; reconnecting", peer=self.peer_id, reason=why)
            abort(writer)
        self._event.set()

    async def close(self) -> None:
        # The flag as well as the cancellation: asyncio.wait_for (3.11) drops a cancellation that arrives
        # just as the dial it wraps fails, and the loop would go on redialling.
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    def _pop(self) -> bytes:
        data = self._queue.popleft()
        self._dequeued += 1
        self._queued_bytes -= len(data)
        return data

    def _clear(self, before: int | None = None) -> None:
        """Drop what is queued, or only the messages queued before the ``before``-th."""
        while self._queue and (before is None or self._dequeued < before):
            self._pop()

    async def _watch(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The peer never writes on a Raft stream: any return from a read (end of stream, a reset, an
        abort by the kernel's user timeout) means the connection is gone, so drop it and wake the sender
        to redial now rather than at its next message."""
        with contextlib.suppress(Exception):
            await reader.read(1)
        if not writer.is_closing():
            abort(writer)
        self._event.set()

    async def _run(self) -> None:
        timeouts = self._timeouts
        backoff = timeouts.redial_min
        while not self._closed:
            addr = self._address()
            if addr is None:
                await asyncio.sleep(backoff)
                continue
            attempt = self._enqueued
            try:
                reader, writer = await dial(addr, self._ssl, self._hostname, self._source, timeouts)
            except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError
                log.debug("raft peer unreachable", peer=self.peer_id, address=addr, error=str(exc) or repr(exc))
                # What was queued before this attempt is stale by the time a later one connects (Raft
                # resends what matters); what came during it is fresh and goes out with the next.
                self._clear(before=attempt)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, timeouts.redial_max)
                continue
            watch = self._loop.create_task(self._watch(reader, writer), name=f"raft-watch:{self.peer_id}")
            self._connected_at = self._loop.time()
            try:
                writer.write(KIND_RAFT)
                self._writer = writer
                while True:
                    if not self._queue and not writer.is_closing():
                        self._event.clear()
                        await self._event.wait()
                    if writer.is_closing():
                        # Reset by the peer, by the kernel's user timeout or by ``reset`` while we were
                        # idle. uvloop then raises RuntimeError from write() (plain asyncio raises on
                        # drain), which would end this task for good and silence the peer until a restart.
                        raise ConnectionResetError(f"connection to {addr} closed")
                    batch = []
                    while self._queue and len(batch) < 256:
                        batch.append(self._pop())
                    writer.write(b"".join(batch))
                    await writer.drain()
            except (OSError, ssl.SSLError, RuntimeError) as exc:
                # RuntimeError: uvloop's write() on a transport a reset already closed (e.g. right after
                # connecting, before we could look). Any of these: reconnect, never end this task.
                log.debug("raft peer connection lost", peer=self.peer_id, error=str(exc) or repr(exc))
            finally:
                self._writer = None
                watch.cancel()
                # Never a graceful close: on a stalled path it would wait for the unsent bytes to drain.
                abort(writer)
            if self._loop.time() - self._connected_at < SHORT_LIVED:
                # Connected and dropped at once (a peer refusing us, a path resetting everything): back
                # off as after a failed dial rather than spin.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, timeouts.redial_max)
            else:
                backoff = timeouts.redial_min


RaftHandler = Callable[[Message], None]
RPCHandler = Callable[[str, Any, Caller], Awaitable[Any]]


class ServerPort(Protocol):
    """The listening side of the server port, as the Raft server drives it: started once its storage is
    open (so nothing it answers comes before its state is loaded), closed when it stops."""

    async def start(self, host: str, port: int) -> tuple[str, int]: ...

    async def close(self) -> None: ...


class Inbox:
    """Where the port delivers Raft messages: to the consumer the Raft server attaches, as hashicorp/raft's
    transport hands RPCs to ``Consumer()``. Until one is attached a message is dropped; Raft resends."""

    def __init__(self) -> None:
        self._consumer: RaftHandler | None = None

    def attach(self, consumer: RaftHandler) -> None:
        self._consumer = consumer

    def deliver(self, msg: Message) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer(msg)


@dataclass(frozen=True)
class ServerTransport:
    """What the Raft server gets of the server port: the listener, the Raft messages it delivers, and the
    RPC router it serves (the server registers its own methods there)."""

    port: ServerPort
    inbox: Inbox
    router: RPCRouter


class RPCClient:
    """Multiplexed request/response calls to one server over a single connection.

    The connection is tuned like every other on the port (``tune_socket``): a call whose bytes the server
    stops acknowledging fails within ``LinkTimeouts.user_timeout`` as a lost connection (its outcome
    unknown) instead of waiting out its whole timeout, and an idle connection that died is found by
    keepalive before the next call needs it. The next call dials anew."""

    def __init__(self, address: str, ssl_ctx: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 source_ip: str | None = None, timeouts: LinkTimeouts = LINK) -> None:  # fmt: skip
        self.address = address
        self._source = source_ip
        self._ssl = ssl_ctx
        self._hostname = server_hostname
        self._timeouts = timeouts
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}  # the calls on the current connection
        self._readers: set[asyncio.Task[None]] = set()
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> tuple[asyncio.StreamWriter, dict[int, asyncio.Future[Any]]]:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer, self._waiting
            try:
                # A caller waits on this dial (and retries on "cannot reach"), so it gets the time a SYN
                # retransmission takes rather than the short attempts of a Raft stream's redial loop.
                reader, writer = await dial(self.address, self._ssl, self._hostname, self._source, self._timeouts,
                                            connect_timeout=RPC_CONNECT_TIMEOUT)  # fmt: skip
            except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError
                raise RPCError(f"cannot reach server {self.address}: {exc or 'timed out'}") from exc
            if writer.is_closing():  # reset before we wrote a byte (uvloop's write() would raise RuntimeError)
                raise RPCError(f"cannot reach server {self.address}: connection closed at once")
            writer.write(KIND_RPC)
            waiting: dict[int, asyncio.Future[Any]] = {}
            self._writer, self._waiting = writer, waiting
            task = asyncio.get_running_loop().create_task(self._read(reader, writer, waiting))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
            return writer, waiting

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    waiting: dict[int, asyncio.Future[Any]]) -> None:  # fmt: skip
        try:
            while True:
                data = await read_frame(reader, RPC_MAX_FRAME)
                call_id, err, result = msgpack.unpackb(data, raw=False, strict_map_key=True)
                fut = waiting.pop(call_id, None)
                if fut is None or fut.done():
                    continue
                if err is not None:
                    fut.set_exception(RPCError(str(err[0]), int(err[1])))
                else:
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, OSError, ValueError, TypeError, ssl.SSLError,
                msgpack.UnpackException) as exc:  # fmt: skip
            # OSError includes TimeoutError: the kernel's user timeout gave up on unacknowledged bytes.
            self._fail_all(waiting, RPCError(f"connection to {self.address} lost: {exc!r}"))
        except asyncio.CancelledError:
            self._fail_all(waiting, RPCError("rpc client closed"))
        finally:
            if self._writer is writer:
                self._writer = None
            abort(writer)

    @staticmethod
    def _fail_all(waiting: dict[int, asyncio.Future[Any]], exc: RPCError) -> None:
        calls = list(waiting.values())
        waiting.clear()
        for fut in calls:
            if not fut.done():
                fut.set_exception(exc)

    async def call(self, method: str, args: Any = None, timeout: float = 30.0, token: str = "") -> Any:
        """One call; ``token`` (when not empty) rides with it for the server to check, as Consul's RPC
        requests carry ``Token``."""
        writer, waiting = await self._connect()
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[call_id] = fut
        try:
            try:
                req = [call_id, method, args, {"Token": token}] if token else [call_id, method, args]
                writer.write(frame(msgpack.packb(req, use_bin_type=True)))
                await writer.drain()
            except (OSError, RuntimeError) as exc:  # RuntimeError: uvloop, transport closed
                raise RPCError(f"connection to {self.address} failed: {exc!r}") from exc
            try:
                return await asyncio.wait_for(fut, timeout)
            except TimeoutError as exc:
                raise RPCError(f"rpc {method} to {self.address} timed out after {timeout:g}s") from exc
        finally:
            waiting.pop(call_id, None)

    async def close(self) -> None:
        for task in list(self._readers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
