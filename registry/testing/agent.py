"""Run a real Proconsul dev agent inside your own tests.

    from registry.testing import dev_agent

    def test_my_service_registers():
        with dev_agent() as agent:          # starts in well under 100 ms on free ports
            consul.Consul(port=agent.http_port).agent.service.register("web", port=8080)

    async def test_async():
        async with async_dev_agent() as agent:
            ...

The agent is the same code as ``proconsul agent -dev`` (single-node log, FSM, store), bound to 127.0.0.1 on
ports the OS picks, with DNS on a free port too when the DNS server is available. Teardown stops listeners
and checks and waits for them. The pytest fixture ``proconsul_agent`` wraps ``dev_agent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from registry.acl.resolver import TokenResolver
from registry.agent.agent import Agent
from registry.config import Config, apply_mapping, dev_defaults


@dataclass
class RunningAgent:
    agent: Agent
    loop: asyncio.AbstractEventLoop

    @property
    def http_port(self) -> int:
        assert self.agent.http_addr is not None
        return int(self.agent.http_addr[1])

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def dns_port(self) -> int | None:
        return int(self.agent.dns_addr[1]) if self.agent.dns_addr else None

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the agent's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


# A gossip encryption key for test clusters (every agent outside -dev needs one, and all of a pool the same):
# never a production key.
GOSSIP_KEY = "dGVzdC1vbmx5LWdvc3NpcC1rZXktMzItYnl0ZXMhISE="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(**overrides: Any) -> Config:
    cfg = Config(node_name=overrides.pop("node_name", "test-agent"))
    dev_defaults(cfg)
    cfg.log_level = "warn"
    cfg.ports.http = 0
    cfg.ports.dns = overrides.pop("dns_port", 0)
    cfg.ports.server = 8300
    cfg.ports.serf_lan = overrides.pop("serf_lan_port", 0)  # the gossip pool on a port the OS picks
    if overrides:
        apply_mapping(cfg, overrides, "dev_agent()")
    return cfg


@contextlib.asynccontextmanager
async def async_dev_agent(*, acl_resolver: TokenResolver | None = None, **config: Any) -> AsyncIterator[RunningAgent]:
    """Start a dev agent on the running event loop; config keys are Consul's (e.g. enable_script_checks=True).
    ``acl_resolver`` replaces the ACL resolver the agent would build from its ``acl`` config block."""
    agent = Agent(make_config(**config), acl=acl_resolver)
    await agent.start()
    try:
        yield RunningAgent(agent, asyncio.get_running_loop())
    finally:
        await agent.stop()


@contextlib.contextmanager
def dev_agent(**config: Any) -> Iterator[RunningAgent]:
    """Start a dev agent on its own event loop in a background thread (for synchronous tests)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            try:
                agent = Agent(make_config(**config))
                await agent.start()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                holder["error"] = exc
                started.set()
                return
            holder["agent"] = agent
            holder["stop"] = stop = asyncio.Event()
            started.set()
            await stop.wait()
            await agent.stop()

        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, name="proconsul-dev-agent", daemon=True)
    thread.start()
    started.wait()
    if "error" in holder:
        thread.join()
        raise holder["error"]
    try:
        yield RunningAgent(holder["agent"], loop)
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout=10)
