"""Watch plans: run a handler once for each change of a view of the agent's data (Consul's api/watch).

A watch names a view -- a key, a key prefix, the service list, the node list, one service's health, checks,
or user events -- and a handler. The plan asks for the view with a blocking query, waiting past the index
of the last answer, and runs the handler on the first answer and again each time the index moves *and*
the answer differs; a blocking query that times out with the same index runs nothing. Shared by
``proconsul watch`` and the agent's ``watches`` (as Consul's command/watch and agent share api/watch).

The module is in two parts, as the lock recipe is (``registry.client.lock``):

* pure decisions: ``parse_watch`` (Consul's ``watch.ParseExempt`` and its factories, with their error
  texts), ``query_for`` (which HTTP read a view is), ``PlanState`` (the index and result rules of
  ``Plan.RunWithClientAndHclog``: when the handler runs, what index the next query waits on, the retry
  delay after a failure) and ``prune_events`` (an event watch hands over only the new events);
* the asyncio part: ``WatchPlan`` runs the loop against ``AgentHTTP``; ``ScriptHandler`` and
  ``HTTPHandler`` are Consul's two handler types.

One deliberate difference: after a failed query (the agent restarting), Consul's plan forgets its index
and so runs the handler once more with whatever the next answer is, changed or not. Here the index is
forgotten too, but an answer equal to the last one handled runs nothing: a handler runs exactly once per
change, across reconnections.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.client.http import AgentHTTP, APIError, escape, kv_path
from registry.events import id_to_index
from registry.gocompat import DurationError, parse_duration

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "HTTPHandler", "HTTPHandlerConfig", "PlanState", "Query", "ScriptHandler", "WATCH_TYPES", "WatchError",
    "WatchPlan", "WatchSpec", "parse_watch", "prune_events", "query_for", "retry_delay",
]  # fmt: skip

WATCH_TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")
RETRY_INTERVAL = 5.0  # Consul's retryInterval: the base of the backoff after a failed query
MAX_BACKOFF = 180.0  # Consul's maxBackoffTime
DEFAULT_HTTP_TIMEOUT = 10.0  # Consul's watch.DefaultTimeout for an HTTP handler
OUTPUT_LIMIT = 4 * 1024  # Consul's WatchBufSize: a handler's output kept for the log


class WatchError(ValueError):
    """A watch definition refused, with Consul's text."""


