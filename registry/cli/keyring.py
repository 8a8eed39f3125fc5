"""``proconsul keygen`` and ``proconsul keyring``: Consul's commands for gossip encryption keys.

``keygen`` prints a new key (32 random bytes, base64) for ``encrypt``. ``keyring`` lists the installed keys
(``-list``), the primary ones (``-list-primary``), installs a key (``-install``), makes one primary
(``-use``) or removes one (``-remove``) through ``/v1/operator/keyring``, with Consul's output: an ``==>``
line saying what it does, then per pool a blank line, ``<dc> (LAN):`` and ``  <key> [<members holding
it>/<members>]``; a failure prints ``error: <the agent's answer>`` and exits 1 (command/keyring/keyring.go).
"""

from __future__ import annotations

from typing import Any

from registry.cli.common import Client, CLIError, http_options, opt, parser, run_client
from registry.gossip.keyring import generate_key

__all__ = ["cmd_keygen", "cmd_keyring"]


def cmd_keygen(argv: list[str]) -> int:
    """Consul's ``consul keygen``: a new gossip encryption key on stdout."""
    parser("proconsul keygen", "Generates a new encryption key").parse_args(argv)
    print(generate_key())
    return 0


def _pool_name(response: dict[str, Any]) -> str:
    pool = "WAN" if response.get("WAN") else f"{response.get('Datacenter', '')} (LAN)"
    if response.get("Segment"):
        pool += f" [{response['Segment']}]"
    return pool + ":"


def format_response(response: dict[str, Any], keys: dict[str, int]) -> str:
    """One pool as Consul's formatResponse prints it: its name, each member's message, each key with the
    count of members holding it out of the pool's members."""
    lines = ["", _pool_name(response)]
    lines += [f"  ===> {node}: {msg}" for node, msg in sorted((response.get("Messages") or {}).items())]
    total = response.get("NumNodes", 0)
    lines += [f"  {key} [{num}/{total}]" for key, num in sorted((keys or {}).items())]
    return "\n".join(lines)


def cmd_keyring(argv: list[str]) -> int:
    p = parser("proconsul keyring", "Manages gossip layer encryption keys")
    http_options(p)
    opt(p, "install", default="", help="Install a new encryption key")
    opt(p, "use", default="", help="Change the primary encryption key (it must be installed already)")
    opt(p, "remove", default="", help="Remove the given key (never the primary key)")
    opt(p, "list", action="store_true", help="List all keys currently in use within the cluster")
    opt(p, "list-primary", action="store_true", help="List the primary keys in use within the cluster")
    opt(p, "relay-factor", type=int, default=0, help="Relay each member's answer through this many others (0-5)")
    opt(p, "local-only", action="store_true", help="List this datacenter's keys only (lists only)")
    args = p.parse_args(argv)
    actions = [bool(args.list), bool(args.list_primary), bool(args.install), bool(args.use), bool(args.remove)]
    if sum(actions) > 1:
        raise CLIError("Only a single action is allowed")
    if not any(actions):
        raise CLIError(p.format_help().rstrip())
    if not 0 <= args.relay_factor <= 5:
        raise CLIError("Error parsing relay factor: Relay factor must be in range: [0, 5]")
    if args.local_only and not (args.list or args.list_primary):
        raise CLIError("Error validating local-only: local-only can only be set for list requests")
    params: dict[str, str] = {}
    if args.relay_factor:
        params["relay-factor"] = str(args.relay_factor)

    async def run(client: Client) -> int:
        if args.list or args.list_primary:
            what = "primary encryption keys" if args.list_primary else "encryption keys"
            print(f"==> Gathering installed {what}...", flush=True)
            if args.local_only:
                params["local-only"] = "true"
            resp = await client.request("GET", "/v1/operator/keyring", params)
            if resp.status >= 400:
                raise CLIError(f"error: Unexpected response code: {resp.status} ({resp.text})")
            for response in resp.json() or []:
                print(format_response(response, response.get("PrimaryKeys" if args.list_primary else "Keys") or {}))
            return 0
        method, key, doing = (("POST", args.install, "Installing new gossip encryption key") if args.install else
                              ("PUT", args.use, "Changing primary gossip encryption key") if args.use else
                              ("DELETE", args.remove, "Removing gossip encryption key"))  # fmt: skip
        print(f"==> {doing}...", flush=True)
        import json

        resp = await client.request(method, "/v1/operator/keyring", params, json.dumps({"Key": key}).encode())
        if resp.status >= 400:
            raise CLIError(f"error: Unexpected response code: {resp.status} ({resp.text})")
        return 0

    return run_client(args, run)
