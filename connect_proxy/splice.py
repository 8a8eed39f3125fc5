"""Two TCP connections joined byte for byte, one of them optionally TLS, with backpressure and half-close.

asyncio's own TLS transport cannot half-close (its ``write_eof`` raises NotImplementedError), and a proxy
must: a client that shuts down its sending side still waits for the reply. So TLS is done here over a
plain transport with ``ssl.SSLObject`` and memory BIOs: EOF from one side becomes a TCP FIN (or a TLS
close_notify followed by a FIN) on the other, and the connection is closed only when both directions
have finished. Backpressure: when one side's write buffer fills, the other side stops reading.

Plaintext is always drained from the SSL object as soon as its record arrives (backpressure acts on the
socket beneath instead), so a close_notify we send never has to skip over unread records.
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import ssl
from collections.abc import Callable
from typing import Any

READ_CHUNK = 256 * 1024
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024


class Endpoint(asyncio.Protocol):
    """One side of a proxied connection. Before ``link`` it buffers what it reads; after, it writes
    everything it reads to its peer."""

    def __init__(self, on_made: Callable[[Endpoint], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Endpoint | None = None
        self.sslobj: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self.handshake: asyncio.Future[None] | None = None
        # Called with the SSLObject after the handshake and after each read until it returns True: how
        # the client side keeps the connection's TLS session (tls.SessionCache.keeper).
        self.on_session: Callable[[ssl.SSLObject], bool] | None = None
        self._on_made = on_made
        self._pending: list[bytes] = []
        self.read_eof = False  # this side sent us EOF
        self.write_eof = False  # we sent this side EOF
        self.closed = False
        self.bytes_in = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Dead peers are found eventually even on connections that never send again.
            with _suppress_oserror():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            with _suppress_oserror():
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.sslobj is None:
            self.bytes_in += len(data)
            self._deliver(data)
            return
        assert self._in is not None
        self._in.write(data)
        if self.handshake is not None and not self.handshake.done():
            self._do_handshake()
        else:
            self._read_plain()

    def eof_received(self) -> bool:
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("connection closed during the TLS handshake"))
            return False
        # A TCP FIN without close_notify is a truncation for TLS; at L4 it still means "no more data".
        self._got_eof()
        return True  # keep our sending side open until the other direction is done too

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("connection closed during the TLS handshake"))
        if not self.done.done():
            self.done.set_result(None)
        peer = self.peer
        if peer is not None and not peer.closed and peer.transport is not None:
            if exc is None and self.read_eof and self.write_eof:
                peer.transport.close()  # both directions finished: flush and close
            else:
                peer.transport.abort()  # a reset or an error on one side resets the other
        self._pending.clear()

    # ------------------------------------------------------------------ TLS

    def start_tls(self, ctx: ssl.SSLContext, *, server_side: bool,
                  session: ssl.SSLSession | None = None) -> asyncio.Future[None]:  # fmt: skip
        """Begin the handshake; a client side offers ``session`` to resume (``resumed`` says if it was)."""
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = ctx.wrap_bio(self._in, self._out, server_side=server_side, session=session)
        self.handshake = asyncio.get_running_loop().create_future()
        self._do_handshake()
        return self.handshake

    def peercert(self) -> dict[str, Any] | None:
        return self.sslobj.getpeercert() if self.sslobj is not None else None

    @property
    def resumed(self) -> bool:
        """The handshake resumed a TLS session (no certificate exchange: ``peercert`` is the session's)."""
        return self.sslobj is not None and self.sslobj.session_reused

    def _do_handshake(self) -> None:
        assert self.sslobj is not None and self.handshake is not None
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ValueError) as exc:
            self._flush()  # the alert, so the peer learns why
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            return
        self._flush()
        self.handshake.set_result(None)
        if self._in is not None and self._in.pending:
            self._read_plain()

    def _read_plain(self) -> None:
        sslobj = self.sslobj
        assert sslobj is not None
        chunks = []
        eof = False
        try:
            while True:
                chunk = sslobj.read(READ_CHUNK)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError:
            self._flush()
            self.abort()
            return
        self._flush()  # TLS 1.3 key updates and tickets, or our close_notify reply
        if self.on_session is not None and self.on_session(sslobj):
            self.on_session = None
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.bytes_in += len(data)
            self._deliver(data)
        if eof:
            self._got_eof()

    def _flush(self) -> None:
        if self._out is not None and self._out.pending and self.transport is not None and not self.closed:
            self.transport.write(self._out.read())

    # ------------------------------------------------------------------ the splice

    def _deliver(self, data: bytes) -> None:
        if self.peer is None:
            self._pending.append(data)
        else:
            self.peer.send(data)

    def _got_eof(self) -> None:
        if self.read_eof:
            return
        self.read_eof = True
        if self.peer is not None:
            self.peer.send_eof()
        self._maybe_close()

    def send(self, data: bytes) -> None:
        if self.write_eof or self.closed or self.transport is None:
            return
        if self.sslobj is None:
            self.transport.write(data)
            return
        try:
            self.sslobj.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def send_eof(self) -> None:
        if self.write_eof or self.closed or self.transport is None:
            return
        self.write_eof = True
        if self.sslobj is not None:
            try:
                self.sslobj.unwrap()  # queues close_notify; we may still read the peer's remaining data
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            self._flush()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.read_eof and self.write_eof and self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


def link(a: Endpoint, b: Endpoint) -> None:
    """Join two endpoints: what each has buffered goes to the other, then bytes flow both ways."""
    if a.closed or b.closed:
        a.abort()
        b.abort()
        return
    a.peer, b.peer = b, a
    for src, dst in ((a, b), (b, a)):
        pending, src._pending = src._pending, []
        for chunk in pending:
            dst.send(chunk)
    for src, dst in ((a, b), (b, a)):
        if src.read_eof:
            dst.send_eof()
    for ep in (a, b):
        if ep.transport is not None and not ep.closed and not ep.read_eof:
            ep.transport.resume_reading()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep glibc from handing freed heap back to the kernel after every large buffer.

    A proxy allocates and frees buffers of hundreds of KiB per read (socket reads, TLS records in and
    out of the memory BIOs). With glibc's defaults, freeing one at the top of the heap trims it and
    the next allocation faults fresh zeroed pages back in: measured at well over a third of the
    proxy's CPU per byte. Fixed thresholds keep up to 64 MiB of freed heap for reuse instead (the
    proxy's peak, not more, stays resident). Returns False where mallopt is not available (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20), (_M_TOP_PAD, 16 << 20))
    )


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]
