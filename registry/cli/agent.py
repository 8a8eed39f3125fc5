"""``proconsul agent``: build the agent's Config from ``-dev`` defaults, config files and flags (flags over
files, as Consul merges them), then run the Agent until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry.cli.common import opt, parser

if TYPE_CHECKING:
    from registry.config import Config
    from registry.logs import LogRouter


# Every flag of Consul's ``consul agent`` (agent/config/flags.go, open-source and Enterprise-only alike),
# as (flag, kind, config key). The kind says how the value is read: str, int, bool (``-x``, ``-x=true``,
# ``-x=false``, as Go's flag package reads booleans), dur (a duration string, parsed as the config key is),
# list (repeatable), meta (repeatable ``key:value``). The key is where the value lands, as flags.go maps
# it, a dotted path into the config's blocks, so a flag merges with config files the way Consul merges it
# (flags last). None: the flag is handled apart (``-dev``, ``-config-*``, ``-hcl``).
AGENT_FLAGS: tuple[tuple[str, str, str | None], ...] = (
    ("advertise", "str", "advertise_addr"),
    ("advertise-wan", "str", "advertise_addr_wan"),
    ("allow-write-http-from", "list", "http_config.allow_write_http_from"),
    ("alt-domain", "str", "alt_domain"),
    ("auto-reload-config", "bool", "auto_reload_config"),
    ("bind", "str", "bind_addr"),
    ("bootstrap", "bool", "bootstrap"),
    ("bootstrap-expect", "int", "bootstrap_expect"),
    ("check_output_max_size", "int", "check_output_max_size"),
    ("client", "str", "client_addr"),
    ("config-dir", "list", None),
    ("config-file", "list", None),
    ("config-format", "str", None),
    ("data-dir", "str", "data_dir"),
    ("datacenter", "str", "datacenter"),
    ("default-query-time", "dur", "default_query_time"),
    ("dev", "bool", None),
    ("disable-host-node-id", "bool", "disable_host_node_id"),
    ("disable-keyring-file", "bool", "disable_keyring_file"),
    ("dns-port", "int", "ports.dns"),
    ("domain", "str", "domain"),
    ("enable-local-script-checks", "bool", "enable_local_script_checks"),
    ("enable-script-checks", "bool", "enable_script_checks"),
    ("encrypt", "str", "encrypt"),
    ("grpc-port", "int", "ports.grpc"),
    ("grpc-tls-port", "int", "ports.grpc_tls"),
    ("hcl", "list", None),
    ("http-port", "int", "ports.http"),
    ("https-port", "int", "ports.https"),
    ("join", "list", "retry_join"),
    ("join-wan", "list", "retry_join_wan"),
    ("log-file", "str", "log_file"),
    ("log-json", "bool", "log_json"),
    ("log-level", "str", "log_level"),
    ("log-rotate-bytes", "int", "log_rotate_bytes"),
    ("log-rotate-duration", "str", "log_rotate_duration"),
    ("log-rotate-max-files", "int", "log_rotate_max_files"),
    ("max-query-time", "dur", "max_query_time"),
    ("node", "str", "node_name"),
    ("node-id", "str", "node_id"),
    ("node-meta", "meta", "node_meta"),
    ("non-voting-server", "bool", "read_replica"),
    ("pid-file", "str", "pid_file"),
    ("primary-gateway", "list", "primary_gateways"),
    ("protocol", "int", "protocol"),
    ("raft-protocol", "int", "raft_protocol"),
    ("read-replica", "bool", "read_replica"),
    ("recursor", "list", "recursors"),
    ("rejoin", "bool", "rejoin_after_leave"),
    ("retry-interval", "dur", "retry_interval"),
    ("retry-interval-wan", "dur", "retry_interval_wan"),
    ("retry-join", "list", "retry_join"),
    ("retry-join-wan", "list", "retry_join_wan"),
    ("retry-max", "int", "retry_max"),
    ("retry-max-wan", "int", "retry_max_wan"),
    ("segment", "str", "segment"),
    ("serf-lan-allowed-cidrs", "list", "serf_lan_allowed_cidrs"),
    ("serf-lan-bind", "str", "serf_lan"),
    ("serf-lan-port", "int", "ports.serf_lan"),
    ("serf-wan-allowed-cidrs", "list", "serf_wan_allowed_cidrs"),
    ("serf-wan-bind", "str", "serf_wan"),
    ("serf-wan-port", "int", "ports.serf_wan"),
    ("server", "bool", "server"),
    ("server-port", "int", "ports.server"),
    ("syslog", "bool", "enable_syslog"),
    ("ui", "bool", "ui_config.enabled"),
    ("ui-content-path", "str", "ui_config.content_path"),
    ("ui-dir", "str", "ui_config.dir"),
)

# The flags Proconsul accepts but cannot honour, and why: a Consul command line still starts, and the agent
# says in one line which flag does nothing. Their values are not put in the config.
NO_EFFECT_FLAGS: dict[str, str] = {
    "advertise-wan": "Proconsul has no WAN gossip pool",
    "allow-write-http-from": "Proconsul does not filter HTTP writes by source network; use ACLs",
    "auto-reload-config": "Proconsul reloads its configuration on SIGHUP (proconsul reload), not by watching files",
    "grpc-tls-port": "Proconsul serves no gRPC API (no Envoy xDS)",
    "join-wan": "Proconsul has no WAN gossip pool",
    "non-voting-server": "read replicas are a Consul Enterprise feature",
    "primary-gateway": "Proconsul has no WAN federation through mesh gateways",
    "protocol": "Proconsul speaks one protocol version",
    "raft-protocol": "Proconsul speaks Raft protocol 3 only",
    "read-replica": "read replicas are a Consul Enterprise feature",
    "retry-interval-wan": "Proconsul has no WAN gossip pool",
    "retry-join-wan": "Proconsul has no WAN gossip pool",
    "retry-max-wan": "Proconsul has no WAN gossip pool",
    "segment": "network segments are a Consul Enterprise feature",
    "serf-lan-allowed-cidrs": "Proconsul does not filter gossip by source network; use encrypt",
    "serf-wan-allowed-cidrs": "Proconsul has no WAN gossip pool",
    "serf-wan-bind": "Proconsul has no WAN gossip pool",
    "serf-wan-port": "Proconsul has no WAN gossip pool",
    "ui-dir": "Proconsul serves its built-in UI only",
}


def _go_bool(text: str) -> bool:
    """A boolean flag's explicit value, as Go's strconv.ParseBool reads it."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("-node-meta must be key:value")
    return key, value


