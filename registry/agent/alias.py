"""Alias checks: a check whose status is the aggregate health of another service instance, or of a node
(Consul's CheckAlias, agent/checks/alias.go).

The status is decided as Consul's ``processChecks`` decides it (``alias_status``, pure): any critical check
of the aliased instance (or of its node) makes the alias critical, else any warning makes it warning, else
it passes; an instance that has no checks and does not exist is critical.

Where the checks come from:

* ``AliasService`` alone: this agent's own local state. The alias is woken when a check of the aliased
  service (or of this node) changes, or the service comes or goes (``AliasNotifier``), and re-reads at
  least once a minute in case a wake-up was missed, as Consul's ``runLocal`` does.
* ``AliasNode`` (with or without ``AliasService``): the catalog, by a blocking query on that node's checks
  (``NodeSource``): a server reads its own replica and waits on the watch hub; a client agent asks a
  server's HTTP API with ``?index=``. Failures back off as Consul's ``runQuery`` does, and are reported
  critical from the second one on ("Failure checking aliased node or service: ...").
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import structlog

from registry.registration import CheckSpec
from registry.state.topics import WatchSet
from registry.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, Check

if TYPE_CHECKING:
    import aiohttp

    from registry.state.store import StateStore
    from registry.watch import WatchHub

log = structlog.get_logger("proconsul.checks")

Report = Callable[[str, str], None]

REFRESH_INTERVAL = 60.0  # Consul's maxDurationBetweenUpdates for local aliases
QUERY_WAIT = 60.0  # Consul's MaxQueryTime for the node query
BACKOFF_MIN_ATTEMPTS = 3  # failures before backing off (Consul's checkAliasBackoffMin)
BACKOFF_MAX = 60.0


def alias_status(checks: Iterable[Check], node: str, service_id: str, exists: bool | None) -> tuple[str, str]:
    """Consul's processChecks: the alias's (status, output) from the checks it can see.

    ``node`` is the aliased node ("" for this agent's own checks), ``service_id`` the aliased instance ("" for
    the node alone). ``exists`` says whether the instance exists, asked only when no check of it was seen
    (None: unknown, taken as existing, as Consul does when it cannot ask)."""
    status, output = HEALTH_PASSING, "No checks found."
    found = False
    for chk in sorted(checks, key=lambda c: (c.service_id, c.check_id)):
        if node and chk.node != node:
            continue
        match = chk.service_id == service_id
        if chk.service_id and not match:
            continue
        found = found or match
        if chk.status in (HEALTH_CRITICAL, HEALTH_WARNING):
            status, output = chk.status, f"Aliased check {_go_quote(chk.name)} failing: {chk.output}"
            if chk.status == HEALTH_CRITICAL:
                break
        elif status == HEALTH_PASSING:
            output = "All checks passing."
    if not found and exists is False:
        return HEALTH_CRITICAL, f"Service {service_id} could not be found on node {node}"
    return status, output


def _go_quote(text: str) -> str:
    """Go's %q of a plain string: double quotes, backslash and quote escaped."""
    return json.dumps(text, ensure_ascii=False)


class AliasNotifier:
    """Wakes the local alias checks of a service when its checks (or the node's) change."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def subscribe(self, service_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(service_id, set()).add(event)
        return event

    def unsubscribe(self, service_id: str, event: asyncio.Event) -> None:
        events = self._events.get(service_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[service_id]

    def notify(self, service_id: str) -> None:
        """A check of ``service_id`` changed, or the service came or went; "" (a node check) wakes every alias."""
        if not self._events:
            return
        targets = self._events.values() if not service_id else [self._events.get(service_id, set())]
        for events in targets:
            for event in events:
                event.set()


class LocalSource(Protocol):
    """This agent's local state, as an alias of a local service reads it."""

    def local_check_rows(self) -> list[Check]: ...

    def has_local_service(self, service_id: str) -> bool: ...


class NodeSource(Protocol):
    """The catalog's view of a node, as an alias of another node reads it."""

    async def node_checks(self, node: str, min_index: int, wait: float) -> tuple[int, list[Check]]:
        """The node's checks once the index passes ``min_index`` (or ``wait`` runs out), with the index."""
        ...

    async def node_has_service(self, node: str, service_id: str) -> bool: ...


