"""PUT /v1/txn through the in-process dev agent: shapes, status codes and texts as Consul answers them."""

from __future__ import annotations

import asyncio
import base64

from registry.testing import RunningAgent
from tests.conftest import Http, eventually


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def kv(verb: str, key: str, value: bytes | None = None, **extra: object) -> dict:
    body: dict = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        body["Value"] = b64(value)
    return {"KV": body}


def store_index(agent: RunningAgent) -> int:
    return agent.agent.store.index


async def test_write_txn_every_verb_and_results(http: Http) -> None:
    status, out, headers = await http.put("/v1/txn", [kv("set", "a", b"1", Flags=3), kv("set", "t/x", b"x"),
                                                      kv("set", "t/y", b"y"), kv("cas", "c", b"c", Index=0)])  # fmt: skip
    assert status == 200 and out["Errors"] is None
    assert "X-Consul-KnownLeader" not in headers  # only read-only transactions carry the query metadata
    a = out["Results"][0]["KV"]
    assert a == {"LockIndex": 0, "Key": "a", "Flags": 3, "Value": None, "CreateIndex": a["ModifyIndex"],
                 "ModifyIndex": a["ModifyIndex"]}  # fmt: skip
    assert [r["KV"]["Key"] for r in out["Results"]] == ["a", "t/x", "t/y", "c"]
    c_idx = out["Results"][3]["KV"]["ModifyIndex"]
    status, out, _ = await http.put("/v1/txn", [kv("cas", "c", b"c2", Index=c_idx), kv("delete", "a"),
                                                kv("delete-tree", "t/"), kv("get", "c")])  # fmt: skip
    assert status == 200 and len(out["Results"]) == 2
    assert out["Results"][1]["KV"]["Value"] == b64(b"c2")
    c_idx = out["Results"][1]["KV"]["ModifyIndex"]
    status, out, _ = await http.put("/v1/txn", [kv("delete-cas", "c", Index=c_idx)])
    assert (status, out) == (200, {"Results": [], "Errors": None})
    status, _, _ = await http.get("/v1/kv/c")
    assert status == 404
    # The values written by a transaction read back through /v1/kv like any other.
    await http.put("/v1/txn", [kv("set", "bin", bytes(range(256)))])
    _, raw, _ = await http.get("/v1/kv/bin?raw")
    assert raw == bytes(range(256))


async def test_refused_txn_is_409_with_op_index_and_changes_nothing(http: Http, agent: RunningAgent) -> None:
    await http.put("/v1/txn", [kv("set", "keep", b"old")])
    _, before, h = await http.get("/v1/kv/?recurse")
    kv_index = h["X-Consul-Index"]
    status, out, _ = await http.put("/v1/txn", [kv("set", "keep", b"new"), kv("set", "other", b"o"),
                                                kv("get", "missing"), kv("delete", "keep")])  # fmt: skip
    assert status == 409
    assert out == {"Results": None, "Errors": [{"OpIndex": 2, "What": 'key "missing" doesn\'t exist'}]}
    _, after, h = await http.get("/v1/kv/?recurse")
    assert after == before and h["X-Consul-Index"] == kv_index
    # A stale CAS in the middle of writes.
    status, out, _ = await http.put("/v1/txn", [kv("set", "x", b"1"), kv("cas", "keep", b"n", Index=0)])
    assert status == 409 and out["Errors"] == [{"OpIndex": 1, "What": 'failed to set key "keep", index is stale'}]
    assert (await http.get("/v1/kv/x"))[0] == 404
    # Empty keys are refused before the log, every one reported.
    at = store_index(agent)
    status, out, _ = await http.put("/v1/txn", [kv("set", ""), kv("delete-tree", ""), kv("get", "")])
    assert status == 409 and out["Errors"] == [{"OpIndex": 0, "What": "Must provide key"},
                                               {"OpIndex": 2, "What": "Must provide key"}]  # fmt: skip
    assert store_index(agent) == at


