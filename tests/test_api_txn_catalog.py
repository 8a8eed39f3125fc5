"""Node, Service and Check operations in PUT /v1/txn through a dev agent (and py-consul where it has the
call): Consul's verbs, result shapes, texts and status codes, all or nothing with the KV operations, the
consul-esm pattern (a check written with CAS on the ModifyIndex it read), read-only transactions, ACLs per
operation, and blocking readers woken by what a transaction touched."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import consul
import pytest

from registry.acl.resolver import StaticResolver
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http

NODE_ID = "67539c9d-b948-ba67-edd4-d07a676d6673"


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def kv(verb: str, key: str, value: bytes | None = None, **extra: object) -> dict:
    body: dict = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        body["Value"] = b64(value)
    return {"KV": body}


def node(verb: str, name: str, **fields: object) -> dict:
    return {"Node": {"Verb": verb, "Node": {"Node": name, **fields}}}


def service(verb: str, node_name: str, **fields: object) -> dict:
    return {"Service": {"Verb": verb, "Node": node_name, "Service": fields}}


def check(verb: str, **fields: object) -> dict:
    return {"Check": {"Verb": verb, "Check": fields}}


async def indexes(http: Http) -> dict[str, tuple[str, Any]]:
    """What every catalog/KV read of the test's objects answers (index and body)."""
    out = {}
    for path in ("/v1/catalog/nodes", "/v1/catalog/service/db", "/v1/health/service/db", "/v1/health/node/ext",
                 "/v1/catalog/node/ext", "/v1/kv/?recurse"):  # fmt: skip
        status, body, headers = await http.get(path)
        out[path] = (headers["X-Consul-Index"], body if status == 200 else status)
    return out


async def test_mixed_transaction_applies_every_kind_with_consuls_results(http: Http) -> None:
    ops = [
        kv("set", "svc/db", b"primary"),
        node("set", "ext", ID=NODE_ID, Address="10.0.0.9", Meta={"external-node": "true"}),
        service("set", "ext", Service="db", Port=5432, Tags=["primary"], Meta={"v": "1"}),
        check("set", Node="ext", CheckID="db-http", Name="DB HTTP", Status="passing", ServiceID="db",
              Definition={"HTTP": "http://10.0.0.9:8080/health", "Interval": "10s", "Timeout": "5s",
                          "Header": {"X-A": ["1"]}}),
    ]  # fmt: skip
    status, out, _ = await http.put("/v1/txn", ops)
    assert status == 200 and out["Errors"] is None, out
    kv_r, node_r, svc_r, chk_r = out["Results"]
    idx = node_r["Node"]["ModifyIndex"]
    assert kv_r["KV"]["Key"] == "svc/db" and kv_r["KV"]["Value"] is None and kv_r["KV"]["ModifyIndex"] == idx
    assert node_r == {"Node": {"ID": NODE_ID, "Node": "ext", "Address": "10.0.0.9", "Datacenter": "dc1",
                               "TaggedAddresses": {}, "Meta": {"external-node": "true"}, "CreateIndex": idx,
                               "ModifyIndex": idx}}  # fmt: skip
    s = svc_r["Service"]
    assert (s["ID"], s["Service"], s["Port"], s["Tags"], s["Meta"]) == ("db", "db", 5432, ["primary"], {"v": "1"})
    assert s["Weights"] == {"Passing": 0, "Warning": 0}  # Consul copies the AgentWeights as sent (zero)
    assert (s["CreateIndex"], s["ModifyIndex"]) == (idx, idx)
    c = chk_r["Check"]
    assert (c["Node"], c["CheckID"], c["Name"], c["Status"], c["ServiceID"], c["ServiceName"], c["ServiceTags"]) == (
        "ext", "db-http", "DB HTTP", "passing", "db", "db", ["primary"])
    assert c["Definition"] == {"HTTP": "http://10.0.0.9:8080/health", "Header": {"X-A": ["1"]},
                               "Interval": "10s", "Timeout": "5s"}  # fmt: skip
    # The catalog shows all of it, at the transaction's one index.
    status, entries, headers = await http.get("/v1/health/service/db")
    assert int(headers["X-Consul-Index"]) == idx
    assert [(e["Node"]["Node"], e["Service"]["ID"], [x["CheckID"] for x in e["Checks"]]) for e in entries] == [
        ("ext", "db", ["db-http"])]
    # Deletes answer no result; delete-cas with the current index; the node's delete takes its services.
    status, out, _ = await http.put("/v1/txn", [check("delete-cas", Node="ext", CheckID="db-http", ModifyIndex=idx),
                                                service("delete", "ext", ID="db", Service="db"),
                                                node("delete", "ext"), kv("delete", "svc/db")])  # fmt: skip
    assert (status, out) == (200, {"Results": [], "Errors": None})
    assert (await http.get("/v1/catalog/node/ext"))[1] is None


