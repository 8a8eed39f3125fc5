"""The pure DNS resolver: (question, catalog view, config, now, rng) -> Resolution.

No IO, no clock, no global state: the server hands in the time (for the SOA serial) and a random generator,
and gets back records grouped into *units* (one instance each: its answer records plus the glue that goes
with them in the additional section). Ordering, per-query shuffling, answer caps and size trimming happen
when a response is rendered (``dns.answer``), so a cached Resolution serves every query for its name.

Behaviour follows Consul's DNS interface (agent/dns.go); the places where it deliberately differs:

- empty non-terminals (the apex, ``service.consul``, ``dc1.consul``...) answer NODATA, not NXDOMAIN:
  resolvers that apply RFC 8020 would otherwise treat every name below them as nonexistent;
- SOA and NS are answered at the apex; elsewhere they are an ordinary "no record of this type" (NODATA),
  not the apex records under another owner name;
- a TXT query on a service is NODATA (Consul returns A records in the answer to it);
- CNAME targets outside the domain are not chased through the recursors (the CNAME is returned alone,
  which is Consul's behaviour without recursors); targets inside the domain are resolved internally.
"""

from __future__ import annotations

import ipaddress
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dns.config import DNSConfig
from dns.records import RR, Name, a_or_aaaa, cname, name_from, ns, ptr, soa, srv, txt
from dns.wire import (
    C_ANY,
    C_IN,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    T_A,
    T_AAAA,
    T_ANY,
    T_AXFR,
    T_CNAME,
    T_IXFR,
    T_NS,
    T_PTR,
    T_SOA,
    T_SRV,
    T_TXT,
)
from registry.prepared_query import Instance, PreparedQuery, QueryError, select
from registry.structs import (
    HEALTH_CRITICAL,
    HEALTH_PASSING,
    HEALTH_WARNING,
    Check,
    Node,
    Service,
    aggregate_status,
)

__all__ = ["Question", "Unit", "Resolution", "CatalogReader", "Rng", "resolve", "FIXED", "SHUFFLE", "WEIGHTED"]

FIXED, SHUFFLE, WEIGHTED = 0, 1, 2
KINDS = frozenset({"service", "connect", "virtual", "ingress", "node", "query", "addr"})
MAX_CNAME_DEPTH = 3  # Consul's maxRecursionLevelDefault: a CNAME chain inside the domain is followed this far
MAX_NS = 3  # Consul answers at most three servers for NS

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# Address selection (Consul's translateAddressAccept): which kinds of address a query type can use.
ACCEPT_DOMAIN, ACCEPT_V4, ACCEPT_V6 = 1, 2, 4
ACCEPT_ANY = ACCEPT_DOMAIN | ACCEPT_V4 | ACCEPT_V6 | 8  # the extra bit: "the default address, whatever it is"


class Rng(Protocol):
    """The randomness the resolver and renderer use, handed in (a ``random.Random`` in production, a
    seeded one in tests): never the module-level generator."""

    def random(self) -> float: ...
    def shuffle(self, x: MutableSequence[Any]) -> None: ...
    def choices(self, population: Sequence[Any], weights: Sequence[float] | None = ..., *,
                k: int = ...) -> list[Any]: ...  # fmt: skip


class CatalogReader(Protocol):
    def service_names(self, folded: str, connect: bool = False) -> tuple[str, ...]: ...
    def instances(self, name: str, connect: bool = False) -> list[tuple[Node, Service]]: ...
    def prepared_query(self, id_or_name: str) -> PreparedQuery | None: ...
    def query_instances(self, query: PreparedQuery, name: str, connect: bool) -> list[tuple[Node, Service]]: ...
    def checks_for_instance(self, node: str, service_id: str) -> list[Check]: ...
    def node_names(self, folded: str) -> tuple[str, ...]: ...
    def node(self, name: str) -> Node | None: ...
    def all_nodes(self) -> list[Node]: ...
    def all_services(self) -> list[Service]: ...


@dataclass(frozen=True, slots=True)
class Question:
    labels: tuple[bytes, ...]  # as the client sent them
    qtype: int
    qclass: int = C_IN


