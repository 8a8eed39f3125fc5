"""The agent's HTTP API as its clients use it: ``http`` is the client (address, TLS, token, blocking queries,
errors), ``lock`` Consul's lock and semaphore recipes on top of it."""
