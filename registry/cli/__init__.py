"""The ``proconsul`` command line: ``app`` registers the commands, ``common`` holds what they share, and each
command family has its own module (agent, members, catalog, kv, operator, snapshot, intention, connect, tls,
lock). They talk to the agent through ``registry.client``."""



def main(argv: list[str] | None = None) -> int:
    """The console script's entry point; ``registry.cli.app`` is imported only when a command runs."""
    from registry.cli.app import main as run

    return run(argv)


__all__ = ["main"]