def agent_parser() -> argparse.ArgumentParser:
    p = parser("proconsul agent", "Run a Proconsul agent")
    kinds: dict[str, dict[str, Any]] = {
        "str": {"default": None}, "dur": {"default": None}, "int": {"type": int, "default": None},
        "bool": {"nargs": "?", "const": True, "type": _go_bool, "default": None},
        "list": {"action": "append", "default": []}, "meta": {"action": "append", "type": _meta, "default": []},
    }  # fmt: skip
    for flag, kind, _ in AGENT_FLAGS:
        if flag in ("config-file", "config-dir"):
            # Both append to one list, so files and directories load in the order given (Consul's ConfigFiles).
            p.add_argument(f"-{flag}", f"--{flag}", action="append", dest="config_paths", default=[])
        elif flag == "config-format":
            opt(p, flag, default="", help="hcl or json: read every config file in this format")
        else:
            opt(p, flag, **kinds[kind])
    opt(p, "insecure", nargs="?", const=True, type=_go_bool, default=None,
        help="start a server without ACLs (default deny) or mutual TLS anyway, and say so (Proconsul's flag)")
    return p


def _flag_values(args: argparse.Namespace, warnings: list[str] | None) -> dict[str, Any]:
    """The flags given, as a config mapping (dotted keys become nested blocks, as flags.go fills the
    config's structs); flags that cannot apply are named in ``warnings`` instead."""
    flags: dict[str, Any] = {}
    for flag, kind, key in AGENT_FLAGS:
        if key is None:
            continue
        value = getattr(args, flag.replace("-", "_"))
        if value is None or value == []:
            continue
        if flag in NO_EFFECT_FLAGS:
            if warnings is not None:
                warnings.append(f"-{flag} has no effect: {NO_EFFECT_FLAGS[flag]}")
            continue
        if kind == "meta":
            value = dict(value)
        block = flags
        *parents, leaf = key.split(".")
        for part in parents:
            block = block.setdefault(part, {})
        if kind == "list" and leaf in block:
            block[leaf] = block[leaf] + value  # -retry-join and -join both fill retry_join
        else:
            block[leaf] = value
    if args.insecure is not None:
        flags["insecure"] = args.insecure
    return flags


