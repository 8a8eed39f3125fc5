"""Test helpers for Proconsul users and for Proconsul's own suite."""

from registry.testing.agent import GOSSIP_KEY, RunningAgent, async_dev_agent, dev_agent, free_port

__all__ = ["GOSSIP_KEY", "RunningAgent", "async_dev_agent", "dev_agent", "free_port"]
