"""``-register``: the proxy registers itself with the local agent, as Consul's built-in proxy does.

The registration (pure, ``registration``) is a connect-proxy service named ``<service>-proxy`` with ID
``<service>-proxy`` (``-<register-id>`` appended when given) at the public listener's address, with a
30 s TTL check ``<id>-ttl`` ("proxy heartbeat"). ``RegisterMonitor`` keeps it true: it registers at
start, passes the TTL check three times per TTL, puts the registration back if the agent lost it (an
agent restart) and deregisters on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from connect_proxy.agent import AgentClient, AgentError, AgentUnavailable

TTL_SECONDS = 30.0
RECONCILE_SECONDS = 30.0

__all__ = ["RegisterMonitor", "registration", "service_id"]


def service_id(service: str, id_suffix: str = "") -> str:
    return f"{service}-proxy" + (f"-{id_suffix}" if id_suffix else "")


def registration(service: str, address: str, port: int, id_suffix: str = "", *,
                 ttl: float = TTL_SECONDS) -> dict[str, Any]:  # fmt: skip
    sid = service_id(service, id_suffix)
    return {
        "Kind": "connect-proxy",
        "ID": sid,
        "Name": f"{service}-proxy",
        "Address": address,
        "Port": port,
        "Proxy": {"DestinationServiceName": service},
        "Check": {
            "CheckID": f"{sid}-ttl",
            "Name": "proxy heartbeat",
            "TTL": f"{ttl:g}s",
            "Notes": "Built-in proxy will heartbeat this check.",
            "Status": "passing",
        },
    }


class RegisterMonitor:
    def __init__(self, agent: AgentClient, body: dict[str, Any], *, ttl: float = TTL_SECONDS,
                 reconcile: float = RECONCILE_SECONDS) -> None:  # fmt: skip
        self.agent = agent
        self.body = body
        self.ttl = ttl
        self.reconcile = reconcile
        self.log = structlog.get_logger("connect-proxy").bind(proxy_id=body["ID"])
        self._task: asyncio.Task[None] | None = None

    @property
    def check_id(self) -> str:
        return str(self.body["Check"]["CheckID"])

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop heartbeating and deregister (three tries: the agent may be restarting)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for attempt in range(3):
            try:
                await self.agent.put(f"/v1/agent/service/deregister/{self.body['ID']}")
                self.log.info("deregistered the proxy service")
                return
            except (AgentUnavailable, AgentError) as exc:
                self.log.warning("deregistering the proxy service failed", error=str(exc), attempt=attempt + 1)
                await asyncio.sleep(0.5)

    async def _register(self) -> None:
        try:
            await self.agent.put("/v1/agent/service/register", self.body)
            self.log.info("registered the proxy service", address=self.body["Address"], port=self.body["Port"])
        except (AgentUnavailable, AgentError) as exc:
            self.log.warning("registering the proxy service failed; retrying", error=str(exc))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + self.reconcile
        while True:
            await asyncio.sleep(self.ttl / 3)
            if loop.time() >= next_reconcile:
                next_reconcile = loop.time() + self.reconcile
                await self._reconcile()
            try:
                await self.agent.put(f"/v1/agent/check/pass/{self.check_id}")
            except (AgentUnavailable, AgentError) as exc:
                self.log.warning("proxy heartbeat failed", error=str(exc))
                if isinstance(exc, AgentError) and exc.status == 404:
                    await self._register()  # the agent forgot us: put the registration back

    async def _reconcile(self) -> None:
        try:
            current, _ = await self.agent.get(f"/v1/agent/service/{self.body['ID']}")
        except AgentError as exc:
            if exc.status != 404:
                return
            current = None
        except AgentUnavailable:
            return
        if not isinstance(current, dict) or (current.get("Address"), current.get("Port")) != (
            self.body["Address"], self.body["Port"]
        ):
            await self._register()