def build_config(argv: list[str], warnings: list[str] | None = None) -> Config:
    """The agent's Config from its command line: ``-dev`` defaults, then each config file in order
    (``registry.config_files``: HCL, JSON or YAML, checked against Consul's keys), then each ``-hcl``
    fragment (Consul reads them after the files), then flags; validated as the agent will use it. Raises
    ConfigError with Consul's text. The loader's warnings (deprecated keys, skipped files) and the flags
    that have no effect are appended to ``warnings``. The agent's reload builds its new Config the same
    way from the same arguments."""
    from registry.config import (
        Config,
        apply_mapping,
        apply_node_section,
        dev_defaults,
        validate,
    )
    from registry.config_files import Source, check_keys, load_paths, parse_hcl

    args = agent_parser().parse_args(argv)
    cfg = Config()
    if args.dev:
        dev_defaults(cfg)
    loaded_files = load_paths(args.config_paths, args.config_format)
    sources = list(loaded_files.sources)
    for i, fragment in enumerate(args.hcl):
        name = f"flags-{i}.hcl"
        sources.append(Source(name, check_keys(parse_hcl(fragment, name), name, loaded_files.warnings)))
    if warnings is not None:
        warnings.extend(loaded_files.warnings)
    loaded = []
    for source in sources:
        apply_mapping(cfg, source.data, source.name)
        if source in loaded_files.sources:
            cfg.config_files.append(source.name)
        loaded.append((source.name, source.data))
    flags = _flag_values(args, warnings)
    # Blocks Proconsul keeps in Config.extra (``ui_config``, ...) merge a flag into the files' block, as
    # Consul's flags fill single fields of the struct the files filled.
    for key, value in flags.items():
        block = cfg.extra.get(key)
        if isinstance(value, dict) and isinstance(block, dict):
            flags[key] = {**block, **value}
    apply_mapping(cfg, flags, "command line")
    for f, data in loaded:
        apply_node_section(cfg, data, f)
    if "ports" in flags or args.data_dir:
        apply_mapping(cfg, {k: v for k, v in flags.items() if k in ("ports", "data_dir")}, "command line")
    if args.dev or cfg.dev:
        cfg.dev = True
        cfg.server = True
        cfg.bootstrap = True
    from registry.agent.agent import CONFIG_VALIDATORS

    validate(cfg, CONFIG_VALIDATORS)
    return cfg


def cmd_agent(argv: list[str]) -> int:
    from registry.config import ConfigError

    warnings: list[str] = []
    try:
        cfg = build_config(argv, warnings)
    except ConfigError as exc:
        print(f"==> {str(exc).rstrip()}", file=sys.stderr)
        return 1
    from registry import logs

    # Validated with the rest of the config (registry.agent.agent's validators).
    router = logs.configure(settings=logs.settings_from(cfg.log_level, cfg.log_json, cfg.extra))
    # gRPC's C core (gRPC health checks) writes its own log lines to stderr, one per failed TLS handshake
    # at its default verbosity; the check's output already says what failed. An operator's setting wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from registry import eventloop

    try:
        return eventloop.run(_run_agent(cfg, warnings, lambda: build_config(argv), router))
    finally:
        router.close()


