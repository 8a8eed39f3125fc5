"""The agent hands out narrow parts declared as protocols, and it implements each of them: every method
the protocol declares exists on the agent with the same parameters and the same sync/async shape, and every
attribute it declares is set on a built agent."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from registry.agent.agent import Agent
from registry.api.http import LocalAgent
from registry.config import Config, dev_defaults
from registry.connect.service import LocalChecks

PROTOCOLS = [LocalAgent, LocalChecks]


def _methods(protocol: type) -> dict[str, Any]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and callable(value)}  # fmt: skip


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.__name__)
def test_the_agent_implements_the_protocol(protocol: type) -> None:
    for name, declared in _methods(protocol).items():
        actual = getattr(Agent, name, None)
        assert actual is not None, f"Agent lacks {name}"
        assert inspect.iscoroutinefunction(actual) == inspect.iscoroutinefunction(declared), name
        want = [(p.name, p.kind) for p in inspect.signature(declared).parameters.values()]
        got = [(p.name, p.kind) for p in inspect.signature(actual).parameters.values()]
        assert got == want, f"Agent.{name}{inspect.signature(actual)} vs {protocol.__name__}"
    cfg = Config(node_name="n1")
    dev_defaults(cfg)
    agent = Agent(cfg)
    for name in protocol.__annotations__:
        assert hasattr(agent, name), f"a built Agent has no {name}"
    for name, value in vars(protocol).items():
        if isinstance(value, property):
            assert isinstance(getattr(Agent, name), property), name
