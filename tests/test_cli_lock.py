"""`proconsul lock`: the pure core, then real `proconsul lock` processes against a real `agent -dev` process."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.cli.lock import (
    Outcome,
    UsageError,
    child_argv,
    default_session_name,
    describe_exit,
    exit_code,
    parse_args,
)
from registry.client.lock import (
    LOCK_FLAG_VALUE,
    SEMAPHORE_FLAG_VALUE,
    SemaphoreConflict,
    Step,
    acquire_step,
    contender_key,
    free_to_delete,
    lock_key,
    semaphore_held,
    semaphore_holders,
    semaphore_take,
    still_held,
    wait_budget,
)
from registry.testing import free_port

BIN = str(Path(sys.executable).with_name("proconsul"))
PY = sys.executable

# ---------------------------------------------------------------------- pure core


def test_parse_args_go_flag_semantics() -> None:
    o = parse_args(["-n=1", "--name", "job", "-shell=false", "-timeout", "1.5s", "--verbose", "app/", "ls", "-l"])
    assert (o.prefix, o.child, o.name, o.shell, o.timeout, o.verbose) == ("app/", ("ls", "-l"), "job", False, 1.5, True)
    assert o.key == "app/.lock"
    # flags stop at the first argument that is not one: the child's flags are the child's
    o = parse_args(["/svc", "cmd", "-n", "2"])
    assert (o.prefix, o.child, o.limit, o.shell) == ("svc", ("cmd", "-n", "2"), 1, True)
    o = parse_args(["-try=250ms", "-child-exit-code", "-pass-stdin", "-monitor-retry=0", "--", "p", "c"])
    assert (o.timeout, o.child_exit_code, o.pass_stdin, o.monitor_retry, o.child) == (0.25, True, True, 0, ("c",))
    assert o.session_name == "Consul lock for 'c' at 'p'"


@pytest.mark.parametrize(("argv", "message"), [
    ([], "Key prefix and child command must be specified"),
    (["p"], "Key prefix and child command must be specified"),
    (["-n", "0", "p", "c"], "Lock holder limit must be positive"),
    (["-timeout=-1s", "p", "c"], "Timeout must be positive"),
    (["-monitor-retry=-1", "p", "c"], "Number for 'monitor-retry' must be >= 0"),
    (["-bogus", "p", "c"], "flag provided but not defined: -bogus"),
    (["-n", "x", "p", "c"], 'invalid value "x" for flag -n: parse error'),
    (["-timeout", "5", "p", "c"], 'invalid value "5" for flag -timeout: parse error'),
    (["-shell=maybe", "p", "c"], 'invalid boolean value "maybe" for -shell: parse error'),
    (["-name"], "flag needs an argument: -name"),
])  # fmt: skip
def test_parse_args_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        parse_args(argv)


def test_keys_names_and_child_argv() -> None:
    assert lock_key("a/b/") == "a/b/.lock" and lock_key("a//b") == "a/b/.lock" and lock_key("") == ".lock"
    assert default_session_name(("echo", "hi"), "svc") == "Consul lock for 'echo hi' at 'svc'"
    assert child_argv(("echo", "$X"), True, {"SHELL": "/bin/bash"}) == ["/bin/bash", "-c", "echo $X"]
    assert child_argv(("echo", "$X"), True, {}) == ["/bin/sh", "-c", "echo $X"]
    assert child_argv(("echo", "$X"), False, {}) == ["echo", "$X"]


def test_lock_decisions() -> None:
    mine = {"Flags": LOCK_FLAG_VALUE, "Session": "s1", "ModifyIndex": 5}
    assert acquire_step(None, "s1") is Step.ACQUIRE
    assert acquire_step(mine, "s1") is Step.HELD
    assert acquire_step(mine, "s2") is Step.WAIT
    assert acquire_step({**mine, "Session": None}, "s2") is Step.ACQUIRE
    assert acquire_step({**mine, "Flags": 0}, "s1") is Step.CONFLICT
    assert still_held(mine, "s1") and not still_held(mine, "s2") and not still_held(None, "s1")
    assert free_to_delete({**mine, "Session": ""}) and not free_to_delete(mine)
    assert not free_to_delete({"Flags": 0}) and not free_to_delete(None)


def test_wait_budget_and_exit_codes() -> None:
    assert wait_budget(0, 100.0, 7) == 15.0  # no -timeout: 15 s blocking reads, for ever
    assert wait_budget(2.0, 0.0, 0) == 2.0
    assert wait_budget(2.0, 0.5, 1) == 1.5
    assert wait_budget(2.0, 2.1, 1) is None
    assert exit_code(Outcome.CHILD_EXITED, False, True) == 0
    assert exit_code(Outcome.CHILD_EXITED, True, True) == 2  # Consul: 2, not the child's own code
    assert exit_code(Outcome.CHILD_EXITED, True, False) == 0
    assert exit_code(Outcome.SHUTDOWN, True, True) == 0
    assert exit_code(Outcome.LOCK_LOST, True, False) == 1
    assert describe_exit(3) == "exit status 3" and describe_exit(-15) == "signal: terminated"


def _sem_lock(limit: int, holders: list[str], index: int = 7, flags: int = SEMAPHORE_FLAG_VALUE) -> dict[str, Any]:
    value = base64.b64encode(json.dumps({"Limit": limit, "Holders": dict.fromkeys(holders, True)}).encode()).decode()
    return {"Key": "jobs/.lock", "Flags": flags, "Value": value, "ModifyIndex": index}


def _contender(sid: str) -> dict[str, Any]:
    return {"Key": f"jobs/{sid}", "Flags": SEMAPHORE_FLAG_VALUE, "Session": sid, "ModifyIndex": 3}


def test_semaphore_decisions() -> None:
    assert contender_key("/jobs/", "s1") == "jobs/s1"
    # no .lock yet: the first contender creates it (CAS 0 = only if absent)
    value, cas = semaphore_take([_contender("a")], "jobs", 2, "a") or (b"", -1)
    assert cas == 0 and json.loads(value) == {"Limit": 2, "Holders": {"a": True}}
    # one slot left: take it, CAS against .lock's ModifyIndex
    pairs = [_sem_lock(2, ["a"]), _contender("a"), _contender("b")]
    value, cas = semaphore_take(pairs, "jobs", 2, "b") or (b"", -1)
    assert cas == 7 and json.loads(value)["Holders"] == {"a": True, "b": True}
    # full: wait
    pairs = [_sem_lock(2, ["a", "b"]), _contender("a"), _contender("b"), _contender("c")]
    assert semaphore_take(pairs, "jobs", 2, "c") is None
    assert semaphore_held(pairs, "jobs", 2, "a") and not semaphore_held(pairs, "jobs", 2, "c")
    # a holder whose session died (its contender key went with it) is pruned, freeing its slot
    pairs = [_sem_lock(2, ["a", "dead"]), _contender("a"), _contender("c")]
    assert semaphore_holders(pairs, "jobs", 2)[1] == {"a": True}
    value, _ = semaphore_take(pairs, "jobs", 2, "c") or (b"", -1)
    assert json.loads(value)["Holders"] == {"a": True, "c": True}
    with pytest.raises(SemaphoreConflict, match=r"^semaphore limit conflict \(lock: 2, local: 3\)$"):
        semaphore_take(pairs, "jobs", 3, "c")
    with pytest.raises(SemaphoreConflict, match="^Existing key does not match semaphore use$"):
        semaphore_take([_sem_lock(2, [], flags=LOCK_FLAG_VALUE)], "jobs", 2, "c")


# ---------------------------------------------------------------------- against a real agent


def wait_until(pred: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Agent:
    def __init__(self, port: int) -> None:
        self.port = port
        self.addr = f"127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://{self.addr}{path}", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def put(self, path: str, body: bytes = b"") -> Any:
        req = urllib.request.Request(f"http://{self.addr}{path}", data=body, method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def lock_entry(self, prefix: str) -> dict[str, Any] | None:
        entries = self.get(f"/v1/kv/{prefix}/.lock")
        return entries[0] if entries else None

    def holder(self, prefix: str) -> str:
        entry = self.lock_entry(prefix)
        return (entry or {}).get("Session") or ""

    def sessions(self, name_part: str = "") -> list[dict[str, Any]]:
        return [s for s in self.get("/v1/session/list") if name_part in s["Name"]]

    def lock(self, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen([BIN, "lock", "-http-addr", self.addr, *args], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "lock-node", "-http-port", str(port), "-dns-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    a = Agent(port)

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return bool(a.get("/v1/status/leader"))
        except OSError:
            return False

    wait_until(up, "the agent", 15)
    yield a
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def finish(proc: subprocess.Popen, timeout: float = 15) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def py_child(tmp: Path, name: str, body: str) -> list[str]:
    """A Python child, run with -shell=false: what it does is plain to read and signals reach it directly."""
    script = tmp / f"{name}.py"
    script.write_text(textwrap.dedent(body))
    return [PY, str(script)]


GATED = """
    import os, sys, time
    from pathlib import Path
    tmp, me = Path(sys.argv[1]), sys.argv[2]
    with open(tmp / "log", "a") as f:
        f.write(f"start {me} {os.environ.get('CONSUL_LOCK_HELD')}\\n")
    while not (tmp / f"go-{me}").exists():
        time.sleep(0.01)
    with open(tmp / "log", "a") as f:
        f.write(f"end {me}\\n")
