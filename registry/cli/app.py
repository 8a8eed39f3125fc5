"""The ``proconsul`` command: Consul's verbs and flags (``-flag`` and ``--flag`` both work).

Every command is registered here, by name, with the function that runs it; each command family lives in its
own module, imported when one of its commands runs, and shares only ``registry.cli.common``."""

from __future__ import annotations

import sys

from registry import __version__
from registry.cli.common import CLIError, Command

__all__ = ["COMMANDS", "cmd_version", "main", "usage"]


def cmd_version(argv: list[str]) -> int:
    from registry import CONSUL_VERSION

    print(f"Proconsul v{__version__}")
    print(f"Consul API compatibility: v{CONSUL_VERSION}")
    print("Protocol 2 spoken by default, understands 2 to 3")
    return 0


# Each command family is imported when its command runs: a command pays only for its own imports
# (``proconsul kv get`` does not load the HCL parser, the gossip stack or the filter compiler).


def _agent(argv: list[str]) -> int:
    from registry.cli.agent import cmd_agent

    return cmd_agent(argv)


def _members(argv: list[str]) -> int:
    from registry.cli.members import cmd_members

    return cmd_members(argv)


def _catalog(argv: list[str]) -> int:
    from registry.cli.catalog import cmd_catalog

    return cmd_catalog(argv)


def _services(argv: list[str]) -> int:
    from registry.cli.catalog import cmd_services

    return cmd_services(argv)


def _kv(argv: list[str]) -> int:
    from registry.cli.kv import cmd_kv

    return cmd_kv(argv)


def _leave(argv: list[str]) -> int:
    from registry.cli.members import cmd_leave

    return cmd_leave(argv)


def _join(argv: list[str]) -> int:
    from registry.cli.members import cmd_join

    return cmd_join(argv)


def _force_leave(argv: list[str]) -> int:
    from registry.cli.members import cmd_force_leave

    return cmd_force_leave(argv)


def _reload(argv: list[str]) -> int:
    from registry.cli.members import cmd_reload

    return cmd_reload(argv)


def _validate(argv: list[str]) -> int:
    from registry.cli.validate import cmd_validate

    return cmd_validate(argv)


def _operator(argv: list[str]) -> int:
    from registry.cli.operator import cmd_operator

    return cmd_operator(argv)


def _snapshot(argv: list[str]) -> int:
    from registry.cli.snapshot import cmd_snapshot

    return cmd_snapshot(argv)


def _intention(argv: list[str]) -> int:
    from registry.cli.intention import cmd_intention

    return cmd_intention(argv)


def _config(argv: list[str]) -> int:
    from registry.cli.config import cmd_config

    return cmd_config(argv)


def _connect(argv: list[str]) -> int:
    from registry.cli.connect import cmd_connect

    return cmd_connect(argv)


def _tls(argv: list[str]) -> int:
    from registry.cli.tls import cmd_tls

    return cmd_tls(argv)


def _lock(argv: list[str]) -> int:
    from registry.cli.lock import cmd_lock

    return cmd_lock(argv)


def _monitor(argv: list[str]) -> int:
    from registry.cli.ops import cmd_monitor

    return cmd_monitor(argv)


def _info(argv: list[str]) -> int:
    from registry.cli.ops import cmd_info

    return cmd_info(argv)


def _maint(argv: list[str]) -> int:
    from registry.cli.ops import cmd_maint

    return cmd_maint(argv)


def _acl(argv: list[str]) -> int:
    from registry.cli.acl import cmd_acl

    return cmd_acl(argv)


def _login(argv: list[str]) -> int:
    from registry.cli.acl import cmd_login

    return cmd_login(argv)


def _logout(argv: list[str]) -> int:
    from registry.cli.acl import cmd_logout

    return cmd_logout(argv)


def _event(argv: list[str]) -> int:
    from registry.cli.event import cmd_event

    return cmd_event(argv)


def _watch(argv: list[str]) -> int:
    from registry.cli.watch import cmd_watch

    return cmd_watch(argv)


def _rtt(argv: list[str]) -> int:
    from registry.cli.rtt import cmd_rtt

    return cmd_rtt(argv)


def _keygen(argv: list[str]) -> int:
    from registry.cli.keyring import cmd_keygen

    return cmd_keygen(argv)


def _debug(argv: list[str]) -> int:
    from registry.cli.debug import cmd_debug

    return cmd_debug(argv)


def _keyring(argv: list[str]) -> int:
    from registry.cli.keyring import cmd_keyring

    return cmd_keyring(argv)


COMMANDS: dict[str, Command] = {
    "agent": _agent,
    "members": _members,
    "catalog": _catalog,
    "services": _services,
    "kv": _kv,
    "leave": _leave,
    "join": _join,
    "force-leave": _force_leave,
    "reload": _reload,
    "version": cmd_version,
    "validate": _validate,
    "operator": _operator,
    "snapshot": _snapshot,
    "intention": _intention,
    "config": _config,
    "connect": _connect,
    "tls": _tls,
    "lock": _lock,
    "monitor": _monitor,
    "info": _info,
    "maint": _maint,
    "acl": _acl,
    "login": _login,
    "logout": _logout,
    "event": _event,
    "watch": _watch,
    "rtt": _rtt,
    "keygen": _keygen,
    "keyring": _keyring,
    "debug": _debug,
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
