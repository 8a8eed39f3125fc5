"""Connect is built from narrow parts (config, a proposer, FSM, store reader, consensus, hub, local checks, a task
spawner), not from the agent: here without any agent at all."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from registry.commands import Proposer
from registry.config import Config, dev_defaults
from registry.connect.manager import CHECK_ID
from registry.connect.service import Connect
from registry.consensus import LocalLog
from registry.fsm import FSM
from registry.raft.rpc import RPCRouter
from registry.registration import CheckSpec
from registry.watch import WatchHub


class Checks:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.status: dict[str, str] = {}
        self.synced: list[str] = []

    async def add_check(self, spec: CheckSpec) -> None:
        self.added.append(spec.check_id)

    def set_check_status(self, cid: str, status: str, output: str) -> None:
        self.status[cid] = status

    async def sync_check(self, cid: str) -> None:
        self.synced.append(cid)

    @property
    def checks(self) -> dict[str, str]:
        return self.status


async def test_connect_starts_through_its_parts() -> None:
    cfg = Config(node_name="n1")
    dev_defaults(cfg)
    hub = WatchHub()
    fsm = FSM(on_change=hub.notify, on_reset=hub.notify_all)
    consensus = LocalLog(fsm, cfg.server_address, cfg.node_id, cfg.node_name, RPCRouter())
    checks = Checks()
    spawned: list[str] = []

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        spawned.append(name)
        coro.close()  # not run: this test is about what start() hands to the spawner

    propose = Proposer(consensus.propose, lambda: 0).propose
    connect = Connect(config=cfg, propose=propose, fsm=fsm, store=lambda: fsm.store, consensus=consensus, hub=hub, rpc=RPCRouter(), checks=checks,
                      spawn=spawn, is_client=False)  # fmt: skip
    await connect.start()
    assert spawned == ["connect-ca-leader", "connect-ca-expiry", "connect-leaf-renewer", "connect-roots-watch"]
    state = connect.ca_state()
    assert state is not None and state.roots  # bootstrapped through the one consensus it was given
    # A healthy CA adds no check (its expiry is a metric): an agent with no checks of its own lists none.
    assert checks.added == [] and CHECK_ID not in checks.status and checks.synced == []
    roots, index = await connect.roots_at(0, 0)
    assert roots["Roots"] and index > 0
