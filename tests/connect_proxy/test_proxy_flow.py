"""Bytes through a pair of real proxies on loopback, with a real dev agent issuing the certificates and
deciding intentions: app -> upstream listener -> client proxy -> mTLS -> server proxy -> echo app."""

from __future__ import annotations

import asyncio
import hashlib
import os

from conftest import TRAILER, EchoApp, register_proxy, roundtrip, wait_for


async def _pair(start_proxy, http, echo: EchoApp):  # noqa: ANN001, ANN202
    server = await start_proxy("db", local_port=echo.port)
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    return server, client, client.upstream_addrs["db"][1]


async def test_bytes_flow_end_to_end_with_several_mib_and_half_close(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    server, client, port = await _pair(start_proxy, http, echo)
    assert await roundtrip(port, b"hello") == b"hello" + TRAILER

    payload = os.urandom(6 * 1024 * 1024 + 123)
    got = await roundtrip(port, payload)
    assert len(got) == len(payload) + len(TRAILER)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload + TRAILER).digest()

    # Several at once, each with its own half-close.
    results = await asyncio.gather(*(roundtrip(port, bytes([i]) * 300_000) for i in range(8)))
    assert results == [bytes([i]) * 300_000 + TRAILER for i in range(8)]
    assert echo.connections == 10
    # Nothing left open once every connection finished, on either proxy.
    await wait_for(lambda: server.open_connections == 0 and client.open_connections == 0, what="connections closed")


async def test_the_server_side_can_keep_sending_after_the_client_half_closes(agent, http, start_proxy) -> None:  # noqa: ANN001
    # An app that reads until EOF and only then answers: the reply travels after the client's FIN.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(-1)
        await asyncio.sleep(0)  # the reply goes strictly after the EOF was seen
        writer.write(hashlib.sha256(data).hexdigest().encode())
        await writer.drain()
        writer.close()

    app = await asyncio.start_server(handle, "127.0.0.1", 0)
    server = await start_proxy("db", local_port=app.sockets[0].getsockname()[1])
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    payload = os.urandom(1_000_000)
    got = await roundtrip(client.upstream_addrs["db"][1], payload)
    assert got == hashlib.sha256(payload).hexdigest().encode()
    app.close()


async def test_intention_deny_closes_and_allow_lets_through(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    server, client, port = await _pair(start_proxy, http, echo)
    status, text = await http("PUT", "/v1/connect/intentions/exact", {"Action": "deny"}, source="web", destination="db")
    assert status == 200, text
    assert await roundtrip(port, b"let me in") == b""
    await wait_for(lambda: server.stats["inbound_refused"] == 1, what="refusal recorded")
    assert echo.connections == 0  # the app never saw the denied connection

    status, text = await http("PUT", "/v1/connect/intentions/exact", {"Action": "allow"}, source="web", destination="db")
    assert status == 200, text
    assert await roundtrip(port, b"let me in") == b"let me in" + TRAILER
    assert echo.connections == 1


async def test_existing_connections_survive_and_new_ones_work_after_a_ca_rotation(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    server, client, port = await _pair(start_proxy, http, echo)
    old_root = client.contexts.root_ids
    old_serials = (server.contexts.leaf_serial, client.contexts.leaf_serial)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # opened before the rotation
    writer.write(b"before")
    assert await reader.readexactly(6) == b"before"

    status, text = await http("PUT", "/v1/connect/ca/configuration",
                              {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
    assert status == 200, text

    def rotated() -> bool:
        return all(len(p.contexts.root_ids) == 2 and p.contexts.root_ids != old_root for p in (server, client)) and (
            server.contexts.leaf_serial, client.contexts.leaf_serial) != old_serials and all(
            s != o for s, o in zip((server.contexts.leaf_serial, client.contexts.leaf_serial), old_serials, strict=True))  # fmt: skip

    await wait_for(rotated, 15, "both proxies to load the new roots and leaves")
    assert await roundtrip(port, b"after rotation") == b"after rotation" + TRAILER
    writer.write(b"still here")  # the old connection kept its TLS session
    assert await reader.readexactly(10) == b"still here"
    writer.close()


def test_allocator_tuning_applies_on_glibc() -> None:
    """The proxy keeps freed heap for reuse (see splice.tune_allocator); run in a child so the test
    process keeps glibc's defaults."""
    import platform
    import subprocess
    import sys

    import pytest

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    out = subprocess.run([sys.executable, "-c", "from connect_proxy.splice import tune_allocator; print(tune_allocator())"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.stdout.strip() == "True", out.stderr
