"""The route walk: EVERY route of the route table, on a live dev agent with ACLs on and default deny, asked
with a token that lacks the permission its declaration names (403 with Consul's text and nothing changed,
or -- for lists -- an answer filtered down to nothing) and with one that has it (never a 403).

A route added to the table without a case here fails ``test_every_route_has_a_case``, and a route whose
declaration is not enforced fails its own case: Consul's uniform enforcement (CVE-2020-7955 was a route
that forgot its check)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from registry.acl.resolver import StaticResolver
from registry.api.routes import ROUTES
from registry.testing import RunningAgent, async_dev_agent

NODE = "test-agent"
ROOT = "root-token"
FILTERED = "X-Consul-Results-Filtered-By-ACLs"


@dataclass(frozen=True)
class Case:
    method: str
    route: str  # the route table's path
    url: str
    have: str  # ACL rules that grant exactly what the route needs
    denied: str | None  # "resource:access" a token without rules is refused with; None: the answer is filtered
    body: Any = None
    empty: Callable[[Any], bool] = lambda body: body in ([], {}, None)  # a filtered answer shows nothing
    # Consul requires no rule: the handler authenticates by itself (bootstrap once, the token's own secret,
    # a login's bearer JWT), so the walk only checks that enforcement never refuses it for a permission.
    free: bool = False
    streams: bool = False  # answers a stream that never ends: only its status is read


    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.route


def svc(name: str, level: str) -> str:
    return f'service "{name}" {{ policy = "{level}" }}'


def ixn(name: str, level: str) -> str:
    return f'service "{name}" {{ policy = "read" intentions = "{level}" }}'


UUID = "8f246b77-f3e1-ff88-5b48-8ec93abf3e05"
PROBE_IDS: dict[str, Any] = {"session": "s", "legacy": "l", "trust_domain": "t", "ca_config": {}, "q1": "q", "q2": "q"}
NODE_READ = f'node "{NODE}" {{ policy = "read" }}'
NODE_WRITE = f'node "{NODE}" {{ policy = "write" }}'
SESSION_WRITE = f'session "{NODE}" {{ policy = "write" }}'
SESSION_READ = f'session "{NODE}" {{ policy = "read" }}'


def cases(ids: dict[str, str]) -> list[Case]:
    """Every (method, route); ``ids`` holds the IDs the setup created (a session, a legacy intention)."""
    spiffe = f"spiffe://{ids['trust_domain']}/ns/default/dc/dc1/svc/web"
    return [
        # agent
        Case("GET", "/v1/agent/self", "/v1/agent/self", f'agent "{NODE}" {{ policy = "read" }}', "agent:read"),
        Case("GET", "/v1/agent/metrics", "/v1/agent/metrics", f'agent "{NODE}" {{ policy = "read" }}', "agent:read"),
        Case("GET", "/v1/agent/metrics/stream", "/v1/agent/metrics/stream", f'agent "{NODE}" {{ policy = "read" }}',
             "agent:read", streams=True),
        Case("GET", "/v1/agent/members", "/v1/agent/members", NODE_READ, None),
        Case("GET", "/v1/agent/version", "/v1/agent/version", "", None, empty=lambda b: True),
        Case("GET", "/v1/agent/host", "/v1/agent/host", 'operator = "read"', "operator:read"),
        Case("GET", "/v1/agent/services", "/v1/agent/services", svc("web", "read"), None),
        Case("GET", "/v1/agent/service/", "/v1/agent/service/web1", svc("web", "read"), "service:read"),
        Case("GET", "/v1/agent/checks", "/v1/agent/checks", svc("web", "read"), None),
        Case("PUT", "/v1/agent/service/register", "/v1/agent/service/register", svc("api", "write"),
             "service:write", body={"Name": "api", "Port": 1}),
        Case("PUT", "/v1/agent/service/deregister/", "/v1/agent/service/deregister/gone", svc("gone", "write"),
             "service:write"),
        Case("PUT", "/v1/agent/service/maintenance/", "/v1/agent/service/maintenance/web1?enable=false",
             svc("web", "write"), "service:write"),
        Case("PUT", "/v1/agent/maintenance", "/v1/agent/maintenance?enable=false", NODE_WRITE, "node:write"),
        Case("PUT", "/v1/agent/check/register", "/v1/agent/check/register", NODE_WRITE, "node:write",
             body={"Name": "nc", "TTL": "30s"}),
        Case("PUT", "/v1/agent/check/deregister/", "/v1/agent/check/deregister/gone-check", NODE_WRITE, "node:write"),
        Case("PUT", "/v1/agent/check/pass/", "/v1/agent/check/pass/web-ttl", svc("web", "write"), "service:write"),
        Case("PUT", "/v1/agent/check/warn/", "/v1/agent/check/warn/web-ttl", svc("web", "write"), "service:write"),
        Case("PUT", "/v1/agent/check/fail/", "/v1/agent/check/fail/web-ttl", svc("web", "write"), "service:write"),
        Case("PUT", "/v1/agent/check/update/", "/v1/agent/check/update/web-ttl", svc("web", "write"),
             "service:write", body={"Status": "passing"}),
        Case("GET", "/v1/agent/health/service/name/", "/v1/agent/health/service/name/web", svc("web", "read"),
             "service:read"),
        Case("GET", "/v1/agent/health/service/id/", "/v1/agent/health/service/id/web1", svc("web", "read"),
             "service:read"),
        Case("GET", "/v1/agent/monitor", "/v1/agent/monitor?loglevel=bogus", f'agent "{NODE}" {{ policy = "read" }}',
             "agent:read"),
        Case("PUT", "/v1/agent/reload", "/v1/agent/reload", f'agent "{NODE}" {{ policy = "write" }}', "agent:write"),
        # catalog
        Case("PUT", "/v1/catalog/register", "/v1/catalog/register", 'node "n2" { policy = "write" }', "node:write",
             body={"Node": "n2", "Address": "10.0.0.2"}),
        Case("PUT", "/v1/catalog/deregister", "/v1/catalog/deregister", 'node "n2" { policy = "write" }',
             "node:write", body={"Node": "n2"}),
        Case("GET", "/v1/catalog/datacenters", "/v1/catalog/datacenters", "", None, empty=lambda b: True),
        Case("GET", "/v1/catalog/nodes", "/v1/catalog/nodes", NODE_READ, None),
        Case("GET", "/v1/catalog/services", "/v1/catalog/services", svc("web", "read"), None),
        Case("GET", "/v1/catalog/service/", "/v1/catalog/service/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/catalog/connect/", "/v1/catalog/connect/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/catalog/gateway-services/", "/v1/catalog/gateway-services/web", svc("web", "read"),
             "service:read"),
        Case("GET", "/v1/catalog/node/", f"/v1/catalog/node/{NODE}", NODE_READ, None),
        Case("GET", "/v1/catalog/node-services/", f"/v1/catalog/node-services/{NODE}", NODE_READ, None,
             empty=lambda b: b == {"Node": None, "Services": []}),
        # health
        Case("GET", "/v1/health/service/", "/v1/health/service/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/health/connect/", "/v1/health/connect/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/health/ingress/", "/v1/health/ingress/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/health/checks/", "/v1/health/checks/web", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/health/node/", f"/v1/health/node/{NODE}", NODE_READ, None),
        Case("GET", "/v1/health/state/", "/v1/health/state/any", NODE_READ, None),
        # the web UI's summaries: filtered down to nothing without service:read / node:read
        Case("GET", "/v1/internal/ui/services", "/v1/internal/ui/services", svc("web", "read") + NODE_READ, None),
        Case("GET", "/v1/internal/ui/nodes", "/v1/internal/ui/nodes", NODE_READ, None),
        Case("GET", "/v1/internal/ui/service-topology/", "/v1/internal/ui/service-topology/web?kind=",
             svc("web", "read"), "service:read"),
        # kv and txn
        Case("GET", "/v1/kv/", "/v1/kv/k/a", 'key "k/a" { policy = "read" }', "key:read"),
        Case("PUT", "/v1/kv/", "/v1/kv/k/b", 'key "k/b" { policy = "write" }', "key:write", body="v"),
        Case("DELETE", "/v1/kv/", "/v1/kv/k/a", 'key "k/a" { policy = "write" }', "key:write"),
        Case("PUT", "/v1/txn", "/v1/txn", 'key "k/t" { policy = "write" }', "key:write",
             body=[{"KV": {"Verb": "set", "Key": "k/t", "Value": "dg=="}}]),
        # user events: firing needs event:write on the name; the list shows the events the token may read
        Case("PUT", "/v1/event/fire/", "/v1/event/fire/ev2", 'event "ev2" { policy = "write" }', "event:write",
             body="payload"),
        Case("GET", "/v1/event/list", "/v1/event/list", 'event "ev" { policy = "read" }', None),
        # status, operator, snapshot
        Case("GET", "/v1/status/leader", "/v1/status/leader", "", None, empty=lambda b: True),
        Case("GET", "/v1/status/peers", "/v1/status/peers", "", None, empty=lambda b: True),
        Case("GET", "/v1/operator/raft/configuration", "/v1/operator/raft/configuration", 'operator = "read"',
             "operator:read"),
        Case("DELETE", "/v1/operator/raft/peer", "/v1/operator/raft/peer?id=nobody", 'operator = "write"',
             "operator:write"),
        Case("POST", "/v1/operator/raft/transfer-leader", "/v1/operator/raft/transfer-leader?id=nobody",
             'operator = "write"', "operator:write"),
        Case("GET", "/v1/operator/autopilot/configuration", "/v1/operator/autopilot/configuration",
             'operator = "read"', "operator:read"),
        Case("PUT", "/v1/operator/autopilot/configuration", "/v1/operator/autopilot/configuration?cas=0",
             'operator = "write"', "operator:write", body={"CleanupDeadServers": True}),
        Case("GET", "/v1/operator/autopilot/health", "/v1/operator/autopilot/health", 'operator = "read"',
             "operator:read"),
        Case("GET", "/v1/operator/autopilot/state", "/v1/operator/autopilot/state", 'operator = "read"',
             "operator:read"),
        Case("GET", "/v1/operator/usage", "/v1/operator/usage", 'operator = "read"', "operator:read"),
        Case("GET", "/v1/operator/keyring", "/v1/operator/keyring", 'keyring = "read"', "keyring:read"),
        *(Case(m, "/v1/operator/keyring", "/v1/operator/keyring", 'keyring = "write"', "keyring:write",
               body={"Key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}) for m in ("POST", "PUT", "DELETE")),
        Case("GET", "/v1/snapshot", "/v1/snapshot", 'acl = "write"', "acl:write"),
        Case("PUT", "/v1/snapshot", "/v1/snapshot", 'acl = "write"', "acl:write", body="not a snapshot"),
        # sessions
        Case("PUT", "/v1/session/create", "/v1/session/create", SESSION_WRITE, "session:write", body={}),
        Case("PUT", "/v1/session/renew/", f"/v1/session/renew/{ids['session']}", SESSION_WRITE, "session:write"),
        Case("GET", "/v1/session/info/", f"/v1/session/info/{ids['session']}", SESSION_READ, None),
        Case("GET", "/v1/session/node/", f"/v1/session/node/{NODE}", SESSION_READ, None),
        Case("GET", "/v1/session/list", "/v1/session/list", SESSION_READ, None),
        Case("PUT", "/v1/session/destroy/", f"/v1/session/destroy/{ids['session']}", SESSION_WRITE,
             "session:write"),
        # connect
        Case("GET", "/v1/connect/ca/roots", "/v1/connect/ca/roots", "", None, empty=lambda b: True),
        Case("GET", "/v1/agent/connect/ca/roots", "/v1/agent/connect/ca/roots", "", None, empty=lambda b: True),
        Case("GET", "/v1/connect/ca/configuration", "/v1/connect/ca/configuration", 'operator = "write"',
             "operator:write"),
        Case("PUT", "/v1/connect/ca/configuration", "/v1/connect/ca/configuration", 'operator = "write"',
             "operator:write", body=ids["ca_config"]),
        Case("GET", "/v1/agent/connect/ca/leaf/", "/v1/agent/connect/ca/leaf/web", svc("web", "write"),
             "service:write"),
        Case("POST", "/v1/agent/connect/authorize", "/v1/agent/connect/authorize", svc("db", "write"),
             "service:write", body={"Target": "db", "ClientCertURI": spiffe}),
        Case("GET", "/v1/connect/intentions", "/v1/connect/intentions", ixn("db", "read"), None),
        Case("POST", "/v1/connect/intentions", "/v1/connect/intentions", ixn("x", "write"), "intention:write",
             body={"SourceName": "a", "DestinationName": "x", "Action": "allow"}),
        Case("GET", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=web&destination=db",
             ixn("db", "read"), "intention:read"),
        Case("PUT", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=api&destination=db",
             ixn("db", "write"), "intention:write", body={"Action": "allow"}),
        Case("DELETE", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=api&destination=db",
             ixn("db", "write"), "intention:write"),
        Case("GET", "/v1/connect/intentions/match", "/v1/connect/intentions/match?by=destination&name=db",
             ixn("db", "read"), "intention:read"),
        Case("GET", "/v1/connect/intentions/check", "/v1/connect/intentions/check?source=web&destination=db",
             svc("db", "read"), "service:read"),
        Case("GET", "/v1/connect/intentions/", f"/v1/connect/intentions/{ids['legacy']}", ixn("db2", "read"),
             "intention:read"),
        Case("PUT", "/v1/connect/intentions/", f"/v1/connect/intentions/{ids['legacy']}", ixn("db2", "write"),
             "intention:write", body={"SourceName": "web", "DestinationName": "db2", "Action": "deny"}),
        Case("DELETE", "/v1/connect/intentions/", f"/v1/connect/intentions/{ids['legacy']}", ixn("db2", "write"),
             "intention:write"),
        # prepared queries
        Case("GET", "/v1/query", "/v1/query", 'query "q1" { policy = "read" }', None),
        Case("GET", "/v1/query/", f"/v1/query/{ids['q1']}", 'query "q1" { policy = "read" }', "query:read"),
        Case("POST", "/v1/query", "/v1/query", 'query "qw" { policy = "write" }', "query:write",
             body={"Name": "qw", "Service": {"Service": "web"}}),
        Case("PUT", "/v1/query/", f"/v1/query/{ids['q1']}", 'query "q1" { policy = "write" }', "query:write",
             body={"Name": "q1", "Service": {"Service": "web", "OnlyPassing": True}}),
        Case("DELETE", "/v1/query/", f"/v1/query/{ids['q2']}", 'query "q2" { policy = "write" }', "query:write"),
        # config entries
        Case("PUT", "/v1/config", "/v1/config", ixn("cfg", "write"), "intention:write",
             body={"Kind": "service-intentions", "Name": "cfg", "Sources": [{"Name": "web", "Action": "allow"}]}),
        Case("GET", "/v1/config/", "/v1/config/service-intentions/cfg", ixn("cfg", "read"), "intention:read"),
        Case("DELETE", "/v1/config/", "/v1/config/service-intentions/cfg", ixn("cfg", "write"), "intention:write"),
        # discovery chain
        Case("GET", "/v1/discovery-chain/", "/v1/discovery-chain/web", svc("web", "read"), "service:read"),
        Case("POST", "/v1/discovery-chain/", "/v1/discovery-chain/web", svc("web", "read"), "service:read",
             body={"OverrideProtocol": "http", "OverrideConnectTimeout": "2s"}),
        # ACL system (the ACL tables answer "ACL support disabled" on this walk's agent, whose ACLs come from
        # a static resolver: what is walked is that enforcement refuses before the handler)
        Case("PUT", "/v1/acl/bootstrap", "/v1/acl/bootstrap", "", None, free=True),
        Case("GET", "/v1/acl/token/self", "/v1/acl/token/self", "", None, free=True),
        Case("POST", "/v1/internal/acl/authorize", "/v1/internal/acl/authorize", "", None, free=True,
             body=[{"Resource": "service", "Segment": "web", "Access": "read"}]),
        Case("POST", "/v1/acl/login", "/v1/acl/login", "", None, free=True,
             body={"AuthMethod": "none", "BearerToken": "x.y.z"}),
        Case("POST", "/v1/acl/logout", "/v1/acl/logout", "", None, free=True),
        Case("GET", "/v1/acl/replication", "/v1/acl/replication", "", None, free=True),
        *(Case(method, route, route + suffix, f'acl = "{level}"', f"acl:{level}", body=body)
          for method, route, suffix, level, body in (
              ("PUT", "/v1/acl/token", "", "write", {"Description": "t"}),
              ("GET", "/v1/acl/token/", UUID, "read", None),
              ("PUT", "/v1/acl/token/", UUID, "write", {"Description": "t"}),
              ("DELETE", "/v1/acl/token/", UUID, "write", None),
              ("GET", "/v1/acl/tokens", "", "read", None),
              ("PUT", "/v1/acl/policy", "", "write", {"Name": "p", "Rules": ""}),
              ("GET", "/v1/acl/policy/name/", "p", "read", None),
              ("GET", "/v1/acl/policy/", UUID, "read", None),
              ("PUT", "/v1/acl/policy/", UUID, "write", {"Name": "p", "Rules": ""}),
              ("DELETE", "/v1/acl/policy/", UUID, "write", None),
              ("GET", "/v1/acl/policies", "", "read", None),
              ("PUT", "/v1/acl/role", "", "write", {"Name": "r"}),
              ("GET", "/v1/acl/role/name/", "r", "read", None),
              ("GET", "/v1/acl/role/", UUID, "read", None),
              ("PUT", "/v1/acl/role/", UUID, "write", {"Name": "r"}),
              ("DELETE", "/v1/acl/role/", UUID, "write", None),
              ("GET", "/v1/acl/roles", "", "read", None),
              ("PUT", "/v1/acl/auth-method", "", "write", {"Name": "m", "Type": "jwt"}),
              ("GET", "/v1/acl/auth-method/", "m", "read", None),
              ("PUT", "/v1/acl/auth-method/", "m", "write", {"Name": "m", "Type": "jwt"}),
              ("DELETE", "/v1/acl/auth-method/", "m", "write", None),
              ("GET", "/v1/acl/auth-methods", "", "read", None),
              ("PUT", "/v1/acl/binding-rule", "", "write", {"AuthMethod": "m"}),
              ("GET", "/v1/acl/binding-rule/", UUID, "read", None),
              ("PUT", "/v1/acl/binding-rule/", UUID, "write", {"AuthMethod": "m"}),
              ("DELETE", "/v1/acl/binding-rule/", UUID, "write", None),
              ("GET", "/v1/acl/binding-rules", "", "read", None),
              ("GET", "/v1/acl/templated-policies", "", "read", None),
              ("GET", "/v1/acl/templated-policy/name/", "builtin/service", "read", None),
          )),
        Case("PUT", "/v1/agent/token/", "/v1/agent/token/replication", f'agent "{NODE}" {{ policy = "write" }}',
             "agent:write", body={"Token": "replication-secret"}),
        # network coordinates
        Case("GET", "/v1/coordinate/datacenters", "/v1/coordinate/datacenters", "", None, empty=lambda b: True),
        Case("GET", "/v1/coordinate/nodes", "/v1/coordinate/nodes", NODE_READ, None),
        Case("GET", "/v1/coordinate/node/", f"/v1/coordinate/node/{NODE}", NODE_READ, "node:read"),
        Case("PUT", "/v1/coordinate/update", "/v1/coordinate/update", NODE_WRITE, "node:write",
             body={"Node": NODE, "Coord": {"Vec": [0.001] + [0.0] * 7, "Error": 0.2, "Adjustment": 0.0,
                                           "Height": 1e-5}}),
        # A join through a closed port and a force-leave of no member: refused without the rule, answered
        # (Consul's 500 texts) with it.
        Case("PUT", "/v1/agent/join/", "/v1/agent/join/127.0.0.1:1", f'agent "{NODE}" {{ policy = "write" }}',
             "agent:write"),
        Case("PUT", "/v1/agent/force-leave/", "/v1/agent/force-leave/nobody", 'operator = "write"',
             "operator:write"),
        # last: it stops the agent
        Case("PUT", "/v1/agent/leave", "/v1/agent/leave", f'agent "{NODE}" {{ policy = "write" }}', "agent:write"),
    ]


def test_every_route_has_a_case() -> None:
    """A new route without a case here (and so without a proof that its declaration is enforced) fails."""
    declared = {(m, r.path) for r in ROUTES for m in r.methods}
    covered = {c.key for c in cases(PROBE_IDS)}
    assert declared - covered == set(), "routes without a walk case"
    assert covered - declared == set(), "walk cases for routes that do not exist"


class Walker:
    def __init__(self, running: RunningAgent, session: aiohttp.ClientSession) -> None:
        self.running = running
        self.session = session

    async def call(self, method: str, url: str, token: str, body: Any = None,
                   streams: bool = False) -> tuple[int, Any, Any]:  # fmt: skip
        data = body.encode() if isinstance(body, str) else None if body is None else json.dumps(body).encode()
        async with self.session.request(method, self.running.url + url, data=data,
                                        headers={"X-Consul-Token": token}) as resp:  # fmt: skip
            if streams and resp.status == 200:
                return resp.status, None, resp.headers  # the stream never ends: its status is the answer
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            parsed: Any = raw
            if ctype.startswith("application/json") and raw:
                parsed = json.loads(raw)
            elif ctype.startswith("text/plain"):
                parsed = raw.decode(errors="replace")
            return resp.status, parsed, resp.headers

    async def settled(self) -> tuple[Any, ...]:
        """The state once the agent's background sync of what the previous request changed is done."""
        last = self.state()
        for _ in range(40):
            await asyncio.sleep(0.05)
            now = self.state()
            if now == last:
                return now
            last = now
        return last

    def state(self) -> tuple[Any, ...]:
        """What a refused request must not have changed: the log, and this agent's local state."""
        agent = self.running.agent
        return (agent.store.index, sorted(agent.services), {c: k.status for c, k in agent.checks.items()})


