"""Limits that answer instead of hanging or crashing, each shown with a real socket client against a real
agent, which keeps serving other clients meanwhile: connections per client IP, slow headers and bodies,
body sizes whatever Content-Length says, JSON nesting, request rate limits, and secrets never echoed."""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from registry.api.ratelimit import READ_REFUSED, WRITE_REFUSED, RequestLimiter, TokenBucket
from registry.api.routes import ROUTES
from registry.config import ConfigError, Limits
from registry.testing import RunningAgent, dev_agent
from registry.testing.agent import make_config

OTHER_IP = "127.0.0.2"  # another client, on Linux's loopback /8
# Routes that answer 200 with a stream until the client goes away, whatever the query: no error to read.
STREAMS = frozenset({"/v1/agent/metrics/stream"})


def call(agent: RunningAgent, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, source: str | None = None) -> tuple[int, bytes, dict[str, str]]:  # fmt: skip
    """One request on its own connection (from ``source`` if given)."""
    sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10,
                                    source_address=(source, 0) if source else None)  # fmt: skip
    with sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        return parse(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def parse(raw: bytes) -> tuple[int, bytes, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, body, headers


def serving(agent: RunningAgent, source: str | None = None) -> bool:
    return call(agent, "GET", "/v1/status/leader", source=source)[0] == 200


# ------------------------------------------------------------------ connections per client


def test_connections_beyond_the_per_client_limit_get_429_and_are_closed() -> None:
    with dev_agent(limits={"http_max_conns_per_client": 5}) as agent:
        held = [socket.create_connection(("127.0.0.1", agent.http_port), timeout=5) for _ in range(5)]
        try:
            for s in held:  # each is accepted and served (keep-alive: the connection stays open)
                s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
            extra = socket.create_connection(("127.0.0.1", agent.http_port), timeout=5)
            with extra:
                extra.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = read_all(extra)  # the 429, then the close
            assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), answer
            assert serving(agent, source=OTHER_IP)  # another client is served meanwhile
        finally:
            held.pop().close()
            deadline = time.monotonic() + 5
            while not serving(agent) and time.monotonic() < deadline:  # a slot freed: served again
                time.sleep(0.05)
            assert serving(agent)
            for s in held:
                s.close()


# ------------------------------------------------------------------ slow clients


def test_a_client_trickling_headers_is_cut_off_at_the_read_timeout() -> None:
    with dev_agent(limits={"http_read_timeout": "1s"}) as agent:
        slow = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        with slow:
            start = time.monotonic()
            closed_after = None
            for byte in b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    slow.sendall(bytes([byte]))
                    slow.settimeout(0.2)
                    if slow.recv(1) == b"":
                        closed_after = time.monotonic() - start
                        break
                except TimeoutError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - start
                    break
                assert serving(agent, source=OTHER_IP)  # others are served while it trickles
        assert closed_after is not None, "the slow client was never cut off"
        assert 0.9 <= closed_after < 4.0, closed_after


def test_a_client_pausing_in_its_body_gets_408() -> None:
    with dev_agent(limits={"http_read_timeout": "1s"}) as agent:
        sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        with sock:
            sock.sendall(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            start = time.monotonic()
            assert serving(agent, source=OTHER_IP)
            status, body, _ = parse(read_all(sock))
        assert status == 408 and b"Request body read timed out" in body
        assert time.monotonic() - start < 5
        assert call(agent, "GET", "/v1/kv/slow")[0] == 404  # nothing was written


# ------------------------------------------------------------------ body size


@pytest.mark.parametrize(("path", "limit"), [("/v1/kv/big", 512 * 1024), ("/v1/agent/service/register", 8 << 20)])
def test_bodies_are_capped_whatever_content_length_says(path: str, limit: int) -> None:
    with dev_agent() as agent:
        # A Content-Length over the limit is refused before a byte of the body is sent.
        sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        with sock:
            sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode())
            sock.settimeout(5)
            status, body, _ = parse(sock.recv(65536))
        assert status == 413, body
        # Chunked, with no Content-Length at all: refused once the count passes the limit, not read whole.
        sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        with sock:
            sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
            sent = 0
            try:
                while sent <= limit + 65536 * 4:
                    sock.sendall(chunk)
                    sent += 65536
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(5)
            status, body, _ = parse(read_all(sock))
        assert status == 413 and b"too large" in body, body
        assert serving(agent)


# ------------------------------------------------------------------ JSON nesting


DEEP = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_is_a_400_on_every_route_that_takes_a_body() -> None:
    with dev_agent() as agent:
        answers = {}
        for r in ROUTES:
            for method in r.methods:
                if method not in ("PUT", "POST"):
                    continue
                path = r.path + ("x" if r.path.endswith("/") else "")
                status, body, _ = call(agent, method, path, DEEP)
                answers[(method, path)] = (status, body)
        assert answers, "the route table has no PUT/POST route"
        # (A 500 with a route's own text, e.g. transfer-leader on a dev agent, is not about the body.)
        crashed = {k: v for k, v in answers.items() if b"recursion" in v[1] or b"Internal error" in v[1]}
        assert not crashed
        for key in (("PUT", "/v1/agent/service/register"), ("PUT", "/v1/catalog/register"), ("PUT", "/v1/txn"),
                    ("PUT", "/v1/session/create"), ("PUT", "/v1/config")):  # fmt: skip
            status, body = answers[key]
            assert status == 400 and b"invalid character '[' exceeded max depth" in body, (key, body)
        assert serving(agent)


def test_json_just_under_the_depth_limit_is_decoded() -> None:
    from registry.api.decode import MAX_JSON_DEPTH, depth_error, parse_json

    ok = b'{"a": ' * (MAX_JSON_DEPTH - 1) + b'"[[[[{{{{"' + b"}" * (MAX_JSON_DEPTH - 1)
    assert depth_error(ok) is None and parse_json(ok) is not None  # brackets inside strings do not count
    assert depth_error(b"{" * (MAX_JSON_DEPTH + 1)) == "invalid character '{' exceeded max depth"


def test_deep_filters_answer_a_clear_error_not_a_crash() -> None:
    with dev_agent() as agent:
        deep = "(" * 2000 + 'Service == "x"' + ")" * 2000
        status, body, _ = call(agent, "GET", "/v1/agent/services?filter=" + urllib.parse.quote(deep, safe="()"))
        # Consul answers every bad filter with 500 and "Failed to create boolean expression evaluator".
        assert status == 500 and b"expression nests deeper than 32 parentheses" in body
        assert b"recursion" not in body
        status, _, _ = call(agent, "GET", "/v1/agent/services?filter=" + ("not+" * 1900) + "Service+==+x")
        assert status == 200
        # Go's server takes a request line of up to 1 MiB (and 4 KiB of slack), and so do we: a long line is
        # parsed, and its filter refused for what it says; only a longer one is refused by the parser.
        status, body, _ = call(agent, "GET", "/v1/agent/services?filter=" + "(" * 10000)
        assert status == 500 and b"expression nests deeper than 32 parentheses" in body
        too_long = "(" * ((1 << 20) + 4096)
        status, body, _ = call(agent, "GET", "/v1/agent/services?filter=" + too_long)
        assert status == 431 and body == b"431 Request Header Fields Too Large"


def test_no_answer_names_the_servers_software() -> None:
    """aiohttp would add ``Server: Python/3.x aiohttp/3.y`` to every answer (Consul's server sends no such
    header): not on a normal answer, an error, a redirect, or a request the parser refused."""
    with dev_agent() as agent:
        answers = [call(agent, "GET", "/v1/status/leader"), call(agent, "GET", "/v1/kv/missing"),
                   call(agent, "PUT", "/v1/kv/k", b"{" * 10), call(agent, "GET", "/v1/nothing/here"),
                   call(agent, "GET", "/v1/kv/x?pad=" + "a" * ((1 << 20) + 4096)),
                   call(agent, "GET", "/ui/")]  # fmt: skip
        assert [a[0] for a in answers] == [200, 404, 200, 404, 431, 302]
    for status, _, headers in answers:
        assert "server" not in headers, (status, headers)


def test_request_lines_as_long_as_gos_server_takes() -> None:
    """A 9,000-byte key and a 100,000-byte ?filter= (aiohttp's default refused lines over 8,190 bytes)."""
    with dev_agent() as agent:
        key = "k" * 9000
        assert call(agent, "PUT", f"/v1/kv/{key}", b"long")[0] == 200
        status, body, _ = call(agent, "GET", f"/v1/kv/{key}?raw")
        assert (status, body) == (200, b"long")
        clauses = " or ".join(f'Service == "s{i}"' for i in range(5000)) + ' or Service == "consul"'
        assert len(clauses) > 100_000
        status, body, _ = call(agent, "GET", "/v1/agent/services?filter=" + urllib.parse.quote(clauses))
        assert status == 200, body


# ------------------------------------------------------------------ rate limits


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(2.0)
    assert [b.take(0.0), b.take(0.0)] == [0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0
    limiter = RequestLimiter("permissive", 1.0, 1.0)
    assert limiter.check("PUT", 0.0) is None and limiter.check("PUT", 0.0) is None
    assert limiter.exceeded == {"read": 0, "write": 1}
    assert RequestLimiter.from_limits(Limits()) is None


def test_request_limit_config_is_checked() -> None:
    cfg = make_config(limits={"request_limits": {"mode": "enforcing", "read_rate": 10, "write_rate": 2.5}})
    assert (cfg.limits.request_mode, cfg.limits.read_rate, cfg.limits.write_rate) == ("enforcing", 10.0, 2.5)
    with pytest.raises(ConfigError, match="mode must be one of disabled, permissive, enforcing"):
        make_config(limits={"request_limits": {"mode": "strict"}})
    with pytest.raises(ConfigError, match="write_rate must be a number"):
        make_config(limits={"request_limits": {"write_rate": "fast"}})
    with pytest.raises(ConfigError, match="http_max_conns_per_client"):
        make_config(limits={"http_max_conns_per_client": -1})


def test_writes_over_the_write_rate_get_429_with_retry_after_and_reads_go_on() -> None:
    limits = {"request_limits": {"mode": "enforcing", "write_rate": 2, "read_rate": 1000}}
    with dev_agent(limits=limits) as agent:
        answers = [call(agent, "PUT", f"/v1/kv/rate/{i}", b"v") for i in range(8)]
        ok = [a for a in answers if a[0] == 200]
        refused = [a for a in answers if a[0] == 429]
        assert ok and refused, [a[0] for a in answers]
        for _, body, headers in refused:
            assert body.decode() == WRITE_REFUSED and int(headers["retry-after"]) >= 1
        assert serving(agent)  # reads have their own budget
        time.sleep(1.1)
        assert call(agent, "PUT", "/v1/kv/rate/later", b"v")[0] == 200
    with dev_agent(limits={"request_limits": {"mode": "enforcing", "read_rate": 1}}) as agent:
        statuses = [call(agent, "GET", "/v1/status/leader") for _ in range(5)]
        assert any(s == 429 and b.decode() == READ_REFUSED for s, b, _ in statuses)
    with dev_agent(limits={"request_limits": {"mode": "permissive", "write_rate": 1}}) as agent:
        assert all(call(agent, "PUT", f"/v1/kv/p/{i}", b"v")[0] == 200 for i in range(5))


# ------------------------------------------------------------------ secrets


SECRET = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[list[Any], pytest.LogCaptureFixture]]:
    """Every structlog event (the agent's) and every stdlib log record (aiohttp's) of the test."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        yield events, caplog


def test_error_responses_and_logs_never_echo_a_token(
    captured_logs: tuple[list[Any], pytest.LogCaptureFixture],
) -> None:
    """Every route, with the token in each place Consul reads one (X-Consul-Token, Authorization: Bearer,
    ?token=) and in the token fields of bodies that fail to decode: no error text, header or log line
    carries it. (Values the caller put in other fields, a KV verb or a key, are echoed as Consul echoes
    them.)"""
    bad_bodies = [b"{", DEEP[:5000] + b"]", json.dumps({"SecretID": SECRET, "Token": SECRET, "Name": 5}).encode(),
                  json.dumps([{"KV": {"Verb": "set", "Key": "k", "Value": 5}, "Token": SECRET}]).encode(),
                  json.dumps({"Token": SECRET, "ID": 7}).encode(),
                  b"\xff" + SECRET.encode()]  # fmt: skip
    seen: list[bytes] = []
    with dev_agent(limits={"request_limits": {"mode": "enforcing", "write_rate": 1000}}) as agent:
        for r in ROUTES:
            if r.path in STREAMS:
                continue
            path = r.path + ("x" if r.path.endswith("/") else "")
            for method in r.methods:
                for body in bad_bodies if method in ("PUT", "POST") else [None]:
                    for how in ("header", "bearer", "query"):
                        headers = {"X-Consul-Token": SECRET} if how == "header" else (
                            {"Authorization": f"Bearer {SECRET}"} if how == "bearer" else {})
                        query = f"?token={SECRET}&index=bad&wait=bad&filter=Secret%20%3D%3D" if how == "query" else ""
                        status, out, headers_out = call(agent, method, path + query, body, headers)
                        if status >= 400:
                            seen.append(out + json.dumps(headers_out).encode())
        # A request line too long to parse, with the token in it: the parser's error must not quote it.
        status, out, _ = call(agent, "GET", f"/v1/kv/x?token={SECRET}&pad=" + "a" * ((1 << 20) + 4096))
        assert status == 431
        seen.append(out)
    assert len(seen) > 100
    assert not [s for s in seen if SECRET.encode() in s]
    events, caplog = captured_logs
    assert any(e.get("event") == "rejected a malformed HTTP request" for e in events)  # the logs were seen
    assert SECRET not in repr(events)
    assert SECRET not in caplog.text


def test_member_agents_are_exempt_from_the_per_client_limit() -> None:
    """A client agent forwards every blocking query of its callers to a server over its own connection
    (Consul's agents use RPC, which the HTTP limit does not cover): the address of a member agent (a node
    with serfHealth) is not limited; any other address still is."""
    with dev_agent(limits={"http_max_conns_per_client": 3}) as agent:
        register = {"Node": "client-1", "Address": OTHER_IP,
                    "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}}  # fmt: skip
        assert call(agent, "PUT", "/v1/catalog/register", json.dumps(register).encode())[0] == 200
        held = []
        try:
            for _ in range(6):
                s = socket.create_connection(("127.0.0.1", agent.http_port), timeout=5,
                                             source_address=(OTHER_IP, 0))  # fmt: skip
                held.append(s)
                s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for s in held:
                s.close()
