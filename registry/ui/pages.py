"""The UI's pages: each one HTTP API read (or write) made with the visitor's token, rendered by a template.

``UI.handle`` answers every path outside ``/v1/`` when the UI is on. The UI lives under its content path,
``base`` (``/ui/``, or where ``ui_config.content_path`` puts it, as Consul's UI moves with it): ``/`` and the
bare content path redirect into it, assets come from ``registry.ui.assets`` under ``<base>assets/``, and
each page is a handler here, declared by its path below ``base`` so that every link, form, redirect and
cookie follows the content path. A handler calls the agent through
``Visit.call`` (the one HTTP client, ``registry.client.http``, with the token from the visitor's cookie as
``X-Consul-Token``) and renders what the API answered; an answer of 400 or more is shown on screen with
the API's own status and text (a 403 says which permission is missing, in Consul's words).

Live parts follow the API's blocking queries: a live section is rendered with the ``X-Consul-Index`` its
read returned, and htmx asks for the same section again with ``?fragment=1&index=<that index>``; the
handler passes the index on as a blocking query (``?index=...&wait=...``), so the answer comes back the
moment the catalog changes (or when the wait runs out, unchanged) and htmx swaps it in and asks again.
Pages are never cached (``Cache-Control: no-store``): they carry what one token may see.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from registry.client.http import AgentHTTP, AgentUnavailable, Response, escape, kv_path
from registry.ui.assets import HTMX, LONG_CACHE, Assets

log = structlog.get_logger("proconsul.ui")
TEMPLATES = Path(__file__).resolve().parent / "templates"
TOKEN_COOKIE = "proconsul_ui_token"
NO_STORE = "no-store"
HTML = "text/html"
# Consul's text for a path outside the API (agent/http.go), kept for what the UI does not serve either.
NOT_API = "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
HEALTH_RANK = {"critical": 0, "warning": 1, "passing": 2}
GONE_CHECK = 0.5  # seconds between looks at whether a blocking query's visitor is still connected


class Refused(Exception):
    """The API answered an error status; the page shows it with the API's status and text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text


class Visit:
    """One request to the UI: the visitor's token and the calls made for it."""

    def __init__(self, ui: UI, request: web.BaseRequest) -> None:
        self.ui = ui
        self.request = request
        self.token = request.cookies.get(TOKEN_COOKIE, "")

    async def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: bytes | None = None,
                   *, index: int = 0) -> Response:  # fmt: skip
        """One API call with the visitor's token; a blocking query when ``index`` is given. Raises Refused
        for an error status (the agent's status and text) and for no answer at all (502)."""
        wait = self.ui.wait if index else None
        call = self.ui.client.request(method, path, params, body, index=index, wait=wait, token=self.token or None,
                                      timeout=self.ui.wait_seconds * 1.5 + 5 if index else 15.0)  # fmt: skip
        try:
            resp = await (self._unless_gone(call) if index else call)
        except AgentUnavailable as exc:
            raise Refused(502, f"The agent's HTTP API did not answer: {exc}") from exc
        if resp.status >= 400:
            raise Refused(resp.status, resp.text)
        return resp

    async def _unless_gone(self, call: Awaitable[Response]) -> Response:
        """A blocking query given up when the visitor goes away (the page left, the section replaced):
        the agent's server does not cancel a handler whose client disconnected, and a blocking query would
        otherwise hold one of the UI's connections to the API for the whole wait."""
        task = asyncio.ensure_future(call)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=GONE_CHECK)
                if done:
                    return task.result()
                transport = self.request.transport
                if transport is None or transport.is_closing():
                    task.cancel()
                    raise Refused(499, "the visitor went away")
        finally:
            if not task.done():
                task.cancel()

    async def json(self, path: str, params: dict[str, Any] | None = None, *, index: int = 0) -> tuple[Any, int]:
        resp = await self.call("GET", path, params, index=index)
        return resp.json(), resp.index

    def query(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)

    def index(self) -> int:
        try:
            return max(int(self.query("index", "0") or 0), 0)
        except ValueError:
            return 0


