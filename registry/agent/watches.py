"""The agent's ``watches``: watch plans from the config, run by the agent against its own HTTP API.

Consul's agent checks every watch in its config when it loads it (``makeWatchPlan``: the handler type is
``script`` unless it says ``http``, ``connect_*`` types are refused, exactly one handler) and runs each
plan against its own HTTP address once it serves (agent.go ``reloadWatches``). Script handlers' output is
captured (the last 4 KiB) and logged; HTTP handlers POST each change. The plans are
``registry.client.watch``'s, shared with ``proconsul watch``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import structlog

from registry.client.http import AgentHTTP, HTTPConfig
from registry.client.watch import (
    HandlerFailed,
    HTTPHandler,
    ScriptHandler,
    WatchError,
    WatchPlan,
    WatchSpec,
    parse_watch,
)
from registry.config import Config, ConfigError

log = structlog.get_logger("proconsul.watch")

Handler = Callable[[int, Any], Coroutine[Any, Any, None]]


def _args(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        return list(raw)
    raise WatchError("Watch args must be a list of strings")


def compile_watch(params: Any) -> tuple[WatchSpec, str, list[str]]:
    """One ``watches`` entry -> (spec, script, args), with Consul's checks and texts (WatchError)."""
    if not isinstance(params, dict):
        raise WatchError(f"Failed to parse watch ({params!r}): a watch must be a map")
    params = dict(params)
    handler_type = params.setdefault("handler_type", "script")
    if handler_type not in ("http", "script"):
        raise WatchError(f"Handler type '{handler_type}' not recognized")
    wtype = params.get("type")
    if isinstance(wtype, str) and wtype.startswith("connect_"):
        raise WatchError(f"Watch type {wtype} is not allowed in agent config")
    try:
        spec, exempt = parse_watch(params, ("handler", "args"))
    except WatchError as exc:
        raise WatchError(f"Failed to parse watch ({params!r}): {exc}") from None
    has_handler, has_args = "handler" in exempt, "args" in exempt
    script = ""
    if has_handler:
        log.warning("The 'handler' field in watches has been deprecated and replaced with the 'args' field. "
                    "See https://www.consul.io/docs/agent/watches.html")  # fmt: skip
        if not isinstance(exempt["handler"], str):
            raise WatchError("Watch handler must be a string")
        script = exempt["handler"]
    args = _args(exempt["args"]) if has_args else []
    if (has_handler and has_args) or ((has_handler or has_args) and spec.handler_type == "http"):
        raise WatchError("Only one watch handler allowed")
    if not has_handler and not has_args and spec.handler_type != "http":
        raise WatchError("Must define a watch handler")
    return spec, script, args


def validate_watches(cfg: Config) -> None:
    """A config validator: every watch must compile, and watches need the HTTP API (ConfigError)."""
    watches = cfg.extra.get("watches") or []
    if not isinstance(watches, list):
        raise ConfigError("watches must be a list of watch definitions")
    if watches and cfg.ports.http < 0 and cfg.ports.https < 0:
        raise ConfigError("watch plans require an HTTP or HTTPS endpoint")
    for params in watches:
        try:
            compile_watch(params)
        except WatchError as exc:
            raise ConfigError(str(exc)) from None


class AgentWatches:
    """The plans of the config, started once the HTTP API listens, stopped with the agent."""

    def __init__(self, cfg: Config) -> None:
        self._defs = [compile_watch(p) for p in (cfg.extra.get("watches") or [])]
        self.plans: list[WatchPlan] = []
        self._clients: list[AgentHTTP] = []
        self._session: aiohttp.ClientSession | None = None

    def _handler_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def start(self, address: str, spawn: Callable[[Coroutine[Any, Any, None], str], None],
              retry_base: float = 5.0) -> None:  # fmt: skip
        """Run every plan against ``address`` (this agent's HTTP API, ``http://host:port``)."""
        if not self._defs:
            return
        for spec, script, args in self._defs:
            # One client per plan: a watch's own token (``token``) goes in its client's header.
            http = AgentHTTP(HTTPConfig(address=address, token=spec.token), total=None)
            self._clients.append(http)
            handler: Handler
            if spec.handler_type == "http":
                assert spec.http_handler is not None
                handler = HTTPHandler(spec.http_handler, self._handler_session)
            else:
                label = script or " ".join(args)

                def output(text: str, label: str = label) -> None:
                    log.debug("watch handler output", handler=label, output=text)

                handler = ScriptHandler(script=script, args=args, capture=True, on_output=output)

            def errored(message: str, delay: float, wtype: str = spec.type) -> None:
                log.error("Watch errored", type=wtype, error=message, retry=f"{delay:g}s")

            def handler_failed(exc: Exception, wtype: str = spec.type) -> None:
                log.error("Failed to run watch handler", type=wtype, error=str(exc))

            plan = WatchPlan(spec, http, handler, retry_base=retry_base, on_error=errored,
                             on_handler_error=handler_failed)  # fmt: skip
            self.plans.append(plan)
            spawn(self._run(plan), f"watch-{spec.type}")

    @staticmethod
    async def _run(plan: WatchPlan) -> None:
        try:
            await plan.run()
        except (HandlerFailed, OSError) as exc:
            log.error("Failed to run watch", error=str(exc))

    async def stop(self) -> None:
        for plan in self.plans:
            plan.stop()
        for http in self._clients:
            await http.close()
        if self._session is not None:
            await self._session.close()
        await asyncio.sleep(0)