@pytest.fixture
async def walk_agent() -> AsyncIterator[tuple[Walker, dict[str, str], list[Case]]]:
    probe = cases(PROBE_IDS)
    tokens = {f"have-{i}": c.have for i, c in enumerate(probe)}
    tokens.update({f"lack-{i}": "" for i in range(len(probe))})
    resolver = StaticResolver(tokens, default_policy="deny", management=(ROOT,))
    # Coordinate batches are applied only when the setup asks: a background write would look like a refused
    # request that changed state.
    async with async_dev_agent(acl_resolver=resolver, consul={"coordinate": {"update_period": "1h"}}) as running, \
            aiohttp.ClientSession() as session:  # fmt: skip
        w = Walker(running, session)
        ids = await setup(w)
        yield w, ids, cases(ids)


async def setup(w: Walker) -> dict[str, str]:
    """What the cases act on, made with the management token."""
    async def ok(method: str, url: str, body: Any = None) -> Any:
        status, out, _ = await w.call(method, url, ROOT, body)
        assert status == 200, (method, url, status, out)
        return out

    await ok("PUT", "/v1/agent/service/register",
             {"Name": "web", "ID": "web1", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "60s"}})
    await ok("PUT", "/v1/agent/service/register", {"Name": "gone", "Port": 81})
    await ok("PUT", "/v1/agent/check/register", {"CheckID": "gone-check", "Name": "g", "TTL": "60s"})
    await ok("PUT", "/v1/kv/k/a", "v")
    await ok("PUT", "/v1/event/fire/ev", "hello")
    session = (await ok("PUT", "/v1/session/create", {"Name": "s", "TTL": "60s"}))["ID"]
    await ok("PUT", "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "allow"})
    legacy = (await ok("POST", "/v1/connect/intentions",
                       {"SourceName": "web", "DestinationName": "db2", "Action": "allow"}))["ID"]
    q1 = (await ok("POST", "/v1/query", {"Name": "q1", "Service": {"Service": "web"}}))["ID"]
    q2 = (await ok("POST", "/v1/query", {"Name": "q2", "Service": {"Service": "web"}}))["ID"]
    await ok("PUT", "/v1/coordinate/update", {"Node": NODE, "Coord": {"Vec": [0.0] * 8, "Error": 1.5,
                                                                     "Adjustment": 0.0, "Height": 1e-5}})
    updates = w.running.agent.coordinate_updates
    assert updates is not None and await updates.flush() == 1
    roots = await ok("GET", "/v1/connect/ca/roots")
    ca_config = await ok("GET", "/v1/connect/ca/configuration")
    return {"session": session, "legacy": legacy, "trust_domain": roots["TrustDomain"], "q1": q1, "q2": q2,
            "ca_config": {"Provider": ca_config["Provider"], "Config": ca_config["Config"]}}  # type: ignore[dict-item]


async def test_walk_every_route_lacking_and_having_its_permission(
    walk_agent: tuple[Walker, dict[str, str], list[Case]],
) -> None:
    w, _, all_cases = walk_agent
    failures: list[str] = []
    for i, case in enumerate(all_cases):
        where = f"{case.method} {case.url}"
        before = await w.settled()
        status, body, headers = await w.call(case.method, case.url, f"lack-{i}", case.body, case.streams)
        if case.free:
            if status == 403 and isinstance(body, str) and body.startswith("Permission denied"):
                failures.append(f"{where} needs no rule but was refused: {body!r}")
            continue
        if case.denied is not None:
            if case.route == "/v1/txn":
                # Consul reports a transaction's refused operation as its error: 409, nothing applied.
                ok = status == 409 and f"lacks permission '{case.denied}'" in body["Errors"][0]["What"]
            else:
                ok = status == 403 and body.startswith(
                    f"Permission denied: token with AccessorID 'lack-{i}' lacks permission '{case.denied}'"
                )
            if not ok:
                failures.append(f"{where} without {case.denied}: {status} {body!r}")
            if await w.settled() != before:
                failures.append(f"{where} was refused but changed state")
        elif status == 403 or not (200 <= status < 300 and case.empty(body)):
            failures.append(f"{where} without permission should answer a filtered, empty list: {status} {body!r}")
        elif case.have and body not in ([], {}, None) and headers.get(FILTERED) != "true":
            failures.append(f"{where}: filtered answer without {FILTERED}")
        status, body, _ = await w.call(case.method, case.url, f"have-{i}", case.body, case.streams)
        if status == 403 or (status == 409 and case.route == "/v1/txn"):
            failures.append(f"{where} with {case.have!r}: {status} {body!r}")
        elif case.denied is None and case.have and status == 200 and case.empty(body) and case.route not in (
            "/v1/catalog/connect/", "/v1/health/connect/", "/v1/health/ingress/"  # web has no Connect
            # instances and no ingress gateway
        ):
            failures.append(f"{where} with {case.have!r} shows nothing: {body!r}")
    assert not failures, "\n".join(failures)