@dataclass(frozen=True, slots=True)
class Unit:
    answers: tuple[RR, ...]
    glue: tuple[RR, ...] = ()
    weight: int = 1  # SRV weight, used to order and sample SRV answers


@dataclass(frozen=True, slots=True)
class Resolution:
    rcode: int
    authoritative: bool = True
    units: tuple[Unit, ...] = ()
    order: int = FIXED  # how units are ordered per query: FIXED, SHUFFLE, or WEIGHTED (SRV, by weight)
    pick: int = 0  # keep at most this many units after ordering (0: all): a_record_limit, NS's three...
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    forward: bool = False  # not our name: the server sends it to the recursors (REFUSED without any)


def resolve(q: Question, view: CatalogReader, cfg: DNSConfig, now: float, rng: Rng) -> Resolution:
    return _Resolver(view, cfg, now, rng).resolve(q, MAX_CNAME_DEPTH)


# ---------------------------------------------------------------------- helpers


def parse_ip(text: str) -> IP | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def translate(accept: int, default: str, v4: str, v6: str) -> str:
    """Pick the address a query of this kind should see (Consul's translateAddressAccept)."""
    if accept & ACCEPT_V6 and v6:
        return v6
    if accept & ACCEPT_V4 and v4:
        return v4
    if accept == ACCEPT_ANY and default:
        return default
    ip = parse_ip(default)
    if ip is not None and ip.version == 4 and accept & ACCEPT_V4:
        return default
    if ip is not None and ip.version == 6 and accept & ACCEPT_V6:
        return default
    if ip is None and accept & ACCEPT_DOMAIN:
        return default
    return ""


def accept_for(qtype: int) -> int:
    if qtype == T_A:
        return ACCEPT_DOMAIN | ACCEPT_V4
    if qtype == T_AAAA:
        return ACCEPT_DOMAIN | ACCEPT_V6
    return ACCEPT_ANY


def ip_fits(qtype: int, ip: IP) -> bool:
    """Whether an address becomes a record for this query type (Consul's makeARecord)."""
    if ip.version == 4:
        return qtype in (T_A, T_ANY, T_SRV, T_NS)
    return qtype in (T_AAAA, T_ANY, T_SRV, T_NS)


def rfc1464(key: str, value: str) -> str:
    """Node meta as TXT: "key=value" with RFC 1464 quoting; ``rfc1035-`` keys carry the bare value."""
    if key.lower().startswith("rfc1035-"):
        return value
    k = key.replace("`", "``").replace("=", "`=")
    stripped = k.lstrip(" ")
    k = "` " * (len(k) - len(stripped)) + stripped
    stripped = k.rstrip(" ")
    k = stripped + "` " * (len(k) - len(stripped))
    return k + "=" + value.replace("`", "``")


def _valid_ns_name(name: str) -> bool:
    # Consul skips servers whose names are not plain DNS labels (InvalidNameRe) when answering NS.
    return bool(name) and all(c.isascii() and (c.isalnum() or c == "-") for c in name)


def _hex_target(ip: IP) -> str:
    return ip.packed.hex()


def _reverse_ip(labels: tuple[bytes, ...]) -> IP | None:
    try:
        if labels[-2:] == (b"in-addr", b"arpa") and len(labels) == 6:
            octets = [int(x) for x in reversed(labels[:4]) if x.isdigit() and len(x) <= 3]
            if len(octets) == 4 and all(0 <= o <= 255 for o in octets):
                return ipaddress.IPv4Address(bytes(octets))
        if labels[-2:] == (b"ip6", b"arpa") and len(labels) == 34:
            nibbles = b"".join(reversed(labels[:32])).decode("ascii")
            if all(len(x) == 1 for x in labels[:32]):
                return ipaddress.IPv6Address(bytes.fromhex(nibbles))
    except (ValueError, UnicodeDecodeError):
        return None
    return None


# ---------------------------------------------------------------------- the resolver


