"""The local agent's HTTP API, as the proxy uses it: plain and blocking reads, and authorize."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

DEFAULT_HTTP_ADDR = "http://127.0.0.1:8500"


class AgentError(Exception):
    """The agent answered, but not with what we asked for (status and its text)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"agent answered {status}: {text.strip()[:300]}")
        self.status = status


class AgentUnavailable(Exception):
    """The agent could not be reached (refused, reset, timed out)."""


def agent_address(flag: str | None) -> str:
    """``-http-addr``, else PROCONSUL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500."""
    addr = flag or os.environ.get("PROCONSUL_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR
    if "://" not in addr:
        scheme = "https" if os.environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true") else "http"
        addr = f"{scheme}://{addr}"
    return addr.rstrip("/")


class AgentClient:
    def __init__(self, base: str, token: str = "", *, wait: str = "5m") -> None:
        self.base = base.rstrip("/")
        self.wait = wait
        headers = {"X-Consul-Token": token} if token else {}
        # No overall timeout: blocking queries legitimately take minutes; connecting must be quick.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
        self.session = aiohttp.ClientSession(headers=headers, timeout=timeout)

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, params: dict[str, str] | None = None, *, index: int = 0) -> tuple[Any, int]:
        """GET ``path``; with ``index`` > 0 a blocking query that returns when the index moves past it.
        Returns (JSON body, X-Consul-Index)."""
        query = dict(params or {})
        if index:
            query.update(index=str(index), wait=self.wait)
        try:
            async with self.session.get(self.base + path, params=query) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise AgentError(resp.status, body.decode(errors="replace"))
                try:
                    new_index = int(resp.headers.get("X-Consul-Index", "0"))
                except ValueError:
                    new_index = 0
                return (await _json(resp, body)), new_index
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def put(self, path: str, body: Any = None) -> Any:
        """PUT ``path`` (with a JSON body if given); the parsed answer, AgentError on non-200."""
        try:
            async with self.session.put(self.base + path, json=body) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise AgentError(resp.status, raw.decode(errors="replace"))
                return await _json(resp, raw)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def authorize(self, target: str, uri: str, serial: str) -> tuple[bool, str]:
        body = {"Target": target, "ClientCertURI": uri, "ClientCertSerial": serial}
        try:
            async with self.session.post(self.base + "/v1/agent/connect/authorize", json=body) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise AgentError(resp.status, raw.decode(errors="replace"))
                out = await _json(resp, raw)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError, OSError) as exc:
            raise AgentUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(out, dict) or not isinstance(out.get("Authorized"), bool):
            raise AgentError(200, f"malformed authorize answer: {raw[:200]!r}")
        return out["Authorized"], str(out.get("Reason", ""))


async def _json(resp: aiohttp.ClientResponse, body: bytes) -> Any:
    import json

    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise AgentError(resp.status, f"invalid JSON: {exc}") from None
