"""``proconsul monitor``, ``info`` and ``maint`` (Consul's command/monitor, command/info, command/maint)."""

from __future__ import annotations

import asyncio
import sys

from registry.cli.common import Client, CLIError, _reason, http_config, http_options, opt, parser, run_client
from registry.client.http import AgentHTTP, AgentUnavailable, StatusError, escape
from registry.gocompat import go_quote


def cmd_monitor(argv: list[str]) -> int:
    """Stream the agent's log lines until interrupted (or the agent goes away)."""
    p = parser("proconsul monitor", "Stream logs from a Proconsul agent")
    http_options(p)
    opt(p, "log-level", default="INFO", help="Log level of the agent (trace, debug, info, warn, error)")
    opt(p, "log-json", action="store_true", help="Output logs in JSON format")
    args = p.parse_args(argv)
    params = {"loglevel": args.log_level, **({"logjson": ""} if args.log_json else {})}

    def out(piece: bytes) -> None:
        sys.stdout.write(piece.decode(errors="replace"))
        sys.stdout.flush()

    async def go() -> int:
        async with AgentHTTP(http_config(args), total=None) as http:
            try:
                await http.stream("/v1/agent/monitor", params, out)
            except StatusError as exc:
                raise CLIError(f"Error starting monitor: {exc}") from None
            except AgentUnavailable as exc:
                raise CLIError(f"Error starting monitor: {_reason(exc.cause)}") from None
        print("Remote side ended the monitor! This usually means that the\n"
              "remote side has exited or crashed.", file=sys.stderr)  # fmt: skip
        return 1

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0


def cmd_info(argv: list[str]) -> int:
    """Print /v1/agent/self's Stats as Consul's ``consul info`` does: sections and keys sorted, one tab in."""
    p = parser("proconsul info", "Provides debugging information for operators")
    http_options(p)
    args = p.parse_args(argv)

    async def info(client: Client) -> int:
        resp = await client.request("GET", "/v1/agent/self")
        if resp.status >= 400:
            raise CLIError(f"Error querying agent: Unexpected response code: {resp.status} ({resp.text})")
        stats = resp.json().get("Stats") or {}
        for section in sorted(stats):
            print(f"{section}:")
            values = stats[section] or {}
            for key in sorted(values):
                print(f"\t{key} = {values[key]}")
        return 0

    return run_client(args, info)


def cmd_maint(argv: list[str]) -> int:
    """Consul's ``consul maint``: list what is in maintenance, or turn node or service maintenance on or off
    through /v1/agent/maintenance and /v1/agent/service/maintenance/<id>."""
    p = parser("proconsul maint", "Controls node or service maintenance mode")
    http_options(p)
    opt(p, "enable", action="store_true", help="Enable maintenance mode")
    opt(p, "disable", action="store_true", help="Disable maintenance mode")
    opt(p, "reason", default="", help="Text describing the maintenance reason")
    opt(p, "service", default="", help="Control maintenance mode for a specific service ID")
    args = p.parse_args(argv)
    if args.enable and args.disable:
        raise CLIError("Only one of -enable or -disable may be provided")
    if not args.enable and args.reason:
        raise CLIError("Reason may only be provided with -enable")
    if not args.enable and not args.disable and args.service:
        raise CLIError("Service requires either -enable or -disable")

    async def maint(client: Client) -> int:
        name = (await client.json("GET", "/v1/agent/self"))["Config"]["NodeName"]
        if not args.enable and not args.disable:
            return await _list(client, name)
        verb = "enabling" if args.enable else "disabling"
        params = {"enable": "true" if args.enable else "false", **({"reason": args.reason} if args.reason else {})}
        path = f"/v1/agent/service/maintenance/{escape(args.service)}" if args.service else "/v1/agent/maintenance"
        resp = await client.request("PUT", path, params)
        if resp.status >= 400:
            what = "service" if args.service else "node"
            raise CLIError(f"Error {verb} {what} maintenance: Unexpected response code: {resp.status} ({resp.text})")
        state = "enabled" if args.enable else "disabled"
        if args.service:
            print(f"Service maintenance is now {state} for {go_quote(args.service)}")
        else:
            print(f"Node maintenance is now {state}")
        return 0

    return run_client(args, maint)


async def _list(client: Client, name: str) -> int:
    """Consul prints each maintenance check of this agent: the node's and each service's, with the reason."""
    checks = await client.json("GET", "/v1/agent/checks")
    for cid in sorted(checks):
        check = checks[cid]
        if cid == "_node_maintenance":
            print(f"Node:\n  Name:   {name}\n  Reason: {check.get('Notes', '')}\n")
        elif cid.startswith("_service_maintenance:"):
            print(f"Service:\n  ID:     {check.get('ServiceID', '')}\n  Reason: {check.get('Notes', '')}\n")
    return 0
