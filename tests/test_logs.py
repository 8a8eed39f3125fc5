"""The log output: Consul's log file rotation (by size, by age, archives kept by count), plain lines (no
colour codes) when the output is not a terminal, JSON lines, and monitors that never block the agent."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from pathlib import Path

import pytest
import structlog

from registry.logs import LogConfigError, LogFile, LogRouter, LogSettings, Monitor, settings_from
from tests.test_cli import BIN


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.ns = 1_700_000_000_000_000_000

    def mono(self) -> float:
        return self.t

    def wall_ns(self) -> int:
        self.ns += 1
        return self.ns


def test_rotation_by_size_keeps_max_files(tmp_path: Path) -> None:
    clock = Clock()
    f = LogFile(str(tmp_path / "agent.log"), max_bytes=100, max_files=2, clock=clock.mono, now_ns=clock.wall_ns)
    for i in range(12):
        f.write(f"line {i:02} " + "x" * 40 + "\n")  # 49 bytes: the file rotates before every third line
    f.close()
    archives = f.archives()
    assert [p.name for p in archives] == [f"agent-{clock.ns - 1}.log", f"agent-{clock.ns}.log"]
    assert (tmp_path / "agent.log").read_text().startswith("line 09")  # the active file keeps its name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["agent.log", *(p.name for p in archives)])
    assert archives[-1].read_text().splitlines()[0].startswith("line 06")


def test_rotation_by_duration_and_keep_none(tmp_path: Path) -> None:
    clock = Clock()
    f = LogFile(str(tmp_path) + "/", duration=60.0, max_files=-1, clock=clock.mono, now_ns=clock.wall_ns)
    f.write("first\n")
    clock.t = 59.0
    f.write("second\n")
    assert f.archives() == [] and (tmp_path / "proconsul.log").read_text() == "first\nsecond\n"
    clock.t = 61.0
    f.write("third\n")  # a day's worth (here a minute) has passed: rotate; -1 keeps no archive
    f.close()
    assert f.archives() == [] and (tmp_path / "proconsul.log").read_text() == "third\n"


def test_keep_all_archives_by_default(tmp_path: Path) -> None:
    clock = Clock()
    f = LogFile(str(tmp_path / "p"), max_bytes=1, clock=clock.mono, now_ns=clock.wall_ns)
    for i in range(5):
        f.write(f"{i}\n")
    f.close()
    assert len(f.archives()) == 4 and all(p.suffix == ".log" and p.name.startswith("p-") for p in f.archives())


def test_settings_validation() -> None:
    s = settings_from("DEBUG", True, {"log_file": "/var/log/proconsul/", "log_rotate_bytes": 10,
                                      "log_rotate_duration": "1h", "log_rotate_max_files": 3,
                                      "enable_syslog": True, "syslog_facility": "local3"})  # fmt: skip
    assert (s.level, s.json, s.rotate_duration, s.rotate_max_files, s.syslog_facility) == ("debug", True, 3600.0, 3,
                                                                                          "LOCAL3")  # fmt: skip
    for extra, word in (({"log_rotate_bytes": -1}, "log_rotate_bytes"), ({"log_rotate_max_files": -2}, "max_files"),
                        ({"log_rotate_duration": "soon"}, "log_rotate_duration"),
                        ({"syslog_facility": "LOCAL9"}, "syslog_facility"), ({"enable_syslog": "yes"}, "syslog")):
        with pytest.raises(LogConfigError, match=word):
            settings_from("info", False, extra)
    with pytest.raises(LogConfigError, match="log_level"):
        settings_from("verbose", False, {})


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def emit(router: LogRouter, method: str, **event: object) -> None:
    with pytest.raises(structlog.DropEvent):
        router(None, method, {"level": method, "timestamp": "2026-01-01T00:00:00Z", **event})


def boom() -> BaseException:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        return exc


def test_no_colour_codes_unless_a_terminal(tmp_path: Path) -> None:
    piped, tty = io.StringIO(), TTY()
    for stream in (piped, tty):
        router = LogRouter(LogSettings(file=str(tmp_path / f"{id(stream)}.log")), stream)
        emit(router, "error", event="handler failed", path="/v1/kv", exc_info=boom())
        router.close()
    assert "handler failed" in piped.getvalue() and "ValueError: boom" in piped.getvalue()
    assert "\x1b[" not in piped.getvalue(), "colour codes in a piped log (tracebacks included)"
    assert "\x1b[" in tty.getvalue()
    assert all("\x1b[" not in p.read_text() for p in tmp_path.iterdir()), "colour codes in the log file"


def test_json_lines_and_levels() -> None:
    out = io.StringIO()
    router = LogRouter(LogSettings(level="info", json=True), out)
    emit(router, "debug", event="hidden")
    emit(router, "info", event="shown", key="v")
    emit(router, "error", event="failed", exc_info=boom())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["shown", "failed"]
    assert lines[0]["key"] == "v" and lines[0]["level"] == "info" and "ValueError: boom" in lines[1]["exception"]


async def test_a_slow_monitor_drops_and_counts_never_blocks() -> None:
    router = LogRouter(LogSettings(level="error"), io.StringIO())
    floors: list[int] = []
    router._on_level_change = floors.append
    slow, debug_json = Monitor(20, False, capacity=3), Monitor(10, True)
    router.attach(slow)
    router.attach(debug_json)
    assert floors == [20, 10]  # listening below the agent's level lowers structlog's filter, and back after
    for i in range(10):
        emit(router, "info", event=f"line {i}")
    emit(router, "debug", event="detail")
    got = await asyncio.wait_for(slow.next_lines(), 1)
    assert [g.split("line ")[1].split()[0] for g in got[:3]] == ["0", "1", "2"]
    assert got[3] == "Monitor dropped 7 logs during monitor request\n"
    as_json = [json.loads(line) for line in await asyncio.wait_for(debug_json.next_lines(), 1)]
    assert [e["event"] for e in as_json][-1] == "detail" and len(as_json) == 11
    router.detach(debug_json)
    router.detach(slow)
    assert floors == [20, 10, 20, 40]


def test_agent_writes_its_log_file_and_validates_the_keys(tmp_path: Path) -> None:
    """``proconsul agent`` with the log flags: a bad value is refused before start (exit 1, Consul's ==>)."""
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-log-rotate-max-files", "-3", "-log-file", str(tmp_path) + "/"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1 and "==> log_rotate_max_files" in out.stderr
    # A running agent: logs rotate by size into Consul's names, two archives kept, plain lines.
    import signal
    import urllib.request

    from registry.testing import free_port
    from tests.test_cli import wait_http

    port = free_port()
    logdir = tmp_path / "logs"
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1", "-log-file",
                             str(logdir) + "/", "-log-rotate-bytes", "600", "-log-rotate-max-files", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_http(port, proc)
        base = f"http://127.0.0.1:{port}/v1/agent"
        urllib.request.urlopen(urllib.request.Request(f"{base}/check/register", method="PUT", data=json.dumps(
            {"Name": "t", "CheckID": "t", "TTL": "300s"}).encode()), timeout=5).read()  # fmt: skip
        for i in range(12):
            urllib.request.urlopen(urllib.request.Request(f"{base}/check/{'pass' if i % 2 else 'fail'}/t",
                                                          method="PUT"), timeout=5).read()  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    names = sorted(p.name for p in logdir.iterdir())
    assert "proconsul.log" in names and len(names) == 3, names
    assert all(n == "proconsul.log" or (n.startswith("proconsul-") and n[10:-4].isdigit()) for n in names)
    text = "".join(p.read_text() for p in logdir.iterdir())
    assert "check status changed" in text and "\x1b[" not in text
