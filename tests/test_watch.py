"""Watches: the plan's decisions (Consul's api/watch rules), the plan against a real dev agent counting
handler runs across changes and a blocking timeout, a reconnection after the agent restarts, the
``proconsul watch`` command, and the agent's ``watches`` config with script and HTTP handlers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.agent.watches import compile_watch
from registry.client.http import AgentHTTP, HTTPConfig
from registry.client.watch import PlanState, WatchError, WatchPlan, parse_watch, prune_events, retry_delay
from registry.events import id_to_index
from registry.testing import async_dev_agent, free_port

BIN = str(Path(sys.executable).with_name("proconsul"))


# ---------------------------------------------------------------------- decisions


def test_plan_runs_on_the_first_result_and_on_each_change_only() -> None:
    st = PlanState()
    assert st.on_result(5, None)  # the first answer, whatever it is
    assert st.wait_index() == 5
    assert not st.on_result(5, None)  # a blocking query that timed out
    assert not st.on_result(7, None)  # the index moved, the data did not
    assert st.on_result(8, {"Value": "dg=="})
    assert not st.on_result(8, {"Value": "dg=="})
    assert st.on_result(9, {"Value": "dzI="})


def test_a_failure_backs_off_and_a_reconnect_with_the_same_data_runs_nothing() -> None:
    st = PlanState()
    assert st.on_result(3, ["a"])
    assert [st.on_error() for _ in range(4)] == [5.0, 20.0, 45.0, 80.0]
    assert st.wait_index() == 0  # the next query does not block
    assert not st.on_result(1, ["a"])  # a restarted agent, same data
    assert st.on_result(2, ["a", "b"])
    assert retry_delay(10) == 180.0


def test_an_event_watch_hands_over_only_new_events() -> None:
    a, b = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c", "0e1e05c9-0b2f-4b8c-9b0a-6f7b1c1b2a3d"
    events = [{"ID": a}, {"ID": b}]
    assert prune_events(events, None) == events
    assert prune_events(events, id_to_index(a)) == [{"ID": b}]
    assert prune_events(events, id_to_index(b)) == []


def test_parse_watch_has_consuls_rules_and_texts() -> None:
    for params, text in (
        ({}, "Watch type must be specified"),
        ({"type": "bogus"}, "Unsupported watch type: bogus"),
        ({"type": "key"}, "Must specify a single key to watch"),
        ({"type": "keyprefix"}, "Must specify a single prefix to watch"),
        ({"type": "service"}, "Must specify a single service to watch"),
        ({"type": "checks", "service": "a", "state": "passing"}, "Cannot specify service and state"),
        ({"type": "key", "key": "k", "bogus": 1}, "Invalid parameters: [bogus]"),
        ({"type": "key", "key": 1}, "Expecting key to be a string"),
        ({"type": "key", "key": "k", "handler_type": "http"},
         "Handler type 'http' requires 'http_handler_config' to be set"),
    ):
        with pytest.raises(WatchError) as exc:
            parse_watch(params)
        assert str(exc.value) == text
    spec, _ = parse_watch({"type": "checks"})
    assert spec.state == "any"
    spec, _ = parse_watch({"type": "service", "service": "web", "tag": ["a", "b"], "passingonly": True})
    assert (spec.tags, spec.passing_only) == (("a", "b"), True)


def test_agent_watch_definitions_are_checked_as_consuls_agent_does() -> None:
    for params, text in (
        ({"type": "key", "key": "k"}, "Must define a watch handler"),
        ({"type": "key", "key": "k", "handler": "x", "args": ["y"]}, "Only one watch handler allowed"),
        ({"type": "key", "key": "k", "args": ["a", 1]}, "Watch args must be a list of strings"),
        ({"type": "key", "key": "k", "handler_type": "exec", "args": ["a"]}, "Handler type 'exec' not recognized"),
        ({"type": "connect_roots", "args": ["a"]}, "Watch type connect_roots is not allowed in agent config"),
    ):
        with pytest.raises(WatchError, match=text):
            compile_watch(params)
    spec, script, args = compile_watch({"type": "event", "name": "deploy", "args": ["/bin/true"]})
    assert (spec.type, spec.name, spec.handler_type, script, args) == ("event", "deploy", "script", "", ["/bin/true"])


# ---------------------------------------------------------------------- plans against a dev agent


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, Any]] = []
        self.changed = asyncio.Event()

    async def __call__(self, index: int, data: Any) -> None:
        self.calls.append((index, data))
        self.changed.set()

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < n:
                self.changed.clear()
                await self.changed.wait()


async def test_a_key_watch_runs_once_per_change_and_not_on_a_timeout() -> None:
    async with async_dev_agent() as running, AgentHTTP(HTTPConfig(address=running.url), total=None) as http:
        rec = Recorder()
        spec, _ = parse_watch({"type": "key", "key": "app/flag"})
        plan = WatchPlan(spec, http, rec, wait=0.3)
        task = asyncio.create_task(plan.run())
        await rec.wait_for(1)
        assert rec.calls[0][1] is None  # absent key: null, as Consul's watch hands over
        for value in ("on", "off", "on"):
            await http.checked("PUT", "/v1/kv/app/flag", body=value.encode())
            await rec.wait_for(len(rec.calls) + 1)
        await http.checked("PUT", "/v1/kv/app/other", body=b"x")  # another key: this view did not change
        await asyncio.sleep(1.0)  # three blocking timeouts (wait=0.3s) with the same index
        plan.stop()
        await asyncio.wait_for(task, 5)
        assert [c[1] and c[1]["Value"] for c in rec.calls] == [None, "b24=", "b2Zm", "b24="]
        assert len(rec.calls) == 4
        assert rec.calls[-1][0] == rec.calls[-1][1]["ModifyIndex"]


async def test_an_event_watch_sees_each_event_once() -> None:
    async with async_dev_agent() as running, AgentHTTP(HTTPConfig(address=running.url), total=None) as http:
        rec = Recorder()
        spec, _ = parse_watch({"type": "event", "name": "deploy"})
        plan = WatchPlan(spec, http, rec, wait=0.3)
        task = asyncio.create_task(plan.run())
        await rec.wait_for(1)
        assert rec.calls[0][1] == []
        fired = []
        for _ in range(3):
            fired.append((await http.json("PUT", "/v1/event/fire/deploy"))["ID"])
            await rec.wait_for(len(rec.calls) + 1)
        await asyncio.sleep(0.8)
        plan.stop()
        await asyncio.wait_for(task, 5)
        assert [[e["ID"] for e in c[1]] for c in rec.calls] == [[], [fired[0]], [fired[1]], [fired[2]]]


async def test_a_plan_reconnects_when_the_agent_restarts() -> None:
    port = free_port()
    rec = Recorder()
    errors: list[str] = []
    async with AgentHTTP(HTTPConfig(address=f"http://127.0.0.1:{port}"), total=None) as http:
        spec, _ = parse_watch({"type": "key", "key": "k"})
        plan = WatchPlan(spec, http, rec, wait=0.3, retry_base=0.05, on_error=lambda m, d: errors.append(m))
        async with async_dev_agent(ports={"http": port}) as running:
            task = asyncio.create_task(plan.run())
            await rec.wait_for(1)
            await http.checked("PUT", "/v1/kv/k", body=b"1")
            await rec.wait_for(2)
            del running
        await asyncio.sleep(0.3)  # the agent is gone: queries fail and back off
        async with async_dev_agent(ports={"http": port}):
            await asyncio.sleep(1.0)  # reconnected: the key is absent again, a change
            await http.checked("PUT", "/v1/kv/k", body=b"2")
            await rec.wait_for(4)
            await asyncio.sleep(0.5)
            plan.stop()
            await asyncio.wait_for(task, 5)
    assert errors, "the restart was never noticed"
    assert [c[1]["Value"] if c[1] else None for c in rec.calls] == [None, "MQ==", None, "Mg=="]


# ---------------------------------------------------------------------- the command and the agent's config


def _start_cli(addr: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([BIN, "watch", "-http-addr", addr, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))  # fmt: skip


async def _lines(path: Path, n: int, timeout: float = 15.0) -> list[str]:
    async with asyncio.timeout(timeout):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= n:
                return lines
            await asyncio.sleep(0.05)


async def test_the_cli_runs_its_handler_once_per_change(tmp_path: Path) -> None:
    out = tmp_path / "calls"
    async with async_dev_agent() as running, AgentHTTP(HTTPConfig(address=running.url)) as http:
        script = f'read -r line; echo "$CONSUL_INDEX $line" >> {out}'
        proc = await asyncio.to_thread(_start_cli, running.http_addr, "-type", "keyprefix", "-prefix", "cfg/", script)
        try:
            await _lines(out, 1)
            for i in range(3):
                await http.checked("PUT", f"/v1/kv/cfg/k{i}", body=b"v")
                await _lines(out, 2 + i)
            await asyncio.sleep(0.5)
            lines = await _lines(out, 4)
            assert len(lines) == 4, lines
            assert lines[0].split(" ", 1)[1] == "null"
            assert [len(json.loads(line.split(" ", 1)[1])) for line in lines[1:]] == [1, 2, 3]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
        assert code == 0, proc.stderr.read() if proc.stderr else ""

        # No handler: the view is printed once, indented, and the command exits.
        printed = await asyncio.to_thread(subprocess.run, [BIN, "watch", "-http-addr", running.http_addr, "-type",
                                                           "key", "-key", "cfg/k0"], capture_output=True,
                                          text=True, timeout=30)  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout)["Key"] == "cfg/k0"
        assert printed.stdout.startswith("{\n    \"")
        bad = await asyncio.to_thread(subprocess.run, [BIN, "watch", "-http-addr", running.http_addr],
                                      capture_output=True, text=True, timeout=30)  # fmt: skip
        assert bad.returncode == 1 and bad.stderr.startswith("Watch type must be specified")
        failing = await asyncio.to_thread(subprocess.run, [BIN, "watch", "-http-addr", running.http_addr, "-type",
                                                           "nodes", "exit 3"], capture_output=True, text=True,
                                          timeout=30)  # fmt: skip
        assert failing.returncode == 1 and "Error executing handler: exit status 3" in failing.stderr


async def test_the_agent_runs_the_watches_of_its_config(tmp_path: Path) -> None:
    out = tmp_path / "script-calls"
    posts: list[tuple[str, str, Any]] = []
    got = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        posts.append((request.headers["X-Consul-Index"], request.headers.get("X-Test", ""), await request.json()))
        got.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    hook_port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", hook_port)
    await site.start()
    watches = [
        {"type": "key", "key": "svc/config", "args": ["sh", "-c", f"cat >> {out}"]},
        {"type": "event", "name": "deploy", "handler_type": "http",
         "http_handler_config": {"path": f"http://127.0.0.1:{hook_port}/hook", "header": {"x-test": ["yes"]},
                                 "timeout": "5s"}},
    ]  # fmt: skip
    try:
        async with async_dev_agent(watches=watches) as running, AgentHTTP(HTTPConfig(address=running.url)) as http:
            await _lines(out, 1)
            await http.checked("PUT", "/v1/kv/svc/config", body=b"a")
            await _lines(out, 2)
            async with asyncio.timeout(10):
                while not posts:
                    got.clear()
                    await got.wait()
            fired = await http.json("PUT", "/v1/event/fire/deploy", body=None)
            async with asyncio.timeout(10):
                while len(posts) < 2:
                    got.clear()
                    await got.wait()
            await asyncio.sleep(0.3)
        views = [json.loads(line) for line in out.read_text().splitlines()]
        assert [v and v["Key"] for v in views] == [None, "svc/config"]
        assert posts[0][2] == [] and [e["ID"] for e in posts[1][2]] == [fired["ID"]]
        assert posts[1][0] == str(id_to_index(fired["ID"])) and posts[1][1] == "yes"
    finally:
        await runner.cleanup()


def test_a_bad_watch_in_the_config_stops_the_agent_with_consuls_text(tmp_path: Path) -> None:
    cfg = tmp_path / "w.json"
    cfg.write_text(json.dumps({"watches": [{"type": "key", "key": "k"}]}))
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-config-file", str(cfg), "-http-port", "0", "-dns-port", "-1"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1
    assert "Must define a watch handler" in out.stderr