@dataclass(frozen=True, slots=True)
class HTTPHandlerConfig:
    """Consul's ``HttpHandlerConfig``: where to POST (by default) each change."""

    path: str
    method: str = "POST"
    header: Mapping[str, Sequence[str]] = field(default_factory=dict)
    timeout: float = DEFAULT_HTTP_TIMEOUT
    tls_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A parsed watch: the view (``type`` and its parameters) and who asks for it."""

    type: str
    key: str = ""
    prefix: str = ""
    service: str = ""
    tags: tuple[str, ...] = ()
    passing_only: bool = False
    state: str = ""
    name: str = ""
    stale: bool = False
    datacenter: str = ""
    token: str = ""
    handler_type: str = ""
    http_handler: HTTPHandlerConfig | None = None


def _take_str(params: dict[str, Any], name: str) -> str:
    if name not in params:
        return ""
    raw = params.pop(name)
    if not isinstance(raw, str):
        raise WatchError(f"Expecting {name} to be a string")
    return raw


def _take_bool(params: dict[str, Any], name: str) -> bool:
    if name not in params:
        return False
    raw = params.pop(name)
    if not isinstance(raw, bool):
        raise WatchError(f"Expecting {name} to be a boolean")
    return raw


def _take_strs(params: dict[str, Any], name: str) -> tuple[str, ...]:
    if name not in params:
        return ()
    raw = params.pop(name)
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list | tuple):
        for i, v in enumerate(raw):
            if not isinstance(v, str):
                raise WatchError(f"Index {i} of {name} expected to be string")
        return tuple(raw)
    raise WatchError(f"Expecting {name} to be a string or []string")


def _http_handler_config(raw: Any) -> HTTPHandlerConfig:
    """Consul's ``parseHttpHandlerConfig``: ``path`` is required, ``method`` defaults to POST, ``timeout``
    (a Go duration) to 10 s; ``header`` maps a name to its values."""
    if not isinstance(raw, Mapping):
        raise WatchError("Failed to parse 'http_handler_config': expected a map")
    path = raw.get("path", "")
    if not isinstance(path, str) or not path:
        raise WatchError("Failed to parse 'http_handler_config': Requires 'path' to be set")
    method = raw.get("method") or "POST"
    if not isinstance(method, str):
        raise WatchError("Failed to parse 'http_handler_config': method must be a string")
    timeout = DEFAULT_HTTP_TIMEOUT
    if raw.get("timeout"):
        try:
            timeout = parse_duration(raw["timeout"], field="timeout")
        except DurationError as exc:
            raise WatchError(f"Failed to parse 'http_handler_config': Failed to parse timeout: {exc}") from None
    header: dict[str, tuple[str, ...]] = {}
    for name, values in (raw.get("header") or {}).items():
        vals = [values] if isinstance(values, str) else values
        if not isinstance(name, str) or not isinstance(vals, list | tuple) or not all(isinstance(v, str) for v in vals):
            raise WatchError("Failed to parse 'http_handler_config': header must map names to lists of strings")
        header[name] = tuple(vals)
    skip = raw.get("tls_skip_verify", False)
    if not isinstance(skip, bool):
        raise WatchError("Failed to parse 'http_handler_config': tls_skip_verify must be a boolean")
    return HTTPHandlerConfig(path, method.upper(), header, timeout, skip)


def parse_watch(params: Mapping[str, Any], exempt: Sequence[str] = ()) -> tuple[WatchSpec, dict[str, Any]]:
    """Consul's ``watch.ParseExempt``: the generic parameters, the handler type, the type's own
    parameters (its factory's rules and texts), then every parameter must have been used. Answers the
    spec and the exempt parameters found (``handler``, ``args`` for the agent)."""
    params = dict(params)
    datacenter = _take_str(params, "datacenter")
    token = _take_str(params, "token")
    wtype = _take_str(params, "type")
    if not wtype:
        raise WatchError("Watch type must be specified")
    handler_type = _take_str(params, "handler_type")
    http_handler = None
    if handler_type == "http":
        if "http_handler_config" not in params:
            raise WatchError("Handler type 'http' requires 'http_handler_config' to be set")
        http_handler = _http_handler_config(params.pop("http_handler_config"))
    if wtype not in WATCH_TYPES:
        raise WatchError(f"Unsupported watch type: {wtype}")
    fields: dict[str, Any] = {}
    if wtype != "event":
        fields["stale"] = _take_bool(params, "stale")  # the stale setting does not apply to events
    if wtype == "key":
        fields["key"] = _take_str(params, "key")
        if not fields["key"]:
            raise WatchError("Must specify a single key to watch")
    elif wtype == "keyprefix":
        fields["prefix"] = _take_str(params, "prefix")
        if not fields["prefix"]:
            raise WatchError("Must specify a single prefix to watch")
    elif wtype == "service":
        fields["service"] = _take_str(params, "service")
        if not fields["service"]:
            raise WatchError("Must specify a single service to watch")
        fields["tags"] = _take_strs(params, "tag")
        fields["passing_only"] = _take_bool(params, "passingonly")
    elif wtype == "checks":
        service, state = _take_str(params, "service"), _take_str(params, "state")
        if service and state:
            raise WatchError("Cannot specify service and state")
        fields["service"] = service
        fields["state"] = state or ("" if service else "any")
        fields["tags"] = _take_strs(params, "tag")
    elif wtype == "event":
        fields["name"] = _take_str(params, "name")
    found = {k: params.pop(k) for k in exempt if k in params}
    if params:
        raise WatchError(f"Invalid parameters: [{' '.join(sorted(params))}]")
    spec = WatchSpec(type=wtype, datacenter=datacenter, token=token, handler_type=handler_type,
                     http_handler=http_handler, **fields)  # fmt: skip
    return spec, found


# ---------------------------------------------------------------------- which read a view is


@dataclass(frozen=True, slots=True)
class Query:
    path: str
    params: dict[str, Any]
    missing: Any  # the result when the read answers 404 (a key that does not exist)


def query_for(spec: WatchSpec) -> Query:
    """The HTTP read behind each watch type, as Consul's watch functions call the api package: a key
    (absent: null), a prefix (``?recurse``), the catalog's services and nodes, a service's health
    (``?tag``, ``?passing``), checks by state or by service, and the event list (``?name``)."""
    params: dict[str, Any] = {}
    if spec.type == "key":
        return Query(kv_path(spec.key), params, None)
    if spec.type == "keyprefix":
        return Query(kv_path(spec.prefix), {"recurse": ""}, None)
    if spec.type == "services":
        return Query("/v1/catalog/services", params, {})
    if spec.type == "nodes":
        return Query("/v1/catalog/nodes", params, [])
    if spec.type == "service":
        if spec.tags:
            params["tag"] = list(spec.tags)
        if spec.passing_only:
            params["passing"] = "1"
        return Query(f"/v1/health/service/{escape(spec.service)}", params, [])
    if spec.type == "checks":
        if spec.tags:
            params["tag"] = list(spec.tags)
        if spec.state:
            return Query(f"/v1/health/state/{escape(spec.state)}", params, [])
        return Query(f"/v1/health/checks/{escape(spec.service)}", params, [])
    if spec.type == "event":
        if spec.name:
            params["name"] = spec.name
        return Query("/v1/event/list", params, [])
    raise WatchError(f"Unsupported watch type: {spec.type}")


def prune_events(events: list[Any], last_index: int | None) -> list[Any]:
    """Consul's event watch: only the events after the one the last index was folded from."""
    if last_index is None:
        return events
    for i, event in enumerate(events):
        if isinstance(event, dict) and id_to_index(str(event.get("ID", ""))) == last_index:
            return events[i + 1 :]
    return events


def retry_delay(failures: int, base: float = RETRY_INTERVAL) -> float:
    """Consul's backoff after ``failures`` failed queries in a row: base x failures², at most 180 s."""
    return min(base * failures * failures, MAX_BACKOFF)


@dataclass
class PlanState:
    """The decisions of Consul's ``Plan.Run`` loop, over index-based blocking (``WaitIndexVal``)."""

    last_index: int | None = None  # what the next query waits past; None: do not block
    last_result: Any = None
    handled: bool = False  # a result has been handed to the handler
    failures: int = 0

    def wait_index(self) -> int:
        return self.last_index or 0

    def on_result(self, index: int, result: Any) -> bool:
        """A query answered: True when the handler runs for ``result``."""
        self.failures = 0
        if self.last_index is not None and self.last_index == index:
            return False  # a blocking query that timed out: nothing changed
        old = self.last_index
        # WaitIndexVal.Next: the same index as before resets to 0 (never reached past the check above).
        self.last_index = 0 if old is not None and old == index else index
        if self.handled and result == self.last_result:
            return False  # the index moved, the data did not
        self.last_result = result
        self.handled = True
        return True

    def on_error(self, base: float = RETRY_INTERVAL) -> float:
        """A query failed: forget the index (the next query does not block) and answer the delay."""
        self.failures += 1
        self.last_index = None
        return retry_delay(self.failures, base)


# ---------------------------------------------------------------------- handlers

Handler = Callable[[int, Any], Awaitable[None]]


def encode(data: Any) -> bytes:
    """What a handler gets: the view as JSON and a newline, as Go's ``json.Encoder`` writes it."""
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


class ScriptHandler:
    """Consul's script handler: ``args`` run as given, or ``script`` through ``$SHELL -c`` (``/bin/sh``
    by default), with the view as JSON on stdin and ``CONSUL_INDEX`` in the environment. ``capture``
    keeps the last 4 KiB of output for the caller (the agent logs it) instead of passing it through."""

    def __init__(self, *, script: str = "", args: Sequence[str] = (), capture: bool = False,
                 on_output: Callable[[str], None] | None = None) -> None:  # fmt: skip
        if bool(script) == bool(args):
            raise WatchError("Must define a watch handler")
        self.script = script
        self.args = tuple(args)
        self.capture = capture
        self.on_output = on_output
        self.last_returncode: int | None = None

    def argv(self) -> list[str]:
        if self.args:
            return list(self.args)
        return [os.environ.get("SHELL") or "/bin/sh", "-c", self.script]

    async def __call__(self, index: int, data: Any) -> None:
        env = dict(os.environ, CONSUL_INDEX=str(index))
        out = asyncio.subprocess.PIPE if self.capture else None
        try:
            proc = await asyncio.create_subprocess_exec(*self.argv(), stdin=asyncio.subprocess.PIPE, stdout=out,
                                                        stderr=asyncio.subprocess.STDOUT if self.capture else None,
                                                        env=env)  # fmt: skip
        except OSError as exc:
            raise HandlerFailed(str(exc)) from None
        stdout, _ = await proc.communicate(encode(data))
        self.last_returncode = proc.returncode
        if self.capture and self.on_output is not None:
            text = (stdout or b"").decode(errors="replace")
            if len(stdout or b"") > OUTPUT_LIMIT:
                text = f"Captured {OUTPUT_LIMIT} of {len(stdout)} bytes\n...\n" + stdout[-OUTPUT_LIMIT:].decode(
                    errors="replace")
            self.on_output(text)
        if proc.returncode != 0:
            raise HandlerFailed(f"exit status {proc.returncode}")


class HandlerFailed(Exception):
    """A handler ran and failed (a non-zero exit, an HTTP error); the plan keeps going."""


class HTTPHandler:
    """Consul's HTTP handler: the view as a JSON body, ``Content-Type: application/json`` and
    ``X-Consul-Index``, plus the configured headers; a status outside 2xx is a failure."""

    def __init__(self, config: HTTPHandlerConfig, session: Callable[[], aiohttp.ClientSession]) -> None:
        self.config = config
        self._session = session

    async def __call__(self, index: int, data: Any) -> None:
        import aiohttp
        from multidict import CIMultiDict

        cfg = self.config
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "X-Consul-Index": str(index)})
        for name, values in cfg.header.items():
            for value in values:
                headers.add(name, value)
        ssl_arg: ssl.SSLContext | bool | None = False if cfg.tls_skip_verify else None
        try:
            async with self._session().request(cfg.method, cfg.path, data=encode(data), headers=headers,
                                               timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                                               ssl=ssl_arg) as resp:  # fmt: skip
                body = await resp.content.read(OUTPUT_LIMIT)
                if not 200 <= resp.status <= 299:
                    raise HandlerFailed(f"http watch handler '{cfg.path}' got '{resp.status} {resp.reason}' with "
                                        f"output: {body.decode(errors='replace')}")  # fmt: skip
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise HandlerFailed(f"Failed to invoke http watch handler '{cfg.path}': {exc}") from None


