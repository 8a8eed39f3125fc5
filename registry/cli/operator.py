"""``proconsul operator raft list-peers|remove-peer|transfer-leader`` (Consul's command/operator/raft/*) and
``proconsul operator autopilot ...`` (``registry.cli.autopilot``)."""

from __future__ import annotations

import sys

from registry.cli.autopilot import cmd_autopilot
from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client, table

_SUBCOMMANDS = ("list-peers", "remove-peer", "transfer-leader")


def cmd_operator(argv: list[str]) -> int:
    if argv and argv[0] == "autopilot":
        return cmd_autopilot(argv[1:])
    if len(argv) < 2 or argv[0] != "raft" or argv[1] not in _SUBCOMMANDS:
        print("Usage: proconsul operator <raft|autopilot> <subcommand> [options]\n"
              "  raft: list-peers|remove-peer|transfer-leader; autopilot: get-config|set-config|state",
              file=sys.stderr)  # fmt: skip
        return 1
    sub, rest = argv[1], argv[2:]
    p = parser(f"proconsul operator raft {sub}", "Raft operator commands")
    http_options(p)
    opt(p, "id", default=None)
    opt(p, "address", default=None)
    args = p.parse_args(rest)

    async def raft(client: Client) -> int:
        if sub == "list-peers":
            conf = await client.json("GET", "/v1/operator/raft/configuration")
            rows = [["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit Index"]]
            for s in conf["Servers"]:
                rows.append([s["Node"], s["ID"], s["Address"], "leader" if s["Leader"] else "follower",
                             str(s["Voter"]).lower(), s["ProtocolVersion"], str(s.get("LastIndex", ""))])  # fmt: skip
            print(table(rows))
            return 0
        if sub == "remove-peer":
            if not args.id and not args.address:
                raise CLIError("Error removing peer: Must specify either -id or -address")
            params = {"id": args.id} if args.id else {"address": args.address}
            status, raw, _ = await client.request("DELETE", "/v1/operator/raft/peer", params)
            if status >= 400:
                raise CLIError(f"Error removing peer: {raw.decode().strip()}")
            print(f"Removed peer with {'id' if args.id else 'address'} \"{args.id or args.address}\"")
            return 0
        status, raw, _ = await client.request("POST", "/v1/operator/raft/transfer-leader", {"id": args.id})
        if status >= 400:
            raise CLIError(f"Error transferring leadership: {raw.decode().strip()}")
        print("Success")
        return 0

    return run_client(args, raft)
