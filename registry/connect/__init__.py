"""Connect wired into the agent: the pure cores in ``ca/`` and ``registry/intentions`` behind the one
write path (command -> log -> FSM -> store) and the HTTP API.

- ``state``    FSM apply functions for the replicated CA state, config entries and intention
               operations, plus cached read views (decoded CA state, intention index).
- ``signer``   the server-side signing entry point ``CAServer.sign(csr_pem, service)`` with Consul's
               CSR rate limits; RPC-callable.
- ``leaf``     the agent's leaf-certificate cache: key + CSR generation, renewal between 60% and 90%
               of a certificate's life, jittered renewal after a root change, blocking waits.
- ``manager``  leader duties (CA bootstrap, auto-rotation, pruning) and the CA expiry health check.
- ``remote``   a client agent's half: roots, signatures and authorize decisions from the servers by RPC.
- ``service``  the ``Connect`` object an agent owns: builds and starts all of the above.
"""
