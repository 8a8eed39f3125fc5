"""``proconsul rtt [-wan] node1 [node2]``: the round trip between two nodes estimated from their network
coordinates (Consul's command/rtt): the second node defaults to the agent's own; LAN coordinates from
/v1/coordinate/nodes compared in the segment they share, or with ``-wan`` the servers' coordinates from
/v1/coordinate/datacenters, named ``<node>.<datacenter>`` and compared only within one area."""

from __future__ import annotations

from typing import Any

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client
from registry.coordinate import Coordinate
from registry.rtt import intersect

USAGE = """Usage: proconsul rtt [options] node1 [node2]

  Estimates the round trip time between two nodes using the network coordinate model of the cluster.

  At least one node name is required. If the second node name isn't given, it is set to the agent's node
  name. These are node names as "proconsul members" shows them, not IP addresses.

  By default the two nodes are assumed to be in the local datacenter and the LAN coordinates are used.
  With -wan the WAN coordinates are used, and node names must be suffixed by a period and the datacenter
  (eg. "myserver.dc1")."""


def _coord(raw: Any) -> Coordinate | None:
    try:
        return Coordinate.from_json(raw) if isinstance(raw, dict) else None
    except ValueError:
        return None


async def _agent_config(client: Client) -> dict[str, Any]:
    resp = await client.request("GET", "/v1/agent/self")
    if resp.status >= 400:
        raise CLIError(f"Unable to look up agent info: Unexpected response code: {resp.status} ({resp.text})")
    config = resp.json().get("Config") or {}
    return config if isinstance(config, dict) else {}


async def _lan(client: Client, nodes: list[str]) -> tuple[Coordinate | None, Coordinate | None]:
    resp = await client.request("GET", "/v1/coordinate/nodes")
    if resp.status >= 400:
        raise CLIError(f"Error getting coordinates: Unexpected response code: {resp.status} ({resp.text})")
    cs1: dict[str, Coordinate] = {}
    cs2: dict[str, Coordinate] = {}
    for entry in resp.json() or []:
        name, coord = str(entry.get("Node", "")), _coord(entry.get("Coord"))
        if coord is None:
            continue
        segment = str(entry.get("Segment") or "")
        if name.lower() == nodes[0].lower():
            cs1[segment] = coord
        if name.lower() == nodes[1].lower():
            cs2[segment] = coord
    return intersect(cs1, cs2)


async def _wan(client: Client, nodes: list[str]) -> tuple[Coordinate | None, Coordinate | None]:
    parts1, parts2 = nodes[0].split("."), nodes[1].split(".")
    if len(parts1) != 2 or len(parts2) != 2:
        raise CLIError("Node names must be specified as <node name>.<datacenter> with -wan")
    (node1, dc1), (node2, dc2) = parts1, parts2
    resp = await client.request("GET", "/v1/coordinate/datacenters")
    if resp.status >= 400:
        raise CLIError(f"Error getting coordinates: Unexpected response code: {resp.status} ({resp.text})")
    area1 = area2 = None
    coord1 = coord2 = None
    for dc in resp.json() or []:
        for entry in dc.get("Coordinates") or []:
            name = str(entry.get("Node", ""))
            if dc.get("Datacenter") == dc1 and name.lower() == node1.lower():
                area1, coord1 = dc.get("AreaID"), _coord(entry.get("Coord"))
            if dc.get("Datacenter") == dc2 and name.lower() == node2.lower():
                area2, coord2 = dc.get("AreaID"), _coord(entry.get("Coord"))
            if area1 == area2 and coord1 is not None and coord2 is not None:
                return coord1, coord2
    return None, None  # never compared across areas


def cmd_rtt(argv: list[str]) -> int:
    p = parser("proconsul rtt", "Estimates network round trip time between nodes")
    http_options(p)
    opt(p, "wan", action="store_true", help="Use WAN coordinates instead of LAN coordinates.")
    p.add_argument("nodes", nargs="*")
    args = p.parse_args(argv)
    nodes: list[str] = list(args.nodes)
    if not 1 <= len(nodes) <= 2:
        raise CLIError(f"One or two node names must be specified\n\n{USAGE}")

    async def rtt(client: Client) -> int:
        if len(nodes) < 2:
            config = await _agent_config(client)
            name = str(config.get("NodeName", ""))
            nodes.append(f"{name}.{config.get('Datacenter', '')}" if args.wan else name)
        coord1, coord2 = await (_wan(client, nodes) if args.wan else _lan(client, nodes))
        if coord1 is None:
            raise CLIError(f'Could not find a coordinate for node "{nodes[0]}"')
        if coord2 is None:
            raise CLIError(f'Could not find a coordinate for node "{nodes[1]}"')
        ms = coord1.distance(coord2) * 1000.0 if coord1.compatible(coord2) else float("inf")
        print(f"Estimated {nodes[0]} <-> {nodes[1]} rtt: {ms:.3f} ms (using {'WAN' if args.wan else 'LAN'} coordinates)")
        return 0

    return run_client(args, rtt)