class AliasMonitor:
    """One alias check: started with the check, stopped with it; reports straight to the agent's local state
    (no thresholds, as Consul's alias check bypasses them)."""

    def __init__(self, spec: CheckSpec, report: Report, local: LocalSource, notifier: AliasNotifier,
                 nodes: NodeSource) -> None:  # fmt: skip
        self.spec = spec
        self.report = report
        self.local = local
        self.notifier = notifier
        self.nodes = nodes
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        run = self._run_query() if self.spec.alias_node else self._run_local()
        self._task = asyncio.get_running_loop().create_task(run, name=f"check:{self.spec.check_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None

    async def _run_local(self) -> None:
        sid = self.spec.alias_service
        event = self.notifier.subscribe(sid)
        try:
            while True:
                event.clear()
                rows = self.local.local_check_rows()
                exists = None if any(r.service_id == sid for r in rows) else self.local.has_local_service(sid)
                self.report(*alias_status(rows, "", sid, exists))
                try:
                    await asyncio.wait_for(event.wait(), REFRESH_INTERVAL)
                except TimeoutError:
                    pass
        finally:
            self.notifier.unsubscribe(sid, event)

    async def _run_query(self) -> None:
        node, sid = self.spec.alias_node, self.spec.alias_service
        index = 0
        attempt = 0
        while True:
            if attempt > BACKOFF_MIN_ATTEMPTS:
                await asyncio.sleep(min(2.0 ** (attempt - BACKOFF_MIN_ATTEMPTS), BACKOFF_MAX))
            try:
                new_index, checks = await self.nodes.node_checks(node, index, QUERY_WAIT)
                seen = any(c.service_id == sid and c.node == node for c in checks)
                exists = None if seen else await self._exists(node, sid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported, then retried
                attempt += 1
                if attempt > 1:
                    self.report(HEALTH_CRITICAL, f"Failure checking aliased node or service: {exc}")
                else:
                    await asyncio.sleep(random.uniform(0.05, 0.25))
                continue
            attempt = 0
            index = max(new_index, 1)
            self.report(*alias_status(checks, node, sid, exists))

    async def _exists(self, node: str, sid: str) -> bool | None:
        try:
            return await self.nodes.node_has_service(node, sid)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Consul assumes the service exists when it cannot ask
            return None


class StoreNodes:
    """A server's own replica: blocking reads on the watch hub, as an HTTP blocking query is served."""

    def __init__(self, store: Callable[[], StateStore], hub: WatchHub) -> None:
        self.store = store
        self.hub = hub

    async def node_checks(self, node: str, min_index: int, wait: float) -> tuple[int, list[Check]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            ws = WatchSet()
            checks = self.store().node_checks(node, ws)
            remaining = deadline - loop.time()
            if ws.index > min_index or remaining <= 0:
                return ws.index, checks
            fut = self.hub.watch(ws)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                self.hub.unwatch(ws, fut)

    async def node_has_service(self, node: str, service_id: str) -> bool:
        return service_id in self.store().services.get(node, {})


class ServerHTTPNodes:
    """A client agent keeps no catalog: it asks a server's HTTP API (a blocking ``/v1/health/node`` query,
    ``?stale`` as Consul's alias check allows), with the agent's token."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession | None], target: Callable[[], str | None],
                 token: Callable[[], str]) -> None:  # fmt: skip
        self.session = session
        self.target = target
        self.token = token

    async def _get(self, path: str, params: dict[str, str], timeout: float) -> tuple[int, object, int]:
        import aiohttp

        session, target = self.session(), self.target()
        if session is None or target is None:
            raise ConnectionError("No known Consul servers")
        headers = {"X-Consul-Token": token} if (token := self.token()) else {}
        url = f"http://{target}{path}?{urllib.parse.urlencode(params)}"
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            if resp.status >= 400 and resp.status != 404:
                raise ConnectionError(f"Unexpected response code: {resp.status} ({body.decode(errors='replace').strip()})")
            index = int(resp.headers.get("X-Consul-Index", "0") or 0)
            return resp.status, json.loads(body) if body.strip() else None, index

    async def node_checks(self, node: str, min_index: int, wait: float) -> tuple[int, list[Check]]:
        params = {"stale": "", "index": str(min_index), "wait": f"{int(wait)}s"}
        _, data, index = await self._get(f"/v1/health/node/{urllib.parse.quote(node, safe='')}", params, wait + 10)
        rows = data if isinstance(data, list) else []
        checks = [Check(node=str(r.get("Node", "")), check_id=str(r.get("CheckID", "")), name=str(r.get("Name", "")),
                        status=str(r.get("Status", "")), output=str(r.get("Output", "")),
                        service_id=str(r.get("ServiceID", ""))) for r in rows if isinstance(r, dict)]  # fmt: skip
        return index, checks

    async def node_has_service(self, node: str, service_id: str) -> bool:
        status, data, _ = await self._get(f"/v1/catalog/node/{urllib.parse.quote(node, safe='')}", {"stale": ""}, 15)
        if status == 404 or not isinstance(data, dict):
            return False
        services = data.get("Services")
        return isinstance(services, dict) and service_id in services
