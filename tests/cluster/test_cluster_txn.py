"""/v1/txn on three real server processes: a transaction sent to a follower is forwarded to the leader, applied
as one log entry on every server, and a refused one changes nothing anywhere."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def op(verb: str, key: str, value: str | None = None, **extra: object) -> dict:
    body: dict = {"Verb": verb, "Key": key, **extra}
    if value is not None:
        body["Value"] = base64.b64encode(value.encode()).decode()
    return {"KV": body}


def test_txn_via_follower_applies_atomically_on_every_server(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    leader = cluster.start()
    follower = cluster.others(leader)[0]
    cluster.wait_caught_up()

    ops = [op("set", "app/a", "1"), op("set", "app/b", "2"), op("cas", "app/c", "3", Index=0)]
    reply = follower.put("/v1/txn", json.dumps(ops))
    assert reply.status == 200, reply.text
    results = [r["KV"] for r in reply.json()["Results"]]
    index = results[0]["ModifyIndex"]
    # One log entry: every key carries the same index.
    assert [r["Key"] for r in results] == ["app/a", "app/b", "app/c"] and {r["ModifyIndex"] for r in results} == {index}

    def tree(server) -> list[tuple[str, str, int]] | None:  # noqa: ANN001
        got = server.get("/v1/kv/app/?recurse&stale", timeout=3)
        if got.status != 200:
            return None
        return [(e["Key"], base64.b64decode(e["Value"]).decode(), e["ModifyIndex"]) for e in got.json()]

    want = [("app/a", "1", index), ("app/b", "2", index), ("app/c", "3", index)]
    for s in cluster.servers:
        wait_for(f"{s.name} to apply the transaction", lambda s=s: tree(s) == want, timeout=20)

    # A refused transaction through another follower: nothing changes on any server.
    other = cluster.others(leader)[1]
    bad = [op("set", "app/a", "changed"), op("delete", "app/b"), op("check-index", "app/c", Index=index + 1000)]
    reply = other.put("/v1/txn", json.dumps(bad))
    assert reply.status == 409, reply.text
    assert reply.json()["Errors"] == [
        {"OpIndex": 2, "What": f'failed index check for key "app/c", current modify index {index} != {index + 1000}'}
    ]
    cluster.wait_caught_up()  # the refused entry is in everyone's log by now
    for s in cluster.servers:
        assert tree(s) == want, s.name

    # A read-only transaction on a follower with ?stale is answered from its own store.
    reply = follower.put("/v1/txn?stale", json.dumps([op("get", "app/b")]))
    assert reply.status == 200 and reply.json()["Results"][0]["KV"]["Value"] == base64.b64encode(b"2").decode()
    assert reply.headers["X-Consul-KnownLeader"] == "true"
