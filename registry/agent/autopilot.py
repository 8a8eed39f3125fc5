"""Autopilot on a server: the leader keeps the servers' health and removes dead servers.

Consul runs hashicorp/raft-autopilot on its leader (agent/consul/autopilot.go): it seeds the stored
configuration from the agent's ``autopilot`` block when none is stored, recomputes every server's health
on an interval (``ServerHealthInterval``), and prunes failed servers when ``CleanupDeadServers`` is on.
The decisions are the pure core's (``registry.autopilot``); this module gathers the leader's facts, keeps
the state between rounds (``StableSince`` needs the previous one), proposes the seed configuration and
removes the servers the core names. Followers answer the health and state endpoints by asking the leader
(``autopilot_health`` / ``autopilot_state`` on the server port), as Consul forwards ``Operator.ServerHealth``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from registry import CONSUL_VERSION
from registry.autopilot import (
    AutopilotConfig,
    ClusterFacts,
    ServerFacts,
    State,
    health_reply,
    next_state,
    removals,
    state_reply,
)
from registry.commands import AutopilotSetConfig, Command
from registry.consensus import Consensus, RPCError
from registry.raft.membership import ClusterView, ServerView
from registry.raft.rpc import RPCRouter
from registry.state.autopilot_table import autopilot_config
from registry.state.store import StateStore

log = structlog.get_logger("proconsul.autopilot")

UPDATE_INTERVAL = 0.5  # seconds between two rounds on the leader (Consul: ServerHealthInterval, 2 s)


def facts_from_view(view: ClusterView, meta: Callable[[str], dict[str, str]]) -> ClusterFacts:
    """The Raft library's view of the configuration as the autopilot core's inputs."""
    servers = [ServerFacts(s.id, s.name, s.address, s.voter, s.leader, s.last_contact, s.last_index, s.last_term,
                           CONSUL_VERSION, meta(s.name)) for s in view.servers]  # fmt: skip
    return ClusterFacts(view.leader_id, view.last_index, view.last_term, servers)


def single_server_view(node_id: str, name: str, address: str, index: Callable[[], int]) -> Callable[[], ClusterView]:
    """A ``-dev`` agent's view: one server, always the leader and current (its log is its store)."""

    def view() -> ClusterView:
        last = index()
        return ClusterView(node_id, last, 1, (ServerView(node_id, name, address, True, True, 0.0, last, 1),))

    return view


class Autopilot:
    """One per server agent. ``view`` answers the leader's Raft view (None when not leading); ``seed`` is the
    agent config's ``autopilot`` block; ``remove`` takes a server out of the Raft configuration."""

    def __init__(self, *, seed: AutopilotConfig, store: Callable[[], StateStore], consensus: Consensus,
                 view: Callable[[], ClusterFacts | None], propose: Callable[[Command], Awaitable[Any]],
                 remove: Callable[[str], Awaitable[None]], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.seed = seed
        self._store = store
        self._consensus = consensus
        self._view = view
        self._propose = propose
        self._remove = remove
        self._clock = clock
        self._wall = wall
        self.state: State | None = None
        # Told each new state (the metrics seam: consul_autopilot_healthy, consul_autopilot_failure_tolerance).
        self.listeners: list[Callable[[State], None]] = []

    def register_rpc(self, router: RPCRouter) -> None:
        router.register("autopilot_health", self._rpc_health, server_only=True, leader=True)
        router.register("autopilot_state", self._rpc_state, server_only=True, leader=True)

    def config(self) -> AutopilotConfig:
        """The stored configuration, else the agent's (before a leader has stored one)."""
        return autopilot_config(self._store()) or self.seed

    def update(self) -> State | None:
        """Recompute the state from the leader's facts now; None when this server is not the leader."""
        cluster = self._view()
        if cluster is None:
            self.state = None
            return None
        self.state = next_state(self.config(), cluster, self.state, self._clock())
        for listener in self.listeners:
            listener(self.state)
        return self.state

    def _offset(self) -> float:
        return self._wall() - self._clock()

    async def _rpc_health(self, args: Any) -> Any:
        state = self._leader_state()
        return health_reply(state, self._offset())

    async def _rpc_state(self, args: Any) -> Any:
        state = self._leader_state()
        return state_reply(state, self._offset())

    def _leader_state(self) -> State:
        state = self.update()
        if state is None:
            raise RPCError("not the leader", 503)
        return state

    async def health(self) -> dict[str, Any]:
        """``api.OperatorHealthReply``, from the leader (asked over the server port from a follower)."""
        if self._consensus.is_leader():
            return health_reply(self._leader_state(), self._offset())
        return dict(await self._consensus.call_leader("autopilot_health", None, 5.0))

    async def state_body(self) -> dict[str, Any]:
        """``api.AutopilotState``, from the leader."""
        if self._consensus.is_leader():
            return state_reply(self._leader_state(), self._offset())
        return dict(await self._consensus.call_leader("autopilot_state", None, 5.0))

    async def run(self, interval: float = UPDATE_INTERVAL) -> None:
        """The leader's rounds: seed the configuration, update the state, prune dead servers."""
        while True:
            await asyncio.sleep(interval)
            if not self._consensus.is_leader():
                self.state = None
                continue
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed round is retried on the next one
                log.warning("autopilot round failed", error=str(exc))

    async def step(self) -> None:
        if autopilot_config(self._store()) is None:
            await self._propose(AutopilotSetConfig(self.seed, init=True))
        state = self.update()
        if state is None:
            return
        config = self.config()
        for sid in removals(config, state):
            srv = state.servers[sid]
            log.info("removing dead server", id=sid, name=srv.facts.name, address=srv.facts.address,
                     last_contact=round(srv.facts.last_contact, 3))  # fmt: skip
            try:
                await self._remove(sid)
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                log.warning("failed to remove dead server", id=sid, error=str(exc))
