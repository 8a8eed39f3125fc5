"""/v1/query over HTTP on a real dev agent: py-consul's ``consul.query`` calls where it has them (create,
list, get, update, delete, execute, explain) and raw HTTP for the rest (templates, failover, ?near, ?limit,
?connect, Consul's error texts, a query bound to a session, snapshot and restore)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from registry.testing import RunningAgent, dev_agent


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        c = consul.Consul(port=a.http_port)
        for i, (status, tags) in enumerate([("passing", ["primary", "v1"]), ("warning", ["v1"]),
                                            ("critical", ["primary"])], start=1):  # fmt: skip
            c.catalog.register(f"n{i}", f"10.0.0.{i}", service={"Service": "web", "ID": "web", "Port": 80,
                                                                "Tags": tags, "Meta": {"zone": f"z{i}"}},
                               check={"CheckID": "web-check", "Name": "web", "Status": status,
                                      "ServiceID": "web"})  # fmt: skip
        c.catalog.register("n4", "10.0.0.4", service={"Service": "db", "ID": "db", "Port": 5432},
                           check={"CheckID": "db-check", "Name": "db", "Status": "critical", "ServiceID": "db"})
        c.catalog.register("n1", "10.0.0.1", service={"Service": "db-customer", "ID": "dbc", "Port": 3306,
                                                      "Tags": ["primary"]})  # fmt: skip
        yield a


@pytest.fixture
def c(agent: RunningAgent) -> consul.Consul:
    return consul.Consul(port=agent.http_port)


def call(agent: RunningAgent, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(agent.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status, ctype = resp.read(), resp.status, resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
    if ctype.startswith("application/json") and raw:
        return status, json.loads(raw)
    return status, raw.decode()


def nodes(result: dict[str, Any]) -> list[str]:
    return sorted(n["Node"]["Node"] for n in result["Nodes"])


def test_create_list_get_update_delete_execute_explain_with_py_consul(c: consul.Consul) -> None:
    created = c.query.create("web", name="web-q", onlypassing=False, tags=["primary"])
    qid = created["ID"]
    listed = c.query.list()
    assert [q["ID"] for q in listed if q["Name"] == "web-q"] == [qid]
    got = c.query.get(qid)
    assert len(got) == 1 and got[0]["Service"]["Service"] == "web" and got[0]["Service"]["Tags"] == ["primary"]
    assert got[0]["CreateIndex"] == got[0]["ModifyIndex"] > 0
    # py-consul makes every query a name_prefix_match template: a name that starts with the query's runs it.
    assert got[0]["Template"]["Type"] == "name_prefix_match"
    result = c.query.execute("web-q")
    assert result["Service"] == "web" and result["Datacenter"] == "dc1" and result["Failovers"] == 0
    assert nodes(result) == ["n1"]  # n3 is critical; n2 lacks the tag
    assert {"DNS", "Index", "PeerName"} <= set(result)
    assert c.query.explain("web-q-extra")["Query"]["Service"]["Service"] == "web"
    assert c.query.update(qid, "web", name="web-q", onlypassing=True) is True
    updated = c.query.get(qid)[0]
    assert updated["Service"]["OnlyPassing"] is True and updated["CreateIndex"] < updated["ModifyIndex"]
    assert nodes(c.query.execute("web-q", limit=5)) == ["n1"]  # OnlyPassing: the warning n2 is out too
    assert c.query.delete(qid) is True
    assert c.query.get(qid) is None  # 404
    assert c.query.delete(qid) is False


def test_static_query_by_id_and_by_name_with_filters(agent: RunningAgent) -> None:
    status, out = call(agent, "POST", "/v1/query", {"Name": "v1-web", "Service": {
        "Service": "web", "Tags": ["v1", "!primary"], "ServiceMeta": {"zone": "z2"}}, "DNS": {"TTL": "7s"}})
    assert status == 200, out
    qid = out["ID"]
    for ident in (qid, "v1-web", "V1-WEB"):
        status, result = call(agent, "GET", f"/v1/query/{ident}/execute")
        assert status == 200 and nodes(result) == ["n2"] and result["DNS"] == {"TTL": "7s"}
    status, result = call(agent, "GET", f"/v1/query/{qid}/execute?limit=0&connect=false&near=_agent")
    assert status == 200 and nodes(result) == ["n2"]
    assert call(agent, "GET", "/v1/query/v1-web-other/execute")[0] == 404  # a static query is not a prefix
    status, text = call(agent, "GET", f"/v1/query/{qid}/execute?limit=x")
    assert (status, text) == (400, 'Bad limit: strconv.Atoi: parsing "x": invalid syntax')
    status, text = call(agent, "GET", f"/v1/query/{qid}/execute?connect=maybe")
    assert status == 400 and text.startswith("Error parsing 'connect' value: ")
    assert call(agent, "GET", f"/v1/query/{qid}/execute?dc=dc9") == (500, "No path to datacenter")
    assert call(agent, "DELETE", f"/v1/query/{qid}")[0] == 200


def test_near_agent_and_limit(agent: RunningAgent) -> None:
    status, out = call(agent, "POST", "/v1/query", {"Name": "near-web", "Service": {"Service": "web"}})
    assert status == 200
    for _ in range(5):
        status, result = call(agent, "GET", "/v1/query/near-web/execute?near=n2")
        assert [n["Node"]["Node"] for n in result["Nodes"]][0] == "n2"
        status, result = call(agent, "GET", "/v1/query/near-web/execute?limit=1")
        assert len(result["Nodes"]) == 1
    call(agent, "DELETE", f"/v1/query/{out['ID']}")


def test_templates_prefix_and_regexp(agent: RunningAgent) -> None:
    status, out = call(agent, "POST", "/v1/query", {
        "Name": "geo-db", "Template": {"Type": "name_prefix_match", "Regexp": r"^geo-db-(.*?)-([^\-]+?)$"},
        "Service": {"Service": "db-${match(1)}", "Tags": ["${match(2)}"]}})
    assert status == 200, out
    status, result = call(agent, "GET", "/v1/query/geo-db-customer-primary/execute")
    assert status == 200 and result["Service"] == "db-customer" and nodes(result) == ["n1"]
    status, explained = call(agent, "GET", "/v1/query/geo-db-customer-primary/explain")
    assert explained["Query"]["Service"]["Service"] == "db-customer"
    assert explained["Query"]["Service"]["Tags"] == ["primary"] and explained["Query"]["ID"] == out["ID"]
    # A template is run by name only.
    status, text = call(agent, "GET", f"/v1/query/{out['ID']}/execute")
    assert (status, text) == (400, "prepared query templates can only be resolved up by name, not by ID")
    status, catch_all = call(agent, "POST", "/v1/query", {"Template": {"Type": "name_prefix_match"},
                                                          "Service": {"Service": "${name.full}"}})
    assert status == 200
    assert call(agent, "GET", "/v1/query/web/execute")[1]["Service"] == "web"  # the catch-all
    status, text = call(agent, "POST", "/v1/query", {"Template": {"Type": "name_prefix_match"},
                                                     "Service": {"Service": "x"}})
    assert (status, text) == (400, "a query template with an empty name already exists")
    for qid in (out["ID"], catch_all["ID"]):
        assert call(agent, "DELETE", f"/v1/query/{qid}")[0] == 200


def test_failover_with_one_datacenter(agent: RunningAgent) -> None:
    """No healthy instance: Consul tries the other datacenters it knows (none here: a listed one is skipped
    and not counted) and every peer target (counted; with no peerings it has nothing)."""
    status, out = call(agent, "POST", "/v1/query", {"Name": "db-fo", "Service": {
        "Service": "db", "Failover": {"NearestN": 3, "Datacenters": ["dc2", "dc3"]}}})
    assert status == 200
    status, result = call(agent, "GET", "/v1/query/db-fo/execute")
    assert status == 200 and result["Nodes"] == [] and result["Failovers"] == 0 and result["Datacenter"] == "dc1"
    status, peers = call(agent, "POST", "/v1/query", {"Name": "db-peers", "Service": {
        "Service": "db", "Failover": {"Targets": [{"Peer": "east"}, {"Datacenter": "dc2"}, {"PeerName": "west"}]}}})
    assert status == 200
    status, result = call(agent, "GET", "/v1/query/db-peers/execute")
    assert result["Nodes"] == [] and result["Failovers"] == 2 and result["PeerName"] == "west"
    for qid in (out["ID"], peers["ID"]):
        call(agent, "DELETE", f"/v1/query/{qid}")


@pytest.mark.parametrize(("body", "status", "text"), [
    (b"{", 400, "Request decode failed: "),
    ({"Name": "bad"}, 400, "Invalid prepared query: Must provide a Service name to query"),
    ({"Name": "bad", "Service": {"Service": "web"}, "DNS": {"TTL": 10}}, 400,
     "Request decode failed: DNS.TTL: expected a string"),
    ({"Service": {"Service": "web"}}, 400, "Invalid prepared query: Must be bound to a session"),
    ({"ID": "x", "Name": "bad", "Service": {"Service": "web"}}, 400,
     "ID must be empty when creating a new prepared query"),
    ({"Name": "bad", "Session": "no-such-session", "Service": {"Service": "web"}}, 400,
     'invalid session "no-such-session"'),
])  # fmt: skip
def test_bad_bodies_answer_consuls_text(agent: RunningAgent, body: Any, status: int, text: str) -> None:
    got_status, got = call(agent, "POST", "/v1/query", body)
    assert got_status == status and got.startswith(text), got
    assert not [q for q in call(agent, "GET", "/v1/query")[1] if q["Name"] == "bad"]


def test_missing_queries_and_methods(agent: RunningAgent) -> None:
    ghost = "00000000-0000-0000-0000-000000000000"
    assert call(agent, "GET", f"/v1/query/{ghost}") == (404, "Query not found")
    assert call(agent, "GET", "/v1/query/nobody/execute") == (404, "Query not found")
    assert call(agent, "GET", "/v1/query/nobody/explain") == (404, "Query not found")
    assert call(agent, "PUT", f"/v1/query/{ghost}", {"Name": "x", "Service": {"Service": "web"}}) == (
        404, f"Cannot modify non-existent prepared query: '{ghost}'")
    assert call(agent, "PUT", f"/v1/query/{ghost}/execute")[0] == 405


def test_name_collisions(agent: RunningAgent) -> None:
    status, a = call(agent, "POST", "/v1/query", {"Name": "dup", "Service": {"Service": "web"}})
    assert status == 200
    assert call(agent, "POST", "/v1/query", {"Name": "DUP", "Service": {"Service": "web"}}) == (
        400, "name 'DUP' aliases an existing query name")
    assert call(agent, "POST", "/v1/query", {"Name": a["ID"], "Service": {"Service": "web"}}) == (
        400, f"name '{a['ID']}' aliases an existing query ID")
    call(agent, "DELETE", f"/v1/query/{a['ID']}")


def test_a_query_bound_to_a_session_and_snapshot_restore(agent: RunningAgent, c: consul.Consul) -> None:
    sid = c.session.create(node="n1", behavior="release", checks=[])
    status, bound = call(agent, "POST", "/v1/query", {"Session": sid, "Service": {"Service": "web"}})
    assert status == 200, bound
    status, named = call(agent, "POST", "/v1/query", {"Name": "kept", "Service": {"Service": "web"}})
    assert status == 200, named
    snap = c.snapshot.save()
    assert call(agent, "GET", f"/v1/query/{bound['ID']}/execute")[0] == 200  # unnamed: by ID
    c.session.destroy(sid)
    assert call(agent, "GET", f"/v1/query/{bound['ID']}")[0] == 404  # gone with its session
    assert call(agent, "DELETE", f"/v1/query/{named['ID']}")[0] == 200
    c.snapshot.restore(snap)
    ids = {q["ID"] for q in call(agent, "GET", "/v1/query")[1]}
    assert {bound["ID"], named["ID"]} <= ids
    assert call(agent, "GET", "/v1/query/kept/execute")[1]["Service"] == "web"
    for qid in (bound["ID"], named["ID"]):
        call(agent, "DELETE", f"/v1/query/{qid}")