class _Resolver:
    def __init__(self, view: CatalogReader, cfg: DNSConfig, now: float, rng: Rng) -> None:
        self.view = view
        self.cfg = cfg
        self.now = now
        self.rng = rng
        self._domains = sorted(
            ((tuple(cfg.domain_labels), cfg.domain), (tuple(cfg.alt_domain_labels), cfg.alt_domain)),
            key=lambda d: len(d[0]),
            reverse=True,
        )

    # -- entry

    def resolve(self, q: Question, depth: int) -> Resolution:
        lc = tuple(label.lower() for label in q.labels)
        zone = self._zone(lc)
        if zone is None:
            if lc[-1:] == (b"arpa",):
                return self._reverse(q, lc)
            return Resolution(REFUSED, authoritative=False, forward=True)
        n_labels, domain = zone
        if q.qclass not in (C_IN, C_ANY):
            return Resolution(REFUSED, authoritative=False)
        if q.qtype in (T_AXFR, T_IXFR):
            return Resolution(NOTIMP)
        try:
            rest = [label.decode("utf-8").lower() for label in q.labels[: len(q.labels) - n_labels]]
        except UnicodeDecodeError:
            return self._nxdomain(domain)
        return _Lookup(self, q, domain, depth).run(rest)

    def _zone(self, lc: tuple[bytes, ...]) -> tuple[int, str] | None:
        for labels, text in self._domains:
            if labels and len(lc) >= len(labels) and lc[len(lc) - len(labels) :] == labels:
                return len(labels), text
        return None

    # -- records shared by several lookups

    def soa(self, domain: str) -> RR:
        c = self.cfg
        owner = name_from(domain)
        assert owner is not None  # the config validated the domain
        return soa(
            owner,
            c.soa_min_ttl,  # Consul: the SOA's own TTL follows min_ttl so negative answers cache consistently
            name_from("ns", domain) or owner,
            name_from("hostmaster", domain) or owner,
            int(self.now) & 0xFFFFFFFF,
            c.soa_refresh,
            c.soa_retry,
            c.soa_expire,
            c.soa_min_ttl,
        )

    def _nxdomain(self, domain: str) -> Resolution:
        return Resolution(NXDOMAIN, authority=(self.soa(domain),))

    def _nodata(self, domain: str, additional: tuple[RR, ...] = ()) -> Resolution:
        return Resolution(NOERROR, authority=(self.soa(domain),), additional=additional)

    def node_fqdn(self, node: Node, domain: str) -> Name | None:
        return name_from(node.node, "node", node.datacenter or self.cfg.datacenter, domain)

    def meta_txt(self, owner: Name | None, node: Node, ttl: int) -> tuple[RR, ...]:
        return tuple(txt(owner, ttl, rfc1464(k, node.meta[k])) for k in sorted(node.meta))

    def healthy(self, instances: list[tuple[Node, Service]], tag: str = "") -> list[tuple[Node, Service, int]]:
        """Consul's CheckServiceNodes.Filter: drop instances with any critical check (node or service),
        and warning ones too with only_passing. Returns (node, service, SRV weight)."""
        out = []
        for node, svc in instances:
            if tag and not any(t.lower() == tag for t in svc.tags):
                continue
            status = aggregate_status([c.status for c in self.view.checks_for_instance(node.node, svc.id)])
            if status == HEALTH_CRITICAL or (self.cfg.only_passing and status != HEALTH_PASSING):
                continue
            weight = svc.weights[1] if status == HEALTH_WARNING else svc.weights[0]
            out.append((node, svc, max(0, min(65535, weight))))
        return out

    def servers(self, domain: str) -> list[tuple[RR, tuple[RR, ...]]]:
        """NS records for the domain (with their glue): up to three random healthy servers."""
        ttl = self.cfg.node_ttl
        candidates = []
        for name in self.view.service_names("consul"):
            candidates.extend(self.healthy(self.view.instances(name)))
        self.rng.shuffle(candidates)
        out: list[tuple[RR, tuple[RR, ...]]] = []
        seen: set[str] = set()
        owner = name_from(domain)
        for node, _svc, _w in candidates:
            if not _valid_ns_name(node.node) or node.node in seen:
                continue
            target = name_from(node.node.lower(), "node", (node.datacenter or self.cfg.datacenter).lower(), domain)
            if target is None or owner is None:
                continue
            seen.add(node.node)
            glue = self.node_records(node, T_ANY, target, ttl, MAX_CNAME_DEPTH)
            out.append((ns(owner, ttl, target), tuple(glue)))
            if len(out) >= MAX_NS:
                break
        return out

    def node_records(self, node: Node, qtype: int, owner: Name | None, ttl: int, depth: int) -> list[RR]:
        """A/AAAA for a node's address, or a CNAME (plus what it resolves to) for a hostname."""
        tags = node.tagged_addresses
        addr = translate(accept_for(qtype), node.address, tags.get("lan_ipv4", ""), tags.get("lan_ipv6", ""))
        ip = parse_ip(addr)
        if ip is not None:
            return [a_or_aaaa(owner, ttl, ip)] if ip_fits(qtype, ip) else []
        if not addr:
            return []
        return self.cname_chain(owner, addr, ttl, depth)

    def cname_chain(self, owner: Name | None, host: str, ttl: int, depth: int) -> list[RR]:
        target = name_from(host)
        if target is None:
            return []
        return [cname(owner, ttl, target), *self.chase(target, ttl, depth)]

    def chase(self, target: Name, ttl: int, depth: int) -> list[RR]:
        """Resolve a CNAME target inside our domain (Consul's resolveCNAME, minus the recursors)."""
        if depth < 1 or self._zone(tuple(x.lower() for x in target)) is None:
            return []
        sub = self.resolve(Question(target, T_ANY), depth - 1)
        out = []
        for unit in sub.units:
            for rr in unit.answers:
                if rr.rtype in (T_A, T_AAAA, T_CNAME):
                    out.append(replace(rr, owner=target if rr.owner is None else rr.owner, ttl=ttl))
        return out

    # -- reverse lookups

    def _reverse(self, q: Question, lc: tuple[bytes, ...]) -> Resolution:
        ip = _reverse_ip(lc)
        if ip is not None and q.qtype in (T_PTR, T_ANY):
            dc, domain = self.cfg.datacenter, self.cfg.domain
            target: Name | None = None
            for node in self.view.all_nodes():
                if parse_ip(node.address) == ip:
                    target = name_from(node.node, "node", node.datacenter or dc, domain)
                    break
            if target is None:
                for svc in self.view.all_services():
                    if parse_ip(svc.address) == ip:
                        target = name_from(svc.service, "service", dc, domain)
                        break
            if target is not None:
                return Resolution(NOERROR, units=(Unit((ptr(None, 0, target),)),))
        if self.cfg.recursors:
            return Resolution(REFUSED, authoritative=False, forward=True)
        return self._nxdomain(self.cfg.domain)


