"""``proconsul intention``, ``proconsul connect ca`` and ``proconsul tls``: Consul's verbs, flags, output
and exit codes (command/intention/*, command/connect/ca/*, command/tls/*).

``intention check`` exits 0 when allowed, 1 when denied and 2 on any error, so scripts can tell a
denial from a failure; ``intention list`` exits 2 when there are no intentions, as Consul's does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.cli import Client, CLIError, _http_options, _opt, _parser

# ---------------------------------------------------------------------- intentions


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


def _get_exact(client: Client, source: str, destination: str) -> dict[str, Any] | None:
    status, raw, _ = client.request("GET", "/v1/connect/intentions/exact",
                                    {"source": source, "destination": destination})  # fmt: skip
    if status == 404:
        return None
    _check_response(status, raw, "Error reading the intention")
    return json.loads(raw)


def _get_from_args(client: Client, args: list[str]) -> dict[str, Any]:
    if len(args) == 1:
        status, raw, _ = client.request("GET", f"/v1/connect/intentions/{args[0]}")
        if status == 404:
            raise CLIError(f'Intention not found with ID "{args[0]}"')
        _check_response(status, raw, "Error reading the intention")
        return json.loads(raw)
    if len(args) == 2:
        ixn = _get_exact(client, args[0], args[1])
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
    p = _parser("proconsul intention create", "Create intentions for service connections.")
    _http_options(p)
    _opt(p, "allow", action="store_true")
    _opt(p, "deny", action="store_true")
    _opt(p, "file", action="store_true", help="read intention JSON from the files given (- for stdin)")
    _opt(p, "replace", action="store_true", help="replace a conflicting intention")
    _opt(p, "meta", action="append", default=[], help="key=value metadata (repeatable)")
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
    client = Client(args)
    for ixn in ixns:
        text = _ixn_string(ixn)
        if args.replace:
            src_s = "/".join(x for x in (ixn.get("SourceNS"), ixn.get("SourceName")) if x)
            dst_s = "/".join(x for x in (ixn.get("DestinationNS"), ixn.get("DestinationName")) if x)
            old = _get_exact(client, src_s, dst_s)
            if old is not None:
                if old.get("ID"):
                    status, raw, _ = client.request("PUT", f"/v1/connect/intentions/{old['ID']}",
                                                    body=json.dumps(ixn).encode())  # fmt: skip
                else:
                    exact = {k: v for k, v in ixn.items() if k in ("SourceType", "Action", "Permissions",
                                                                   "Description")}  # fmt: skip
                    status, raw, _ = client.request("PUT", "/v1/connect/intentions/exact",
                                                    {"source": src_s, "destination": dst_s},
                                                    json.dumps(exact).encode())  # fmt: skip
                _check_response(status, raw, f'Error replacing intention with source "{src_s}" and '
                                             f'destination "{dst_s}"')  # fmt: skip
                print(f"Created: {text}")
                continue
        status, raw, _ = client.request("POST", "/v1/connect/intentions", body=json.dumps(ixn).encode())
        _check_response(status, raw, f'Error creating intention "{text}"')
        print(f"Created: {text}")
    return 0


def _intention_delete(argv: list[str]) -> int:
    p = _parser("proconsul intention delete", "Delete an intention.")
    _http_options(p)
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)
    client = Client(args)
    if len(args.targets) == 1:
        status, raw, _ = client.request("DELETE", f"/v1/connect/intentions/{args.targets[0]}")
    elif len(args.targets) == 2:
        status, raw, _ = client.request("DELETE", "/v1/connect/intentions/exact",
                                        {"source": args.targets[0], "destination": args.targets[1]})  # fmt: skip
    else:
        raise CLIError("command requires exactly 1 or 2 arguments")
    _check_response(status, raw, "Error deleting the intention")
    print("Intention deleted.")
    return 0


def _intention_get(argv: list[str]) -> int:
    p = _parser("proconsul intention get", "Show information about an intention.")
    _http_options(p)
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)
    ixn = _get_from_args(Client(args), args.targets)

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
    p = _parser("proconsul intention list", "List all Connect intentions.")
    _http_options(p)
    args = p.parse_args(argv)
    ixns = Client(args).json("GET", "/v1/connect/intentions")
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


def _intention_match(argv: list[str]) -> int:
    p = _parser("proconsul intention match", "Show intentions that match a source or destination.")
    _http_options(p)
    _opt(p, "source", action="store_true")
    _opt(p, "destination", action="store_true")
    p.add_argument("name", nargs="*")
    args = p.parse_args(argv)
    if len(args.name) != 1:
        raise CLIError("Error: command requires exactly one argument: src or dst")
    if args.source and args.destination:
        raise CLIError("Error: only one of -source or -destination may be specified")
    by = "source" if args.source else "destination"
    try:
        matches = Client(args).json("GET", "/v1/connect/intentions/match", {"by": by, "name": args.name[0]})
    except CLIError as exc:
        raise CLIError(f"Error matching the connection: {exc}") from None
    for ixn in matches.get(args.name[0], []):
        print(_ixn_string(ixn))
    return 0


def _intention_check(argv: list[str]) -> int:
    p = _parser("proconsul intention check", "Check whether a connection between two services is allowed.")
    _http_options(p)
    _opt(p, "source-type", default="consul")
    p.add_argument("pair", nargs="*")
    args = p.parse_args(argv)  # argparse exits 2 on a bad flag, which is this command's error code
    if len(args.pair) != 2:
        raise CLIError("Error: command requires exactly two arguments: src and dst", code=2)
    try:
        result = Client(args).json("GET", "/v1/connect/intentions/check", {
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


_INTENTION_SUBCOMMANDS = {
    "create": _intention_create,
    "delete": _intention_delete,
    "get": _intention_get,
    "list": _intention_list,
    "match": _intention_match,
    "check": _intention_check,
}


def cmd_intention(argv: list[str]) -> int:
    if not argv or argv[0] not in _INTENTION_SUBCOMMANDS:
        print("Usage: proconsul intention <create|delete|get|list|match|check> [options]", file=sys.stderr)
        return 1
    return _INTENTION_SUBCOMMANDS[argv[0]](argv[1:])


# ---------------------------------------------------------------------- connect ca


def cmd_connect(argv: list[str]) -> int:
    if argv and argv[0] == "proxy":
        from connect_proxy.cli import run

        return run(argv[1:])
    if len(argv) < 2 or argv[0] != "ca" or argv[1] not in ("get-config", "set-config"):
        print("Usage: proconsul connect ca <get-config|set-config> [options]\n"
              "       proconsul connect proxy [options]", file=sys.stderr)  # fmt: skip
        return 1
    sub, rest = argv[1], argv[2:]
    p = _parser(f"proconsul connect ca {sub}", "Connect CA configuration")
    _http_options(p)
    if sub == "set-config":
        _opt(p, "config-file", default=None, help="JSON file with the new CA configuration")
        _opt(p, "force-without-cross-signing", action="store_true")
    args = p.parse_args(rest)
    client = Client(args)
    if sub == "get-config":
        try:
            config = client.json("GET", "/v1/connect/ca/configuration")
        except CLIError as exc:
            raise CLIError(f"Error request CA configuration: {exc}") from None
        print(json.dumps(config, indent=4))
        return 0
    if not args.config_file:
        raise CLIError("-config-file must be set")
    try:
        body = json.loads(Path(args.config_file).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(f"Error parsing config file: {exc}") from None
    if args.force_without_cross_signing and isinstance(body, dict):
        body["ForceWithoutCrossSigning"] = True
    status, raw, _ = client.request("PUT", "/v1/connect/ca/configuration", body=json.dumps(body).encode())
    if status >= 400:
        raise CLIError(f"Error setting CA configuration: Unexpected response code: {status} "
                       f"({raw.decode(errors='replace').strip()})")  # fmt: skip
    print("Configuration updated!")
    return 0


# ---------------------------------------------------------------------- tls


def _write_new(path: str, data: str, mode: int) -> None:
    # O_EXCL: never overwrite a CA or key that already exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def _tls_ca_create(argv: list[str]) -> int:
    from ca import agent_tls, certs

    p = _parser("proconsul tls ca create", "Create a new agent CA for the cluster's TLS.")
    _opt(p, "days", type=int, default=agent_tls.CA_DEFAULT_DAYS)
    _opt(p, "domain", default="consul")
    _opt(p, "name-constraint", action="store_true")
    _opt(p, "additional-name-constraint", action="append", default=[])
    _opt(p, "common-name", default="")
    args = p.parse_args(argv)
    cert_file, key_file = f"{args.domain}-agent-ca.pem", f"{args.domain}-agent-ca-key.pem"
    for f in (cert_file, key_file):
        if os.path.exists(f):
            raise CLIError(f"{f} already exists.")
    constraints: list[str] = []
    if args.name_constraint:
        constraints = [args.domain, "localhost", *args.additional_name_constraint]
    key = certs.generate_key("ec", 256)
    cert = agent_tls.agent_ca(key, agent_tls.new_agent_serial(os.urandom), datetime.now(UTC), days=args.days,
                              common_name=args.common_name, permitted_dns=constraints)  # fmt: skip
    _write_new(cert_file, certs.cert_to_pem(cert), 0o644)
    print(f"==> Saved {cert_file}")
    _write_new(key_file, certs.private_key_to_pem(key), 0o600)
    print(f"==> Saved {key_file}")
    return 0


def _tls_cert_create(argv: list[str]) -> int:
    from ca import agent_tls, certs

    p = _parser("proconsul tls cert create", "Create a new certificate signed by the agent CA.")
    _opt(p, "server", action="store_true")
    _opt(p, "client", action="store_true")
    _opt(p, "cli", action="store_true")
    _opt(p, "ca", default="#DOMAIN#-agent-ca.pem")
    _opt(p, "key", default="#DOMAIN#-agent-ca-key.pem")
    _opt(p, "dc", default="dc1")
    _opt(p, "domain", default="consul")
    _opt(p, "days", type=int, default=agent_tls.CERT_DEFAULT_DAYS)
    _opt(p, "node", default="")
    _opt(p, "additional-dnsname", action="append", default=[])
    _opt(p, "additional-ipaddress", action="append", default=[])
    args = p.parse_args(argv)
    if [args.server, args.client, args.cli].count(True) != 1:
        raise CLIError("Please provide either -server, -client, or -cli")
    if args.node and not args.server:
        raise CLIError("-node requires -server")
    dns = [d.strip() for d in args.additional_dnsname if d.strip()]
    try:
        ips = [ipaddress.ip_address(i.strip()) for i in args.additional_ipaddress if i.strip()]
    except ValueError as exc:
        raise CLIError(f"Error: {exc}") from None
    if args.server:
        name, kind = f"server.{args.dc}.{args.domain}", "server"
        if args.node:
            dns.append(f"{args.node}.server.{args.dc}.{args.domain}")
        dns += [name, "localhost"]
        ips.append(ipaddress.ip_address("127.0.0.1"))
    elif args.client:
        name, kind = f"client.{args.dc}.{args.domain}", "client"
        dns += [name, "localhost"]
        ips.append(ipaddress.ip_address("127.0.0.1"))
    else:
        name, kind = f"cli.{args.dc}.{args.domain}", "cli"
        dns, ips = [name, "localhost"], []
    prefix = f"{args.dc}-{kind}-{args.domain}"
    for i in range(10001):
        cert_file, key_file = f"{prefix}-{i}.pem", f"{prefix}-{i}-key.pem"
        if not os.path.exists(cert_file) and not os.path.exists(key_file):
            break
    else:
        raise CLIError("Could not find a filename that doesn't already exist")
    ca_file = args.ca.replace("#DOMAIN#", args.domain, 1)
    ca_key_file = args.key.replace("#DOMAIN#", args.domain, 1)
    try:
        ca_cert = certs.cert_from_pem(Path(ca_file).read_text())
    except (OSError, ValueError) as exc:
        raise CLIError(f"Error reading CA: {exc}") from None
    try:
        ca_key = certs.private_key_from_pem(Path(ca_key_file).read_text())
    except (OSError, ValueError) as exc:
        raise CLIError(f"Error reading CA key: {exc}") from None
    if args.server:
        print("==> WARNING: Server Certificates grants authority to become a\n"
              "    server and access all state in the cluster including root keys\n"
              "    and all ACL tokens. Do not distribute them to production hosts\n"
              "    that are not server nodes. Store them as securely as CA keys.")  # fmt: skip
    print(f"==> Using {ca_file} and {ca_key_file}")
    key = certs.generate_key("ec", 256)
    try:
        cert = agent_tls.agent_cert(key, ca_cert, ca_key, agent_tls.new_agent_serial(os.urandom),
                                    datetime.now(UTC), name=name, dns_names=dns, ip_addresses=ips,
                                    days=args.days, client_only=args.cli)  # fmt: skip
    except ValueError as exc:
        raise CLIError(f"Error: {exc}") from None
    _write_new(cert_file, certs.cert_to_pem(cert), 0o644)
    print(f"==> Saved {cert_file}")
    _write_new(key_file, certs.private_key_to_pem(key), 0o600)
    print(f"==> Saved {key_file}")
    return 0


def cmd_tls(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "create" or argv[0] not in ("ca", "cert"):
        print("Usage: proconsul tls <ca|cert> create [options]", file=sys.stderr)
        return 1
    return (_tls_ca_create if argv[0] == "ca" else _tls_cert_create)(argv[2:])


COMMANDS: dict[str, Any] = {"intention": cmd_intention, "connect": cmd_connect, "tls": cmd_tls}
