"""Connect CA: pure cores for mesh identity and certificates (no IO, no clock; ``now`` and keys are
arguments).

- ``ca.spiffe``   SPIFFE identities as Consul writes them, and a strict canonical-form parser.
- ``ca.certs``    key generation, root / cross-signed / leaf builders, Consul's ID and serial formats.
- ``ca.csr``      CSR validation for the signer (exactly one URI SAN naming the authorised identity)
                  and CSR creation for agents.
- ``ca.provider`` the built-in ``consul`` CA provider as a state machine over immutable ``CAState``
                  values: its configuration (``config``), bootstrap, sign, rotate with cross-signing,
                  prune, auto-rotation and expiry checks (``model``), Consul's roots / configuration
                  JSON (``responses``), msgpack encoding for the replicated store (``codec``).

Nothing is imported here so that ``import ca.spiffe`` stays cheap for callers that only parse IDs.
"""
