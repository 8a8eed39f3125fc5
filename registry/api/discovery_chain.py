"""/v1/discovery-chain/:service: the compiled discovery chain (Consul's agent/discovery_chain_endpoint.go).

``GET`` compiles the chain from the stored config entries; ``POST`` takes overrides in its JSON body
(``OverrideProtocol``, ``OverrideConnectTimeout``, ``OverrideMeshGateway``, or their snake_case forms).
``?compile-dc`` names the datacenter the chain is evaluated in (default: this agent's). A blocking read
on the config entries table (and the CA state, whose trust domain is in every target's SNI). The answer
is ``{"Chain": ...}`` in Consul's shape (``registry.discoverychain.CompiledChain.to_api``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api.decode import DecodeError, parse_json
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.connect.state import TABLE_CONFIG, entry_key
from registry.discoverychain import ChainError, Overrides, compile_chain, read_entries
from registry.gocompat import parse_duration_ns
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api

_OVERRIDE_KEYS = {
    "overrideprotocol": "OverrideProtocol", "override_protocol": "OverrideProtocol",
    "overrideconnecttimeout": "OverrideConnectTimeout", "override_connect_timeout": "OverrideConnectTimeout",
    "overridemeshgateway": "OverrideMeshGateway", "override_mesh_gateway": "OverrideMeshGateway",
}  # fmt: skip


def parse_overrides(body: bytes) -> Overrides:
    """The POST body, decoded as Consul's decodeDiscoveryChainReadRequest does: case-insensitive keys and
    snake_case aliases, a weakly typed protocol, a duration as a Go string or nanoseconds. Unknown keys
    are ignored, as there."""
    if not body.strip():
        return Overrides()
    try:
        raw = parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decoding failed: {exc}") from None
    if not isinstance(raw, dict):
        raise HTTPError(400, "Request decoding failed: body must be a JSON object")
    got: dict[str, Any] = {}
    for k, v in raw.items():
        canon = _OVERRIDE_KEYS.get(str(k).lower())
        if canon is not None and (canon not in got or str(k).lower() == canon.lower()):
            got[canon] = v
    protocol = got.get("OverrideProtocol")
    if protocol is None:
        protocol = ""
    elif isinstance(protocol, bool):
        protocol = "true" if protocol else "false"
    elif isinstance(protocol, int | float | str):
        protocol = str(protocol)
    else:
        raise HTTPError(400, f"Request decoding failed: OverrideProtocol: invalid type {type(protocol).__name__}")
    timeout = got.get("OverrideConnectTimeout")
    timeout_ns = 0
    if isinstance(timeout, str) and timeout:
        try:
            timeout_ns = parse_duration_ns(timeout)
        except ValueError as exc:
            raise HTTPError(400, f"Request decoding failed: {exc}") from None
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        timeout_ns = int(timeout)
    mode = ""
    gateway = got.get("OverrideMeshGateway")
    if isinstance(gateway, list) and len(gateway) == 1:
        gateway = gateway[0]
    if isinstance(gateway, dict):
        value = next((v for k, v in gateway.items() if str(k).lower() == "mode"), "")
        mode = "" if value is None else str(value)
    if mode not in ("", "none", "local", "remote"):
        raise HTTPError(400, "Invalid OverrideMeshGateway.Mode parameter")
    return Overrides(protocol=protocol, connect_timeout_ns=max(timeout_ns, 0), mesh_gateway_mode=mode)


async def read_chain(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    name = suffix
    if not name:
        raise HTTPError(400, "Missing chain name")
    datacenter = request.query.get("compile-dc") or api.config.datacenter
    overrides = parse_overrides(await api.read_body(request)) if request.method == "POST" else Overrides()
    connect = api.connect

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.table_rows(TABLE_CONFIG, ws)
        state = connect.views.ca(store, ws) if connect is not None else None
        if state is None:
            raise HTTPError(500, "no cluster ca config setup")
        entries = read_entries(lambda kind, n: rows.get(entry_key(kind, n)), name)
        try:
            chain = compile_chain(name, entries, datacenter=datacenter, trust_domain=state.trust_domain,
                                  overrides=overrides)  # fmt: skip
        except ChainError as exc:
            raise HTTPError(400, str(exc)) from None
        return ReadResult(lambda: {"Chain": chain.to_api()})

    # A POST's answer depends on its body, which no cache key holds.
    return await api.read(request, run, cacheable=request.method == "GET")


ROUTES: tuple[Route, ...] = (
    route("GET,POST", "/v1/discovery-chain/", read_chain, "read", "service", "path",
          "Read the compiled discovery chain of a service (POST: with overrides)"),
)
