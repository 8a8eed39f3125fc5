"""The agent's gossip keyring: loaded and persisted by Consul's rules, ``/v1/operator/keyring`` with Consul's
JSON and error texts, and ``proconsul keygen`` / ``proconsul keyring`` against a real agent process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registry.agent.gossip_keys import KEYRING_EXISTS_WARNING, gossip_codec, has_gossip_key, setup_keyring
from registry.config import Config, ConfigError
from registry.gossip import Address
from registry.gossip.codec import PlainCodec
from registry.gossip.driver import GossipDriver
from registry.gossip.keyring import Keyring
from registry.gossip.security import EncryptedCodec
from registry.testing import RunningAgent, async_dev_agent, free_port
from tests.cli_run import run_cli, run_process
from tests.test_cli import wait_http

BIN = str(Path(sys.executable).with_name("proconsul"))
K1 = base64.b64encode(b"\x01" * 32).decode()
K2 = base64.b64encode(b"\x02" * 32).decode()
K3 = base64.b64encode(b"\x03" * 16).decode()


def _cfg(tmp: Path, **extra: Any) -> Config:
    cfg = Config(node_name="n1", data_dir=str(tmp), server=True)
    cfg.extra.update(extra)
    return cfg


# ---------------------------------------------------------------------------------------------- loading


def test_encrypt_creates_the_keyring_file_and_the_file_wins_after(tmp_path: Path) -> None:
    ring, warnings = setup_keyring(_cfg(tmp_path, encrypt=K1))
    assert ring is not None and ring.list_keys() == [K1] and warnings == []
    path = tmp_path / "serf" / "local.keyring"
    assert json.loads(path.read_text()) == [K1]
    ring.install(K2)
    ring.use(K2)  # rotated while running: persisted
    again, warnings = setup_keyring(_cfg(tmp_path, encrypt=K1))
    assert again is not None and again.list_keys() == [K2, K1]
    assert warnings == [KEYRING_EXISTS_WARNING] == ["WARNING: LAN keyring exists but -encrypt given, using keyring"]
    without, warnings = setup_keyring(_cfg(tmp_path))  # encrypt dropped from the config: the file still holds
    assert without is not None and without.primary_key == K2 and warnings == []
    assert has_gossip_key(_cfg(tmp_path))


def test_without_a_file_the_keys_stay_in_memory(tmp_path: Path) -> None:
    ring, _ = setup_keyring(_cfg(tmp_path, encrypt=K1, disable_keyring_file=True))
    assert ring is not None and ring.path is None
    ring.install(K2)
    assert not (tmp_path / "serf").exists()
    dev = Config(node_name="n1", dev=True)
    dev.extra["encrypt"] = K3
    assert setup_keyring(dev)[0] is not None
    assert setup_keyring(Config(node_name="n1", dev=True)) == (None, [])
    assert not has_gossip_key(_cfg(tmp_path / "empty"))


def test_a_broken_keyring_file_stops_the_agent_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "serf" / "local.keyring"
    path.parent.mkdir()
    path.write_text("[]")
    with pytest.raises(ConfigError, match="^Failed to configure keyring: no keys present in keyring"):
        setup_keyring(_cfg(tmp_path))


def test_the_codec_follows_the_config(tmp_path: Path) -> None:
    ring, _ = setup_keyring(_cfg(tmp_path, encrypt=K1, encrypt_verify_incoming=False))
    codec = gossip_codec(_cfg(tmp_path, encrypt_verify_incoming=False), ring)
    assert isinstance(codec, EncryptedCodec) and not codec.verify_incoming and codec.verify_outgoing
    assert isinstance(gossip_codec(_cfg(tmp_path), None), PlainCodec)


# ---------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
async def encrypted() -> AsyncIterator[tuple[RunningAgent, aiohttp.ClientSession]]:
    async with async_dev_agent(encrypt=K1) as running, aiohttp.ClientSession() as session:
        yield running, session


async def _call(session: aiohttp.ClientSession, running: RunningAgent, method: str, body: Any = None,
                query: str = "") -> tuple[int, Any]:  # fmt: skip
    data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    async with session.request(method, f"{running.url}/v1/operator/keyring{query}", data=data) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


def _pool(keys: dict[str, int], primary: dict[str, int]) -> list[dict[str, Any]]:
    return [{"WAN": False, "Datacenter": "dc1", "Segment": "", "Messages": {}, "Keys": keys, "PrimaryKeys": primary,
             "NumNodes": 1, "Error": ""}]  # fmt: skip


async def test_keyring_endpoint_list_install_use_remove(encrypted: tuple[RunningAgent, aiohttp.ClientSession]) -> None:
    running, session = encrypted
    assert await _call(session, running, "GET") == (200, _pool({K1: 1}, {K1: 1}))
    assert await _call(session, running, "POST", {"Key": K2}) == (200, "")
    assert await _call(session, running, "GET") == (200, _pool({K1: 1, K2: 1}, {K1: 1}))
    assert await _call(session, running, "PUT", {"Key": K2}) == (200, "")
    assert await _call(session, running, "GET") == (200, _pool({K1: 1, K2: 1}, {K2: 1}))
    codec = running.agent.gossip_codec
    assert isinstance(codec, EncryptedCodec) and codec.keyring.primary_key == K2  # the gossip seals with it
    status, text = await _call(session, running, "DELETE", {"Key": K2})
    assert (status, text) == (500, "2 errors occurred:\n\t* dc1 (LAN) error: 1/1 nodes reported failure\n\t"
                                   "* test-agent: removing the primary key is not allowed\n\n")
    assert await _call(session, running, "DELETE", {"Key": K1}) == (200, "")
    status, text = await _call(session, running, "PUT", {"Key": K1})
    assert status == 500 and text.endswith("* test-agent: requested key is not in the keyring\n\n")
    assert await _call(session, running, "GET") == (200, _pool({K2: 1}, {K2: 1}))


@pytest.mark.parametrize(("method", "body", "query", "status", "text"), [
    ("POST", {"Key": "not base64!"}, "", 500,
     "1 error occurred:\n\t* dc1 (LAN) error: illegal base64 data at input byte 3\n\n"),
    ("POST", {"Key": base64.b64encode(b"x" * 10).decode()}, "", 500,
     "2 errors occurred:\n\t* dc1 (LAN) error: 1/1 nodes reported failure\n\t"
     "* test-agent: key size must be 16, 24 or 32 bytes\n\n"),
    ("POST", "{nope", "", 400, "Request decode failed: "),
    ("POST", [K2], "", 400, "Request decode failed: json: cannot unmarshal"),
    ("GET", None, "?relay-factor=x", 400, 'Error parsing relay factor: strconv.Atoi: parsing "x": invalid syntax'),
    ("GET", None, "?relay-factor=6", 400, "Invalid relay-factor: Relay factor must be in range: [0, 5]"),
    ("GET", None, "?local-only=maybe", 400, 'Error parsing local-only: strconv.ParseBool: parsing "maybe"'),
    ("POST", {"Key": K2}, "?local-only=true", 400,
     "Invalid use of local-only: local-only can only be set for list requests"),
])  # fmt: skip
async def test_keyring_endpoint_refusals(encrypted: tuple[RunningAgent, aiohttp.ClientSession], method: str,
                                         body: Any, query: str, status: int, text: str) -> None:  # fmt: skip
    running, session = encrypted
    got = await _call(session, running, method, body, query)
    assert got[0] == status and isinstance(got[1], str) and got[1].startswith(text), got
    assert await _call(session, running, "GET") == (200, _pool({K1: 1}, {K1: 1}))  # nothing changed


async def test_an_agent_without_encryption_says_so() -> None:
    async with async_dev_agent() as running, aiohttp.ClientSession() as session:
        status, text = await _call(session, running, "GET")
        assert (status, text) == (500, "2 errors occurred:\n\t* dc1 (LAN) error: 1/1 nodes reported failure\n\t"
                                       "* test-agent: Keyring is empty (encryption not enabled)\n\n")
        status, text = await _call(session, running, "POST", {"Key": K2})
        assert status == 500 and "No keyring to modify (encryption not enabled)" in text


# ------------------------------------------------------------------------------------- across the pool


async def _converged(agents: list[RunningAgent], n: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not all(a.agent.lan is not None and a.agent.lan.driver.core.num_live == n for a in agents):
        assert loop.time() < deadline, "the pool did not converge"
        await asyncio.sleep(0.05)


async def test_a_key_rotation_reaches_every_member_of_the_pool() -> None:
    """Consul's rotation, run against one agent: install everywhere, use everywhere, remove the old key
    everywhere, each a query every member answers (NumNodes 3, each key counted per member holding it);
    the members keep talking throughout, and an outsider holding only the old key is shut out after."""
    async with contextlib.AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(async_dev_agent(node_name=f"k{i}", encrypt=K1)) for i in range(3)]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        seed = agents[0].agent.lan.address
        for a in agents[1:]:
            assert await a.agent.join([str(seed)]) == (1, [])
        await _converged(agents, 3)
        a0 = agents[0]

        def pool(keys: dict[str, int], primary: dict[str, int]) -> list[dict[str, Any]]:
            return [{"WAN": False, "Datacenter": "dc1", "Segment": "", "Messages": {}, "Keys": keys,
                     "PrimaryKeys": primary, "NumNodes": 3, "Error": ""}]  # fmt: skip

        assert await _call(session, a0, "GET") == (200, pool({K1: 3}, {K1: 3}))
        assert await _call(session, a0, "POST", {"Key": K2}) == (200, "")
        assert await _call(session, agents[2], "GET") == (200, pool({K1: 3, K2: 3}, {K1: 3}))
        assert await _call(session, a0, "PUT", {"Key": K2}) == (200, "")
        assert await _call(session, a0, "GET") == (200, pool({K1: 3, K2: 3}, {K2: 3}))
        assert await _call(session, a0, "DELETE", {"Key": K1}) == (200, "")
        assert await _call(session, agents[1], "GET") == (200, pool({K2: 3}, {K2: 3}))
        local = await _call(session, agents[1], "GET", query="?local-only=true")
        assert local[1][0]["NumNodes"] == 1
        # Every member keeps every other alive under the new key, and the old key no longer opens a thing.
        await asyncio.sleep(1.0)
        for a in agents:
            assert {m["Name"]: m["Status"] for m in a.agent.lan.members()} == {"k0": 1, "k1": 1, "k2": 1}
            assert isinstance(a.agent.gossip_codec, EncryptedCodec)
            assert a.agent.gossip_codec.keyring.list_keys() == [K2]
        outsider = GossipDriver("outsider", bind=Address("127.0.0.1", 0),
                                codec=EncryptedCodec(Keyring([base64.b64decode(K1)])))  # fmt: skip
        await outsider.start()
        try:
            assert await outsider.join([seed], timeout=3.0) == 0
        finally:
            await outsider.stop()


async def test_a_member_that_does_not_answer_is_reported() -> None:
    """Serf's key manager: fewer answers than members is an error ("2/3 nodes reported success"); a
    member's failure is reported with its message."""
    async with contextlib.AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(async_dev_agent(node_name=f"m{i}", encrypt=K1)) for i in range(2)]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        seed = agents[0].agent.lan.address
        assert await agents[1].agent.join([str(seed)]) == (1, [])
        # A member of the pool that answers no keyring query (a bare gossip member with the key).
        silent = GossipDriver("silent", bind=Address("127.0.0.1", 0),
                              codec=EncryptedCodec(Keyring([base64.b64decode(K1)])))  # fmt: skip
        await silent.start()
        stack.push_async_callback(silent.stop)
        assert await silent.join([seed]) == 1
        await _converged(agents, 3)
        status, text = await _call(session, agents[1], "GET")
        assert (status, text) == (500, "1 error occurred:\n\t* dc1 (LAN) error: 2/3 nodes reported success\n\n")
        agents[1].agent.keyring_ops.keyring = None  # this member now answers with a failure
        status, text = await _call(session, agents[0], "GET")
        assert status == 500 and "* m1: Keyring is empty (encryption not enabled)" in text
        assert text.startswith("2 errors occurred:\n\t* dc1 (LAN) error: 1/3 nodes reported failure")  # as Serf: failures first