async def test_read_only_txn_skips_the_log(http: Http, agent: RunningAgent) -> None:
    await http.put("/v1/txn", [kv("set", "r/a", b"A"), kv("set", "r/b", b"B")])
    _, entries, _ = await http.get("/v1/kv/r/a")
    a_idx = entries[0]["ModifyIndex"]
    at = store_index(agent)
    ops = [kv("get", "r/a"), kv("get-tree", "r/"), kv("check-index", "r/a", Index=a_idx), kv("check-not-exists", "n"),
           kv("check-session", "r/b")]  # fmt: skip
    status, out, headers = await http.put("/v1/txn", ops)
    assert status == 200 and store_index(agent) == at  # no log entry, no index moved
    assert [(r["KV"]["Key"], r["KV"]["Value"]) for r in out["Results"]] == [
        ("r/a", b64(b"A")), ("r/a", b64(b"A")), ("r/b", b64(b"B")), ("r/a", None), ("r/b", None)]  # fmt: skip
    assert out["Errors"] is None and out["KnownLeader"] is True and out["LastContact"] == 0 and out["Index"] == 0
    assert headers["X-Consul-KnownLeader"] == "true" and headers["X-Consul-LastContact"] == "0"
    assert "X-Consul-Index" not in headers  # Consul sets no index on transactions
    for q in ("?stale", "?consistent"):
        status, again, _ = await http.put("/v1/txn" + q, ops)
        assert status == 200 and again["Results"] == out["Results"]
    status, text, _ = await http.put("/v1/txn?stale&consistent", ops)
    assert (status, text) == (400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    status, out, headers = await http.put("/v1/txn", [kv("get", "nope"), kv("check-index", "r/a", Index=1)])
    assert status == 409 and out["Results"] is None and headers["X-Consul-KnownLeader"] == "true"
    assert out["Errors"] == [{"OpIndex": 0, "What": 'key "nope" doesn\'t exist'},
                             {"OpIndex": 1, "What": f'failed index check for key "r/a", current modify index {a_idx} != 1'}]  # fmt: skip
    assert store_index(agent) == at


async def test_bad_requests(http: Http) -> None:
    async def raw(body: bytes) -> tuple[int, object]:
        status, text, _ = await http.call("PUT", "/v1/txn", raw=body)
        return status, text

    assert await raw(b"") == (400, "Failed to parse body: EOF")
    assert await raw(b'{"KV": {}}') == (400, "Failed to parse body: json: cannot unmarshal object into Go value of "
                                             "type api.TxnOps")  # fmt: skip
    assert (await raw(b"[nope"))[0] == 400
    assert await raw(b'[{"KV": {"Verb": "set", "Key": "k", "Value": "%%%"}}]') == (
        400, "Failed to parse body: illegal base64 data at input byte 0")
    assert await raw(b'[{"KV": {"Verb": "set", "Key": "k", "Flags": -1}}]') == (
        400, "Failed to parse body: json: cannot unmarshal number -1 into Go struct field KVTxnOp.KV.Flags of type uint64")
    assert await raw(b'[{"KV": {"Verb": 7, "Key": "k"}}]') == (
        400, "Failed to parse body: json: cannot unmarshal number into Go struct field KVTxnOp.KV.Verb of type api.KVOp")
    too_many = [kv("get", f"k{i}") for i in range(129)]
    assert (await http.put("/v1/txn", too_many))[:2] == (413, "Transaction contains too many operations (129 > 128)")
    status, out, _ = await http.put("/v1/txn", too_many[:128])
    assert status == 409 and len(out["Errors"]) == 128  # 128 is allowed (and every missing key reported)
    big = b"x" * (300 * 1024)
    status, text, _ = await http.put("/v1/txn", [kv("set", "big", big), kv("set", "big2", big)])
    assert status == 413 and text.startswith("Request body(") and "max size: 524288 bytes" in text
    # An unknown verb fails its operation at apply time, as in Consul.
    status, out, _ = await http.put("/v1/txn", [kv("set", "z", b"1"), kv("frob", "z")])
    assert status == 409 and out["Errors"] == [{"OpIndex": 1, "What": 'unknown KV verb "frob"'}]
    assert (await http.get("/v1/kv/z"))[0] == 404
    # Field names match case-insensitively, as Go decodes them.
    status, out, _ = await http.put("/v1/txn", [{"kv": {"verb": "set", "key": "ci", "value": b64(b"v")}}])
    assert status == 200 and out["Results"][0]["KV"]["Key"] == "ci"
    assert (await http.get("/v1/txn"))[0] == 405


async def test_value_over_the_kv_limit() -> None:
    import aiohttp

    from registry.testing import async_dev_agent

    async with async_dev_agent(kv_max_value_size=10) as agent, aiohttp.ClientSession() as session:
        http = Http(session, agent.url)
        status, text, _ = await http.put("/v1/txn", [kv("set", "a", b"0123456789A")])
        assert (status, text) == (413, 'Value for key "a" is too large (11 > 10 bytes)')
        assert (await http.put("/v1/txn", [kv("set", "a", b"0123456789")]))[0] == 200


async def test_an_element_with_no_operation_is_refused_not_skipped(http: Http, agent: RunningAgent) -> None:
    """Consul's agent skips an element with none of KV, Node, Service, Check (shifting every later OpIndex);
    Proconsul refuses the body instead, and applies nothing of it. (Node, Service and Check operations
    are covered in test_api_txn_catalog.py.)"""
    at = store_index(agent)
    for body in ([kv("set", "a", b"1"), {}], [kv("get", "a"), None], [{"Session": {"Verb": "delete"}}]):
        status, text, _ = await http.put("/v1/txn", body)
        assert status == 400 and f"operation {len(body) - 1} has none of KV, Node, Service or Check" in text
    assert store_index(agent) == at and (await http.get("/v1/kv/a"))[0] == 404


async def test_watchers_wake_once_on_commit_and_never_on_refusal(http: Http, agent: RunningAgent) -> None:
    await http.put("/v1/txn", [kv("set", "w/a", b"1")])
    _, _, h = await http.get("/v1/kv/w/a")
    index = h["X-Consul-Index"]
    notified: list[set[str]] = []
    agent.agent.hub.listeners.append(lambda topics, keys: notified.append(set(keys or ())))
    hub = agent.agent.hub
    watch = asyncio.create_task(http.get(f"/v1/kv/w/a?index={index}&wait=20s"))
    prefix_watch = asyncio.create_task(http.get(f"/v1/kv/w/?recurse&index={index}&wait=20s"))

    async def both_asleep() -> bool:
        return ("kv", "w/a") in hub._waiters and ("kvp", "w/") in hub._waiters

    await eventually(both_asleep)
    wakeups = hub.wakeups
    status, _, _ = await http.put("/v1/txn", [kv("set", "w/a", b"2"), kv("check-not-exists", "w/a")])
    assert status == 409 and notified == [] and hub.wakeups == wakeups
    assert await both_asleep() and not watch.done() and not prefix_watch.done()
    status, _, _ = await http.put("/v1/txn", [kv("set", "w/a", b"3"), kv("set", "w/b", b"b")])
    assert status == 200
    (_, entries, h1), (_, tree, _) = await asyncio.wait_for(asyncio.gather(watch, prefix_watch), 10)
    assert notified == [{"w/a", "w/b"}]  # one notification for the whole transaction
    assert hub.wakeups == wakeups + 2  # each watcher woken exactly once
    assert base64.b64decode(entries[0]["Value"]) == b"3" and int(h1["X-Consul-Index"]) > int(index)
    assert [e["Key"] for e in tree] == ["w/a", "w/b"]


async def test_locks_via_txn_with_sessions(http: Http) -> None:
    _, s1, _ = await http.put("/v1/session/create", {"LockDelay": "0s"})
    _, s2, _ = await http.put("/v1/session/create", {"LockDelay": "0s"})
    s1, s2 = s1["ID"], s2["ID"]
    status, out, _ = await http.put("/v1/txn", [kv("lock", "leader", b"me", Session=s1),
                                                kv("check-session", "leader", Session=s1)])  # fmt: skip
    assert status == 200
    held = out["Results"][0]["KV"]
    assert held["Session"] == s1 and held["LockIndex"] == 1 and held["Value"] is None
    status, out, _ = await http.put("/v1/txn", [kv("lock", "leader", b"you", Session=s2)])
    assert status == 409 and out["Errors"][0]["What"] == 'failed to lock key "leader", lock is already held'
    status, out, _ = await http.put("/v1/txn", [kv("check-session", "leader", Session=s2)])
    assert status == 409 and out["Errors"][0]["What"] == (
        f'failed session check for key "leader", current session "{s1}" != "{s2}"')
    status, out, _ = await http.put("/v1/txn", [kv("lock", "x", Session="not-a-session")])
    assert status == 409 and out["Errors"][0]["What"] == 'invalid session "not-a-session"'
    status, out, _ = await http.put("/v1/txn", [kv("unlock", "leader", b"bye", Session=s1)])
    assert status == 200 and "Session" not in out["Results"][0]["KV"]
    status, out, _ = await http.put("/v1/txn", [kv("lock", "leader", b"you", Session=s2)])
    assert status == 200 and out["Results"][0]["KV"]["LockIndex"] == 2
    # The /v1/kv view agrees.
    _, entries, _ = await http.get("/v1/kv/leader")
    assert entries[0]["Session"] == s2 and base64.b64decode(entries[0]["Value"]) == b"you"


async def test_kv_delete_cas_of_missing_key_is_true(http: Http) -> None:
    """Consul's kvsDeleteCASTxn: a key that is already gone counts as deleted."""
    status, ok, _ = await http.delete("/v1/kv/never?cas=42")
    assert (status, ok) == (200, True)
