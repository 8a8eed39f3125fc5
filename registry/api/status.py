"""/v1/status/*: who leads and who are the Raft peers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from registry.api.routing import Route, route

if TYPE_CHECKING:
    from registry.api.http import Api


async def leader(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, api.consensus.leader_address())


async def peers(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, api.consensus.peers())


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/status/leader", leader, "read", "none", "none", "The Raft leader's address"),
    route("GET", "/v1/status/peers", peers, "read", "none", "none", "The Raft voters' addresses"),
)