# ---------------------------------------------------------------------------------------------- CLI


def run(*args: str, port: int, process: bool = False) -> subprocess.CompletedProcess[str]:
    """``proconsul <args>`` in this process (``tests.cli_run``), or as the console script with ``process``."""
    return (run_process if process else run_cli)(*args, "-http-addr", f"127.0.0.1:{port}", text=True)


@pytest.fixture(scope="module")
def agent_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "kr", "-http-port", str(port), "-dns-port", "-1",
                             "-encrypt", K1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_http(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(15)


def test_keygen_prints_a_32_byte_key() -> None:
    out = subprocess.run([BIN, "keygen"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and len(base64.b64decode(out.stdout.strip(), validate=True)) == 32


def test_keyring_cli_rotation(agent_port: int) -> None:
    out = run("keyring", "-list", port=agent_port, process=True)
    assert (out.returncode, out.stdout) == (0, f"==> Gathering installed encryption keys...\n\ndc1 (LAN):\n  {K1} [1/1]\n")
    out = run("keyring", "-install", K2, port=agent_port)
    assert (out.returncode, out.stdout) == (0, "==> Installing new gossip encryption key...\n")
    out = run("keyring", "-use", K2, port=agent_port)
    assert (out.returncode, out.stdout) == (0, "==> Changing primary gossip encryption key...\n")
    out = run("keyring", "-list-primary", port=agent_port)
    assert out.stdout == f"==> Gathering installed primary encryption keys...\n\ndc1 (LAN):\n  {K2} [1/1]\n"
    out = run("keyring", "-remove", K2, port=agent_port)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: Unexpected response code: 500 (2 errors occurred:")
    assert "kr: removing the primary key is not allowed" in out.stderr
    out = run("keyring", "-remove", K1, port=agent_port)
    assert (out.returncode, out.stdout) == (0, "==> Removing gossip encryption key...\n")
    out = run("keyring", "-list", "-install", K1, port=agent_port)
    assert out.returncode == 1 and "Only a single action is allowed" in out.stderr


def test_a_left_agent_refuses_keyring_operations_at_once() -> None:
    """After a graceful leave no member answers this agent's queries: the operation fails now with the
    reason rather than after the query's timeout."""
    import time as _time

    from registry.testing import dev_agent

    with dev_agent() as agent:
        urlopen_status = _call_leave(agent)
        assert urlopen_status == 200
        started = _time.monotonic()
        status, body = _get(agent, "/v1/operator/keyring")
        assert status == 500 and "has left the pool" in body
        assert _time.monotonic() - started < 2.0


def _call_leave(agent) -> int:  # type: ignore[no-untyped-def]
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{agent.http_port}/v1/agent/leave", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def _get(agent, path: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
