"""pytest plugin (auto-loaded when Proconsul is installed): the ``proconsul_agent`` fixture.

    def test_register(proconsul_agent):
        c = consul.Consul(port=proconsul_agent.http_port)
        c.agent.service.register("web", port=80)

Each test gets a fresh in-process dev agent on free ports, stopped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry.testing.agent import RunningAgent, dev_agent


@pytest.fixture
def proconsul_agent() -> Iterator[RunningAgent]:
    with dev_agent() as agent:
        yield agent
