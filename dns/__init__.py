"""Proconsul's DNS interface, answering the way Consul's does (``dig @127.0.0.1 -p 8600 web.service.consul``).

This package is ``dns``: it shadows dnspython's top-level package of the same name, so the project never
depends on dnspython. Packets are built with dnslib; incoming queries are parsed by ``dns.wire``.

    wire      strict parser for untrusted queries; header and OPT builders
    records   resource records as plain values
    config    Consul's domain / alt_domain / recursors / dns_config keys, validated
    catalog   the read view of the state store that records each answer's dependencies
    resolver  pure: (question, view, config, now, rng) -> Resolution (name forms, health, rcodes)
    encode    records -> wire chunks that can be reordered (compression only against the question)
    answer    per-query ordering, caps and size fitting of a prepared answer
    engine    bytes in, bytes out: parsing, the two-level answer cache, forwarding decisions
    server    asyncio UDP + TCP listener and the recursor client (the only module doing IO)
"""