class _Lookup:
    """One question inside the domain."""

    def __init__(self, r: _Resolver, q: Question, domain: str, depth: int) -> None:
        self.r = r
        self.view = r.view
        self.cfg = r.cfg
        self.q = q
        self.qtype = q.qtype
        self.domain = domain
        self.depth = depth

    def nx(self) -> Resolution:
        return self.r._nxdomain(self.domain)

    def nodata(self, additional: tuple[RR, ...] = ()) -> Resolution:
        return self.r._nodata(self.domain, additional)

    def run(self, rest: list[str]) -> Resolution:
        if not rest:
            return self.apex()
        kind = ""
        parts: list[str] = []
        suffix: list[str] = []
        # Labels are read right to left for the first query kind, as Consul does; for SRV an RFC 2782
        # "_service._proto" pair may stand in for the "service" label.
        for i in range(len(rest) - 1, -1, -1):
            label = rest[i]
            if label in KINDS:
                kind, parts, suffix = label, rest[:i], rest[i + 1 :]
                break
            if self.qtype == T_SRV and label.startswith("_"):
                kind, parts, suffix = "service", rest[: i + 1], rest[i + 1 :]
                break
        if not kind:
            # Only a locality can sit between the apex and a kind label: "dc1", "dc1.dc", "dc".
            if rest == ["dc"] or self.locality(rest) is not None:
                return self.nodata()
            return self.nx()
        dc = self.locality(suffix)
        if dc is None:
            return self.nx()  # malformed locality, unknown datacenter or peer
        if not parts:
            return self.nodata()  # "service.consul" and friends exist as empty non-terminals
        if kind == "service":
            return self.service(parts, dc, connect=False)
        if kind == "connect":
            return self.service(parts[-1:], dc, connect=True)
        if kind == "node":
            return self.node(".".join(parts))
        if kind == "addr":
            return self.addr(parts)
        if kind == "virtual":
            return self.virtual(parts[-1])
        if kind == "query":
            return self.prepared(parts)
        # Ingress gateways do not exist in Proconsul's catalog: nothing by that name.
        return self.nx()

    def locality(self, suffix: list[str]) -> str | None:
        """The datacenter a query names: none, "<dc>", or "<dc>.dc". Only the local one is reachable (there
        is no WAN federation or peering), so any other name is unknown."""
        local = self.cfg.datacenter
        if not suffix:
            return local
        if len(suffix) == 1 and suffix[0] == local:
            return local
        if len(suffix) == 2 and suffix[1] == "dc" and suffix[0] == local:
            return local
        return None

    # -- apex

    def apex(self) -> Resolution:
        qtype = self.qtype
        if qtype not in (T_SOA, T_NS, T_ANY):
            return self.nodata()
        servers = self.r.servers(self.domain)
        soa_rr = self.r.soa(self.domain)
        if qtype == T_SOA:
            return Resolution(
                NOERROR,
                units=(Unit((soa_rr,)),),
                authority=tuple(n for n, _ in servers),
                additional=tuple(g for _, glue in servers for g in glue),
            )
        if qtype == T_NS:
            if not servers:
                return self.nodata()
            return Resolution(NOERROR, units=tuple(Unit((n,), glue) for n, glue in servers), order=SHUFFLE)
        records = (soa_rr, *(n for n, _ in servers))
        return Resolution(
            NOERROR, units=(Unit(records),), additional=tuple(g for _, glue in servers for g in glue)
        )

    # -- services

    def service(self, parts: list[str], dc: str, connect: bool) -> Resolution:
        tag = ""
        if connect:
            name = parts[-1]
        elif len(parts) == 2 and parts[0].startswith("_") and parts[1].startswith("_"):
            name, tag = parts[0][1:], parts[1][1:]
            if tag == "tcp":  # "_name._tcp" asks for every instance
                tag = ""
        else:
            name, tag = parts[-1], ".".join(parts[:-1])
        instances: list[tuple[Node, Service]] = []
        for exact in self.view.service_names(name, connect):
            instances.extend(self.view.instances(exact, connect))
        healthy = self.r.healthy(instances, tag)
        if not healthy:
            return self.nx()
        ttl = self.cfg.service_ttl(name)
        if self.qtype == T_SRV:
            return self.service_srv(healthy, dc, ttl)
        if self.qtype not in (T_A, T_AAAA, T_ANY):
            return self.nodata()
        return self.service_addresses(healthy, ttl)

    def _service_address(self, svc: Service, accept: int) -> str:
        tagged = svc.tagged_addresses

        def tag(key: str) -> str:
            value = tagged.get(key)
            return str(value.get("Address", "")) if isinstance(value, dict) else ""

        return translate(accept, svc.address, tag("lan_ipv4"), tag("lan_ipv6"))

    def _node_address(self, node: Node, accept: int) -> str:
        tags = node.tagged_addresses
        return translate(accept, node.address, tags.get("lan_ipv4", ""), tags.get("lan_ipv6", ""))

    def _is_question(self, host: str) -> bool:
        return tuple(x.lower() for x in self.q.labels) == tuple(
            x.encode("utf-8", "surrogateescape").lower() for x in host.strip(".").split(".")
        )

    def service_addresses(self, healthy: list[tuple[Node, Service, int]], ttl: int) -> Resolution:
        qtype = self.qtype
        accept = accept_for(qtype)
        ips: list[Unit] = []
        cnames: list[Unit] = []
        seen: set[tuple[int, object]] = set()
        for node, svc, _w in healthy:
            svc_addr = self._service_address(svc, accept)
            node_addr = self._node_address(node, accept)
            node_ip, svc_ip = parse_ip(node_addr), parse_ip(svc_addr)
            if not svc_addr and node_ip is not None:
                ip: IP | None = node_ip
            elif svc_ip is not None:
                ip = svc_ip
            elif svc_addr and node_ip is not None and self._is_question(svc_addr):
                ip = node_ip  # a service whose address is its own DNS name: use the node's address
            else:
                host = svc_addr or node_addr
                if not host:
                    continue
                chain = self.r.cname_chain(None, host, ttl, self.depth)
                if chain and (chain[0].rtype, chain[0].data) not in seen:
                    seen.add((chain[0].rtype, chain[0].data))
                    cnames.append(Unit(tuple(chain)))
                continue
            if not ip_fits(qtype, ip):
                continue
            rr = a_or_aaaa(None, ttl, ip)
            if (rr.rtype, rr.data) in seen:  # the same address twice (two instances on one node)
                continue
            seen.add((rr.rtype, rr.data))
            ips.append(Unit((rr,)))
        if ips:
            return Resolution(NOERROR, units=tuple(ips), order=SHUFFLE, pick=self.cfg.a_record_limit)
        if cnames:
            # Consul answers one hostname, and only when no instance has an IP address.
            return Resolution(NOERROR, units=tuple(cnames), order=SHUFFLE, pick=1)
        return self.nodata()

    def service_srv(self, healthy: list[tuple[Node, Service, int]], dc: str, ttl: int) -> Resolution:
        units: list[Unit] = []
        seen: set[tuple[str, str, int]] = set()
        for node, svc, weight in healthy:
            svc_addr = self._service_address(svc, ACCEPT_ANY)
            key = (node.node, svc_addr, svc.port)
            if key in seen:
                continue
            seen.add(key)
            node_addr = self._node_address(node, ACCEPT_ANY)
            node_ip, svc_ip = parse_ip(node_addr), parse_ip(svc_addr)
            glue: list[RR] = []
            target: Name | None = None
            via_node: IP | None = None  # target is the node's name, glued to this address
            via_addr: IP | None = None  # target is "<hex>.addr.<dc>.<domain>", glued to this address
            host = ""  # target is this hostname, resolved internally when it is inside the domain
            if not svc_addr and node_ip is not None:
                # An address taken from a tagged address is not the node's own: name it by value.
                if node.address != node_addr:
                    via_addr = node_ip
                else:
                    via_node = node_ip
            elif not svc_addr:
                host = node_addr
            elif svc_ip is not None:
                via_addr = svc_ip
            elif node_ip is not None and self._is_question(svc_addr):
                via_node = node_ip
            else:
                host = svc_addr
            if via_node is not None:
                target = self.r.node_fqdn(node, self.domain)
                if target is not None:
                    glue.append(a_or_aaaa(target, ttl, via_node))
            elif via_addr is not None:
                target = name_from(_hex_target(via_addr), "addr", dc, self.domain)
                if target is not None:
                    glue.append(a_or_aaaa(target, ttl, via_addr))
            elif host:
                target = name_from(host)
                if target is not None:
                    glue.extend(self.r.chase(target, ttl, self.depth))
            if target is None:
                continue
            if self.cfg.node_meta_txt:
                fqdn = self.r.node_fqdn(node, self.domain)
                if fqdn is not None:
                    glue.extend(self.r.meta_txt(fqdn, node, ttl))
            units.append(Unit((srv(None, ttl, 1, weight, svc.port & 0xFFFF, target),), tuple(glue), weight))
        if not units:
            return self.nodata()
        return Resolution(NOERROR, units=tuple(units), order=WEIGHTED)

    def prepared(self, parts: list[str]) -> Resolution:
        """``<query>.query`` and, RFC 2782 style, ``_<query>._<proto>.query`` (the last label ignored): the
        prepared query by ID or name, executed as Consul's DNS does (agent/dns.go preparedQueryLookup):
        its own filters, its instances as its token (else the DNS token) may read them, no instance
        NXDOMAIN, the TTL its ``DNS.TTL`` else the agent's service_ttl for the service it asked for. There
        is no other datacenter or peer to fail over to. Consul moves the instance on ``Near``'s node to
        the front; here the order is shuffled per answer, as with no coordinates."""
        if len(parts) >= 2 and parts[0].startswith("_") and parts[-1].startswith("_"):
            name = ".".join(parts[:-1])[1:]
        else:
            name = ".".join(parts)
        try:
            query = self.view.prepared_query(name)
        except QueryError:
            return Resolution(SERVFAIL)  # Consul: the execute RPC failed (a template asked for by ID)
        if query is None:
            return self.nx()
        svc = query.service
        found: list[tuple[Node, Service]] = []
        if not svc.peer:
            for exact in self.view.service_names(svc.service.lower(), svc.connect):
                found.extend(self.view.query_instances(query, exact, svc.connect))
        chosen = select(svc, [Instance(n, s, tuple(self.view.checks_for_instance(n.node, s.id))) for n, s in found])
        if not chosen:
            return self.nx()
        ttl = query.dns_ttl_seconds()
        if ttl is None:
            ttl = self.cfg.service_ttl(svc.service)
        healthy = []
        for i in chosen:
            status = aggregate_status([c.status for c in i.checks])
            weight = i.service.weights[1] if status == HEALTH_WARNING else i.service.weights[0]
            healthy.append((i.node, i.service, max(0, min(65535, weight))))
        if self.qtype == T_SRV:
            return self.service_srv(healthy, self.cfg.datacenter, ttl)
        if self.qtype not in (T_A, T_AAAA, T_ANY):
            return self.nodata()
        return self.service_addresses(healthy, ttl)

    def virtual(self, name: str) -> Resolution:
        """The virtual IP Consul assigns for transparent proxying, from the "consul-virtual" tagged address."""
        for exact in self.view.service_names(name):
            for _node, svc in self.view.instances(exact):
                value = svc.tagged_addresses.get("consul-virtual")
                ip = parse_ip(str(value.get("Address", ""))) if isinstance(value, dict) else None
                if ip is not None:
                    if self.qtype not in (T_A, T_AAAA, T_ANY) or not ip_fits(self.qtype, ip):
                        return self.nodata()
                    return Resolution(NOERROR, units=(Unit((a_or_aaaa(None, self.cfg.node_ttl, ip),)),))
        return self.nx()

    # -- nodes and addresses

    def node(self, name: str) -> Resolution:
        names = self.view.node_names(name)
        node = self.view.node(names[0]) if names else None
        if node is None:
            return self.nx()
        qtype = self.qtype
        if qtype not in (T_A, T_AAAA, T_ANY, T_TXT):
            return self.nodata()
        ttl = self.cfg.node_ttl
        answers: list[RR] = []
        if qtype != T_TXT:
            answers.extend(self.r.node_records(node, qtype, None, ttl, self.depth))
        meta = self.r.meta_txt(None, node, ttl)
        additional: tuple[RR, ...] = ()
        if qtype in (T_TXT, T_ANY):
            answers.extend(meta)
        elif self.cfg.node_meta_txt:
            additional = meta
        if not answers:
            return self.nodata()
        return Resolution(NOERROR, units=(Unit(tuple(answers)),), additional=additional)

    def addr(self, parts: list[str]) -> Resolution:
        if len(parts) != 1 or len(parts[0]) not in (8, 32):
            return self.nx()
        text = parts[0]
        if any(c not in "0123456789abcdef" for c in text):
            return self.nx()
        raw = bytes.fromhex(text)
        ip: IP = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
        rr = a_or_aaaa(None, self.cfg.node_ttl, ip)
        if self.qtype == T_ANY or self.qtype == rr.rtype:
            return Resolution(NOERROR, units=(Unit((rr,)),))
        # Consul puts the address in the additional section for other query types.
        return self.nodata(additional=(rr,))
