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


def agent_parser() -> argparse.ArgumentParser:
    p = parser("proconsul agent", "Run a Proconsul agent")
    opt(p, "dev", action="store_true", help="in-memory development server on loopback")
    opt(p, "server", action="store_true")
    opt(p, "bootstrap", action="store_true")
    opt(p, "bootstrap-expect", type=int, default=None)
    opt(p, "node", default=None)
    opt(p, "node-id", default=None)
    opt(p, "datacenter", default=None)
    opt(p, "data-dir", default=None)
    opt(p, "bind", default=None)
    opt(p, "advertise", default=None)
    opt(p, "client", default=None)
    opt(p, "http-port", type=int, default=None)
    opt(p, "dns-port", type=int, default=None)
    opt(p, "server-port", type=int, default=None)
    opt(p, "domain", default=None)
    opt(p, "alt-domain", default=None)
    opt(p, "recursor", action="append", default=[])
    opt(p, "retry-join", action="append", default=[])
    opt(p, "join", action="append", default=[])
    # Both append to one list, so files and directories load in the order given (Consul's ConfigFiles).
    p.add_argument("-config-file", "--config-file", action="append", dest="config_paths", default=[])
    p.add_argument("-config-dir", "--config-dir", action="append", dest="config_paths", default=[])
    opt(p, "config-format", default="", help="hcl or json: read every config file in this format")
    opt(p, "log-level", default=None)
    opt(p, "log-json", action="store_true")
    opt(p, "log-file", default=None, help="write logs to this file (or directory) too, rotated")
    opt(p, "log-rotate-bytes", type=int, default=None)
    opt(p, "log-rotate-duration", default=None)
    opt(p, "log-rotate-max-files", type=int, default=None)
    opt(p, "syslog", action="store_true", help="log to the local syslog too")
    opt(p, "enable-script-checks", action="store_true")
    opt(p, "node-meta", action="append", default=[])
    opt(p, "ui", action="store_true")
    opt(p, "insecure", action="store_true",
        help="start a server without ACLs (default deny) or mutual TLS anyway, and say so (Proconsul's flag)")
    return p


def build_config(argv: list[str], warnings: list[str] | None = None) -> Config:
    """The agent's Config from its command line: ``-dev`` defaults, then each config file in order
    (``registry.config_files``: HCL, JSON or YAML, checked against Consul's keys), then flags; validated
    as the agent will use it. Raises ConfigError with Consul's text. The loader's warnings (deprecated
    keys, skipped files) are appended to ``warnings``. The agent's reload builds its new Config the same
    way from the same arguments."""
    from registry.config import (
        Config,
        ConfigError,
        apply_mapping,
        apply_node_section,
        dev_defaults,
        validate,
    )
    from registry.config_files import load_paths

    args = agent_parser().parse_args(argv)
    cfg = Config()
    if args.dev:
        dev_defaults(cfg)
    loaded_files = load_paths(args.config_paths, args.config_format)
    if warnings is not None:
        warnings.extend(loaded_files.warnings)
    loaded = []
    for source in loaded_files.sources:
        apply_mapping(cfg, source.data, source.name)
        cfg.config_files.append(source.name)
        loaded.append((source.name, source.data))
    flags: dict[str, Any] = {}
    for flag, key in (("node", "node_name"), ("node_id", "node_id"), ("datacenter", "datacenter"),
                      ("data_dir", "data_dir"), ("bind", "bind_addr"), ("advertise", "advertise_addr"),
                      ("client", "client_addr"), ("log_level", "log_level"), ("domain", "domain"),
                      ("alt_domain", "alt_domain"), ("bootstrap_expect", "bootstrap_expect")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            flags[key] = value
    for flag in ("server", "bootstrap", "log_json", "enable_script_checks", "insecure"):
        if getattr(args, flag):
            flags[flag] = True
    for flag in ("log_file", "log_rotate_bytes", "log_rotate_duration", "log_rotate_max_files"):
        if getattr(args, flag) is not None:
            flags[flag] = getattr(args, flag)
    if args.syslog:
        flags["enable_syslog"] = True
    ports = {k: v for k, v in (("http", args.http_port), ("dns", args.dns_port), ("server", args.server_port))
             if v is not None}  # fmt: skip
    if ports:
        flags["ports"] = ports
    if args.recursor:
        flags["recursors"] = args.recursor
    if args.retry_join or args.join:
        flags["retry_join"] = args.retry_join + args.join
    if args.node_meta:
        try:
            flags["node_meta"] = dict(m.split(":", 1) for m in args.node_meta)
        except ValueError as exc:
            raise ConfigError("-node-meta must be key:value") from exc
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
# gen2). The defaults (700, 10, 10) run a full collection after ~70,000 allocations once the heap has grown
# by a quarter; with 10,000 blocking queries parked the heap holds ~700,000 objects and each full walk takes
# 0.2-0.6 s of the one event loop (measured with bench.watch_fanout: 2.8 s of full collections in one run,
# one of them inside a catalog write). With these, full collections come ~100x less often (the 25% rule
# still applies); young ones stay cheap (7,000 objects).
GC_THRESHOLDS = (7000, 20, 100)


def tune_gc() -> None:
    """Once the agent has started: move everything built so far (modules, config, route table, the ACL
    parsers) to the permanent generation, which no collection walks again, and set ``GC_THRESHOLDS``.
    Objects of the running agent that form cycles are still collected, young ones as often as before."""
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

