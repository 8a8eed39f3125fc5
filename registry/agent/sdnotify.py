"""systemd's readiness protocol (sd_notify(3)), written out: one datagram to ``$NOTIFY_SOCKET``.

A unit with ``Type=notify`` is "started" when the service says ``READY=1``; ``STOPPING=1`` tells systemd
the service is shutting down. Consul's agent does the same through go-systemd once it has joined
(agent/agent.go notifies after the first LAN join). The socket is a path, or an abstract socket when the
address starts with ``@``. Without ``$NOTIFY_SOCKET`` (not run by systemd) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("proconsul.systemd")

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to the service manager; True when a datagram was sent."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager", state=state, error=str(exc))
        return False
    return True
