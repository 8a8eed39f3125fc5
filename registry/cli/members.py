"""``proconsul members``, ``leave`` and ``reload``: the local agent and its view of the cluster (Consul's
command/members, command/leave, command/reload)."""

from __future__ import annotations

import re

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client, table

_STATUS_NAMES = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def cmd_members(argv: list[str]) -> int:
    p = parser("proconsul members", "Lists the members of the cluster")
    http_options(p)
    opt(p, "detailed", action="store_true")
    opt(p, "status", default=None, help="regex filter on member status")
    opt(p, "wan", action="store_true")
    args = p.parse_args(argv)

    async def members(client: Client) -> int:
        found = await client.json("GET", "/v1/agent/members")
        rows = [["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]]
        for m in sorted(found, key=lambda m: m["Name"]):
            tags = m.get("Tags", {})
            status = _STATUS_NAMES.get(m.get("Status", 0), "unknown")
            if args.status and not re.search(args.status, status):
                continue
            server = tags.get("role") == "consul"
            rows.append([
                m["Name"], f"{m['Addr']}:{m['Port']}", status, "server" if server else "client",
                tags.get("build", "").split(":")[0], tags.get("vsn", "2"), tags.get("dc", ""), "default",
                "<all>" if server else "<default>",
            ])  # fmt: skip
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
