"""``proconsul members``, ``join``, ``leave``, ``force-leave`` and ``reload``: the local agent and its view of
the cluster (Consul's command/members, command/join, command/leave, command/forceleave, command/reload)."""

from __future__ import annotations

import re
import sys
from urllib.parse import quote

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client, table

_STATUS_NAMES = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def cmd_members(argv: list[str]) -> int:
    p = parser("proconsul members", "Lists the members of the cluster")
    http_options(p)
    opt(p, "detailed", action="store_true")
    opt(p, "status", default=None, help="regex filter on member status")
    opt(p, "wan", action="store_true")
    args = p.parse_args(argv)

    try:
        status_re = re.compile(args.status) if args.status else None
    except re.error as exc:
        print(f"Failed to compile status regexp: {exc}", file=sys.stderr)
        return 1

    async def members(client: Client) -> int:
        found = await client.json("GET", "/v1/agent/members", {"wan": "1"} if args.wan else None) or []
        if args.detailed:
            # Consul's detailed form: every tag, key=value, sorted, comma-separated.
            rows = [["Node", "Address", "Status", "Tags"]]
        else:
            rows = [["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]]
        for m in sorted(found, key=lambda m: m["Name"]):
            tags = m.get("Tags", {})
            status = _STATUS_NAMES.get(m.get("Status", 0), "unknown")
            if status_re is not None and not status_re.search(status):
                continue
            address = f"{m['Addr']}:{m['Port']}"
            if args.detailed:
                rows.append([m["Name"], address, status, ",".join(f"{k}={v}" for k, v in sorted(tags.items()))])
                continue
            server = tags.get("role") == "consul"
            rows.append([
                m["Name"], address, status, "server" if server else "client",
                tags.get("build", "").split(":")[0], tags.get("vsn", "2"), tags.get("dc", ""), "default",
                "<all>" if server else "<default>",
            ])  # fmt: skip
        if len(rows) == 1:
            return 2  # Consul: no member matched the filter, nothing printed
        print(table(rows))
        return 0

    return run_client(args, members)


def cmd_leave(argv: list[str]) -> int:
    p = parser("proconsul leave", "Gracefully leave the cluster and shut down the agent")
    http_options(p)
    args = p.parse_args(argv)

    async def leave(client: Client) -> int:
        status, raw, _ = await client.request("PUT", "/v1/agent/leave")
        if status >= 400:
            raise CLIError(f"Error leaving: {raw.decode().strip()}")
        print("Graceful leave complete")
        return 0

    return run_client(args, leave)


def cmd_join(argv: list[str]) -> int:
    """Consul's ``join``: ask the local agent to join the pool through each address."""
    p = parser("proconsul join", "Tells the agent to join the cluster through the given addresses")
    http_options(p)
    opt(p, "wan", action="store_true")
    p.add_argument("addresses", nargs="*")
    args = p.parse_args(argv)
    if not args.addresses:
        print("At least one address to join must be specified.", file=sys.stderr)
        return 1

    async def join(client: Client) -> int:
        joined = 0
        for addr in args.addresses:
            params = {"wan": "1"} if args.wan else None
            status, raw, _ = await client.request("PUT", f"/v1/agent/join/{quote(addr, safe=':[]')}", params)
            if status >= 400:
                print(f"Error joining address '{addr}': Unexpected response code: {status} ({raw.decode().strip()})",
                      file=sys.stderr)  # fmt: skip
            else:
                joined += 1
        if not joined:
            raise CLIError("Failed to join any nodes.")
        print(f"Successfully joined cluster by contacting {joined} nodes.")
        return 0

    return run_client(args, join)


def cmd_force_leave(argv: list[str]) -> int:
    """Consul's ``force-leave``: move a failed member to the left state (``-prune``: forget it)."""
    p = parser("proconsul force-leave", "Forces a member of the cluster to enter the \"left\" state")
    http_options(p)
    opt(p, "prune", action="store_true")
    opt(p, "wan", action="store_true")
    p.add_argument("node", nargs="*")
    args = p.parse_args(argv)
    if len(args.node) != 1:
        print("A single node name must be specified to force leave.", file=sys.stderr)
        return 1

    async def force_leave(client: Client) -> int:
        params = {k: "1" for k, on in (("prune", args.prune), ("wan", args.wan)) if on}
        status, raw, _ = await client.request("PUT", f"/v1/agent/force-leave/{quote(args.node[0], safe='')}",
                                              params or None)  # fmt: skip
        if status >= 400:
            raise CLIError(f"Error force leaving: Unexpected response code: {status} ({raw.decode().strip()})")
        return 0

    return run_client(args, force_leave)


def cmd_reload(argv: list[str]) -> int:
    p = parser("proconsul reload", "Reload the agent's configuration")
    http_options(p)
    args = p.parse_args(argv)

    async def reload(client: Client) -> int:
        status, raw, _ = await client.request("PUT", "/v1/agent/reload")
        if status >= 400:
            raise CLIError(f"Error reloading: {raw.decode().strip()}")
        print("Configuration reload triggered")
        return 0

    return run_client(args, reload)
