"""Server-port networking: length-prefixed frames over asyncio TCP (optionally TLS), the dialing side.

Every connection to a server's port starts with one byte saying what it carries, as Consul's RPC port
does: ``R`` a one-way stream of Raft messages, ``C`` request/response RPC. Frames are a 4-byte big-endian
length and a msgpack body; a length beyond the limit closes the connection. Nothing received is ever
unpickled or evaluated: Raft frames go through ``decode_message`` (which validates every field) and RPC
frames must be a msgpack array of [id, method, args] with plain types.

Outbound Raft traffic uses one connection per peer, reused: a message goes straight onto the socket when
nothing is waiting ahead of it, else into a bounded queue: when a peer is slow or gone the queue drops
the oldest messages (Raft tolerates loss; it never tolerates a blocked leader).
Reconnects back off from 20 ms to 1 s.

The listening side (``registry.raft.listener``) is built by the application that owns the port and handed
to the Raft server as a ``ServerTransport``, as hashicorp/raft's ``NewRaft`` takes its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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

log = structlog.get_logger("proconsul.transport")

KIND_RAFT = b"R"
KIND_RPC = b"C"
RPC_MAX_FRAME = 64 * 1024 * 1024
_LEN = struct.Struct(">I")
PEER_QUEUE = 8192
DIRECT_WRITE_LIMIT = 256 * 1024  # unsent bytes above which messages wait in the (lossy) queue instead


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    header = await reader.readexactly(4)
    (length,) = _LEN.unpack(header)
    if length > limit:
        raise ValueError(f"frame of {length} bytes exceeds the {limit}-byte limit")
    return await reader.readexactly(length)


def frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


class PeerSender:
    """One outbound Raft connection to a peer, fed by a bounded queue."""

    def __init__(self, peer_id: str, address: Callable[[], str | None], ssl_ctx: ssl.SSLContext | None,
                 server_hostname: str | None, source_ip: str | None = None) -> None:  # fmt: skip
        self.peer_id = peer_id
        self._source = (source_ip, 0) if source_ip else None
        self._address = address
        self._ssl = ssl_ctx
        self._hostname = server_hostname
        self._queue: deque[bytes] = deque(maxlen=PEER_QUEUE)
        self._event = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None  # the live connection, while there is one
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"raft-send:{peer_id}")
        self.dropped = 0

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
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(data)
        self._event.set()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def _run(self) -> None:
        backoff = 0.02
        while True:
            addr = self._address()
            if addr is None:
                await asyncio.sleep(backoff)
                continue
            host, _, port = addr.rpartition(":")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port), ssl=self._ssl, local_addr=self._source,
                                            server_hostname=self._hostname if self._ssl else None),  # fmt: skip
                    2.0,
                )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                log.debug("raft peer unreachable", peer=self.peer_id, address=addr, error=str(exc))
                self._queue.clear()  # stale by the time we reconnect; Raft resends what matters
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.02
            try:
                writer.write(KIND_RAFT)
                self._writer = writer
                while True:
                    if not self._queue:
                        self._event.clear()
                        await self._event.wait()
                    if writer.is_closing():
                        # The peer reset the connection while we were idle. uvloop then raises
                        # RuntimeError from write() (plain asyncio raises on drain), which would end
                        # this task for good and silence the peer until a restart.
                        raise ConnectionResetError(f"connection to {addr} closed by the peer")
                    batch = []
                    while self._queue and len(batch) < 256:
                        batch.append(self._queue.popleft())
                    writer.write(b"".join(batch))
                    await writer.drain()
            except (OSError, ConnectionError, ssl.SSLError, RuntimeError) as exc:
                # RuntimeError: uvloop's write() on a transport a reset already closed (e.g. right after
                # connecting, before we could look). Any of these: reconnect, never end this task.
                log.debug("raft peer connection lost", peer=self.peer_id, error=str(exc))
            finally:
                self._writer = None
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                reader.feed_eof()


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
    """Multiplexed request/response calls to one server over a single connection."""

    def __init__(self, address: str, ssl_ctx: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 source_ip: str | None = None) -> None:  # fmt: skip
        self.address = address
        self._source = (source_ip, 0) if source_ip else None
        self._ssl = ssl_ctx
        self._hostname = server_hostname
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            host, _, port = self.address.rpartition(":")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port), ssl=self._ssl, local_addr=self._source,
                                            server_hostname=self._hostname if self._ssl else None), 3.0)  # fmt: skip
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                raise RPCError(f"cannot reach server {self.address}: {exc}") from exc
            if writer.is_closing():  # reset before we wrote a byte (uvloop's write() would raise RuntimeError)
                raise RPCError(f"cannot reach server {self.address}: connection closed at once")
            writer.write(KIND_RPC)
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await read_frame(reader, RPC_MAX_FRAME)
                call_id, err, result = msgpack.unpackb(data, raw=False, strict_map_key=True)
                fut = self._waiting.pop(call_id, None)
                if fut is None or fut.done():
                    continue
                if err is not None:
                    fut.set_exception(RPCError(str(err[0]), int(err[1])))
                else:
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError, ssl.SSLError,
                msgpack.UnpackException) as exc:  # fmt: skip
            self._fail_all(RPCError(f"connection to {self.address} lost: {exc!r}"))
        except asyncio.CancelledError:
            self._fail_all(RPCError("rpc client closed"))
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _fail_all(self, exc: RPCError) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    async def call(self, method: str, args: Any = None, timeout: float = 30.0, token: str = "") -> Any:
        """One call; ``token`` (when not empty) rides with it for the server to check, as Consul's RPC
        requests carry ``Token``."""
        writer = await self._connect()
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        req = [call_id, method, args, {"Token": token}] if token else [call_id, method, args]
        try:
            writer.write(frame(msgpack.packb(req, use_bin_type=True)))
            await writer.drain()
            return await asyncio.wait_for(fut, timeout)
        except (OSError, ConnectionError, RuntimeError) as exc:  # RuntimeError: uvloop, transport closed
            raise RPCError(f"connection to {self.address} failed: {exc}") from exc
        except TimeoutError as exc:
            raise RPCError(f"rpc {method} to {self.address} timed out after {timeout:g}s") from exc
        finally:
            self._waiting.pop(call_id, None)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
