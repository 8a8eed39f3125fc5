"""The local agent's HTTP API, as the proxy uses it: plain and blocking reads, and writes.

The HTTP itself (address, token, blocking-query parameters, the session) is the shared client,
``registry.client.http``; this module gives the proxy its view of it: two errors, so a follower can tell an
agent that is away (retry quietly) from one that refuses (say why), with the proxy's own texts."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from registry.client.http import DEFAULT_HTTP_ADDR, AgentHTTP, HTTPConfig, Response, agent_address
from registry.client.http import AgentUnavailable as _Unreachable

__all__ = ["DEFAULT_HTTP_ADDR", "AgentClient", "AgentError", "AgentUnavailable", "agent_address"]

# No overall timeout: blocking queries legitimately take minutes; connecting must be quick.
CONNECT_TIMEOUT_S = 10.0


class AgentError(Exception):
    """The agent answered, but not with what we asked for (status and its text)."""

    def __init__(self, status: int, text: str, response: Response | None = None) -> None:
        super().__init__(f"agent answered {status}: {text.strip()[:300]}")
        self.status = status
        self.response = response


class AgentUnavailable(Exception):
    """The agent could not be reached (refused, reset, timed out)."""


class AgentClient:
    def __init__(self, base: str, token: str = "", *, wait: str = "5m", config: HTTPConfig | None = None) -> None:
        """``config``, when given, is the whole client configuration (TLS included); else ``base`` and ``token``."""
        config = config or HTTPConfig(address=base, token=token)
        self.http = AgentHTTP(config, total=None, connect=CONNECT_TIMEOUT_S)
        self.base = self.http.base
        self.wait = wait

    async def close(self) -> None:
        await self.http.close()

    async def _call(self, method: str, path: str, params: Mapping[str, str] | None = None, body: Any = None, *,
                    index: int = 0) -> Response:  # fmt: skip
        """One call; AgentUnavailable when no answer came, AgentError on any status but 200."""
        data = json.dumps(body).encode() if body is not None else None
        try:
            resp = await self.http.request(method, urllib.parse.quote(path), params, data, index=index,
                                           wait=self.wait if index else None,
                                           content_type="application/json" if data is not None else None)  # fmt: skip
        except _Unreachable as exc:
            raise AgentUnavailable(f"{type(exc.cause).__name__}: {exc.cause}") from exc
        if resp.status != 200:
            raise AgentError(resp.status, resp.body.decode(errors="replace"), resp)
        return resp

    async def get(self, path: str, params: dict[str, str] | None = None, *, index: int = 0) -> tuple[Any, int]:
        """GET ``path``; with ``index`` > 0 a blocking query that returns when the index moves past it.
        Returns (JSON body, X-Consul-Index)."""
        resp = await self._call("GET", path, params, index=index)
        return _json(resp), resp.index

    async def put(self, path: str, body: Any = None) -> Any:
        """PUT ``path`` (with a JSON body if given); the parsed answer, AgentError on non-200."""
        return _json(await self._call("PUT", path, body=body))

    async def get_full(self, path: str, params: dict[str, str] | None = None, *, index: int = 0,
                       missing_ok: bool = False) -> tuple[Any, int, Mapping[str, str]]:  # fmt: skip
        """GET ``path`` as ``get`` does, also returning the headers. With ``missing_ok`` a 404 is an
        answer (body None) rather than an error: a config entry that does not exist yet, whose index
        a blocking query still waits past."""
        try:
            resp = await self._call("GET", path, params, index=index)
        except AgentError as exc:
            if missing_ok and exc.response is not None and exc.status == 404:
                return None, exc.response.index, exc.response.headers
            raise
        return _json(resp), resp.index, resp.headers


def _json(resp: Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise AgentError(resp.status, f"invalid JSON: {exc}") from None
