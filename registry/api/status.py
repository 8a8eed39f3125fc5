"""/v1/status/*: who leads and who are the Raft peers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from registry.api.http import Api, Router


async def leader(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, api.agent.consensus.leader_address())


async def peers(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, api.agent.consensus.peers())


def register(router: Router) -> None:
    router.add("GET", "/v1/status/leader", leader)
    router.add("GET", "/v1/status/peers", peers)
