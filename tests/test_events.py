"""User events: the pure rules (Consul's index folding, validation, size, filters, the agent's buffer), the
replicated ring, and the HTTP API and CLI against a real dev agent (py-consul as the client where it has
the call)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import consul
import pytest
import pytest_asyncio

from registry.commands import EventFire, Proposer
from registry.events import (
    EventBuffer,
    EventError,
    UserEvent,
    check_size,
    id_to_index,
    list_index,
    should_process,
    validate_event,
)
from registry.fsm import FSM, encode_command
from registry.state.event_table import RING_SIZE, TABLE
from registry.state.store import StateStore
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http

BIN = str(Path(sys.executable).with_name("proconsul"))


# ---------------------------------------------------------------------- pure rules


def test_id_to_index_folds_the_uuid_as_consul_does() -> None:
    # uuidToUint64: parse the first 64 bits and the last 64 bits as hex, XOR them.
    eid = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c"
    assert id_to_index(eid) == 0xB54FE1107AF5CAFC ^ 0xD1FBAFC8BA432B1C
    assert id_to_index("not-a-uuid") == 0
    assert list_index([]) == 1  # no events: 1, so a watch never spins on 0
    assert list_index([UserEvent(eid, "x")]) == id_to_index(eid)


def test_validation_texts_are_consuls() -> None:
    with pytest.raises(EventError, match="^User event missing name$"):
        validate_event("", "", "", "")
    with pytest.raises(EventError, match="^Cannot provide tag filter without service filter$"):
        validate_event("e", "", "", "t")
    with pytest.raises(EventError, match=r"^Invalid node filter: error parsing regexp: "):
        validate_event("e", "(", "", "")
    with pytest.raises(EventError, match=r"^Invalid service filter: "):
        validate_event("e", "", "a(?=b)", "")
    validate_event("e", "^web-[0-9]+$", "db", "primary")


def test_size_limit_is_serfs_512_bytes() -> None:
    check_size(UserEvent(str(uuid.uuid4()), "deploy", b"x" * 100))
    with pytest.raises(EventError, match="^user event exceeds configured limit of 512 bytes before encoding$"):
        check_size(UserEvent(str(uuid.uuid4()), "deploy", b"x" * 500))


def test_filters_follow_should_process_user_event() -> None:
    ev = UserEvent("i", "e", node_filter="^web")
    assert should_process(ev, "web-1", [])
    assert not should_process(ev, "db-1", [])
    svc = UserEvent("i", "e", service_filter="^db$", tag_filter="prim")
    assert should_process(svc, "n", [("db", ["primary"])])
    assert not should_process(svc, "n", [("db", ["secondary"])])
    assert not should_process(svc, "n", [("api", ["primary"])])
    assert not should_process(UserEvent("i", "e", service_filter="db"), "n", [])
    assert should_process(UserEvent("i", "e", node_filter="b-1"), "web-1", [])  # Go's search, not a full match
    assert not should_process(UserEvent("i", "e", node_filter="("), "web-1", [])  # never compiles: nobody


def test_agent_buffer_keeps_the_last_256_once_each() -> None:
    buf = EventBuffer()
    events = [UserEvent(str(uuid.uuid4()), f"e{i}", ltime=i) for i in range(300)]
    for ev in events:
        assert buf.add(ev)
    assert not buf.add(events[-1])  # delivered twice, kept once
    assert len(buf) == 256
    assert [e.name for e in buf.events()][:2] == ["e44", "e45"]
    assert [e.name for e in buf.events("e299")] == ["e299"]


def test_the_replicated_ring_is_bounded_and_survives_a_snapshot() -> None:
    fsm = FSM()
    for i in range(1, RING_SIZE + 45):
        wire = EventFire(UserEvent(str(uuid.uuid4()), "e", f"{i}".encode())).to_wire()
        wire["Time"] = i
        assert fsm.apply(i, encode_command(wire)) == i  # the answer is the event's Lamport time
    rows = fsm.store.tables[TABLE]
    assert len(rows) == RING_SIZE
    assert sorted(int(k) for k in rows)[0] == 45
    restored = StateStore.from_snapshot(fsm.store.to_snapshot())
    assert restored.tables[TABLE] == rows


async def test_a_refired_event_id_is_refused() -> None:
    fsm = FSM()
    applied: list[int] = []

    async def submit(wire: dict[str, object]) -> object:
        applied.append(len(applied) + 1)
        return fsm.apply(applied[-1], encode_command(wire))

    propose = Proposer(submit, lambda: 1).propose
    ev = UserEvent(str(uuid.uuid4()), "e")
    await propose(EventFire(ev))
    with pytest.raises(Exception, match="already fired"):
        await propose(EventFire(ev))


# ---------------------------------------------------------------------- a dev agent


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ev_agent() -> AsyncIterator[RunningAgent]:
    async with async_dev_agent(node_name="web-1") as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def ev_http(ev_agent: RunningAgent) -> AsyncIterator[Http]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield Http(session, ev_agent.url)


async def _listed(http: Http, name: str) -> list[dict[str, object]]:
    status, body, _ = await http.get(f"/v1/event/list?name={name}")
    assert status == 200
    return list(body)


async def _until_listed(http: Http, name: str, count: int = 1) -> list[dict[str, object]]:
    for _ in range(200):
        found = await _listed(http, name)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never listed")


@pytest.mark.asyncio(loop_scope="module")
async def test_fire_answers_the_event_and_the_list_shows_it(ev_http: Http) -> None:
    status, fired, _ = await ev_http.call("PUT", "/v1/event/fire/deploy?node=^web", raw=b"v1.2")
    assert status == 200
    assert list(fired) == ["ID", "Name", "Payload", "NodeFilter", "ServiceFilter", "TagFilter", "Version", "LTime"]
    assert (fired["Name"], fired["Payload"], fired["NodeFilter"], fired["Version"], fired["LTime"]) == \
        ("deploy", "djEuMg==", "^web", 1, 0)  # fmt: skip
    listed = await _until_listed(ev_http, "deploy")
    assert [e["ID"] for e in listed] == [fired["ID"]]
    assert listed[0]["LTime"] >= 1
    _, _, headers = await ev_http.get("/v1/event/list?name=deploy")
    assert headers["X-Consul-Index"] == str(id_to_index(fired["ID"]))
    _, _, headers = await ev_http.get("/v1/event/list?name=never-fired")
    assert headers["X-Consul-Index"] == "1"
    status, fired, _ = await ev_http.put("/v1/event/fire/empty")
    assert fired["Payload"] is None


@pytest.mark.asyncio(loop_scope="module")
async def test_an_agent_whose_node_does_not_match_does_not_keep_it(ev_http: Http, ev_agent: RunningAgent) -> None:
    await ev_http.put("/v1/agent/service/register", {"Name": "db", "Port": 5432, "Tags": ["primary"]})
    for query in ("node=^db-", "service=^api$", "service=^db$&tag=^secondary$"):
        status, _, _ = await ev_http.put(f"/v1/event/fire/filtered?{query}")
        assert status == 200
    status, kept, _ = await ev_http.put("/v1/event/fire/filtered?service=^db$&tag=^prim")
    assert status == 200
    await _until_listed(ev_http, "filtered")
    await asyncio.sleep(0.2)  # the three that do not match had every chance to arrive
    assert [e["ID"] for e in await _listed(ev_http, "filtered")] == [kept["ID"]]
    assert ev_agent.agent.events.last is not None and ev_agent.agent.events.last >= 5


@pytest.mark.asyncio(loop_scope="module")
async def test_a_blocking_list_wakes_on_a_fire_and_times_out_with_the_same_index(ev_http: Http) -> None:
    _, _, headers = await ev_http.get("/v1/event/list?name=wake")
    index = headers["X-Consul-Index"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    _, body, again = await ev_http.get(f"/v1/event/list?name=wake&index={index}&wait=300ms")
    assert loop.time() - start >= 0.28
    assert (again["X-Consul-Index"], body) == (index, [])

    async def fire_soon() -> None:
        await asyncio.sleep(0.3)
        await ev_http.put("/v1/event/fire/wake")

    task = asyncio.create_task(fire_soon())
    start = loop.time()
    _, body, woke = await ev_http.get(f"/v1/event/list?name=wake&index={index}&wait=20s")
    await task
    assert loop.time() - start < 10
    assert [e["Name"] for e in body] == ["wake"]
    assert woke["X-Consul-Index"] == str(id_to_index(body[0]["ID"]))


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_input_gets_consuls_text_never_a_500(ev_http: Http) -> None:
    for path, body, text in (
        ("/v1/event/fire/", None, "Missing name"),
        ("/v1/event/fire/x?tag=a", None, "Cannot provide tag filter without service filter"),
        ("/v1/event/fire/x?node=(", None, "Invalid node filter: error parsing regexp: missing closing ): `(`"),
        ("/v1/event/fire/x", b"x" * 600, "user event exceeds configured limit of 512 bytes before encoding"),
    ):
        status, answer, _ = await ev_http.call("PUT", path, raw=body)
        assert (status, answer) == (400, text)
    status, answer, _ = await ev_http.get("/v1/event/list?index=x")
    assert (status, answer) == (400, "Invalid index")


@pytest.mark.asyncio(loop_scope="module")
async def test_py_consul_fires_and_lists(ev_agent: RunningAgent) -> None:
    def go() -> tuple[object, object]:
        c = consul.Consul(port=ev_agent.http_port)
        fired = c.event.fire("pyconsul", "body")
        for _ in range(200):
            index, events = c.event.list(name="pyconsul")
            if events:
                return fired, (index, events)
        raise AssertionError("never listed")

    fired, (index, events) = await asyncio.to_thread(go)
    assert fired["Name"] == "pyconsul"  # type: ignore[index]
    assert [e["ID"] for e in events] == [fired["ID"]]  # type: ignore[index,union-attr]
    assert index == str(id_to_index(fired["ID"]))  # type: ignore[index]


@pytest.mark.asyncio(loop_scope="module")
async def test_the_cli_fires_with_consuls_output(ev_agent: RunningAgent, ev_http: Http) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIN, "event", "-http-addr", ev_agent.http_addr, *args], capture_output=True,
                              text=True, timeout=30, env=dict(os.environ))  # fmt: skip

    out = await asyncio.to_thread(cli, "-name", "cli-ev", "-node", "web", "payload")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Event ID: ")
    event_id = out.stdout.split()[-1]
    listed = await _until_listed(ev_http, "cli-ev")
    assert listed[0]["ID"] == event_id and listed[0]["Payload"] == "cGF5bG9hZA=="
    for args, text in ((("-node", "x"), "Event name must be specified"),
                       (("-name", "e", "-tag", "t"), "Cannot provide tag filter without service filter."),
                       (("-name", "e", "-node", "("), "Failed to compile node filter regexp: "),
                       (("-name", "e", "a", "b"), "Too many command line arguments.")):  # fmt: skip
        out = await asyncio.to_thread(cli, *args)
        assert out.returncode == 1 and out.stderr.startswith(text), (args, out.stderr)