# ---------------------------------------------------------------------- the loop


class WatchPlan:
    """Consul's ``Plan.Run``: query, decide (``PlanState``), hand changes to ``handler``, back off on
    failures, until ``stop``. ``wait`` is the blocking query's ``?wait`` (the agent's default when None);
    ``retry_base`` the backoff's base. The token is ``http``'s, sent as a header and never in the URL: the
    caller builds ``http`` with the spec's ``token`` when it has one, as Consul's plan sets its client's."""

    def __init__(self, spec: WatchSpec, http: AgentHTTP, handler: Handler, *, wait: float | None = None,
                 retry_base: float = RETRY_INTERVAL, on_error: Callable[[str, float], None] | None = None,
                 on_handler_error: Callable[[Exception], None] | None = None) -> None:  # fmt: skip
        self.spec = spec
        self.http = http
        self.handler = handler
        self.wait = wait
        self.retry_base = retry_base
        self.state = PlanState()
        self.query = query_for(spec)
        self._on_error = on_error
        self._on_handler_error = on_handler_error
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def fetch(self) -> tuple[int, Any]:
        """One read of the view, blocking past the last index; (index, result)."""
        q = self.query
        params = dict(q.params)
        if self.spec.stale:
            params["stale"] = ""
        if self.spec.datacenter:
            params["dc"] = self.spec.datacenter
        index = self.state.wait_index()
        wait = self.wait
        wait_s = f"{wait:g}s" if wait is not None else None
        # The agent may hold a blocking read for its max_query_time plus jitter: allow for it.
        timeout = (wait if wait is not None else 600.0) * 1.1 + 15.0
        resp = await self.http.request("GET", q.path, params, index=index, wait=wait_s, timeout=timeout)
        if resp.status == 404:
            return resp.index, q.missing
        resp.raise_for_status()
        result = resp.json()
        if self.spec.type == "key" and isinstance(result, list):
            result = result[0] if result else None
        if self.spec.type == "event" and isinstance(result, list):
            result = prune_events(result, self.state.last_index)
        return resp.index, result

    async def run(self) -> None:
        while not self.stopped:
            try:
                index, result = await self.fetch()
            except (APIError, ValueError) as exc:
                if self.stopped:
                    return
                delay = self.state.on_error(self.retry_base)
                if self._on_error is not None:
                    self._on_error(str(exc), delay)
                try:
                    await asyncio.wait_for(self._stopped.wait(), delay)
                except TimeoutError:
                    pass
                continue
            if self.stopped:
                return
            if self.state.on_result(index, result):
                try:
                    await self.handler(index, result)
                except HandlerFailed as exc:
                    if self._on_handler_error is not None:
                        self._on_handler_error(exc)


def handler_argv(args: Sequence[str], shell: bool) -> ScriptHandler:
    """The CLI's handler from its trailing arguments: joined and run by the shell (``-shell``, Consul's
    default), or run as given."""
    return ScriptHandler(script=" ".join(args)) if shell else ScriptHandler(args=args)
