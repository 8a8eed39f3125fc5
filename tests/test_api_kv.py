"""KV endpoints: values, recurse/keys/separator/raw, CAS, flags, limits, errors."""

from __future__ import annotations

import base64

from tests.conftest import Http


async def test_put_get_raw_flags(http: Http) -> None:
    status, body, _ = await http.call("PUT", "/v1/kv/app/config?flags=42", raw=b"hello")
    assert status == 200 and body is True
    status, entries, headers = await http.get("/v1/kv/app/config")
    assert status == 200 and len(entries) == 1
    e = entries[0]
    assert e["Key"] == "app/config" and e["Flags"] == 42 and base64.b64decode(e["Value"]) == b"hello"
    assert e["LockIndex"] == 0 and "Session" not in e
    assert headers["X-Consul-Index"] == str(e["ModifyIndex"])
    status, raw, headers = await http.get("/v1/kv/app/config?raw")
    assert status == 200 and raw == "hello"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Security-Policy"] == "sandbox"
    # An empty body stores a null value.
    await http.call("PUT", "/v1/kv/empty", raw=b"")
    _, entries, _ = await http.get("/v1/kv/empty")
    assert entries[0]["Value"] is None
    # Binary values round trip.
    blob = bytes(range(256))
    await http.call("PUT", "/v1/kv/blob", raw=blob)
    _, raw_blob, _ = await http.call("GET", "/v1/kv/blob?raw")
    assert raw_blob == blob


async def test_missing_key_is_404_with_index(http: Http) -> None:
    status, body, headers = await http.get("/v1/kv/nothing")
    assert status == 404 and body == b"" and int(headers["X-Consul-Index"]) >= 1
    # An empty body is not JSON: like Consul, no Content-Type claims it is (found by the schemathesis run).
    assert "application/json" not in headers.get("Content-Type", "")
    assert headers["X-Consul-Default-ACL-Policy"] == "allow"
    status, body, headers = await http.get("/v1/kv/nothing/?recurse")
    assert status == 404 and body == b"" and "application/json" not in headers.get("Content-Type", "")


async def test_recurse_keys_separator(http: Http) -> None:
    for k in ("web/bar", "web/foo", "web/subdir/x", "webby"):
        await http.call("PUT", f"/v1/kv/{k}", raw=b"v")
    _, entries, _ = await http.get("/v1/kv/web/?recurse")
    assert [e["Key"] for e in entries] == ["web/bar", "web/foo", "web/subdir/x"]
    _, keys, _ = await http.get("/v1/kv/web/?keys&separator=/")
    assert keys == ["web/bar", "web/foo", "web/subdir/"]
    _, keys, _ = await http.get("/v1/kv/?keys")
    assert keys == ["web/bar", "web/foo", "web/subdir/x", "webby"]
    status, _, _ = await http.get("/v1/kv/zzz/?keys")
    assert status == 404
    status, _, _ = await http.get("/v1/kv/zzz/?recurse")
    assert status == 404


async def test_cas(http: Http) -> None:
    _, ok, _ = await http.call("PUT", "/v1/kv/lock?cas=0", raw=b"a")
    assert ok is True
    _, ok, _ = await http.call("PUT", "/v1/kv/lock?cas=0", raw=b"b")
    assert ok is False
    _, entries, _ = await http.get("/v1/kv/lock")
    idx = entries[0]["ModifyIndex"]
    _, ok, _ = await http.call("PUT", f"/v1/kv/lock?cas={idx + 5}", raw=b"c")
    assert ok is False
    _, ok, _ = await http.call("PUT", f"/v1/kv/lock?cas={idx}", raw=b"c")
    assert ok is True
    _, ok, _ = await http.call("PUT", f"/v1/kv/lock?cas={idx}", raw=b"d")
    assert ok is False, "a second writer with the same index must lose"
    _, entries, _ = await http.get("/v1/kv/lock")
    assert base64.b64decode(entries[0]["Value"]) == b"c"
    new_idx = entries[0]["ModifyIndex"]
    _, ok, _ = await http.delete(f"/v1/kv/lock?cas={idx}")
    assert ok is False
    _, ok, _ = await http.delete(f"/v1/kv/lock?cas={new_idx}")
    assert ok is True
    status, _, _ = await http.get("/v1/kv/lock")
    assert status == 404


async def test_delete_recurse(http: Http) -> None:
    for k in ("a/1", "a/2", "b/1"):
        await http.call("PUT", f"/v1/kv/{k}", raw=b"v")
    _, ok, _ = await http.delete("/v1/kv/a/?recurse")
    assert ok is True
    _, keys, _ = await http.get("/v1/kv/?keys")
    assert keys == ["b/1"]
    _, ok, _ = await http.delete("/v1/kv/b/1")
    assert ok is True


async def test_kv_errors(http: Http, agent) -> None:
    status, text, _ = await http.get("/v1/kv/")
    assert status == 400 and text == "Missing key name"
    status, text, _ = await http.call("PUT", "/v1/kv/", raw=b"x")
    assert status == 400 and text == "Missing key name"
    status, text, _ = await http.delete("/v1/kv/")
    assert status == 400 and text == "Missing key name"
    status, text, _ = await http.call("PUT", "/v1/kv/x?flags=-1", raw=b"x")
    assert status == 400 and "flags" in text
    status, text, _ = await http.call("PUT", "/v1/kv/x?cas=abc", raw=b"x")
    assert status == 400
    status, text, _ = await http.call("PUT", "/v1/kv/x?cas=0&acquire=abc", raw=b"x")
    assert status == 400 and text.startswith("Conflicting flags: ")
    status, text, _ = await http.delete("/v1/kv/x?recurse&cas=1")
    assert status == 400 and text.startswith("Conflicting flags: ")
    limit = 512 * 1024
    status, text, _ = await http.call("PUT", "/v1/kv/big", raw=b"x" * (limit + 1))
    assert status == 413
    assert text == (f"Request body({limit + 1} bytes) too large, max size: {limit} bytes. See "
                    "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.")  # fmt: skip
    status, _, _ = await http.call("PUT", "/v1/kv/big", raw=b"x" * limit)
    assert status == 200
    # Without Content-Length (chunked), the limit still holds.

    async def chunks():
        for _ in range(10):
            yield b"y" * (limit // 8)

    async with http.session.put(http.base + "/v1/kv/chunked", data=chunks()) as resp:
        assert resp.status == 413
    status, _, _ = await http.get("/v1/kv/chunked")
    assert status == 404, "a refused write must leave nothing behind"
