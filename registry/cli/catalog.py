"""``proconsul catalog`` and ``proconsul services``: reading the catalog and registering services with the local
agent (Consul's command/catalog/*, command/services/*)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client, subcommand, table


def cmd_catalog(argv: list[str]) -> int:
    sub, rest = subcommand(argv, "catalog", ("services", "nodes", "datacenters"), "[options]")
    p = parser(f"proconsul catalog {sub}", f"Lists the catalog's {sub}")
    http_options(p)
    if sub == "services":
        opt(p, "tags", action="store_true")
        opt(p, "node", default=None)
        opt(p, "node-meta", action="append", default=[], help="key=value; repeatable (all must match)")
        opt(p, "filter", default=None, help="a filter expression over each service instance")
    elif sub == "nodes":
        opt(p, "service", default=None)
        opt(p, "detailed", action="store_true")
        opt(p, "node-meta", action="append", default=[], help="key=value; repeatable (all must match)")
        opt(p, "near", default=None, help="sort by round-trip time from this node (_agent for the local one)")
        opt(p, "filter", default=None, help="a filter expression over each node (each instance with -service)")
    args = p.parse_args(rest)
    if sub != "datacenters":
        args.node_meta = [_meta_pair(m) for m in args.node_meta]

    async def catalog(client: Client) -> int:
        if sub == "datacenters":
            for dc in await client.json("GET", "/v1/catalog/datacenters"):
                print(dc)
            return 0
        if sub == "services":
            return await _services(client, args)
        return await _nodes(client, args)

    return run_client(args, catalog)


def _meta_pair(raw: str) -> str:
    """A ``-node-meta`` value as the API takes it (``key:value``); Consul's flag is written ``key=value``."""
    key, sep, value = raw.partition("=")
    if not sep:
        key, sep, value = raw.partition(":")
    return f"{key}:{value}"


async def _services(client: Client, args: argparse.Namespace) -> int:
    if args.node:
        data = await client.json("GET", f"/v1/catalog/node/{urllib.parse.quote(args.node)}", {"filter": args.filter})
        if data is None:
            raise CLIError(f"Error listing services for node: No node named {args.node!r}")
        services: dict[str, list[str]] = {}
        for s in data["Services"].values():
            services.setdefault(s["Service"], []).extend(s.get("Tags") or [])
    else:
        services = await client.json("GET", "/v1/catalog/services",
                                     {"node-meta": args.node_meta or None, "filter": args.filter})  # fmt: skip
    if not services:
        print("No services match the given query - try expanding your search.", file=sys.stderr)
        return 0
    if args.tags:
        print(table([[name, ",".join(sorted(set(tags)))] for name, tags in sorted(services.items())]))
    else:
        for name in sorted(services):
            print(name)
    return 0


async def _nodes(client: Client, args: argparse.Namespace) -> int:
    params = {"node-meta": args.node_meta or None, "near": args.near, "filter": args.filter}
    if args.service:
        entries = await client.json("GET", f"/v1/catalog/service/{urllib.parse.quote(args.service)}", params)
        nodes = [{"Node": e["Node"], "ID": e["ID"], "Address": e["Address"], "Datacenter": e["Datacenter"],
                  "TaggedAddresses": e["TaggedAddresses"], "Meta": e["NodeMeta"]} for e in entries]  # fmt: skip
    else:
        nodes = await client.json("GET", "/v1/catalog/nodes", params)
    if not nodes:
        print("No nodes match the given query - try expanding your search.", file=sys.stderr)
        return 0
    rows = [["Node", "ID", "Address", "DC"]]
    for n in nodes:
        rows.append([n["Node"], n["ID"] if args.detailed else n["ID"][:8], n["Address"], n["Datacenter"]])
    print(table(rows))
    return 0


def _load_definition(path: str) -> Any:
    from registry.config import ConfigError, load_file

    try:
        return load_file(path)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc


def cmd_services(argv: list[str]) -> int:
    sub, rest = subcommand(argv, "services", ("register", "deregister", "export"), "[options] [FILE...]")
    if sub == "export":
        return _cmd_export(rest)
    p = parser(f"proconsul services {sub}", f"{sub.title()} services with the local agent")
    http_options(p)
    opt(p, "id", default=None)
    if sub == "register":
        opt(p, "name", default=None)
        opt(p, "address", default=None)
        opt(p, "port", type=int, default=None)
        opt(p, "tag", action="append", default=[])
        opt(p, "meta", action="append", default=[])
    p.add_argument("files", nargs="*")
    args = p.parse_args(rest)

    async def services(client: Client) -> int:
        defs: list[dict[str, Any]] = []
        for f in args.files:
            data = _load_definition(f)
            if "services" in data:
                defs.extend(data["services"])
            elif "service" in data:
                defs.append(data["service"])
            else:
                defs.append(data)
        if sub == "register":
            return await _register(client, args, defs)
        return await _deregister(client, args, defs)

    return run_client(args, services)


