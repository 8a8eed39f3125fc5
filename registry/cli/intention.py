"""``proconsul intention create|delete|get|list|match|check``: Consul's command/intention/* verbs, flags, output
and exit codes.

``intention check`` exits 0 when allowed, 1 when denied and 2 on any error, so scripts can tell a
denial from a failure; ``intention list`` exits 2 when there are no intentions, as Consul's does.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.cli.common import Client, CLIError, Command, http_options, opt, parser, run_client


def _ixn_string(ixn: dict[str, Any]) -> str:
    """Consul's api.Intention.String(): "web => db (allow)", the namespace shown only if not default."""

    def part(ns: str | None, name: str) -> str:
        return name if not ns or ns == "default" else f"{ns}/{name}"

    return (f"{part(ixn.get('SourceNS'), ixn.get('SourceName', ''))} => "
            f"{part(ixn.get('DestinationNS'), ixn.get('DestinationName', ''))} ({ixn.get('Action', '')})")  # fmt: skip


def _split_target(value: str, what: str) -> tuple[str, str]:
    ns, sep, name = value.partition("/")
    if not sep:
        return "", value
    if "/" in name:
        raise CLIError(f"Error: Invalid intention {what}: target can contain at most one '/'")
    return ns, name


def _check_response(status: int, raw: bytes, what: str) -> None:
    if status >= 400:
        raise CLIError(f"{what}: Unexpected response code: {status} ({raw.decode(errors='replace').strip()})")


async def _get_exact(client: Client, source: str, destination: str) -> dict[str, Any] | None:
    status, raw, _ = await client.request("GET", "/v1/connect/intentions/exact",
                                          {"source": source, "destination": destination})  # fmt: skip
    if status == 404:
        return None
    _check_response(status, raw, "Error reading the intention")
    return json.loads(raw)


async def _get_from_args(client: Client, args: list[str]) -> dict[str, Any]:
    if len(args) == 1:
        status, raw, _ = await client.request("GET", f"/v1/connect/intentions/{args[0]}")
        if status == 404:
            raise CLIError(f'Intention not found with ID "{args[0]}"')
        _check_response(status, raw, "Error reading the intention")
        return json.loads(raw)
    if len(args) == 2:
        ixn = await _get_exact(client, args[0], args[1])
        if ixn is None:
            raise CLIError(f'Intention not found with source "{args[0]}" and destination "{args[1]}"')
        return ixn
    raise CLIError("command requires exactly 1 or 2 arguments")


def _meta(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise CLIError(f"Error: -meta must be key=value, got {v!r}")
        out[key] = value
    return out


def _intention_create(argv: list[str]) -> int:
    p = parser("proconsul intention create", "Create intentions for service connections.")
    http_options(p)
    opt(p, "allow", action="store_true")
    opt(p, "deny", action="store_true")
    opt(p, "file", action="store_true", help="read intention JSON from the files given (- for stdin)")
    opt(p, "replace", action="store_true", help="replace a conflicting intention")
    opt(p, "meta", action="append", default=[], help="key=value metadata (repeatable)")
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)
    if args.allow and args.deny:
        raise CLIError("Only one of -allow or -deny may be specified.")
    action = "deny" if args.deny else "allow"
    ixns: list[dict[str, Any]] = []
    if args.file:
        for path in args.targets:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
            try:
                ixns.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise CLIError(f"Error: {path}: {exc}") from None
    else:
        if len(args.targets) != 2:
            raise CLIError("Error: Must specify two arguments: source and destination")
        src_ns, src = _split_target(args.targets[0], "source")
        dst_ns, dst = _split_target(args.targets[1], "destination")
        ixns.append({"SourceNS": src_ns, "SourceName": src, "DestinationNS": dst_ns, "DestinationName": dst,
                     "SourceType": "consul", "Action": action, "Meta": _meta(args.meta)})  # fmt: skip

    async def create(client: Client) -> int:
        for ixn in ixns:
            text = _ixn_string(ixn)
            if args.replace and await _replace(client, ixn):
                print(f"Created: {text}")
                continue
            status, raw, _ = await client.request("POST", "/v1/connect/intentions", body=json.dumps(ixn).encode())
            _check_response(status, raw, f'Error creating intention "{text}"')
            print(f"Created: {text}")
        return 0

    return run_client(args, create)


async def _replace(client: Client, ixn: dict[str, Any]) -> bool:
    """``-replace``: update the intention between the same source and destination; False when there is none."""
    src_s = "/".join(x for x in (ixn.get("SourceNS"), ixn.get("SourceName")) if x)
    dst_s = "/".join(x for x in (ixn.get("DestinationNS"), ixn.get("DestinationName")) if x)
    old = await _get_exact(client, src_s, dst_s)
    if old is None:
        return False
    if old.get("ID"):
        status, raw, _ = await client.request("PUT", f"/v1/connect/intentions/{old['ID']}",
                                              body=json.dumps(ixn).encode())  # fmt: skip
    else:
        exact = {k: v for k, v in ixn.items() if k in ("SourceType", "Action", "Permissions", "Description")}
        status, raw, _ = await client.request("PUT", "/v1/connect/intentions/exact",
                                              {"source": src_s, "destination": dst_s},
                                              json.dumps(exact).encode())  # fmt: skip
    _check_response(status, raw, f'Error replacing intention with source "{src_s}" and destination "{dst_s}"')
    return True