async def test_one_stale_cas_fails_the_whole_mixed_transaction(http: Http) -> None:
    status, out, _ = await http.put("/v1/txn", [
        node("set", "ext", Address="10.0.0.9"), service("set", "ext", Service="db", Port=1),
        check("set", Node="ext", CheckID="c1", Name="c1", ServiceID="db", Status="passing"),
        kv("set", "keep", b"old")])  # fmt: skip
    assert status == 200
    c1_index = out["Results"][2]["Check"]["ModifyIndex"]
    before = await indexes(http)
    ops = [
        kv("set", "keep", b"new"), kv("set", "other", b"x"),
        node("set", "ext", Address="10.9.9.9"), node("set", "ext2", Address="10.0.0.10"),
        service("set", "ext", Service="db", Port=2), service("set", "ext", ID="db2", Service="db", Port=3),
        check("set", Node="ext", CheckID="c2", Name="c2", Status="passing"),
        check("cas", Node="ext", CheckID="c1", Name="c1", ServiceID="db", ServiceName="db", Status="critical",
              ModifyIndex=c1_index - 1),
        service("delete", "ext", ID="db", Service="db"),
    ]  # fmt: skip
    status, out, _ = await http.put("/v1/txn", ops)
    assert status == 409
    assert out == {"Results": None, "Errors": [
        {"OpIndex": 7, "What": 'failed to set check "c1" on node "ext", index is stale'}]}
    assert await indexes(http) == before  # nothing applied, no index moved for any reader
    # Every failing operation is reported, each with Consul's text.
    status, out, _ = await http.put("/v1/txn", [
        node("cas", "ext", Address="1.1.1.1", ModifyIndex=1), node("get", "nope"),
        service("get", "ext", ID="nope"), service("set", "ghost", Service="x"),
        check("set", Node="ext", CheckID="c9", ServiceID="nope"), check("get", Node="ext", CheckID="nope"),
        node("delete-cas", "ext", ModifyIndex=1), node("delete-tree", "ext"), service("frob", "ext", Service="db"),
    ])  # fmt: skip
    assert status == 409 and out["Results"] is None
    assert out["Errors"] == [
        {"OpIndex": 0, "What": 'failed to set node "ext", index is stale'},
        {"OpIndex": 1, "What": 'node "nope" doesn\'t exist'},
        {"OpIndex": 2, "What": 'service "nope" on node "ext" doesn\'t exist'},
        {"OpIndex": 3, "What": "Missing node registration"},
        {"OpIndex": 4, "What": "Missing service registration"},
        {"OpIndex": 5, "What": 'check "nope" on node "ext" doesn\'t exist'},
        {"OpIndex": 6, "What": 'failed to delete node "ext", index is stale'},
        {"OpIndex": 7, "What": 'unknown Node verb "delete-tree"'},  # Consul has no delete-tree for nodes
        {"OpIndex": 8, "What": 'unknown Service verb "frob"'},
    ]
    assert await indexes(http) == before


async def test_prechecks_refuse_before_the_log(http: Http, agent: RunningAgent) -> None:
    at = agent.agent.store.index
    status, out, _ = await http.put("/v1/txn", [
        node("set", ""), node("set", "n", ID="not-a-uuid"), node("set", "n", ID="67539c9d-b948-ba67-edd4-d07a676d667z"),
        service("set", "n", ID="only-id"), service("set", "n", Service="x", Address="0.0.0.0"),
        service("set", "n", Service="p", Kind="connect-proxy"), kv("set", ""), node("set", "fine"),
    ])  # fmt: skip
    assert status == 409 and out["Results"] is None
    assert out["Errors"] == [
        {"OpIndex": 0, "What": "Must provide node"},
        {"OpIndex": 1, "What": "Bad node ID: uuid string is wrong length"},
        {"OpIndex": 2, "What": "Bad node ID: encoding/hex: invalid byte: U+007A 'z'"},
        {"OpIndex": 3, "What": "Must provide service name (Service.Service) when service ID is provided"},
        {"OpIndex": 4, "What": "Invalid service address"},
        {"OpIndex": 5, "What": "2 errors occurred:\n\t* Proxy.DestinationServiceName must be non-empty for "
                               "Connect proxy services\n\t* Port or SocketPath must be set for a Connect proxy\n\n"},
        {"OpIndex": 6, "What": "Must provide key"},
    ]
    assert agent.agent.store.index == at


