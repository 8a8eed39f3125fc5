"""``proconsul tls ca create`` and ``proconsul tls cert create``: the agent CA and its certificates, written to
new files only (Consul's command/tls/*). No agent is involved."""

from __future__ import annotations

import ipaddress
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from registry.cli.common import CLIError, opt, parser


def _write_new(path: str, data: str, mode: int) -> None:
    # O_EXCL: never overwrite a CA or key that already exists.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def _tls_ca_create(argv: list[str]) -> int:
    from ca import agent_tls, certs

    p = parser("proconsul tls ca create", "Create a new agent CA for the cluster's TLS.")
    opt(p, "days", type=int, default=agent_tls.CA_DEFAULT_DAYS)
    opt(p, "domain", default="consul")
    opt(p, "name-constraint", action="store_true")
    opt(p, "additional-name-constraint", action="append", default=[])
    opt(p, "common-name", default="")
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

    p = parser("proconsul tls cert create", "Create a new certificate signed by the agent CA.")
    opt(p, "server", action="store_true")
    opt(p, "client", action="store_true")
    opt(p, "cli", action="store_true")
    opt(p, "ca", default="#DOMAIN#-agent-ca.pem")
    opt(p, "key", default="#DOMAIN#-agent-ca-key.pem")
    opt(p, "dc", default="dc1")
    opt(p, "domain", default="consul")
    opt(p, "days", type=int, default=agent_tls.CERT_DEFAULT_DAYS)
    opt(p, "node", default="")
    opt(p, "additional-dnsname", action="append", default=[])
    opt(p, "additional-ipaddress", action="append", default=[])
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