async def _run_agent(cfg: Config, warnings: list[str], rebuild: Callable[[], Config],
                     router: LogRouter | None = None) -> int:  # fmt: skip
    import structlog

    from registry.agent.agent import Agent

    log = structlog.get_logger("proconsul")
    for warning in warnings:
        log.warning(warning)
    for key in cfg.unknown_keys:
        # A key of Consul's that Proconsul does not implement: accepted, so a Consul config starts.
        log.warning("config key not implemented by Proconsul; it has no effect", key=key)
    agent = Agent(cfg, reload_config=rebuild, logs=router)

    pid_file = cfg.extra.get("pid_file") or ""
    try:
        _store_pid(pid_file)
    except OSError as exc:
        print(f"==> Error starting agent: Could not open pid file: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return await _serve(agent, cfg, log)
    finally:
        _delete_pid(pid_file)


def _store_pid(path: str) -> None:
    """Write this process's pid to ``pid_file`` (``-pid-file``) as Consul's agent does at start: the bare
    number, the file created or truncated."""
    if path:
        with open(path, "w") as fh:
            fh.write(str(os.getpid()))


def _delete_pid(path: str) -> None:
    """Remove the pid file at exit, as Consul's agent does on shutdown (a file already gone is fine)."""
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"==> Could not remove pid file: {exc.strerror or exc}", file=sys.stderr)


async def _serve(agent: Any, cfg: Config, log: Any) -> int:
    """Start the agent, then run it until a signal asks it to stop (leaving first where Consul would)."""
    from registry.config import ConfigError

    try:
        await agent.start()
    except OSError as exc:
        print(f"==> Error starting agent: {exc.strerror or exc}", file=sys.stderr)
        await agent.stop()
        return 1
    except ConfigError as exc:
        print(f"==> {exc}", file=sys.stderr)
        await agent.stop()
        return 1
    tune_gc()
    from registry.agent import sdnotify

    loop = asyncio.get_running_loop()
    caught: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        caught.append(sig)
        agent.request_shutdown()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    # SIGHUP reloads the configuration, as Consul's agent command does.
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    print("==> Proconsul agent running!", flush=True)
    ready = loop.create_task(_notify_ready(agent))
    assert agent.shutdown_requested is not None
    await agent.shutdown_requested.wait()
    ready.cancel()
    sdnotify.notify(sdnotify.STOPPING)
    if caught and _leaves_on(cfg, caught[0]) and not agent.leaving:
        log.info("caught signal, gracefully leaving", signal=caught[0].name)
        await agent.leave()
    else:
        log.info("caught signal, shutting down")
    await agent.stop()
    return 0


# CPython's collector thresholds for a running agent (gen0 allocations, gen0 runs per gen1, gen1 runs per
# gen2): its defaults. Start-up objects are frozen (``tune_gc``), so a full collection walks only what the
# running agent holds. Raising the thresholds to (7000, 20, 100) made full collections rarer but each one
# larger, and with 10,000 blocking queries parked the deferred one landed on the next catalog write: that
# write took 42-59 ms against 8.5-9.3 ms with the defaults, and the 10,000 answers' p99 rose from
# 349-368 ms to 361-424 ms (bench.watch_fanout, quiet AMD EPYC, 2026-12-07); HTTP discovery was the same
# under both (45,010 / 45,024 requests/s).
GC_THRESHOLDS = (700, 10, 10)


def tune_gc() -> None:
    """Once the agent has started: move everything built so far (modules, config, route table, the ACL
    parsers) to the permanent generation, which no collection walks again, and set ``GC_THRESHOLDS``.
    Objects of the running agent that form cycles are still collected."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _leaves_on(cfg: Config, sig: signal.Signals) -> bool:
    """Whether a signal makes the agent leave the cluster before it stops, as Consul decides:
    ``leave_on_terminate`` for SIGTERM (default: clients yes, servers no), ``skip_leave_on_interrupt`` for
    SIGINT (default: servers skip, clients leave)."""
    server = cfg.server  # -dev is a server too, as Consul's dev agent is
    if sig == signal.SIGTERM:
        return bool(cfg.extra.get("leave_on_terminate", not server))
    return not cfg.extra.get("skip_leave_on_interrupt", server)


async def _notify_ready(agent: Any) -> None:
    """Tell systemd the agent is ready (``READY=1``) once it serves HTTP and, on a server, once it has
    joined a cluster that has a leader (Consul notifies after its first join)."""
    from registry.agent import sdnotify

    while agent.http_addr is None or (agent.config.server and not agent.consensus.known_leader()):
        await asyncio.sleep(0.1)
    sdnotify.notify(sdnotify.READY)

