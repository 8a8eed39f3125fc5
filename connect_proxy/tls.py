"""SSLContexts for the mesh: our leaf (with its intermediates) as the certificate, the Connect roots
as the only trust anchors, peer certificates required, TLS 1.2 at least, no host-name checks (the
identity is the URI SAN, checked after the handshake by ``identity``)."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Sequence


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

    No TLS 1.3 session tickets: the sidecars never resume a session (each connection proves its
    certificate afresh), so making, encrypting and sending two tickets per handshake was wasted work."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, chain_pem, key_pem, roots_pem)
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_context(chain_pem: str, key_pem: str, roots_pem: Sequence[str]) -> ssl.SSLContext:
    """Upstream connections: presents our leaf, verifies the server's chain against the roots."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, chain_pem, key_pem, roots_pem)
