"""Helpers shared by the Connect tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from ca import provider
from registry.commands import Proposer
from registry.connect.state import CMD_CA_SET, register_commands
from registry.fsm import FSM, encode_command

CLUSTER_ID = "11111111-2222-4333-8444-555555555555"
TRUST_DOMAIN = f"{CLUSTER_ID}.consul"
START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A settable UTC clock: ``clock()`` returns ``clock.now``; ``advance`` moves it forward."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


class Log:
    """An FSM fed through encoded commands, as the single-node log feeds it; ``propose`` is the agent's
    proposer over it (typed commands in, a refusal raised as CommandError)."""

    def __init__(self) -> None:
        self.fsm = FSM()
        register_commands(self.fsm)
        self.index = 0
        self.propose = Proposer(self._submit, lambda: 0).propose

    @property
    def store(self):  # noqa: ANN201 - StateStore
        return self.fsm.store

    def apply(self, cmd: dict) -> object:
        self.index += 1
        return self.fsm.apply(self.index, encode_command(cmd))

    async def _submit(self, wire: dict) -> object:
        return self.apply(wire)


def init_ca(log: Log, now: datetime = START, config: provider.CAConfig | None = None) -> provider.CAState:
    state = provider.initialize(CLUSTER_ID, config or provider.CAConfig(), now, os.urandom)
    assert log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(state), "Prev": 0}) is True
    return state
