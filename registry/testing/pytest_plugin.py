"""pytest plugin for Proconsul users: the ``proconsul_agent`` fixture (filled in with the agent)."""