"""


def log_lines(tmp: Path) -> list[str]:
    p = tmp / "log"
    return p.read_text().splitlines() if p.exists() else []


def test_child_runs_holding_the_lock_then_everything_is_cleaned_up(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "gated", GATED)
    proc = agent.lock("-shell=false", "-name", "held-test", "svc/held", *child, str(tmp_path), "a")
    wait_until(lambda: log_lines(tmp_path) == ["start a true"], "the child to start")
    entry = agent.lock_entry("svc/held")
    assert entry and entry["Session"] and entry["Flags"] == LOCK_FLAG_VALUE and entry["LockIndex"] == 1
    session = agent.get(f"/v1/session/info/{entry['Session']}")[0]
    assert session["Name"] == "held-test" and session["TTL"] == "15s" and session["Node"] == "lock-node"
    assert session["NodeChecks"] == ["serfHealth"] and session["Behavior"] == "release"
    (tmp_path / "go-a").touch()
    rc, _, err = finish(proc)
    assert rc == 0, err
    assert log_lines(tmp_path) == ["start a true", "end a"]
    assert agent.lock_entry("svc/held") is None  # released, then deleted as nobody else holds it
    assert agent.get(f"/v1/session/info/{entry['Session']}") == []


def test_second_waits_for_first_then_runs(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "gated", GATED)
    first = agent.lock("-shell=false", "svc/queue", *child, str(tmp_path), "a")
    wait_until(lambda: log_lines(tmp_path) == ["start a true"], "the first child")
    first_session = agent.holder("svc/queue")
    second = agent.lock("-shell=false", "-name", "second-in-line", "svc/queue", *child, str(tmp_path), "b")
    wait_until(lambda: agent.sessions("second-in-line"), "the second contender's session")
    # the second is now contending: it holds a session but not the key, and its child has not started
    assert agent.holder("svc/queue") == first_session
    assert log_lines(tmp_path) == ["start a true"] and second.poll() is None
    (tmp_path / "go-a").touch()
    assert finish(first)[0] == 0
    wait_until(lambda: len(log_lines(tmp_path)) == 3, "the second child")
    assert log_lines(tmp_path) == ["start a true", "end a", "start b true"]
    assert agent.holder("svc/queue") == agent.sessions("second-in-line")[0]["ID"]
    (tmp_path / "go-b").touch()
    assert finish(second)[0] == 0
    assert agent.lock_entry("svc/queue") is None and not agent.sessions("svc/queue") + agent.sessions("second")


def test_concurrent_contenders_never_overlap(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "work", """
        import sys, time
        from pathlib import Path
        log, me = Path(sys.argv[1]) / "log", sys.argv[2]
        with open(log, "a") as f:
            f.write(f"start {me}\\n")
        time.sleep(0.2)  # the child's "work": another holder would start in this window
        with open(log, "a") as f:
            f.write(f"end {me}\\n")
    """)
    procs = [agent.lock("-shell=false", "svc/crowd", *child, str(tmp_path), str(i)) for i in range(4)]
    for p in procs:
        rc, _, err = finish(p, timeout=30)
        assert rc == 0, err
    lines = log_lines(tmp_path)
    assert len(lines) == 8
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        assert start.split()[0] == "start" and end == "end " + start.split()[1], lines
    assert sorted(line.split()[1] for line in lines[::2]) == ["0", "1", "2", "3"]
    assert agent.lock_entry("svc/crowd") is None


def test_try_gives_up_on_a_held_lock(agent: Agent, tmp_path: Path) -> None:
    holder = agent.lock("-shell=false", "svc/busy", *py_child(tmp_path, "gated", GATED), str(tmp_path), "a")
    wait_until(lambda: log_lines(tmp_path) == ["start a true"], "the holder's child")
    started = time.monotonic()
    rc, _, err = finish(agent.lock("-name", "impatient", "-try", "300ms", "svc/busy", "touch", str(tmp_path / "x")))
    assert (rc, err.strip()) == (1, "Shutdown triggered or timeout during lock acquisition")
    assert time.monotonic() - started >= 0.3
    assert not (tmp_path / "x").exists() and agent.sessions("impatient") == []  # its session is gone too
    rc, _, err = finish(agent.lock("-timeout=200ms", "svc/busy", "true"))
    assert (rc, err.strip()) == (1, "Shutdown triggered or timeout during lock acquisition")
    (tmp_path / "go-a").touch()
    assert finish(holder)[0] == 0


def test_losing_the_lock_terminates_the_child(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "trap", """
        import signal, sys, time
        from pathlib import Path
        def on_term(*_):
            Path(sys.argv[1], "got-term").touch()
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        Path(sys.argv[1], "running").touch()
        time.sleep(60)
    """)
    proc = agent.lock("-shell=false", "svc/lost", *child, str(tmp_path))
    wait_until(lambda: (tmp_path / "running").exists(), "the child")
    assert agent.put(f"/v1/session/destroy/{agent.holder('svc/lost')}") is True
    rc, _, err = finish(proc)
    assert rc == 1 and "Lock lost, killing child" in err, err
    assert (tmp_path / "got-term").exists()


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "stubborn", """
        import os, signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        Path(sys.argv[1], "pid").write_text(str(os.getpid()))
        time.sleep(60)
    """)
    proc = agent.lock("-shell=false", "svc/stubborn", *child, str(tmp_path))
    pid = int(wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text(), "the child"))
    agent.put(f"/v1/session/destroy/{agent.holder('svc/stubborn')}")
    started = time.monotonic()
    rc, _, err = finish(proc)
    assert rc == 1 and "Lock lost" in err
    assert 4.5 <= time.monotonic() - started < 10  # SIGTERM ignored, SIGKILL 5 s later
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_child_exit_code(agent: Agent, tmp_path: Path) -> None:
    rc, _, err = finish(agent.lock("-child-exit-code", "svc/code", "exit 3"))
    assert (rc, err.strip()) == (2, "Error running handler: exit status 3")
    rc, _, err = finish(agent.lock("svc/code", "exit 3"))
    assert (rc, err.strip()) == (0, "Error running handler: exit status 3")
    rc, out, _ = finish(agent.lock("--child-exit-code", "svc/code", "echo", "fine"))
    assert (rc, out) == (0, "fine\n")
    assert agent.lock_entry("svc/code") is None and agent.sessions("svc/code") == []


def test_sigterm_is_forwarded_and_the_lock_released(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "trap", """
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1], "got-term").touch(), sys.exit(0)))
        Path(sys.argv[1], "running").touch()
        time.sleep(60)
    """)
    proc = agent.lock("-shell=false", "svc/signal", *child, str(tmp_path))
    wait_until(lambda: (tmp_path / "running").exists(), "the child")
    session = agent.holder("svc/signal")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 0, err
    assert (tmp_path / "got-term").exists()
    assert agent.lock_entry("svc/signal") is None and agent.get(f"/v1/session/info/{session}") == []


def test_stdin_only_with_pass_stdin(agent: Agent) -> None:
    p = agent.lock("-pass-stdin", "svc/stdin", "cat", stdin=subprocess.PIPE)
    out, _ = p.communicate(b"hello\n", timeout=15)
    assert (p.returncode, out) == (0, b"hello\n")
    p = agent.lock("svc/stdin", "cat; echo done", stdin=subprocess.PIPE)
    out, _ = p.communicate(b"hello\n", timeout=15)
    assert (p.returncode, out) == (0, b"done\n")


def test_usage_and_setup_errors(agent: Agent) -> None:
    rc, _, err = finish(agent.lock())
    assert (rc, err.strip()) == (1, "Key prefix and child command must be specified")
    rc, _, err = finish(agent.lock("-wat", "p", "true"))
    assert rc == 1 and err.startswith("flag provided but not defined: -wat\n") and "Usage: proconsul lock" in err
    rc, out, _ = finish(agent.lock("-h"))
    assert rc == 0 and out.startswith("Usage: proconsul lock [options] prefix child...")
    rc, _, err = finish(agent.lock("-n", "2", "svc/sem", "true"))
    assert rc == 0, err
    agent.put("/v1/kv/svc/plain/.lock", b"not a lock")
    rc, _, err = finish(agent.lock("svc/plain", "true"))
    assert (rc, err.strip()) == (1, "Lock acquisition failed: Existing key does not match lock use")
    out = subprocess.run([BIN, "lock", "-http-addr", f"127.0.0.1:{free_port()}", "p", "true"], capture_output=True,
                         timeout=15)  # fmt: skip
    assert out.returncode == 1 and out.stderr.decode().startswith("Error querying Consul agent: ")


def test_semaphore_runs_n_children_at_once(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "gated", GATED)
    a = agent.lock("-shell=false", "-n", "2", "jobs/pool", *child, str(tmp_path), "a")
    b = agent.lock("-shell=false", "-n=2", "jobs/pool", *child, str(tmp_path), "b")
    wait_until(lambda: sorted(log_lines(tmp_path)) == ["start a true", "start b true"], "two holders")
    c = agent.lock("-shell=false", "-n", "2", "-name", "third", "jobs/pool", *child, str(tmp_path), "c")
    c_session = wait_until(lambda: agent.sessions("third"), "the third contender")[0]
    assert c_session["Behavior"] == "delete"
    wait_until(lambda: agent.get(f"/v1/kv/jobs/pool/{c_session['ID']}"), "the third contender's key")
    lock = agent.lock_entry("jobs/pool")
    assert lock and lock["Flags"] == SEMAPHORE_FLAG_VALUE
    doc = json.loads(base64.b64decode(lock["Value"]))
    assert doc["Limit"] == 2 and len(doc["Holders"]) == 2 and c_session["ID"] not in doc["Holders"]
    assert len(log_lines(tmp_path)) == 2 and c.poll() is None  # both slots taken: the third waits
    # a mutex on a semaphore prefix, or a different -n, is refused with Consul's messages
    rc, _, err = finish(agent.lock("jobs/pool", "true"))
    assert (rc, err.strip()) == (1, "Lock acquisition failed: Existing key does not match lock use")
    rc, _, err = finish(agent.lock("-n", "3", "jobs/pool", "true"))
    assert (rc, err.strip()) == (1, "Lock acquisition failed: semaphore limit conflict (lock: 2, local: 3)")
    (tmp_path / "go-a").touch()
    assert finish(a)[0] == 0
    wait_until(lambda: "start c true" in log_lines(tmp_path), "the third child")
    for me, proc in (("b", b), ("c", c)):
        (tmp_path / f"go-{me}").touch()
        assert finish(proc)[0] == 0
    assert agent.get("/v1/kv/jobs/pool?recurse") is None  # contender keys and .lock all gone
    assert agent.sessions("jobs/pool") == [] and agent.sessions("third") == []


def test_losing_a_semaphore_slot_terminates_the_child(agent: Agent, tmp_path: Path) -> None:
    child = py_child(tmp_path, "trap", """
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1], "got-term").touch(), sys.exit(0)))
        Path(sys.argv[1], "running").touch()
        time.sleep(60)
    """)
    proc = agent.lock("-shell=false", "-n", "3", "-name", "slot-holder", "jobs/lost", *child, str(tmp_path))
    wait_until(lambda: (tmp_path / "running").exists(), "the child")
    assert agent.put(f"/v1/session/destroy/{agent.sessions('slot-holder')[0]['ID']}") is True
    rc, _, err = finish(proc)
    assert rc == 1 and "Lock lost, killing child" in err, err
    assert (tmp_path / "got-term").exists()


def test_agent_going_away_terminates_the_child(tmp_path: Path) -> None:
    port = free_port()
    agent_proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        a = Agent(port)

        def up() -> bool:
            try:
                return bool(a.get("/v1/status/leader"))
            except OSError:
                return False

        wait_until(up, "the agent", 15)
        child = py_child(tmp_path, "trap", """
            import signal, sys, time
            from pathlib import Path
            signal.signal(signal.SIGTERM, lambda *_: (Path(sys.argv[1], "got-term").touch(), sys.exit(0)))
            Path(sys.argv[1], "running").touch()
            time.sleep(60)
        """)
        proc = a.lock("-shell=false", "-monitor-retry=0", "svc/gone", *child, str(tmp_path))
        wait_until(lambda: (tmp_path / "running").exists(), "the child")
    finally:
        agent_proc.send_signal(signal.SIGTERM)
        agent_proc.wait(10)
    rc, _, err = finish(proc)
    assert rc == 1 and "Lock lost, killing child: failed to watch the lock" in err, err
    assert "Lock release failed" in err
    assert (tmp_path / "got-term").exists()
