"""``proconsul connect proxy``: Consul's built-in proxy command, its flags and its exit codes.

    proconsul connect proxy -sidecar-for web1
    proconsul connect proxy -service web -service-addr 127.0.0.1:8080 -listen :21000 -upstream db:9191
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import replace
from typing import Any, NoReturn

import structlog

from connect_proxy.agent import AgentClient, AgentError, AgentUnavailable
from connect_proxy.config import (
    ConfigError,
    ProxyConfig,
    config_from_flags,
    config_from_registration,
    find_sidecar,
    parse_metrics_addr,
)
from registry.client.http import HTTPConfig, TLSConfigError, TLSFlags

USAGE = """Usage: proconsul connect proxy [options]

  Starts Proconsul's built-in Connect proxy (mutual TLS in, intentions enforced, mutual TLS out).

      $ proconsul connect proxy -sidecar-for web1
      $ proconsul connect proxy -service web -service-addr 127.0.0.1:8080 -listen :21000 -upstream db:9191
"""
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "err", "error")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is a clear one-line error and exit 1, as Consul's commands do."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(1)


def _opt(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="proconsul connect proxy", usage=argparse.SUPPRESS, allow_abbrev=False,
                description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _opt(p, "sidecar-for", default=None, metavar="SERVICE-ID",
         help="run the sidecar registered for this service instance (Connect.SidecarService)")  # fmt: skip
    _opt(p, "proxy-id", default=None, help="run the connect-proxy registration with this ID")
    _opt(p, "service", default=None, help="name of the service this proxy represents (manual form)")
    _opt(p, "service-addr", default=None, metavar="HOST:PORT", help="address of the local service")
    _opt(p, "listen", default=None, metavar="HOST:PORT", help="address of the public mTLS listener")
    _opt(p, "upstream", action="append", default=[], metavar="NAME:PORT",
         help="upstream service on 127.0.0.1:PORT (repeatable)")  # fmt: skip
    _opt(p, "register", action="store_true",
         help="register this proxy with the local agent as <service>-proxy (needs -service and -listen)")  # fmt: skip
    _opt(p, "register-id", default="", help="suffix for the registered proxy's ID (<service>-proxy-<id>)")
    _opt(p, "http-addr", default=None, help="agent HTTP address (env CONSUL_HTTP_ADDR / PROCONSUL_HTTP_ADDR)")
    _opt(p, "token", default=None, help="ACL token (env CONSUL_HTTP_TOKEN)")
    # Consul's TLS client flags, for an agent served over HTTPS (each also read from its environment variable).
    _opt(p, "ca-file", default=None, help="CA file to verify the agent's certificate (env CONSUL_CACERT)")
    _opt(p, "ca-path", default=None, help="directory of CA certificates (env CONSUL_CAPATH)")
    _opt(p, "client-cert", default=None, help="client certificate for an agent with verify_incoming (env CONSUL_CLIENT_CERT)")
    _opt(p, "client-key", default=None, help="the client certificate's key (env CONSUL_CLIENT_KEY)")
    _opt(p, "tls-server-name", default=None, help="server name to verify and send as SNI (env CONSUL_TLS_SERVER_NAME)")
    _opt(p, "metrics-addr", default=None, metavar="HOST:PORT",
         help="serve Prometheus metrics at http://HOST:PORT/metrics (Proxy.Config envoy_prometheus_bind_addr)")  # fmt: skip
    _opt(p, "access-log", action="store_true", help="log one structured line per connection")
    _opt(p, "drain-timeout", default=None, metavar="DURATION",
         help="on SIGTERM, how long open connections may finish after the listeners close (default 5s)")  # fmt: skip
    _opt(p, "log-level", default="info", help="trace, debug, info, warn or err")
    _opt(p, "log-json", action="store_true", help="log as JSON lines")
    return p


def _resolve_flags(args: argparse.Namespace) -> None:
    if args.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"-log-level {args.log_level!r} is not one of trace, debug, info, warn, err")
    if args.sidecar_for and args.proxy_id:
        raise ConfigError("-sidecar-for and -proxy-id are mutually exclusive")
    manual = args.service or args.service_addr or args.listen or args.upstream
    if (args.sidecar_for or args.proxy_id) and manual:
        raise ConfigError("-sidecar-for/-proxy-id read the proxy's configuration from the agent; "
                          "they cannot be combined with -service, -service-addr, -listen or -upstream")  # fmt: skip
    if not (args.sidecar_for or args.proxy_id or manual):
        raise ConfigError("one of -sidecar-for, -proxy-id or -service must be given")
    if args.register and not (args.service and args.listen):
        raise ConfigError("-register may only be specified with -service and -listen")
    args.metrics = parse_metrics_addr(args.metrics_addr) if args.metrics_addr else None
    args.drain = None
    if args.drain_timeout is not None:
        from registry.gocompat import parse_duration_ns

        try:
            args.drain = parse_duration_ns(args.drain_timeout) / 1e9
        except ValueError:
            raise ConfigError(f"-drain-timeout {args.drain_timeout!r} is not a duration such as 5s") from None
        if args.drain < 0:
            raise ConfigError(f"-drain-timeout {args.drain_timeout!r} must not be negative")


def with_flags(cfg: ProxyConfig, args: argparse.Namespace) -> ProxyConfig:
    """The flags that apply to every form (-metrics-addr, -access-log, -drain-timeout) over the
    configuration read from the registration or built from the other flags."""
    changes: dict[str, Any] = {}
    if args.metrics is not None:
        changes["metrics_addr"] = args.metrics
    if args.access_log:
        changes["access_log"] = True
    if args.drain is not None:
        changes["drain_timeout"] = args.drain
    return replace(cfg, **changes) if changes else cfg


async def load_config(args: argparse.Namespace, agent: AgentClient) -> ProxyConfig:
    """The proxy's configuration: from the flags, or from its registration on the local agent."""
    if getattr(args, "config", None) is not None:
        return args.config
    if not (args.sidecar_for or args.proxy_id):
        return config_from_flags(args.service, args.service_addr, args.listen, args.upstream)
    proxy_id = args.proxy_id
    if args.sidecar_for:
        services, _ = await agent.get("/v1/agent/services")
        if not isinstance(services, dict):
            raise ConfigError("the agent's /v1/agent/services answer is not an object")
        proxy_id = find_sidecar(services, args.sidecar_for)
    try:
        svc, _ = await agent.get(f"/v1/agent/service/{proxy_id}")
    except AgentError as exc:
        if exc.status == 404:
            raise ConfigError(f"no service with ID {proxy_id!r} is registered on the agent") from None
        raise
    if not isinstance(svc, dict):
        raise ConfigError(f"the agent's answer for {proxy_id!r} is not an object")
    return config_from_registration(svc)


