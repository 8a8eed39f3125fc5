"""Operating the sidecar (in process, with a dev agent): MaxInboundConnections from service-defaults,
circuit-breaker MaxConnections, the access log, and a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import TRAILER, register_proxy, roundtrip, wait_for
from structlog.testing import capture_logs


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
    return reader, writer


async def test_max_inbound_connections_resets_the_extra_ones_at_once(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "db", "MaxInboundConnections": 2})
    assert status == 200, text
    server = await start_proxy("db", local_port=echo.port)
    await wait_for(lambda: (server.service_defaults or {}).get("MaxInboundConnections") == 2, what="service-defaults")
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    port = client.upstream_addrs["db"][1]
    held = [await _open(port) for _ in range(2)]
    assert await roundtrip(port, b"third", timeout=5) == b""
    assert server.metrics.value("proconsul_proxy_inbound_connections_total", ("overflow",)) == 1
    for _, w in held:
        w.close()
    await wait_for(lambda: server._inbound_open == 0, what="held connections closed")
    assert await roundtrip(port, b"again") == b"again" + TRAILER


async def test_max_connections_closes_upstream_connections_beyond_the_limit(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "web",
                                                    "UpstreamConfig": {"Defaults": {"Limits": {"MaxConnections": 1}}}})  # fmt: skip
    assert status == 200, text
    server = await start_proxy("db", local_port=echo.port)
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    await wait_for(lambda: client.service_defaults is not None, what="service-defaults")
    port = client.upstream_addrs["db"][1]
    _, writer = await _open(port)
    assert await roundtrip(port, b"over", timeout=5) == b""
    assert client.metrics.value("proconsul_proxy_circuit_breaker_overflows_total", ("db", "max_connections")) == 1
    writer.close()
    await wait_for(lambda: all(p.active("connections") == 0 for p in client.upstreams["db"].pools.values()),
                   what="the limit released")  # fmt: skip
    assert await roundtrip(port, b"fits") == b"fits" + TRAILER


async def test_access_log_and_graceful_drain(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    server = await start_proxy("db", local_port=echo.port)
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0}, access_log=True)
    port = client.upstream_addrs["db"][1]
    with capture_logs() as logs:
        assert await roundtrip(port, b"logged") == b"logged" + TRAILER
        await wait_for(lambda: any(e.get("listener") == "db" for e in logs), what="access log line")
    line = next(e for e in logs if e.get("listener") == "db")
    assert line["result"] == "ok" and line["bytes_received"] == 6 and line["bytes_sent"] == 6 + len(TRAILER)
    assert line["instance"] == f"127.0.0.1:{server.public_addr[1]}" and line["duration_ms"] >= 0

    reader, writer = await _open(port)
    drain = asyncio.create_task(client.drain(timeout=1.0))
    await asyncio.sleep(0.1)
    with contextlib.suppress(ConnectionError, OSError):  # the listener is closed: no new connection
        assert await roundtrip(port, b"late", timeout=2) == b""
    writer.write(b"during")  # the open one still carries bytes while draining
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"during"
    assert await drain == 2  # still open at the deadline: its two sockets
    writer.close()


@pytest.mark.agent_config(default_intention_policy="deny")
async def test_the_agents_default_intention_policy_decides_when_no_intention_matches(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    # ACLs are off in -dev (ACL default: allow); default_intention_policy "deny" wins, as the agent's
    # own authorize endpoint decides.
    server = await start_proxy("db", local_port=echo.port)
    await wait_for(lambda: server.authz is not None and server.authz.default[0] is False, what="the default policy")
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    port = client.upstream_addrs["db"][1]
    assert await roundtrip(port, b"no", timeout=5) == b""
    status, text = await http("PUT", "/v1/connect/intentions/exact", {"Action": "allow"}, source="web", destination="db")
    assert status == 200, text
    await wait_for(lambda: server.authz is not None and len(server.authz.index) == 1, what="the intention")
    assert await roundtrip(port, b"yes") == b"yes" + TRAILER
    assert echo.connections == 1
