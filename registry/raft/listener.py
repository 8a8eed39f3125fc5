"""The listening side of the server port: accepts Raft streams and RPC connections.

A connection's first byte says what it carries (``registry.raft.transport``). Raft frames are decoded and
validated (``decode_message``) and handed to ``on_raft``; RPC frames must be a msgpack array of
[id, method, args] or [id, method, args, {"Token": secret}] with plain types, and go to ``on_rpc`` (an
``RPCRouter``'s ``dispatch``) with the ``Caller``: that token and whether the connection is a server's
(``server_auth`` of its TLS session, decided once per connection; without it every connection counts as a
server's, which is what holds on a port with no TLS or without ``verify_incoming``: nothing there proves
who is calling, and Consul lets every caller through the same way). Only the
composition root builds this listener; the Raft server receives it through a ``ServerTransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

import msgpack
import structlog

from registry.raft.errors import NotLeaderError, RPCError
from registry.raft.messages import MAX_FRAME_BYTES, Message, MessageDecodeError, decode_message
from registry.raft.node import RaftError
from registry.raft.rpc import Caller, RPCRouter
from registry.raft.transport import (
    KIND_RAFT,
    KIND_RPC,
    RPC_MAX_FRAME,
    Inbox,
    RPCHandler,
    ServerTransport,
    frame,
    read_frame,
    tune_socket,
)

log = structlog.get_logger("proconsul.transport")


class ServerListener:
    """Accepts the server port: Raft streams go to ``on_raft``, RPCs to ``on_rpc``."""

    def __init__(self, on_raft: Callable[[Message], None], on_rpc: RPCHandler,
                 ssl_ctx: ssl.SSLContext | None, peer_check: Callable[[ssl.SSLObject | None, bytes], bool] | None = None,
                 server_auth: Callable[[ssl.SSLObject | None], bool] | None = None) -> None:  # fmt: skip
        self.on_raft = on_raft
        self.on_rpc = on_rpc
        self.ssl_ctx = ssl_ctx
        self.peer_check = peer_check
        self.server_auth = server_auth
        self.server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        try:
            self.server = await asyncio.start_server(self._handle, host, port, ssl=self.ssl_ctx, reuse_address=True)
        except OSError as exc:
            raise OSError(exc.errno, f"Error starting server RPC listener on {host}:{port}: {exc.strerror}. "
                                     "Is another server running? Choose another port with -server-port.") from exc  # fmt: skip
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._conns):
                t.cancel()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Keepalive and the user timeout on our side too: a stream whose sender vanished behind a
            # silent path (its reset never arrived) is closed, not kept open forever.
            tune_socket(sock)
        try:
            kind = await asyncio.wait_for(reader.readexactly(1), 10)
            if self.peer_check is not None and not self.peer_check(writer.get_extra_info("ssl_object"), kind):
                log.warning("refused server-port connection", peer=writer.get_extra_info("peername"), kind=kind)
                return
            if kind == KIND_RAFT:
                while True:
                    data = await read_frame(reader, MAX_FRAME_BYTES)
                    try:
                        msg = decode_message(data)
                    except MessageDecodeError as exc:
                        log.warning("dropping malformed raft frame", error=str(exc),
                                    peer=writer.get_extra_info("peername"))  # fmt: skip
                        return
                    self.on_raft(msg)
            elif kind == KIND_RPC:
                is_server = True if self.server_auth is None else self.server_auth(writer.get_extra_info("ssl_object"))
                await self._serve_rpc(reader, writer, is_server)
            else:
                log.warning("unknown connection type on server port", kind=kind)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            # Cancelled here too when the port closes: the handler ends either way, and a handler task that
            # ends cancelled makes asyncio's streams (3.11) log "Exception in callback" at error level.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_rpc(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, is_server: bool) -> None:
        lock = asyncio.Lock()
        pending: set[asyncio.Task[None]] = set()
        anonymous = Caller("", is_server)

        async def run(call_id: int, method: str, args: Any, caller: Caller) -> None:
            try:
                result = await self.on_rpc(method, args, caller)
                reply = [call_id, None, result]
            except RPCError as exc:
                reply = [call_id, [exc.message, exc.status], None]
            except (NotLeaderError, RaftError) as exc:
                # Leadership moved under the call, or the core refused it for now: normal operation, answered
                # as ever (the caller decides whether to retry) and not worth an operator's attention.
                log.info("rpc refused", method=method, error=str(exc))
                reply = [call_id, [f"rpc {method} failed: {exc}", 500], None]
            except Exception as exc:  # noqa: BLE001 - reported to the caller, never fatal here
                log.exception("rpc handler failed", method=method)
                reply = [call_id, [f"rpc {method} failed: {exc}", 500], None]
            async with lock:
                writer.write(frame(msgpack.packb(reply, use_bin_type=True)))
                await writer.drain()

        try:
            while True:
                data = await read_frame(reader, RPC_MAX_FRAME)
                try:
                    req = msgpack.unpackb(data, raw=False, strict_map_key=True)
                    if not isinstance(req, list) or len(req) not in (3, 4):
                        raise ValueError("bad rpc frame")
                    call_id, method, args = req[:3]
                    if not isinstance(call_id, int) or not isinstance(method, str):
                        raise ValueError("bad rpc header")
                    caller = anonymous
                    if len(req) == 4:
                        token = req[3].get("Token", "") if isinstance(req[3], dict) else None
                        if not isinstance(token, str):
                            raise ValueError("bad rpc token")
                        caller = Caller(token, is_server)
                except (ValueError, TypeError, msgpack.UnpackException):
                    log.warning("dropping malformed rpc frame")
                    return
                t = asyncio.get_running_loop().create_task(run(call_id, method, args, caller))
                pending.add(t)
                t.add_done_callback(pending.discard)
        finally:
            for t in pending:
                t.cancel()


def server_transport(router: RPCRouter, ssl_ctx: ssl.SSLContext | None = None,
                     peer_check: Callable[[ssl.SSLObject | None, bytes], bool] | None = None,
                     server_auth: Callable[[ssl.SSLObject | None], bool] | None = None) -> ServerTransport:  # fmt: skip
    """A server port (not yet listening) that serves ``router`` and delivers Raft messages to an inbox,
    bundled for ``RaftServer``."""
    inbox = Inbox()
    listener = ServerListener(inbox.deliver, router.dispatch, ssl_ctx, peer_check, server_auth)
    return ServerTransport(listener, inbox, router)