Handler = Callable[[Visit, str], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Page:
    methods: tuple[str, ...]
    handler: Handler


class UI:
    """The web UI over one client of the agent's HTTP API. ``wait`` is the blocking queries' wait (a Go
    duration, as ``?wait=`` takes it): short enough that a browser's connection is never held long. ``base`` is
    the content path the UI is served under, with a slash at each end."""

    def __init__(self, client: AgentHTTP, *, wait_seconds: int = 20, base: str = "/ui/") -> None:
        if not (base.startswith("/") and base.endswith("/")):
            raise ValueError(f"the UI's content path must start and end with /, got {base!r}")
        self.client = client
        self.base = base
        self.wait_seconds = wait_seconds
        self.wait = f"{wait_seconds}s"
        self.assets = Assets(base + "assets/")
        # Undefined renders empty: the API's JSON leaves out empty fields (Go's omitempty), and a missing
        # one is shown as nothing, as Consul's UI shows it.
        self.env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(("html",)),
                               trim_blocks=True, lstrip_blocks=True)  # fmt: skip
        self.env.globals.update(asset=self.assets.url, htmx=HTMX, quote=urllib.parse.quote, base=base)
        self.env.filters["health"] = worst
        self.exact: dict[str, Page] = {}
        self.prefixes: list[tuple[str, Page]] = []

    def page(self, path: str, handler: Handler, methods: str = "GET") -> None:
        """Declare a page by its path below ``base`` ("services"): an exact path, or a prefix ending in "/"
        whose rest the handler gets."""
        entry = Page(tuple(methods.split(",")), handler)
        if path.endswith("/"):
            self.prefixes.append((path, entry))
            self.prefixes.sort(key=lambda p: -len(p[0]))
        else:
            self.exact[path] = entry

    async def close(self) -> None:
        await self.client.close()

    def url(self, path: str) -> str:
        """The URL of a page given by its path below the content path ("services" -> "/ui/services")."""
        return self.base + path

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, base = request.path, self.base
        if path in ("/", base, base[:-1]):
            target = base + "services" if path != "/" else base
            return web.Response(status=302, headers={"Location": target, "Cache-Control": NO_STORE})
        if path.startswith(self.assets.prefix):
            asset = self.assets.find(path)
            if asset is None:
                return web.Response(status=404, text="asset not found\n")
            return web.Response(body=asset.body, headers={"Content-Type": asset.content_type,
                                                          "Cache-Control": LONG_CACHE})  # fmt: skip
        if not path.startswith(base):
            return web.Response(status=404, text=NOT_API)
        below = path[len(base):]
        entry, rest = self.exact.get(below), ""
        if entry is None:
            for prefix, candidate in self.prefixes:
                if below.startswith(prefix):
                    entry, rest = candidate, below[len(prefix):]
                    break
        if entry is None:
            return self.render("error.html", Visit(self, request), status=404, title="Not found",
                               error=Refused(404, f"No page at {path}"))  # fmt: skip
        if request.method not in entry.methods and not (request.method == "HEAD" and "GET" in entry.methods):
            return web.Response(status=405, text=f"method {request.method} not allowed",
                                headers={"Allow": ",".join(entry.methods)})  # fmt: skip
        visit = Visit(self, request)
        try:
            return await entry.handler(visit, rest)
        except asyncio.CancelledError:
            raise
        except Refused as exc:
            if visit.query("fragment"):
                # A live section keeps its place on the page: the refusal is shown there, and the section
                # asks again after a pause (the agent may come back, a token may be fixed).
                return self.render("live_error.html", visit, error=exc, retry=visit.request.path_qs)
            return self.render("error.html", visit, status=exc.status, title=f"Error {exc.status}", error=exc)
        except Exception as exc:  # noqa: BLE001 - a page bug answers 500 with a page, it never kills the server
            log.exception("UI page failed", path=path)
            return self.render("error.html", visit, status=500, title="Error 500",
                               error=Refused(500, f"The page failed: {type(exc).__name__}"))  # fmt: skip

    def render(self, template: str, visit: Visit, *, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("error", None)
        context.setdefault("nav", "")
        body = self.env.get_template(template).render(logged_in=bool(visit.token), path=visit.request.path,
                                                      **context)  # fmt: skip
        return web.Response(status=status, text=body, content_type=HTML, charset="utf-8",
                            headers={"Cache-Control": NO_STORE})  # fmt: skip


def redirect(location: str) -> web.Response:
    """After a form's POST: see the result with a GET (303), so a reload does not post again."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": NO_STORE})


def worst(checks: list[dict[str, Any]]) -> str:
    """The worst status among checks (critical over warning over passing); "passing" with none."""
    statuses = {c.get("Status") for c in checks}
    for status in ("critical", "warning"):
        if status in statuses:
            return status
    return "passing"


def summary_health(summary: dict[str, Any]) -> str:
    if summary.get("ChecksCritical"):
        return "critical"
    if summary.get("ChecksWarning"):
        return "warning"
    return "passing"


def decode_value(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def pretty_json(raw: bytes) -> str | None:
    """The value re-indented when it is JSON, else None."""
    try:
        return json.dumps(json.loads(raw), indent=2, sort_keys=False)
    except (ValueError, UnicodeDecodeError):
        return None


__all__ = ["UI", "Refused", "Visit", "decode_value", "escape", "kv_path", "pretty_json", "redirect",
           "summary_health", "worst"]  # fmt: skip
