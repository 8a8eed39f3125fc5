"""Consul's ACL system, the pure core: rules, identities, the authorizer and its errors.

Nothing here does IO, reads a clock or holds global mutable state (tests/acl/test_purity.py proves the
imports); the HTTP, DNS and RPC layers resolve a token to an ``Authorizer`` and ask it questions.
"""
