"""The pure prepared-query core (registry.prepared_query) and its table: Consul's parseQuery refusals, template
rendering (prefix, Regexp with match groups, the name variables, RemoveEmptyTags), the execute filters, the
near/distance seam, failover target selection, and the table's resolution, rollback and snapshot."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from registry.commands import PreparedQueryDelete, PreparedQuerySet
from registry.fsm import FSM, encode_command
from registry.prepared_query import (
    FailoverTarget,
    Instance,
    PreparedQuery,
    QueryError,
    ServiceQuery,
    compile_template,
    failover_targets,
    order,
    select,
)
from registry.state.store import StateStore, WatchSet
from registry.structs import Check, Node, Service

QID = "8f246b77-f3e1-ff88-5b48-8ec93abf3e05"


def q(**raw: object) -> PreparedQuery:
    return PreparedQuery.from_json({"ID": QID, **raw})


# ---------------------------------------------------------------------- decoding and validation


@pytest.mark.parametrize(("raw", "message"), [
    ({"Name": "a", "Service": {}}, "Invalid prepared query: Must provide a Service name to query"),
    ({"Service": {"Service": "web"}}, "Invalid prepared query: Must be bound to a session"),
    ({"Name": "a", "Token": "<hidden>", "Service": {"Service": "web"}},
     "Invalid prepared query: Bad Token '<hidden>', it looks like a query definition with a redacted token was "
     "submitted"),
    ({"Name": "a", "Service": {"Service": "web", "Failover": {"NearestN": -1}}},
     "Invalid prepared query: Bad NearestN '-1', must be >= 0"),
    ({"Name": "a", "Service": {"Service": "web", "Failover": {"NearestN": 1, "Targets": [{"Peer": "p"}]}}},
     "Invalid prepared query: Targets cannot be populated with NearestN or Datacenters"),
    ({"Name": "a", "Service": {"Service": "web"}, "DNS": {"TTL": "soon"}},
     "Invalid prepared query: Bad DNS TTL 'soon': time: invalid duration \"soon\""),
    ({"Name": "a", "Service": {"Service": "web", "NodeMeta": {"": "x"}}}, "Invalid prepared query: Key cannot be blank"),
    ({"Name": "a", "Template": {"Type": "other"}, "Service": {"Service": "web"}}, "Bad Template.Type 'other'"),
    ({"Name": "a", "Template": {"Type": "name_prefix_match", "Regexp": "("}, "Service": {"Service": "web"}},
     "Bad Regexp: error parsing regexp: "),
    ({"Name": "a", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${nope}"}},
     "Bad evaluation for '${nope}' in Service.Service: unknown variable accessed: nope"),
    ({"Name": "a", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.full"}},
     "Bad format '${name.full' in Service.Service: "),
])  # fmt: skip
def test_validation_answers_consuls_text(raw: dict, message: str) -> None:
    with pytest.raises(QueryError) as err:
        q(**raw).validate()
    assert err.value.message.startswith(message) and err.value.status == 400


def test_fields_decode_without_regard_to_case_and_read_back_as_consul_writes_them() -> None:
    # py-consul writes lower-case field names; Go's decoder matches them.
    got = PreparedQuery.from_json({"name": "n", "service": {"service": "web", "onlypassing": True,
                                   "failover": {"nearestn": 2, "datacenters": ["dc2"]}}, "dns": {"ttl": "10s"}})
    assert (got.name, got.service.service, got.service.only_passing, got.service.nearest_n) == ("n", "web", True, 2)
    out = got.to_json()
    assert list(out) == ["ID", "Name", "Session", "Token", "Template", "Service", "DNS", "CreateIndex", "ModifyIndex"]
    assert out["Service"]["Failover"] == {"NearestN": 2, "Datacenters": ["dc2"], "Targets": None}
    assert out["Service"]["Tags"] is None and out["DNS"] == {"TTL": "10s"}
    assert PreparedQuery.from_json(out) == got
    with pytest.raises(QueryError, match="Request decode failed: DNS.TTL: expected a string"):
        PreparedQuery.from_json({"DNS": {"TTL": 10}})


# ---------------------------------------------------------------------- templates


def test_prefix_template_renders_the_name_variables() -> None:
    t = q(Name="geo-", Template={"Type": "name_prefix_match"},
          Service={"Service": "${name.suffix}", "Tags": ["${name.full}", "${name.prefix}"],
                   "NodeMeta": {"seg": "${agent.segment}"}})  # fmt: skip
    r = compile_template(t).render("geo-db", segment="alpha")
    assert r.service.service == "db" and r.service.tags == ("geo-db", "geo-") and r.service.node_meta == {"seg": "alpha"}
    assert r.id == t.id and r.name == "geo-"


def test_regexp_match_groups() -> None:
    # Consul's documented example: geo-db-customer-primary -> service customer, tag primary.
    t = q(Name="geo-db", Template={"Type": "name_prefix_match", "Regexp": r"^geo-db-(.*?)-([^\-]+?)$"},
          Service={"Service": "mysql-${match(1)}", "Tags": ["${match(2)}", "${match(0)}", "${match(7)}"]})
    r = compile_template(t).render("geo-db-customer-primary")
    assert r.service.service == "mysql-customer"
    assert r.service.tags == ("primary", "geo-db-customer-primary", "")
    # No match: every ${match(N)} is empty.
    assert compile_template(t).render("geo-db").service.service == "mysql-"


def test_remove_empty_tags_and_literal_dollar() -> None:
    t = q(Name="x", Template={"Type": "name_prefix_match", "Regexp": "^x-(a)?", "RemoveEmptyTags": True},
          Service={"Service": "$${literal}", "Tags": ["${match(1)}", "keep"]})
    r = compile_template(t).render("x-")
    assert r.service.service == "${literal}" and r.service.tags == ("keep",)


# ---------------------------------------------------------------------- execution


def inst(node: str, tags: tuple[str, ...] = (), status: str = "passing", meta: dict | None = None,
         smeta: dict | None = None, check: str = "c") -> Instance:  # fmt: skip
    n = Node(id="", node=node, address="10.0.0.1", datacenter="dc1", meta=meta or {})
    s = Service(node=node, id="web", service="web", tags=tags, meta=smeta or {})
    return Instance(n, s, (Check(node=node, check_id=check, name=check, status=status, service_id="web"),))


def test_select_health_tags_and_meta() -> None:
    a = inst("a", tags=("Primary",), meta={"rack": "1"}, smeta={"v": "2"})
    b = inst("b", tags=("primary", "experimental"))
    c = inst("c", status="warning", tags=("primary",))
    d = inst("d", status="critical", check="flaky", tags=("primary",))
    svc = ServiceQuery(service="web", tags=("primary", "!experimental"))
    assert [i.node.node for i in select(svc, [a, b, c, d])] == ["a", "c"]
    assert [i.node.node for i in select(ServiceQuery(service="web", only_passing=True), [a, c])] == ["a"]
    ignoring = ServiceQuery(service="web", ignore_check_ids=("flaky",))
    assert [i.node.node for i in select(ignoring, [d])] == ["d"]
    assert [i.node.node for i in select(ServiceQuery(service="web", node_meta={"rack": "1"}), [a, b])] == ["a"]
    assert [i.node.node for i in select(ServiceQuery(service="web", service_meta={"v": "2"}), [a, b])] == ["a"]


def test_order_shuffles_sorts_by_distance_and_puts_the_near_node_first() -> None:
    nodes = [inst(f"n{i}") for i in range(8)]
    seen = {tuple(i.node.node for i in order(nodes, "", random.Random(s))) for s in range(20)}
    assert len(seen) > 1  # shuffled
    for s in range(10):
        assert order(nodes, "n5", random.Random(s))[0].node.node == "n5"  # no coordinates: near node first
    rtt = {f"n{i}": float(8 - i) for i in range(8)}
    out = order(nodes, "elsewhere", random.Random(1), lambda a, b: rtt.get(b))
    assert [i.node.node for i in out] == [f"n{i}" for i in range(7, -1, -1)]


def test_failover_targets_as_consul_chooses_them() -> None:
    svc = ServiceQuery(service="web", nearest_n=2, datacenters=("dc3", "dc9", "dc2"))
    got = failover_targets(svc, ["dc2", "dc3", "dc4"])
    assert got == [FailoverTarget(datacenter="dc2"), FailoverTarget(datacenter="dc3")]  # dc9 unknown, dc2/3 once
    assert failover_targets(svc, []) == []  # one datacenter: nothing to try
    peers = ServiceQuery(service="web", targets=(FailoverTarget(peer="p1"), FailoverTarget(datacenter="dc2")))
    assert failover_targets(peers, []) == [FailoverTarget(peer="p1")]


def test_the_core_is_pure() -> None:
    """No IO, clock or ambient randomness, and only pure project modules (the DNS resolver imports it)."""
    tree = ast.parse((Path(__file__).parents[1] / "registry" / "prepared_query.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m.split(".")[0] for m in imported} & {"asyncio", "socket", "time", "random", "aiohttp", "os",
                                                      "threading", "subprocess", "structlog", "logging"}
    project = {m for m in imported if m.startswith(("registry", "dns", "ca", "connect_proxy"))}
    assert project <= {"registry.filtering.regexp", "registry.gocompat", "registry.structs"}


# ---------------------------------------------------------------------- the table, through the FSM


def apply(fsm: FSM, cmd: object) -> object:
    return fsm.apply(fsm.store.index + 1, encode_command({**cmd.to_wire(), "Time": 1}))  # type: ignore[attr-defined]


def test_resolution_collisions_rollback_and_snapshot() -> None:
    fsm = FSM()
    static = q(Name="web", Service={"Service": "web"})
    tpl = PreparedQuery.from_json({"ID": "11111111-2222-3333-4444-555555555555", "Name": "web-",
                                   "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.suffix}"}})
    catch_all = PreparedQuery.from_json({"ID": "21111111-2222-3333-4444-555555555555", "Name": "",
                                         "Template": {"Type": "name_prefix_match"},
                                         "Service": {"Service": "${name.full}"}})
    for query in (static, tpl, catch_all):
        assert apply(fsm, PreparedQuerySet("create", query)) == query.id
    store = fsm.store
    assert store.pq_resolve("WEB").service.service == "web"  # exact name, any case
    assert store.pq_resolve("web-db").service.service == "db"  # longest template prefix
    assert store.pq_resolve("other").service.service == "other"  # the catch-all
    assert store.pq_resolve(static.id) == store.prepared_queries[static.id]
    with pytest.raises(QueryError, match="only be resolved up by name"):
        store.pq_resolve(tpl.id)
    # Consul's integrity rules, refused with nothing written.
    index = store.index
    dup = PreparedQuery.from_json({"ID": "31111111-2222-3333-4444-555555555555", "Name": "Web",
                                   "Service": {"Service": "x"}})
    assert str(apply(fsm, PreparedQuerySet("create", dup))) == "name 'Web' aliases an existing query name"
    alias = PreparedQuery.from_json({"ID": "41111111-2222-3333-4444-555555555555", "Name": static.id,
                                     "Service": {"Service": "x"}})
    assert "aliases an existing query ID" in str(apply(fsm, PreparedQuerySet("create", alias)))
    second = PreparedQuery.from_json({"ID": "51111111-2222-3333-4444-555555555555", "Template": {"Type": "name_prefix_match"},
                                      "Service": {"Service": "x"}})
    assert "empty name already exists" in str(apply(fsm, PreparedQuerySet("create", second)))
    bound = PreparedQuery.from_json({"ID": "61111111-2222-3333-4444-555555555555", "Session": "nope",
                                     "Service": {"Service": "x"}})
    assert str(apply(fsm, PreparedQuerySet("create", bound))) == 'invalid session "nope"'
    assert store.index == index + 4 and len(store.prepared_queries) == 3
    # Update keeps CreateIndex; renaming frees the old name.
    renamed = PreparedQuery.from_json({**static.to_json(), "Name": "web2"})
    apply(fsm, PreparedQuerySet("update", renamed))
    row = store.prepared_queries[static.id]
    assert row.name == "web2" and row.create_index < row.modify_index
    assert store.pq_resolve("web").service.service == "web"  # now the catch-all template renders "web"
    # A snapshot keeps every query, and templates still resolve.
    restored = StateStore.from_snapshot(store.to_snapshot())
    assert restored.pq_list(WatchSet()) == store.pq_list(WatchSet())
    assert restored.pq_resolve("web-api").service.service == "api"
    assert apply(fsm, PreparedQueryDelete(tpl.id)) is True
    assert store.pq_resolve("web-api").service.service == "web-api"  # the catch-all takes over


def test_a_query_bound_to_a_session_goes_with_it() -> None:
    fsm = FSM()
    fsm.apply(1, encode_command({"Type": "register", "Node": "n1", "Address": "10.0.0.1", "Time": 1}))
    sid = "71111111-2222-3333-4444-555555555555"
    assert fsm.apply(2, encode_command({"Type": "session", "Op": "create", "Time": 1, "Session": {
        "ID": sid, "Node": "n1", "Behavior": "release", "LockDelay": 0, "Checks": []}})) == sid
    bound = PreparedQuery.from_json({"ID": QID, "Session": sid, "Service": {"Service": "web"}})
    assert apply(fsm, PreparedQuerySet("create", bound)) == QID
    assert fsm.apply(fsm.store.index + 1, encode_command({"Type": "session", "Op": "destroy", "ID": sid,
                                                          "Time": 1})) is True
    assert fsm.store.prepared_queries == {}