async def test_bodies_that_do_not_decode_are_400_with_gos_text(http: Http) -> None:
    async def raw(body: object) -> tuple[int, object]:
        status, text, _ = await http.put("/v1/txn", body)
        return status, text

    assert await raw([{"Node": {"Verb": "set", "Node": {"Node": "n", "Address": 7}}}]) == (
        400, "Failed to parse body: json: cannot unmarshal number into Go struct field Node.Node.Node.Address of "
             "type string")
    assert await raw([{"Service": {"Verb": "set", "Node": "n", "Service": {"Service": "s", "Port": "80"}}}]) == (
        400, "Failed to parse body: json: cannot unmarshal string into Go struct field AgentService.Service.Service"
             ".Port of type int")
    assert await raw([{"Check": {"Verb": "set", "Check": {"Node": "n", "Definition": {"Interval": "ten"}}}}]) == (
        400, 'Failed to parse body: time: invalid duration "ten"')
    assert await raw([{"Check": "x"}]) == (
        400, "Failed to parse body: json: cannot unmarshal string into Go struct field TxnOp.Check of type "
             "api.CheckTxnOp")
    status, text = await raw([kv("get", "a"), {}])
    assert status == 400 and "operation 1 has none of KV, Node, Service or Check" in str(text)
    too_many = [node("get", f"n{i}") for i in range(129)]
    assert await raw(too_many) == (413, "Transaction contains too many operations (129 > 128)")


async def test_read_only_transaction_is_a_read(http: Http, agent: RunningAgent) -> None:
    status, out, _ = await http.put("/v1/txn", [
        node("set", "ext", ID=NODE_ID, Address="10.0.0.9"), service("set", "ext", Service="db", Port=1),
        check("set", Node="ext", CheckID="c1", Name="c1", ServiceID="db", Status="warning")])  # fmt: skip
    assert status == 200
    at = agent.agent.store.index
    ops = [node("get", "ext"), service("get", "ext", ID="db"), check("get", Node="ext", CheckID="c1")]
    for query in ("", "?stale", "?consistent"):
        status, out, headers = await http.put("/v1/txn" + query, ops)
        assert status == 200 and out["Errors"] is None
        assert [list(r) for r in out["Results"]] == [["Node"], ["Service"], ["Check"]]
        assert out["Results"][2]["Check"]["Status"] == "warning"
        assert out["KnownLeader"] is True and headers["X-Consul-KnownLeader"] == "true"
        assert "X-Consul-LastContact" in headers
    assert agent.agent.store.index == at  # no log entry
    # By ID, as Consul looks a node up when one is given.
    status, by_id, _ = await http.put("/v1/txn", [node("get", "whatever", ID=NODE_ID)])
    assert status == 200 and by_id["Results"][0]["Node"]["Node"] == "ext"
    status, out, headers = await http.put("/v1/txn", [node("get", "nope")])
    assert status == 409 and out["Errors"] == [{"OpIndex": 0, "What": 'node "nope" doesn\'t exist'}]
    assert headers["X-Consul-KnownLeader"] == "true"


def test_consul_esm_updates_an_external_check_with_cas(proconsul_agent: RunningAgent) -> None:
    """consul-esm's loop: read the external check, write its new status with a Check ``cas`` on the
    ModifyIndex it read (the whole definition sent back); a write from a stale read is refused."""
    c = consul.Consul(host="127.0.0.1", port=proconsul_agent.http_port)
    assert c.catalog.register("esm-node", "10.1.0.1", service={"Service": "web", "ID": "web1", "Port": 80},
                              check={"CheckID": "web-http", "Name": "web http", "ServiceID": "web1",
                                     "Status": "critical"})  # fmt: skip
    _, checks = c.health.node("esm-node")
    read = next(x for x in checks if x["CheckID"] == "web-http")
    definition = {"HTTP": "http://10.1.0.1/health", "Interval": "30s", "Timeout": "5s",
                  "DeregisterCriticalServiceAfter": "30m"}  # fmt: skip
    update = {"Check": {"Verb": "cas", "Check": {
        "Node": "esm-node", "CheckID": "web-http", "Name": "web http", "Status": "passing", "Output": "HTTP GET: 200 OK",
        "ServiceID": "web1", "ServiceName": "web", "Definition": definition, "ModifyIndex": read["ModifyIndex"]}}}
    out = c.txn.put([update])
    written = out["Results"][0]["Check"]
    assert written["Status"] == "passing" and written["ModifyIndex"] > read["ModifyIndex"]
    assert written["Definition"] == {"HTTP": "http://10.1.0.1/health", "Interval": "30s", "Timeout": "5s",
                                     "DeregisterCriticalServiceAfter": "30m0s"}  # fmt: skip
    _, nodes = c.health.service("web", passing=True)
    assert [n["Node"]["Node"] for n in nodes] == ["esm-node"]
    # A second writer that read before the first wrote is refused, and changes nothing.
    with pytest.raises(consul.ConsulException) as exc:
        c.txn.put([update])
    assert "409" in str(exc.value) and "index is stale" in str(exc.value) and "web-http" in str(exc.value)
    _, again = c.health.node("esm-node")
    assert next(x for x in again if x["CheckID"] == "web-http")["ModifyIndex"] == written["ModifyIndex"]
    # Setting the same state again with the current index changes nothing and keeps the index.
    same = {"Check": {**update["Check"], "Check": {**update["Check"]["Check"], "ModifyIndex": written["ModifyIndex"]}}}
    assert c.txn.put([same])["Results"][0]["Check"]["ModifyIndex"] == written["ModifyIndex"]


