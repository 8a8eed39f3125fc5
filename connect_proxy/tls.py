"""SSLContexts for the mesh: our leaf (with its intermediates) as the certificate, the Connect roots
as the only trust anchors, peer certificates required, TLS 1.2 at least, no host-name checks (the
identity is the URI SAN, checked after the handshake by ``identity``); and the TLS sessions the
upstream side keeps to resume (``SessionCache``).

Session resumption, as Envoy (Consul's own sidecar) does by default: the client side keeps one session
per upstream instance (Envoy's ``max_session_keys``, default 1) and offers it on the next connection;
the public listener issues one TLS 1.3 ticket per handshake, sealed with keys OpenSSL makes for each
SSLContext. A resumed handshake skips the certificate exchange and its signature checks (ECDHE still
runs, so each connection keeps its own forward-secret keys). What it must not skip, and does not:

- authorization: the sidecar decides every accepted connection, resumed or not, from the client
  certificate's SPIFFE URI (a resumed session carries the certificate of the handshake that made it,
  which ``getpeercert`` returns) against the intentions in force now;
- expiry: that certificate may have expired since (a ticket lives 2 hours, a leaf may have less
  left), so both sides refuse a peer certificate past its NotAfter on every connection
  (``identity.check_not_expired``), and the cache never offers a session whose peer certificate has
  expired;
- rotation: a new leaf or new roots build new SSLContexts (``proxy.Proxy._rebuild``), whose fresh ticket
  keys cannot open the old tickets (full handshake), and the cache drops every session of the old
  client context (a session belongs to the context that made it).
"""

from __future__ import annotations

import collections
import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass

TICKETS_PER_HANDSHAKE = 1  # OpenSSL sends 2 by default; the client side keeps one per instance


@contextlib.contextmanager
def _pem_file(data: str) -> Iterator[str]:
    """A path holding ``data`` for ``load_cert_chain``, which reads only files: an anonymous memory
    file where Linux has them (the private key never touches a disk), else a private temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("connect-proxy-pem", os.MFD_CLOEXEC)
        try:
            os.write(fd, data.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(suffix=".pem")  # pragma: no cover - non-Linux
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)


def _context(purpose: int, chain_pem: str, key_pem: str, roots_pem: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if not roots_pem:
        raise ValueError("no Connect roots to trust")
    ctx.load_verify_locations(cadata="".join(roots_pem))
    with _pem_file(chain_pem + ("" if chain_pem.endswith("\n") else "\n") + key_pem) as path:
        ctx.load_cert_chain(path)
    return ctx


def server_context(chain_pem: str, key_pem: str, roots_pem: Sequence[str]) -> ssl.SSLContext:
    """The public listener: presents our leaf, requires a client certificate from the roots.

    One TLS 1.3 session ticket per handshake (stateless: the session, client certificate included, is
    sealed with this context's own ticket keys, so a context built for a new leaf or new roots cannot
    resume the old ones; TLS 1.2 tickets the same way). Python gives every context the same session ID
    context, which OpenSSL requires to resume a session with a client certificate."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, chain_pem, key_pem, roots_pem)
    ctx.num_tickets = TICKETS_PER_HANDSHAKE
    return ctx


def client_context(chain_pem: str, key_pem: str, roots_pem: Sequence[str]) -> ssl.SSLContext:
    """Upstream connections: presents our leaf, verifies the server's chain against the roots."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, chain_pem, key_pem, roots_pem)


# ------------------------------------------------------------------------------ upstream sessions


@dataclass(slots=True)
class _Kept:
    ctx: ssl.SSLContext
    session: ssl.SSLSession
    not_after: float  # the peer certificate's NotAfter (epoch seconds)
    until: float  # when the server stops taking it (its ticket lifetime), by our clock
    stored: float


class SessionCache:
    """TLS sessions to resume, one per upstream instance (the newest), least recently used dropped
    beyond ``max_entries``. Pure: the time comes in as ``now`` (epoch seconds).

    A session is offered (``get``) only with the client context that made it, while the server's
    certificate it carries is unexpired and its ticket's lifetime lasts; the caller ``drop``s it when
    the server does not resume it or the handshake fails, ``retain``s only the instances still in its
    pools and ``clear``s it when its context is rebuilt. New sessions come from ``keeper``."""

    def __init__(self, max_entries: int = 1024, refresh: float = 600.0) -> None:
        self.max_entries = max_entries
        self.refresh = refresh  # a kept session is replaced by a newer one after this many seconds
        self._kept: collections.OrderedDict[Hashable, _Kept] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept

    def get(self, key: Hashable, ctx: ssl.SSLContext, now: float) -> ssl.SSLSession | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        if kept.ctx is not ctx or now > kept.not_after or now >= kept.until:
            del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return kept.session

    def wants(self, key: Hashable, ctx: ssl.SSLContext, now: float) -> bool:
        """Whether a session from a connection to ``key`` made with ``ctx`` is worth keeping: none is
        kept for it, or the one kept is of another context or due for refreshing."""
        kept = self._kept.get(key)
        return kept is None or kept.ctx is not ctx or now - kept.stored >= self.refresh

    def put(self, key: Hashable, ctx: ssl.SSLContext, session: ssl.SSLSession, not_after: float,
            now: float) -> None:  # fmt: skip
        if now > not_after:
            return
        lifetime = session.ticket_lifetime_hint or session.timeout
        self._kept[key] = _Kept(ctx, session, not_after, now + lifetime, now)
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._kept.pop(key, None)

    def retain(self, keys: Collection[Hashable]) -> None:
        """Forget the sessions of instances that are gone."""
        for key in [k for k in self._kept if k not in keys]:
            del self._kept[key]

    def clear(self) -> None:
        self._kept.clear()

    def keeper(self, key: Hashable, ctx: ssl.SSLContext, not_after: float,
               clock: Callable[[], float]) -> Callable[[ssl.SSLObject], bool]:  # fmt: skip
        """A callback for one client connection: called with its SSLObject after the handshake and
        after each read until it returns True, it keeps the connection's session once the session has
        a ticket (TLS 1.3 sends it after the handshake, so usually on the first read) and gives up
        after a few reads without one (a server that issues no tickets)."""
        tries = 0

        def keep(obj: ssl.SSLObject) -> bool:
            nonlocal tries
            session = obj.session
            if session is not None and session.has_ticket:
                self.put(key, ctx, session, not_after, clock())
                return True
            tries += 1
            return tries > 4

        return keep