def _intention_delete(argv: list[str]) -> int:
    p = parser("proconsul intention delete", "Delete an intention.")
    http_options(p)
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)

    async def delete(client: Client) -> int:
        if len(args.targets) == 1:
            status, raw, _ = await client.request("DELETE", f"/v1/connect/intentions/{args.targets[0]}")
        elif len(args.targets) == 2:
            status, raw, _ = await client.request("DELETE", "/v1/connect/intentions/exact",
                                                  {"source": args.targets[0], "destination": args.targets[1]})  # fmt: skip
        else:
            raise CLIError("command requires exactly 1 or 2 arguments")
        _check_response(status, raw, "Error deleting the intention")
        print("Intention deleted.")
        return 0

    return run_client(args, delete)


def _intention_get(argv: list[str]) -> int:
    p = parser("proconsul intention get", "Show information about an intention.")
    http_options(p)
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)

    async def get(client: Client) -> int:
        ixn = await _get_from_args(client, args.targets)

        def part(ns: str, name: str) -> str:
            return name if not ns or ns == "default" else f"{ns}/{name}"

        rows = [["Source:", part(ixn.get("SourceNS", ""), ixn["SourceName"])],
                ["Destination:", part(ixn.get("DestinationNS", ""), ixn["DestinationName"])]]  # fmt: skip
        if ixn.get("Action"):
            rows.append(["Action:", ixn["Action"]])
        if ixn.get("ID"):
            rows.append(["ID:", ixn["ID"]])
        if ixn.get("Description"):
            rows.append(["Description:", ixn["Description"]])
        for k in sorted(ixn.get("Meta") or {}):
            rows.append([f"Meta[{k}]:", ixn["Meta"][k]])
        rows.append(["Created At:", _rfc850(ixn.get("CreatedAt", ""))])
        width = max(len(r[0]) for r in rows)
        for label, value in rows:
            print(f"{label.ljust(width)}  {value}")
        if ixn.get("Permissions"):
            print("Permissions:\n" + json.dumps(ixn["Permissions"], indent=2))
        return 0

    return run_client(args, get)


def _rfc850(value: str) -> str:
    # Go's time.RFC850 in local time: "Monday, 02-Jan-06 15:04:05 MST".
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if t.year <= 1:
        t = datetime(1, 1, 1, tzinfo=UTC)
    return t.astimezone().strftime("%A, %d-%b-%y %H:%M:%S %Z")


def _intention_list(argv: list[str]) -> int:
    p = parser("proconsul intention list", "List all Connect intentions.")
    http_options(p)
    args = p.parse_args(argv)

    async def list_(client: Client) -> int:
        ixns = await client.json("GET", "/v1/connect/intentions")
        if not ixns:
            print("There are no intentions.", file=sys.stderr)
            return 2
        rows = [["ID", "Source", "Action", "Destination", "Precedence"]]
        for i in ixns:
            rows.append([i.get("ID", ""), i["SourceName"], i.get("Action", ""), i["DestinationName"],
                         str(i.get("Precedence", ""))])  # fmt: skip
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        return 0

    return run_client(args, list_)


def _intention_match(argv: list[str]) -> int:
    p = parser("proconsul intention match", "Show intentions that match a source or destination.")
    http_options(p)
    opt(p, "source", action="store_true")
    opt(p, "destination", action="store_true")
    p.add_argument("name", nargs="*")
    args = p.parse_args(argv)
    if len(args.name) != 1:
        raise CLIError("Error: command requires exactly one argument: src or dst")
    if args.source and args.destination:
        raise CLIError("Error: only one of -source or -destination may be specified")
    by = "source" if args.source else "destination"

    async def match(client: Client) -> int:
        try:
            matches = await client.json("GET", "/v1/connect/intentions/match", {"by": by, "name": args.name[0]})
        except CLIError as exc:
            raise CLIError(f"Error matching the connection: {exc}") from None
        for ixn in matches.get(args.name[0], []):
            print(_ixn_string(ixn))
        return 0

    return run_client(args, match)


def _intention_check(argv: list[str]) -> int:
    p = parser("proconsul intention check", "Check whether a connection between two services is allowed.")
    http_options(p)
    opt(p, "source-type", default="consul")
    p.add_argument("pair", nargs="*")
    args = p.parse_args(argv)  # argparse exits 2 on a bad flag, which is this command's error code
    if len(args.pair) != 2:
        raise CLIError("Error: command requires exactly two arguments: src and dst", code=2)

    async def check(client: Client) -> int:
        try:
            result = await client.json("GET", "/v1/connect/intentions/check", {
                "source": args.pair[0], "destination": args.pair[1], "source-type": args.source_type})  # fmt: skip
        except CLIError as exc:
            raise CLIError(f"Error checking the connection: {exc}", code=2) from None
        if not isinstance(result, dict) or not isinstance(result.get("Allowed"), bool):
            raise CLIError("Error checking the connection: malformed response", code=2)
        if result["Allowed"]:
            print("Allowed")
            return 0
        print("Denied")
        return 1

    return run_client(args, check)


_SUBCOMMANDS: dict[str, Command] = {
    "create": _intention_create,
    "delete": _intention_delete,
    "get": _intention_get,
    "list": _intention_list,
    "match": _intention_match,
    "check": _intention_check,
}


def cmd_intention(argv: list[str]) -> int:
    if not argv or argv[0] not in _SUBCOMMANDS:
        print("Usage: proconsul intention <create|delete|get|list|match|check> [options]", file=sys.stderr)
        return 1
    return _SUBCOMMANDS[argv[0]](argv[1:])
