"""``proconsul validate [options] FILE_OR_DIRECTORY...``: load config files and directories exactly as
``proconsul agent`` would (Consul's ``consul validate``), without starting anything."""

from __future__ import annotations

import argparse
import sys

from registry.cli.common import opt, parser

HELP = """Performs a basic sanity test on configuration files. For each file or directory given, the validate
command will attempt to parse the contents just as the "proconsul agent" command would, and catch any
errors. Returns 0 if the configuration is valid, or 1 if there are problems."""


def validate_parser() -> argparse.ArgumentParser:
    p = parser("proconsul validate [options] FILE_OR_DIRECTORY...", "Validate config files/directories")
    p.description = HELP
    opt(p, "config-format", default="",
        help="Config files are in this format irrespective of their extension. Must be 'hcl' or 'json'")
    opt(p, "quiet", action="store_true", help="When given, a successful run will produce no output.")
    p.add_argument("paths", nargs="*")
    return p


def cmd_validate(argv: list[str]) -> int:
    from registry.cli.agent import build_config
    from registry.config import ConfigError

    args = validate_parser().parse_args(argv)
    if not args.paths:
        print("Must specify at least one config file or directory", file=sys.stderr)
        return 1
    if args.config_format not in ("", "hcl", "json"):
        print("-config-format must be either 'hcl' or 'json", file=sys.stderr)  # Consul's text, as it is
        return 1
    agent_args = [a for path in args.paths for a in ("-config-file", path)]
    if args.config_format:
        agent_args += ["-config-format", args.config_format]
    warnings: list[str] = []
    try:
        cfg = build_config(agent_args, warnings)
    except ConfigError as exc:
        print(f"Config validation failed: {str(exc).rstrip()}", file=sys.stderr)
        return 1
    if not args.quiet:
        for warning in warnings:
            print(warning, file=sys.stderr)
        for key in cfg.unknown_keys:
            print(f"config key {key} is not implemented by Proconsul; it has no effect", file=sys.stderr)
        print("Configuration is valid!")
    return 0
