"""Shared fixtures: a real in-process dev agent on free ports, and an HTTP client for it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import settings

from registry.testing import RunningAgent, async_dev_agent

# Property tests: `make test` (and CI) runs the same examples every time, derived from each test's
# name, so main cannot turn red on a search that happened to go somewhere new; there is no per-example
# deadline because a shared 2-core CI machine is not a timing oracle. `make soak` runs the suite with
# the "explore" profile: fresh random examples and many more of them, to find what the fixed ones miss.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class Http:
    """A thin client: returns (status, parsed JSON or text, headers)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   **kw: Any) -> tuple[int, Any, Any]:  # fmt: skip
        data = raw
        if body is not None:
            import json

            data = json.dumps(body).encode()
        async with self.session.request(method, self.base + path, data=data, **kw) as resp:
            text = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            parsed: Any = text
            if ctype.startswith("application/json") and text:
                import json

                parsed = json.loads(text)
            elif ctype.startswith("text/plain"):
                try:
                    parsed = text.decode()
                except UnicodeDecodeError:
                    parsed = text
            return resp.status, parsed, resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("GET", path, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.call("DELETE", path, **kw)


@pytest.fixture
async def agent(request: pytest.FixtureRequest) -> AsyncIterator[RunningAgent]:
    """A dev agent; ``@pytest.mark.agent_config(**keys)`` passes it Consul config keys."""
    marker = request.node.get_closest_marker("agent_config")
    async with async_dev_agent(**(marker.kwargs if marker else {})) as running:
        yield running


@pytest.fixture
async def http(agent: RunningAgent) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, agent.url)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll an async predicate until it holds or the deadline passes (then fail with the last state)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def openssl_verify(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The real ``openssl verify -x509_strict``; ``.returncode == 0`` means the chain verified. ``at`` is
    the moment to verify at (default: now); ``untrusted`` are intermediates; ``purpose`` as openssl's."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    counter = iter(range(1_000_000))

    def write(pems: Sequence[str] | str) -> str:
        path = tmp_path / f"pem{next(counter)}.pem"
        path.write_text(pems if isinstance(pems, str) else "".join(pems))
        return str(path)

    def verify(leaf: str, roots: Sequence[str] | str, untrusted: Sequence[str] | str = (), *,
               at: datetime | None = None, purpose: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        cmd = ["openssl", "verify", "-x509_strict", "-CAfile", write(roots)]
        if at is not None:
            cmd += ["-attime", str(int(at.timestamp()))]
        if untrusted:
            cmd += ["-untrusted", write(untrusted)]
        if purpose:
            cmd += ["-purpose", purpose]
        cmd.append(write(leaf))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    return verify