async def test_blocking_readers_of_what_a_transaction_touched_wake(http: Http) -> None:
    await http.put("/v1/txn", [node("set", "ext", Address="10.0.0.9"), service("set", "ext", Service="db", Port=1)])
    _, _, h = await http.get("/v1/health/service/db")
    index = h["X-Consul-Index"]
    _, _, h2 = await http.get("/v1/kv/w")
    kv_index = h2["X-Consul-Index"]
    health = asyncio.create_task(http.get(f"/v1/health/service/db?index={index}&wait=5s"))
    key = asyncio.create_task(http.get(f"/v1/kv/w?index={kv_index}&wait=5s"))
    await asyncio.sleep(0.1)
    assert not health.done() and not key.done()
    # A refused transaction wakes nobody.
    status, _, _ = await http.put("/v1/txn", [kv("set", "w", b"1"),
                                              check("set", Node="ext", CheckID="c", ServiceID="db", Status="bogus")])
    assert status == 409
    await asyncio.sleep(0.1)
    assert not health.done() and not key.done()
    status, _, _ = await http.put("/v1/txn", [kv("set", "w", b"1"),
                                              check("set", Node="ext", CheckID="c", ServiceID="db", Status="passing")])
    assert status == 200
    (_, entries, hh), (_, _, kh) = await asyncio.wait_for(asyncio.gather(health, key), 3)
    assert int(hh["X-Consul-Index"]) > int(index) and entries[0]["Checks"][0]["CheckID"] == "c"
    assert int(kh["X-Consul-Index"]) > int(kv_index)


TOKENS = {
    "kv-only": 'key_prefix "" { policy = "write" }',
    "ext-writer": 'key_prefix "" { policy = "write" }\nnode "ext" { policy = "write" }\n'
                  'service "db" { policy = "write" }',
    "reader": 'node_prefix "" { policy = "read" }\nservice "db" { policy = "read" }',
}


@pytest.fixture
async def acl_http() -> AsyncIterator[Http]:
    resolver = StaticResolver(TOKENS, default_policy="deny", management=("root",))
    async with async_dev_agent(acl_resolver=resolver) as running, aiohttp.ClientSession() as session:
        yield Http(session, running.url)


def tok(secret: str) -> dict[str, dict[str, str]]:
    return {"headers": {"X-Consul-Token": secret}}


async def test_each_operation_is_checked_on_its_own_acl_rule(acl_http: Http) -> None:
    h = acl_http
    ops = [kv("set", "k", b"v"), node("set", "ext", Address="10.0.0.9"), service("set", "ext", Service="db", Port=1),
           service("set", "ext", Service="other", Port=2), check("set", Node="ext", CheckID="n", Name="n"),
           check("set", Node="ext", CheckID="s", ServiceID="other", ServiceName="other")]  # fmt: skip
    status, out, _ = await h.put("/v1/txn", ops, **tok("kv-only"))
    assert status == 409 and [e["OpIndex"] for e in out["Errors"]] == [1, 2, 3, 4, 5]
    assert "lacks permission 'node:write' on \"ext\"" in out["Errors"][0]["What"]
    assert "lacks permission 'service:write' on \"db\"" in out["Errors"][1]["What"]
    assert "lacks permission 'node:write' on \"ext\"" in out["Errors"][3]["What"]
    assert "lacks permission 'service:write' on \"other\"" in out["Errors"][4]["What"]
    status, out, _ = await h.put("/v1/txn", ops, **tok("ext-writer"))
    assert status == 409 and [e["OpIndex"] for e in out["Errors"]] == [3, 5]
    assert (await h.get("/v1/kv/k", **tok("root")))[0] == 404  # nothing applied
    status, out, _ = await h.put("/v1/txn", [ops[i] for i in (0, 1, 2, 4)], **tok("ext-writer"))
    assert status == 200 and len(out["Results"]) == 4
    # Reads are filtered, not refused: the reader sees the node and the db service, not the KV entry.
    status, out, headers = await h.put("/v1/txn", [kv("get", "k"), node("get", "ext"), service("get", "ext", ID="db")],
                                       **tok("reader"))  # fmt: skip
    assert status == 200 and [list(r) for r in out["Results"]] == [["Node"], ["Service"]]
    assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
