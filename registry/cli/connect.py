"""``proconsul connect ca get-config|set-config`` (Consul's command/connect/ca/*) and ``proconsul connect proxy``,
which hands over to the sidecar's own command (connect_proxy.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client


def cmd_connect(argv: list[str]) -> int:
    if argv and argv[0] == "proxy":
        from connect_proxy.cli import run

        return run(argv[1:])
    if len(argv) < 2 or argv[0] != "ca" or argv[1] not in ("get-config", "set-config"):
        print("Usage: proconsul connect ca <get-config|set-config> [options]\n"
              "       proconsul connect proxy [options]", file=sys.stderr)  # fmt: skip
        return 1
    sub, rest = argv[1], argv[2:]
    p = parser(f"proconsul connect ca {sub}", "Connect CA configuration")
    http_options(p)
    if sub == "set-config":
        opt(p, "config-file", default=None, help="JSON file with the new CA configuration")
        opt(p, "force-without-cross-signing", action="store_true")
    args = p.parse_args(rest)

    async def get_config(client: Client) -> int:
        try:
            config = await client.json("GET", "/v1/connect/ca/configuration")
        except CLIError as exc:
            raise CLIError(f"Error request CA configuration: {exc}") from None
        print(json.dumps(config, indent=4))
        return 0

    async def set_config(client: Client) -> int:
        if not args.config_file:
            raise CLIError("-config-file must be set")
        try:
            body = json.loads(Path(args.config_file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(f"Error parsing config file: {exc}") from None
        if args.force_without_cross_signing and isinstance(body, dict):
            body["ForceWithoutCrossSigning"] = True
        status, raw, _ = await client.request("PUT", "/v1/connect/ca/configuration", body=json.dumps(body).encode())
        if status >= 400:
            raise CLIError(f"Error setting CA configuration: Unexpected response code: {status} "
                           f"({raw.decode(errors='replace').strip()})")  # fmt: skip
        print("Configuration updated!")
        return 0

    return run_client(args, get_config if sub == "get-config" else set_config)