async def _register(client: Client, args: argparse.Namespace, defs: list[dict[str, Any]]) -> int:
    if args.name:
        d: dict[str, Any] = {"Name": args.name}
        if args.id:
            d["ID"] = args.id
        if args.address:
            d["Address"] = args.address
        if args.port is not None:
            d["Port"] = args.port
        if args.tag:
            d["Tags"] = args.tag
        if args.meta:
            d["Meta"] = dict(m.split("=", 1) for m in args.meta)
        defs.append(d)
    if not defs:
        raise CLIError("No services to register: give -name or a service definition file")
    for d in defs:
        status, raw, _ = await client.request("PUT", "/v1/agent/service/register", body=json.dumps(d).encode())
        if status >= 400:
            raise CLIError(f"Error registering service {d.get('Name') or d.get('name')!r}: {raw.decode().strip()}")
        print(f"Registered service: {d.get('Name') or d.get('name')}")
    return 0


async def _deregister(client: Client, args: argparse.Namespace, defs: list[dict[str, Any]]) -> int:
    ids = [args.id] if args.id else [d.get("ID") or d.get("id") or d.get("Name") or d.get("name") for d in defs]
    if not ids:
        raise CLIError("No services to deregister: give -id or a service definition file")
    for sid in ids:
        path = f"/v1/agent/service/deregister/{urllib.parse.quote(sid, safe='')}"
        status, raw, _ = await client.request("PUT", path)
        if status >= 400:
            raise CLIError(f"Error deregistering service {sid!r}: {raw.decode().strip()}")
        print(f"Deregistered service: {sid}")
    return 0


def _cmd_export(argv: list[str]) -> int:
    """``services export -name web -consumer-peers a,b`` (Consul's command/services/export): adds the service
    to the ``exported-services`` config entry named after the partition ("default"), read and written with
    CAS. Exporting is for cluster peering; this agent stores no ``exported-services`` entries, so the write
    is answered with the agent's refusal, which the command reports as Consul's does any write error."""
    p = parser("proconsul services export", "Export a service to cluster peers (an exported-services config entry)")
    http_options(p)
    opt(p, "name", default="", help="(Required) the name of the service to export")
    opt(p, "consumer-peers", default="", help="(Required) the peers to export to, comma-separated")
    opt(p, "consumer-partitions", default="", help="the admin partitions to export to (Consul Enterprise)")
    args = p.parse_args(argv)
    if not args.name:
        raise CLIError("Missing the required -name flag")
    if not args.consumer_peers:
        raise CLIError("Missing the required -consumer-peers flag")
    peers = _names(args.consumer_peers, "peer")
    partitions = _names(args.consumer_partitions, "partition")

    async def export(client: Client) -> int:
        status, raw, _ = await client.request("GET", "/v1/config/exported-services/default")
        text = raw.decode(errors="replace").strip()
        entry: dict[str, Any] | None = None
        if status == 200:
            entry = json.loads(raw)
        elif "Config entry not found" not in text:
            raise CLIError(f"Error reading config entry exported-services/default: "
                           f"Unexpected response code: {status} ({text})")  # fmt: skip
        consumers = [{"Peer": peer} for peer in peers] + [{"Partition": part} for part in partitions]
        if entry is None:
            entry = {"Kind": "exported-services", "Name": "default",
                     "Services": [{"Name": args.name, "Consumers": consumers}]}  # fmt: skip
        else:
            services = entry.setdefault("Services", [])
            mine = next((svc for svc in services if svc.get("Name") == args.name), None)
            if mine is None:
                services.append({"Name": args.name, "Consumers": consumers})
            else:
                have = mine.setdefault("Consumers", [])
                have.extend(c for c in consumers if c not in have)
        cas = int(entry.get("ModifyIndex") or 0)
        status, raw, _ = await client.request("PUT", "/v1/config", {"cas": cas}, json.dumps(entry).encode())
        if status >= 400:
            raise CLIError(f"Error writing config entry: Unexpected response code: {status} "
                           f"({raw.decode(errors='replace').strip()})")  # fmt: skip
        if raw.strip() != b"true":
            raise CLIError("Config entry was changed during update. Please try again")
        target = f"peers {_go_quote(args.consumer_peers)}"
        if args.consumer_partitions:
            target += f" and to partitions {_go_quote(args.consumer_partitions)}"
        print(f"Successfully exported service {_go_quote(args.name)} to {target}")
        return 0

    return run_client(args, export)


def _names(raw: str, what: str) -> list[str]:
    names = raw.split(",") if raw else []
    for name in names:
        if not name:
            raise CLIError(f'Invalid {what} ""')
    return names


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
