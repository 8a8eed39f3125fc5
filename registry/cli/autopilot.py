"""``proconsul operator autopilot get-config|set-config|state`` (Consul's command/operator/autopilot/*):
the same flags, the same output lines."""

from __future__ import annotations

import argparse
import json
from typing import Any

from registry.cli.common import Client, CLIError, go_bool, http_options, opt, parser, run_client
from registry.gocompat import format_duration_ns, go_quote, parse_duration_ns

SUBCOMMANDS = ("get-config", "set-config", "state")


def _uint(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    return int(text)


def _duration(text: str) -> int:
    try:
        return parse_duration_ns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_autopilot(argv: list[str]) -> int:
    if not argv or argv[0] not in SUBCOMMANDS:
        raise CLIError("Usage: proconsul operator autopilot <get-config|set-config|state> [options]")
    sub, rest = argv[0], argv[1:]
    p = parser(f"proconsul operator autopilot {sub}", "Autopilot configuration and state")
    http_options(p)
    if sub == "set-config":
        opt(p, "cleanup-dead-servers", type=go_bool, default=None, metavar="true|false")
        opt(p, "max-trailing-logs", type=_uint, default=None)
        opt(p, "min-quorum", type=_uint, default=None)
        opt(p, "last-contact-threshold", type=_duration, default=None)
        opt(p, "server-stabilization-time", type=_duration, default=None)
        opt(p, "redundancy-zone-tag", default=None)
        opt(p, "disable-upgrade-migration", type=go_bool, default=None, metavar="true|false")
        opt(p, "upgrade-version-tag", default=None)
    elif sub == "state":
        opt(p, "format", default="pretty", help="Output format {pretty|json}")
    args = p.parse_args(rest)

    async def run(client: Client) -> int:
        if sub == "get-config":
            return await _get_config(client)
        if sub == "set-config":
            return await _set_config(client, args)
        return await _state(client, args.format)

    return run_client(args, run)


async def _fetch_config(client: Client) -> dict[str, Any]:
    resp = await client.request("GET", "/v1/operator/autopilot/configuration")
    if resp.status >= 400:
        raise CLIError(f"Error querying Autopilot configuration: Unexpected response code: {resp.status} "
                       f"({resp.text})")  # fmt: skip
    return dict(resp.json())


async def _get_config(client: Client) -> int:
    conf = await _fetch_config(client)
    print(f"CleanupDeadServers = {str(conf['CleanupDeadServers']).lower()}")
    print(f"LastContactThreshold = {conf['LastContactThreshold']}")
    print(f"MaxTrailingLogs = {conf['MaxTrailingLogs']}")
    print(f"MinQuorum = {conf['MinQuorum']}")
    print(f"ServerStabilizationTime = {conf['ServerStabilizationTime']}")
    print(f"RedundancyZoneTag = {go_quote(conf['RedundancyZoneTag'])}")
    print(f"DisableUpgradeMigration = {str(conf['DisableUpgradeMigration']).lower()}")
    print(f"UpgradeVersionTag = {go_quote(conf['UpgradeVersionTag'])}")
    return 0


async def _set_config(client: Client, args: argparse.Namespace) -> int:
    """Read the configuration, change what the flags name, write it back with a check-and-set."""
    conf = await _fetch_config(client)
    for flag, key in (("cleanup_dead_servers", "CleanupDeadServers"), ("max_trailing_logs", "MaxTrailingLogs"),
                      ("min_quorum", "MinQuorum"), ("redundancy_zone_tag", "RedundancyZoneTag"),
                      ("disable_upgrade_migration", "DisableUpgradeMigration"),
                      ("upgrade_version_tag", "UpgradeVersionTag")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            conf[key] = value
    for flag, key in (("last_contact_threshold", "LastContactThreshold"),
                      ("server_stabilization_time", "ServerStabilizationTime")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            conf[key] = format_duration_ns(value)
    resp = await client.request("PUT", "/v1/operator/autopilot/configuration", {"cas": str(conf["ModifyIndex"])},
                                json.dumps(conf).encode())  # fmt: skip
    if resp.status >= 400:
        raise CLIError(f"Error setting Autopilot configuration: Unexpected response code: {resp.status} "
                       f"({resp.text})")  # fmt: skip
    if "true" in resp.text:
        print("Configuration updated!")
        return 0
    print("Configuration could not be atomically updated, please try again")
    return 1


async def _state(client: Client, fmt: str) -> int:
    if fmt not in ("pretty", "json"):
        raise CLIError(f"Unknown format: {fmt}")
    resp = await client.request("GET", "/v1/operator/autopilot/state")
    if resp.status >= 400:
        raise CLIError(f"Error querying Autopilot state: Unexpected response code: {resp.status} ({resp.text})")
    state = resp.json()
    if fmt == "json":
        state["Servers"] = {k: state["Servers"][k] for k in sorted(state["Servers"])}
        print(json.dumps(state, indent=4))
        return 0
    print(format_state(state), end="")
    return 0


def format_state(state: dict[str, Any]) -> str:
    """Consul's pretty formatter (command/operator/autopilot/state/formatter.go), community edition."""
    out = [f"Healthy:                      {str(state['Healthy']).lower()}",
           f"Failure Tolerance:            {state['FailureTolerance']}",
           f"Optimistic Failure Tolerance: {state.get('OptimisticFailureTolerance', 0)}",
           f"Leader:                       {state['Leader']}",
           "Voters:", *(f"   {v}" for v in state.get("Voters") or []), "Servers:"]  # fmt: skip
    for sid in sorted(state.get("Servers") or {}):
        s = state["Servers"][sid]
        out += [f"   {s['ID']}",
                f"      Name:            {s['Name']}",
                f"      Address:         {s['Address']}",
                f"      Version:         {s['Version']}",
                f"      Status:          {s['Status']}",
                f"      Node Type:       {s['NodeType']}",
                f"      Node Status:     {s['NodeStatus']}",
                f"      Healthy:         {str(s['Healthy']).lower()}",
                f"      Last Contact:    {s['LastContact']}",
                f"      Last Term:       {s['LastTerm']}",
                f"      Last Index:      {s['LastIndex']}"]  # fmt: skip
        meta = s.get("Meta") or {}
        if meta:
            out.append("      Meta")
            out += [f"         {go_quote(k)}: {go_quote(meta[k])}" for k in sorted(meta)]
    return "\n".join(out) + "\n"
