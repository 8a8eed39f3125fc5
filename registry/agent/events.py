"""User events on an agent: firing them, learning of new ones, and the buffer ``/v1/event/list`` reads.

Consul's agent fires an event by RPC to a server (``Internal.EventFire``, checked against the caller's
``event:write``), the server broadcasts it into the LAN gossip pool, and every agent that receives it
keeps it in a 256-entry ring when its filters match (agent/user_event.go). Proconsul keeps the same
shape with the gossip replaced by a seam:

* ``EventServer`` (servers and ``-dev``) serves ``Internal.EventFire``: it resolves the token the call
  carries, checks ``event:write`` on the name, and commits the event to the replicated ring of recent
  events (``registry.state.event_table``). It also serves ``Event.Follow``, a blocking read of that ring
  for the agents that hold no replica.
* An ``EventSource`` is where an agent learns of new events: ``StoreRing`` reads this server's own replica
  and wakes on its watch topic, ``LeaderRing`` asks the leader with ``Event.Follow`` (a client agent, as it
  follows the servers' ACL index). A gossip transport would be one more ``EventSource`` and a different
  ``fire``; the HTTP API and the buffer would not change.
* ``AgentEvents`` follows its source from the ring's newest Lamport time at the moment the agent first
  reaches the leader (as a Consul agent that joins ignores the events gossiped before it), keeps each
  later event exactly once if its filters match this node (``registry.events.should_process``), and
  wakes blocking lists when its buffer changes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import structlog

from registry.acl.errors import ACLError
from registry.acl.resolver import TokenResolver
from registry.commands import CommandError, EventFire
from registry.consensus import RPCError
from registry.events import EventBuffer, EventError, UserEvent, check_size, should_process, validate_event
from registry.raft.rpc import RPCRouter
from registry.state.event_table import TOPIC, ring_after
from registry.state.store import StateStore
from registry.state.topics import Topic, WatchSet
from registry.watch import WatchHub

log = structlog.get_logger("proconsul.events")

RPC_FIRE = "Internal.EventFire"
RPC_FOLLOW = "Event.Follow"
FOLLOW_WAIT = 30.0  # seconds an Event.Follow call may block on the server
PERMISSION_DENIED = "Permission denied"  # Consul's acl.ErrPermissionDenied, which the fire endpoint answers

CallLeader = Callable[[str, Any, float], Awaitable[Any]]


class EventSource(Protocol):
    async def after(self, after: int | None, wait: float) -> tuple[list[UserEvent], int]:
        """The events newer than Lamport time ``after`` (oldest first) and the newest Lamport time, waiting
        up to ``wait`` seconds for one; ``after=None`` answers at once with no events, only the newest
        time (where a new follower starts)."""


class StoreRing:
    """The ring in this server's own replica. It learns of changes as a listener of the watch hub (as the
    HTTP hot cache does) rather than as a parked blocking query, so the agent's own following never
    counts among the hub's waiters."""

    def __init__(self, store: Callable[[], StateStore], hub: WatchHub) -> None:
        self._store = store
        self._changed: asyncio.Event | None = None
        hub.listeners.append(self._on_change)

    def _on_change(self, topics: Iterable[Topic] | None, kv_keys: Iterable[str] | None) -> None:
        # ``topics`` is the set a command touched (None: a restore replaced everything).
        if self._changed is not None and (topics is None or TOPIC in topics):
            self._changed.set()

    async def after(self, after: int | None, wait: float) -> tuple[list[UserEvent], int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            self._changed.clear()
            events, last = ring_after(self._store(), after or 0, WatchSet())
            if after is None:
                return [], last
            remaining = deadline - loop.time()
            # Only a newer event ends the wait: a replica still catching up (``last`` behind) is waited
            # for, not reported, so a restarting server never replays what it delivered before.
            if last > after or remaining <= 0:
                return events, last
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass


class LeaderRing:
    """The ring as the leader holds it, read with ``Event.Follow``."""

    def __init__(self, call_leader: CallLeader) -> None:
        self._call = call_leader

    async def after(self, after: int | None, wait: float) -> tuple[list[UserEvent], int]:
        reply = await self._call(RPC_FOLLOW, {"After": after, "Wait": wait}, wait + 10.0)
        if not isinstance(reply, dict) or not isinstance(reply.get("Last"), int):
            raise RPCError(f"malformed {RPC_FOLLOW} reply", 500)
        events = []
        for raw in reply.get("Events") or []:
            try:
                events.append(UserEvent.from_wire(raw))
            except EventError as exc:
                log.warning("dropping a malformed event", error=exc.message)
        return events, int(reply["Last"])


class EventServer:
    """A server's part: the fire RPC (checked and committed) and the follow RPC."""

    def __init__(self, *, acl: TokenResolver, propose: Callable[[EventFire], Awaitable[Any]], ring: StoreRing) -> None:
        self._acl = acl
        self._propose = propose
        self._ring = ring

    def register_rpc(self, router: RPCRouter) -> None:
        router.register(RPC_FIRE, self._rpc_fire, leader=True)
        router.register(RPC_FOLLOW, self._rpc_follow, leader=True)

    async def _rpc_fire(self, args: Any) -> Any:
        """Consul's ``Internal.EventFire``: ``event:write`` on the event's name for the token the call
        carries, then the event enters the log."""
        if not isinstance(args, dict):
            raise RPCError(f"{RPC_FIRE} needs {{Event, Token}}", 400)
        try:
            event = UserEvent.from_wire(args.get("Event"))
        except EventError as exc:
            raise RPCError(exc.message, 400) from None
        token = args.get("Token") or ""
        if not isinstance(token, str):
            raise RPCError(f"{RPC_FIRE}: Token must be a string", 400)
        try:
            authz = await self._acl.resolve(token)
        except ACLError as exc:
            raise RPCError(str(exc), 403) from None
        if not authz.event_write(event.name):
            log.warning("user event blocked by ACLs", event=event.name, accessor_id=authz.accessor_id)
            raise RPCError(PERMISSION_DENIED, 403)
        try:
            await self._propose(EventFire(event))
        except CommandError as exc:
            raise RPCError(exc.message, exc.status) from None
        return True

    async def _rpc_follow(self, args: Any) -> Any:
        args = args if isinstance(args, dict) else {}
        after, wait = args.get("After"), args.get("Wait", 0)
        if (after is not None and (not isinstance(after, int) or isinstance(after, bool) or after < 0)) \
                or not isinstance(wait, int | float) or isinstance(wait, bool):  # fmt: skip
            raise RPCError(f"{RPC_FOLLOW} needs {{\"After\": int or nil, \"Wait\": seconds}}", 400)
        events, last = await self._ring.after(after, min(float(wait), 600.0))
        return {"Events": [e.to_wire() for e in events], "Last": last}


class AgentEvents:
    """This agent's events: ``fire`` sends one to the servers, ``run`` follows the source and fills the
    buffer, ``wait_change`` lets a blocking list sleep until the buffer moves."""

    def __init__(self, *, node_name: Callable[[], str], services: Callable[[], Iterable[tuple[str, Sequence[str]]]],
                 call_leader: CallLeader, source: EventSource, new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
                 ) -> None:  # fmt: skip
        self._node_name = node_name
        self._services = services
        self._call_leader = call_leader
        self._source = source
        self._baseline = LeaderRing(call_leader)
        self._new_id = new_id
        self.buffer = EventBuffer()
        self.last: int | None = None  # the newest Lamport time taken from the ring; None until the first
        self._changed: asyncio.Event | None = None

    # ------------------------------------------------------------------ firing

    async def fire(self, name: str, payload: bytes | None, node: str = "", service: str = "", tag: str = "",
                   token: str = "") -> UserEvent:  # fmt: skip
        """Consul's ``Agent.UserEvent``: validate, give the event its ID and version, and have a server
        fire it with the caller's token. Raises ``EventError`` (bad input) or ``RPCError``."""
        validate_event(name, node, service, tag)
        event = UserEvent(self._new_id(), name, payload, node, service, tag)
        check_size(event)
        await self._call_leader(RPC_FIRE, {"Event": event.to_wire(), "Token": token}, 10.0)
        return event

    # ------------------------------------------------------------------ the buffer

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def wait_change(self, version: int, timeout: float) -> None:
        """Sleep until the buffer's version differs from ``version`` or ``timeout`` passes."""
        if self.buffer.version != version or timeout <= 0:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._event().wait()
        except TimeoutError:
            pass

    def ingest(self, event: UserEvent) -> bool:
        """Keep an event delivered to this agent if its filters match (Consul's ``handleEvents``)."""
        if not should_process(event, self._node_name(), self._services()):
            return False
        if not self.buffer.add(event):
            return False
        log.debug("new event", name=event.name, id=event.id)
        changed = self._event()
        changed.set()
        self._changed = asyncio.Event()
        return True

    # ------------------------------------------------------------------ following

    async def start(self, known_leader: bool) -> None:
        """Take the ring's newest Lamport time from the leader now, if one answers: events fired after the
        agent has started are then never missed. ``run`` retries when no leader is known yet."""
        if not known_leader:
            return
        try:
            async with asyncio.timeout(3.0):
                _, self.last = await self._baseline.after(None, 0.0)
        except Exception as exc:  # noqa: BLE001 - no leader yet: run() takes it later
            log.debug("event ring not reachable yet", error=str(exc))

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                if self.last is None:
                    _, self.last = await self._baseline.after(None, 0.0)
                events, last = await self._source.after(self.last, FOLLOW_WAIT)
                self._take(events, last)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no leader, a server restarting: retry with backoff
                log.debug("event follow failed", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _take(self, events: list[UserEvent], last: int) -> None:
        mine = self.last or 0
        if last < mine:
            # The ring went back (a snapshot restored): start again from where it is, delivering nothing
            # twice.
            self.last = last
            return
        for event in events:
            if event.ltime > mine:
                self.ingest(event)
                mine = event.ltime
        self.last = max(mine, last)
