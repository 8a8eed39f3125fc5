"""The ``proconsul`` command: Consul's verbs and flags (``-flag`` and ``--flag`` both work).

Every command is registered here, by name, with the function that runs it; each command family lives in its
own module and shares only ``registry.cli.common``."""

from __future__ import annotations

import sys

from registry import __version__
from registry.cli import (
    acl,
    agent,
    catalog,
    config,
    connect,
    event,
    intention,
    keyring,
    kv,
    lock,
    members,
    operator,
    ops,
    rtt,
    snapshot,
    tls,
    watch,
)
from registry.cli import validate as validate_cmd
from registry.cli.common import CLIError, Command

__all__ = ["COMMANDS", "cmd_version", "main", "usage"]


def cmd_version(argv: list[str]) -> int:
    from registry import CONSUL_VERSION

    print(f"Proconsul v{__version__}")
    print(f"Consul API compatibility: v{CONSUL_VERSION}")
    print("Protocol 2 spoken by default, understands 2 to 3")
    return 0


COMMANDS: dict[str, Command] = {
    "agent": agent.cmd_agent,
    "members": members.cmd_members,
    "catalog": catalog.cmd_catalog,
    "services": catalog.cmd_services,
    "kv": kv.cmd_kv,
    "leave": members.cmd_leave,
    "join": members.cmd_join,
    "force-leave": members.cmd_force_leave,
    "reload": members.cmd_reload,
    "version": cmd_version,
    "validate": validate_cmd.cmd_validate,
    "operator": operator.cmd_operator,
    "snapshot": snapshot.cmd_snapshot,
    "intention": intention.cmd_intention,
    "config": config.cmd_config,
    "connect": connect.cmd_connect,
    "tls": tls.cmd_tls,
    "lock": lock.cmd_lock,
    "monitor": ops.cmd_monitor,
    "info": ops.cmd_info,
    "maint": ops.cmd_maint,
    "acl": acl.cmd_acl,
    "login": acl.cmd_login,
    "logout": acl.cmd_logout,
    "event": event.cmd_event,
    "watch": watch.cmd_watch,
    "rtt": rtt.cmd_rtt,
    "keygen": keyring.cmd_keygen,
    "keyring": keyring.cmd_keyring,
}


def usage() -> str:
    return (
        "Usage: proconsul [--version] [--help] <command> [<args>]\n\nAvailable commands are:\n"
        + "\n".join(f"    {name}" for name in sorted(COMMANDS))
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "-help", "help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 1 if not argv else 0
    if argv[0] in ("-v", "--version", "-version"):
        return cmd_version([])
    fn = COMMANDS.get(argv[0])
    if fn is None:
        print(f"Unknown command: {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 1
    try:
        return fn(argv[1:])
    except CLIError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
