"""``proconsul watch``: run a handler on each change of a view, or print the view once (Consul's
command/watch over the shared watch plan, ``registry.client.watch``).

With a handler (the trailing arguments), it runs through the shell (``-shell``, the default) or as given,
with the view as JSON on stdin and ``CONSUL_INDEX`` set, once for the first answer and once per change; a
handler that fails ends the watch with exit code 1. Without one, the view is printed (indented JSON) and
the command exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from registry.cli.common import Client, CLIError, go_bool, http_options, opt, parser, run_client
from registry.client.watch import HandlerFailed, WatchError, WatchPlan, handler_argv, parse_watch

USAGE = """Usage: proconsul watch [options] [child...]

  Watches for changes in a given data view from Consul. If a child process
  is specified, it will be invoked with the latest results on changes. Otherwise,
  the latest values are dumped to stdout and the watch terminates.

  Providing the watch type is required, and other parameters may be required
  or supported depending on the watch type."""


def cmd_watch(argv: list[str]) -> int:
    p = parser("proconsul watch", "Watch for changes in Consul")
    http_options(p)
    opt(p, "type", default="", help="Specifies the watch type. One of key, keyprefix, services, nodes, service, "
                                    "checks, or event.")  # fmt: skip
    opt(p, "key", default="", help="Specifies the key to watch. Only for 'key' type.")
    opt(p, "prefix", default="", help="Specifies the key prefix to watch. Only for 'keyprefix' type.")
    opt(p, "service", default="", help="Specifies the service to watch. Required for 'service' type, optional "
                                       "for 'checks' type.")  # fmt: skip
    opt(p, "tag", default="", help="Specifies the service tag to filter on. Optional for 'service' type.")
    opt(p, "passingonly", default="", help="Specifies if only hosts passing all checks are displayed. Optional "
                                           "for 'service' type, must be one of `[true|false]`. Defaults false.")  # fmt: skip
    opt(p, "shell", type=go_bool, nargs="?", const=True, default=True,
        help="Use a shell to run the command (can set a custom shell via the SHELL environment variable).")
    opt(p, "state", default="", help="Specifies the states to watch. Optional for 'checks' type.")
    opt(p, "name", default="", help="Specifies an event name to watch. Only for 'event' type.")
    p.add_argument("child", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if not args.type:
        raise CLIError(f"Watch type must be specified\n\n{USAGE}")
    params: dict[str, Any] = {"type": args.type}
    if args.datacenter:
        params["datacenter"] = args.datacenter
    for flag in ("key", "prefix", "service", "tag", "state", "name"):
        if getattr(args, flag):
            params[flag] = getattr(args, flag)
    if args.stale:
        params["stale"] = True
    if args.passingonly:
        try:
            params["passingonly"] = go_bool(args.passingonly)
        except argparse.ArgumentTypeError as exc:
            raise CLIError(f"Failed to parse passingonly flag: {exc}") from None
    try:
        spec, _ = parse_watch(params)
    except WatchError as exc:
        raise CLIError(str(exc)) from None
    child = list(args.child)

    async def watch(client: Client) -> int:
        status, raw, _ = await client.request("GET", "/v1/agent/self")
        if status >= 400:
            raise CLIError(f"Error querying Consul agent: Unexpected response code: {status} "
                           f"({raw.decode(errors='replace').strip()})")  # fmt: skip
        failed = False
        plan: WatchPlan

        async def show(index: int, data: Any) -> None:
            print(json.dumps(data, indent=4), flush=True)
            plan.stop()

        script = handler_argv(child, args.shell) if child else None

        async def run_handler(index: int, data: Any) -> None:
            nonlocal failed
            assert script is not None
            try:
                await script(index, data)
            except (HandlerFailed, OSError) as exc:
                print(f"Error executing handler: {exc}", file=sys.stderr, flush=True)
                failed = True
                plan.stop()

        def on_error(message: str, delay: float) -> None:
            print(f"Watch (type: {spec.type}) errored: {message}, retry in {delay:g}s", file=sys.stderr, flush=True)

        plan = WatchPlan(spec, client.http, run_handler if child else show, on_error=on_error)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, plan.stop)
        runner = asyncio.ensure_future(plan.run())
        stopped = asyncio.ensure_future(plan.wait_stopped())
        await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not runner.done():
            runner.cancel()  # a blocking query in flight is abandoned at once, as Consul's plan cancels it
            try:
                await runner
            except asyncio.CancelledError:
                pass
        stopped.cancel()
        return 1 if failed else 0

    return run_client(args, watch)
