"""Helpers for the DNS tests: register catalog entries in a running dev agent, ask it questions with
dnslib's client or raw sockets."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from registry.state.store import StateStore
from registry.structs import Check, Node, Service
from registry.testing.agent import RunningAgent

HOST = "127.0.0.1"


def propose(agent: RunningAgent, cmd: dict[str, Any]) -> None:
    result = agent.call(agent.agent.consensus.propose(cmd))
    assert result is True, result


def register(
    agent: RunningAgent,
    node: str,
    address: str,
    service: dict[str, Any] | None = None,
    checks: list[dict[str, Any]] | None = None,
    meta: dict[str, str] | None = None,
    tagged: dict[str, str] | None = None,
    skip_node: bool = False,
) -> None:
    cmd: dict[str, Any] = {"Type": "register", "Node": node, "Address": address, "Datacenter": "dc1"}
    if skip_node:
        cmd["SkipNodeUpdate"] = True  # add a service without touching the node row (its meta stays)
    if service is not None:
        cmd["Service"] = service
    if checks:
        cmd["Checks"] = [{"Node": node, **c} for c in checks]
    if meta is not None:
        cmd["NodeMeta"] = meta
    if tagged is not None:
        cmd["TaggedAddresses"] = tagged
    propose(agent, cmd)


def set_check(agent: RunningAgent, node: str, check_id: str, status: str) -> None:
    propose(agent, {"Type": "check.update", "Node": node, "CheckID": check_id, "Status": status, "Output": ""})


def deregister(agent: RunningAgent, node: str, service_id: str = "") -> None:
    cmd = {"Type": "deregister", "Node": node}
    if service_id:
        cmd["ServiceID"] = service_id
    propose(agent, cmd)


def ask(port: int, name: str, qtype: str = "A", *, tcp: bool = False, edns: int | None = None,
        timeout: float = 3.0) -> DNSRecord:  # fmt: skip
    """One question with dnslib's client; returns the parsed response."""
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    raw = q.send(HOST, port, tcp=tcp, timeout=timeout)
    resp = DNSRecord.parse(raw)
    assert resp.header.id == q.header.id
    return resp


def raw_udp(port: int, packet: bytes, timeout: float = 1.0, bufsize: int = 65535) -> bytes | None:
    """Send bytes, return the reply or None if none came before the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (HOST, port))
        try:
            return s.recv(bufsize)
        except TimeoutError:
            return None


def raw_tcp(port: int, packet: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        return read_tcp_message(s)


def read_tcp_message(s: socket.socket) -> bytes | None:
    head = _recv_exact(s, 2)
    if head is None:
        return None
    (n,) = struct.unpack("!H", head)
    return _recv_exact(s, n)


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def rcode(resp: DNSRecord) -> str:
    return RCODE.get(resp.header.rcode)


def rtypes(rrs: list[Any]) -> list[str]:
    return [QTYPE.get(rr.rtype) for rr in rrs]


def addresses(resp: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in resp.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


def eventually(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> float:
    """Poll until ``check()`` holds; return how long it took. Fails at the deadline."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - start


class Catalog:
    """A state store written the way the FSM writes it: one indexed transaction per change."""

    def __init__(self) -> None:
        self.store = StateStore()
        self.index = 0

    def _tx(self, fn: Any) -> None:
        self.index += 1
        self.store.begin(self.index)
        fn()
        self.store.commit()

    def register(self, node: str, addr: str, service: str | None = None, port: int = 80,
                 weights: tuple[int, int] = (1, 1), status: str | None = None) -> None:  # fmt: skip
        svc = None
        if service is not None:
            svc = Service(node=node, id=service, service=service, port=port, weights=weights)
        checks = []
        if status is not None and service is not None:
            checks = [Check(node=node, check_id=f"c-{service}", name="c", status=status, service_id=service)]
        n = Node(id="", node=node, address=addr, datacenter="dc1")
        self._tx(lambda: self.store.ensure_registration(n, svc, checks))

    def set_status(self, node: str, service: str, status: str) -> None:
        self._tx(lambda: self.store.update_check_status(node, f"c-{service}", status, ""))


def query(name: str, qtype: str = "A", qid: int = 1234, edns: int | None = None) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())