def _install_logging(level: str, json_output: bool) -> None:
    from registry import logs

    logs.configure({"err": "error", "trace": "debug"}.get(level.lower(), level), json_output)


def run(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # -help (0) or a bad flag (1): a return code, as the other verbs give
        return int(exc.code or 0)
    try:
        _resolve_flags(args)
        if not (args.sidecar_for or args.proxy_id):  # the manual form: check it all before starting
            args.config = config_from_flags(args.service, args.service_addr, args.listen, args.upstream)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    _install_logging(args.log_level, args.log_json)
    from connect_proxy.splice import tune_allocator
    from registry import eventloop

    tune_allocator()

    return eventloop.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from connect_proxy.proxy import Proxy

    log = structlog.get_logger("connect-proxy")
    # SIGINT and SIGTERM stop the proxy from the first moment, as Consul's proxy command subscribes to
    # both before it does anything else: a handler of our own, whatever the process inherited (a
    # background job starts with SIGINT ignored, and asyncio's own Ctrl-C handling is installed only
    # when SIGINT has Python's default handler).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tls = TLSFlags(ca_file=args.ca_file, ca_path=args.ca_path, client_cert=args.client_cert,
                   client_key=args.client_key, tls_server_name=args.tls_server_name)  # fmt: skip
    config = HTTPConfig.from_flags(args.http_addr, args.token, tls=tls)
    try:
        config.ssl_context()
    except TLSConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    agent = AgentClient(config.address, config=config)
    try:
        loading = asyncio.ensure_future(load_config(args, agent))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            loading.cancel()
            await agent.close()
            log.info("caught signal, stopping the proxy")
            return 0
        cfg = loading.result()
    except ConfigError as exc:
        await agent.close()
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except (AgentUnavailable, AgentError) as exc:
        await agent.close()
        print(f"Error reading the proxy's registration from the agent at {agent.base}: {exc}\n"
              "Is the agent running? Set -http-addr or CONSUL_HTTP_ADDR to point at it.", file=sys.stderr)  # fmt: skip
        return 1
    proxy = Proxy(with_flags(cfg, args), agent)
    starting = asyncio.create_task(proxy.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        exc = starting.exception()
        stopping.cancel()
        await proxy.stop()
        print(f"Error starting the proxy: {exc}", file=sys.stderr)
        return 1
    monitor = None
    if not stop.is_set() and args.register and proxy.public_addr is not None:
        from connect_proxy.register import RegisterMonitor, registration

        # As Consul registers it: the -listen host, or none (the node's address) for a wildcard bind.
        host = cfg.public[0] if cfg.public is not None else ""
        host = "" if host in ("0.0.0.0", "::") else host
        monitor = RegisterMonitor(agent, registration(args.service, host, proxy.public_addr[1], args.register_id))
        await monitor.start()
    if not stop.is_set():
        print("==> Proconsul Connect proxy running!", flush=True)
        await stop.wait()
    starting.cancel()
    log.info("caught signal, stopping the proxy")
    if monitor is not None:
        await monitor.stop()
    await proxy.drain()  # listeners close; open connections get drain_timeout to finish
    await proxy.stop()
    return 0
