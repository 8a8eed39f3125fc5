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
        opt(p, "node-meta", action="append", default=[])
    elif sub == "nodes":
        opt(p, "service", default=None)
        opt(p, "detailed", action="store_true")
        opt(p, "node-meta", action="append", default=[])
    args = p.parse_args(rest)

    async def catalog(client: Client) -> int:
        if sub == "datacenters":
            for dc in await client.json("GET", "/v1/catalog/datacenters"):
                print(dc)
            return 0
        if sub == "services":
            return await _services(client, args)
        return await _nodes(client, args)

    return run_client(args, catalog)


async def _services(client: Client, args: argparse.Namespace) -> int:
    if args.node:
        data = await client.json("GET", f"/v1/catalog/node/{urllib.parse.quote(args.node)}")
        if data is None:
            raise CLIError(f"Error listing services for node: No node named {args.node!r}")
        services: dict[str, list[str]] = {}
        for s in data["Services"].values():
            services.setdefault(s["Service"], []).extend(s.get("Tags") or [])
    else:
        services = await client.json("GET", "/v1/catalog/services", {"node-meta": args.node_meta or None})
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
    if args.service:
        entries = await client.json("GET", f"/v1/catalog/service/{urllib.parse.quote(args.service)}")
        nodes = [{"Node": e["Node"], "ID": e["ID"], "Address": e["Address"], "Datacenter": e["Datacenter"],
                  "TaggedAddresses": e["TaggedAddresses"], "Meta": e["NodeMeta"]} for e in entries]  # fmt: skip
    else:
        nodes = await client.json("GET", "/v1/catalog/nodes")
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
    sub, rest = subcommand(argv, "services", ("register", "deregister"), "[options] [FILE...]")
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
