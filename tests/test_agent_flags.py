"""Every flag of Consul's ``consul agent`` (agent/config/flags.go): each is parsed, and either lands on its
config key (merging with config files as Consul merges: flags last) or is accepted with a one-line
warning naming it. ``-pid-file`` is proved on a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.cli.agent import AGENT_FLAGS, NO_EFFECT_FLAGS, build_config
from registry.config import Config, ConfigError
from registry.testing import free_port
from tests.test_cli import wait_http

BIN = str(Path(sys.executable).with_name("proconsul"))

# Consul 1.22's agent flags, as flags.go declares them (its command adds none of its own).
CONSUL_AGENT_FLAGS = {
    "advertise", "advertise-wan", "bind", "server-port", "bootstrap", "bootstrap-expect", "client",
    "check_output_max_size", "config-dir", "config-file", "config-format", "data-dir", "datacenter",
    "default-query-time", "dev", "disable-host-node-id", "disable-keyring-file", "dns-port", "domain", "alt-domain",
    "enable-script-checks", "enable-local-script-checks", "allow-write-http-from", "encrypt", "grpc-port",
    "grpc-tls-port", "http-port", "https-port", "join", "join-wan", "log-level", "log-json", "log-file",
    "log-rotate-bytes", "log-rotate-duration", "log-rotate-max-files", "max-query-time", "node", "node-id",
    "node-meta", "non-voting-server", "read-replica", "pid-file", "protocol", "raft-protocol", "recursor",
    "primary-gateway", "rejoin", "auto-reload-config", "retry-interval", "retry-interval-wan", "retry-join",
    "retry-join-wan", "retry-max", "retry-max-wan", "serf-lan-allowed-cidrs", "serf-wan-allowed-cidrs",
    "serf-lan-bind", "serf-lan-port", "segment", "serf-wan-bind", "serf-wan-port", "server", "syslog", "ui",
    "ui-content-path", "ui-dir", "hcl",
}  # fmt: skip

KEY = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
Check = Callable[[Config], bool]


def _cases(tmp: Path) -> dict[str, tuple[list[str], Check | str]]:
    """flag -> (its arguments, what it does to the config, or the warning that names it)."""
    conf = tmp / "c.json"
    conf.write_text('{"datacenter": "from-file"}')
    hcl = tmp / "h.conf"
    hcl.write_text('datacenter = "hcl-file"')
    return {
        "advertise": (["-advertise", "10.1.2.3"], lambda c: c.advertise_addr == "10.1.2.3"),
        "advertise-wan": (["-advertise-wan", "10.1.2.4"], "-advertise-wan has no effect"),
        "bind": (["-bind", "127.0.0.2"], lambda c: c.bind_addr == "127.0.0.2"),
        "server-port": (["-server-port", "9300"], lambda c: c.ports.server == 9300),
        "bootstrap": (["-bootstrap"], lambda c: c.bootstrap),
        "bootstrap-expect": (["-bootstrap-expect", "3"], lambda c: c.bootstrap_expect == 3),
        "client": (["-client", "127.0.0.5"], lambda c: c.client_addr == "127.0.0.5"),
        "check_output_max_size": (["-check_output_max_size", "100"], lambda c: c.check_output_max_size == 100),
        "config-dir": (["-config-dir", str(tmp / "d")], lambda c: c.datacenter == "dir-dc"),
        "config-file": (["-config-file", str(conf)], lambda c: c.datacenter == "from-file"),
        "config-format": (["-config-format", "hcl", "-config-file", str(hcl)], lambda c: c.datacenter == "hcl-file"),
        "data-dir": (["-data-dir", str(tmp / "data")], lambda c: c.data_dir == str(tmp / "data")),
        "datacenter": (["-datacenter", "east"], lambda c: c.datacenter == "east"),
        "default-query-time": (["-default-query-time", "30s"], lambda c: c.default_query_time == 30.0),
        "dev": (["-dev"], lambda c: c.dev and c.server),
        "disable-host-node-id": (["-disable-host-node-id"], lambda c: c.extra["disable_host_node_id"] is True),
        "disable-keyring-file": (["-disable-keyring-file"], lambda c: c.extra["disable_keyring_file"] is True),
        "dns-port": (["-dns-port", "8653"], lambda c: c.ports.dns == 8653),
        "domain": (["-domain", "example"], lambda c: c.domain == "example."),
        "alt-domain": (["-alt-domain", "alt"], lambda c: c.alt_domain == "alt."),
        "enable-script-checks": (["-enable-script-checks"], lambda c: c.enable_script_checks),
        "enable-local-script-checks": (["-enable-local-script-checks"], lambda c: c.enable_local_script_checks),
        "allow-write-http-from": (["-allow-write-http-from", "10.0.0.0/8"], "-allow-write-http-from has no effect"),
        "encrypt": (["-encrypt", KEY], lambda c: c.extra["encrypt"] == KEY),
        "grpc-port": (["-grpc-port", "8502"], lambda c: c.ports.grpc == 8502),
        "grpc-tls-port": (["-grpc-tls-port", "8503"], "-grpc-tls-port has no effect"),
        "http-port": (["-http-port", "8555"], lambda c: c.ports.http == 8555),
        "https-port": (["-https-port", "8501"], lambda c: c.ports.https == 8501),
        "join": (["-join", "10.0.0.1", "-join", "10.0.0.2:8301"], lambda c: c.retry_join == ["10.0.0.1", "10.0.0.2:8301"]),
        "join-wan": (["-join-wan", "10.0.0.9"], "-join-wan has no effect"),
        "log-level": (["-log-level", "warn"], lambda c: c.log_level == "warn"),
        "log-json": (["-log-json"], lambda c: c.log_json),
        "log-file": (["-log-file", str(tmp / "logs/")], lambda c: c.extra["log_file"] == str(tmp / "logs/")),
        "log-rotate-bytes": (["-log-rotate-bytes", "1024"], lambda c: c.extra["log_rotate_bytes"] == 1024),
        "log-rotate-duration": (["-log-rotate-duration", "1h"], lambda c: c.extra["log_rotate_duration"] == "1h"),
        "log-rotate-max-files": (["-log-rotate-max-files", "3"], lambda c: c.extra["log_rotate_max_files"] == 3),
        "max-query-time": (["-max-query-time", "2m"], lambda c: c.max_query_time == 120.0),
        "node": (["-node", "n7"], lambda c: c.node_name == "n7"),
        "node-id": (["-node-id", "4a1f7a7e-2b8e-4f7c-9d51-3c1a0e6f2b90"],
                    lambda c: c.node_id == "4a1f7a7e-2b8e-4f7c-9d51-3c1a0e6f2b90"),
        "node-meta": (["-node-meta", "rack:r1", "-node-meta", "zone:a:b"],
                      lambda c: c.node_meta == {"rack": "r1", "zone": "a:b"}),
        "non-voting-server": (["-non-voting-server"], "-non-voting-server has no effect"),
        "read-replica": (["-read-replica"], "-read-replica has no effect"),
        "pid-file": (["-pid-file", str(tmp / "p.pid")], lambda c: c.extra["pid_file"] == str(tmp / "p.pid")),
        "protocol": (["-protocol", "2"], "-protocol has no effect"),
        "raft-protocol": (["-raft-protocol", "3"], "-raft-protocol has no effect"),
        "recursor": (["-recursor", "1.1.1.1", "-recursor", "8.8.8.8"], lambda c: c.recursors == ["1.1.1.1", "8.8.8.8"]),
        "primary-gateway": (["-primary-gateway", "10.0.0.1:443"], "-primary-gateway has no effect"),
        "rejoin": (["-rejoin"], lambda c: c.rejoin_after_leave is True),
        "auto-reload-config": (["-auto-reload-config"], "-auto-reload-config has no effect"),
        "retry-interval": (["-retry-interval", "5s"], lambda c: c.retry_interval == 5.0),
        "retry-interval-wan": (["-retry-interval-wan", "5s"], "-retry-interval-wan has no effect"),
        "retry-join": (["-retry-join", "10.0.0.3"], lambda c: c.retry_join == ["10.0.0.3"]),
        "retry-join-wan": (["-retry-join-wan", "10.0.0.3"], "-retry-join-wan has no effect"),
        "retry-max": (["-retry-max", "4"], lambda c: c.retry_max == 4),
        "retry-max-wan": (["-retry-max-wan", "4"], "-retry-max-wan has no effect"),
        "serf-lan-allowed-cidrs": (["-serf-lan-allowed-cidrs", "10.0.0.0/8"], "-serf-lan-allowed-cidrs has no effect"),
        "serf-wan-allowed-cidrs": (["-serf-wan-allowed-cidrs", "10.0.0.0/8"], "-serf-wan-allowed-cidrs has no effect"),
        "serf-lan-bind": (["-serf-lan-bind", "127.0.0.3"], lambda c: c.serf_lan_bind == "127.0.0.3"),
        "serf-lan-port": (["-serf-lan-port", "9301"], lambda c: c.ports.serf_lan == 9301),
        "segment": (["-segment", "alpha"], "-segment has no effect"),
        "serf-wan-bind": (["-serf-wan-bind", "127.0.0.3"], "-serf-wan-bind has no effect"),
        "serf-wan-port": (["-serf-wan-port", "9302"], "-serf-wan-port has no effect"),
        "server": (["-server"], lambda c: c.server),
        "syslog": (["-syslog"], lambda c: c.extra["enable_syslog"] is True),
        "ui": (["-ui"], lambda c: c.extra["ui_config"] == {"enabled": True}),
        # The UI is served at /ui/ only: another path is refused at start (tests/ui/test_ui_config.py).
        "ui-content-path": (["-ui-content-path", "/ui/"],
                            lambda c: c.extra["ui_config"] == {"content_path": "/ui/"}),
        "ui-dir": (["-ui-dir", "/srv/ui"], "-ui-dir has no effect"),
        "hcl": (["-hcl", 'datacenter = "frag"', "-hcl", 'node_meta { a = "b" }'],
                lambda c: c.datacenter == "frag" and c.node_meta == {"a": "b"}),
    }


def test_the_table_is_consuls_whole_list() -> None:
    assert {flag for flag, _, _ in AGENT_FLAGS} == CONSUL_AGENT_FLAGS
    assert set(NO_EFFECT_FLAGS) <= CONSUL_AGENT_FLAGS


def test_every_flag_parses_and_acts_or_warns(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text('{"datacenter": "dir-dc"}')
    cases = _cases(tmp_path)
    assert set(cases) == CONSUL_AGENT_FLAGS
    failures = []
    for flag, (args, effect) in sorted(cases.items()):
        warnings: list[str] = []
        try:
            cfg = build_config(["-dev", *args], warnings)
        except (ConfigError, SystemExit) as exc:
            failures.append(f"-{flag}: {exc!r}")
            continue
        if isinstance(effect, str):
            if not any(w.startswith(effect) for w in warnings) or f"-{flag}" in str(cfg.extra):
                failures.append(f"-{flag}: expected the warning {effect!r}, got {warnings}")
        elif not effect(cfg):
            failures.append(f"-{flag}: no effect on the config")
        elif any(w.startswith(f"-{flag} ") for w in warnings):
            failures.append(f"-{flag}: applied but also warned")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("args", "check"), [
    (["-enable-script-checks=false"], lambda c: not c.enable_script_checks),
    (["-ui=true"], lambda c: c.extra["ui_config"] == {"enabled": True}),
    (["-rejoin=0"], lambda c: c.rejoin_after_leave is False),
    (["--encrypt=" + KEY], lambda c: c.extra["encrypt"] == KEY),
])  # fmt: skip
def test_go_style_values(args: list[str], check: Callable[[Config], bool]) -> None:
    """Booleans take Go's forms (``-x``, ``-x=true``, ``-x=false``); both dash styles work."""
    assert check(build_config(["-dev", *args]))


def test_flags_merge_with_files_as_consul_merges(tmp_path: Path) -> None:
    """A flag wins over a file's value for the same key, and leaves the rest of its block alone; list flags
    add to what the files list; -hcl fragments come after the files and before the flags."""
    conf = tmp_path / "a.json"
    conf.write_text('{"ports": {"dns": 8653, "serf_lan": 8401}, "retry_join": ["10.0.0.1"], "log_json": true, '
                    '"node_meta": {"rack": "r1"}, "datacenter": "file", "ui_config": {"dir": "/x"}}')
    cfg = build_config(["-dev", "-config-file", str(conf), "-serf-lan-port", "9301", "-retry-join", "10.0.0.2",
                        "-node-meta", "zone:z", "-hcl", 'datacenter = "frag"', "-ui", "-log-json=false"])  # fmt: skip
    assert cfg.log_json is False  # -x=false overrides a file's true, as Go's boolean flags do
    assert (cfg.ports.dns, cfg.ports.serf_lan) == (8653, 9301)
    assert cfg.retry_join == ["10.0.0.1", "10.0.0.2"]
    assert cfg.node_meta == {"rack": "r1", "zone": "z"}
    assert cfg.datacenter == "frag"
    assert build_config(["-dev", "-hcl", 'datacenter = "frag"', "-datacenter", "flag"]).datacenter == "flag"
    assert cfg.config_files == [str(conf)]


@pytest.mark.parametrize(("args", "error"), [
    (["-hcl", "nonsense = ["], "flags-0.hcl"),
    (["-hcl", "no_such_key = 1"], "invalid config key no_such_key"),
    (["-default-query-time", "soon"], "default_query_time"),
    (["-encrypt", "abc"], "encrypt has invalid key: illegal base64 data at input byte 0"),
    (["-encrypt", "AAAA"], "encrypt has invalid key: key size must be 16, 24 or 32 bytes"),
])  # fmt: skip
def test_bad_flag_values_are_refused_with_the_reason(args: list[str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        build_config(["-dev", *args])


def test_pid_file_is_written_at_start_and_removed_at_exit(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "proconsul.pid"
    pid_file.parent.mkdir()
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1", "-pid-file",
                             str(pid_file), "-segment", "alpha"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(port, proc)
        assert pid_file.read_text() == str(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not pid_file.exists()
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "-segment has no effect: network segments are a Consul Enterprise feature" in out
    assert "unrecognized arguments" not in out


def test_an_unwritable_pid_file_stops_the_agent(tmp_path: Path) -> None:
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(free_port()), "-dns-port", "-1", "-pid-file",
                          str(tmp_path / "missing" / "x.pid")], capture_output=True, timeout=30)  # fmt: skip
    assert out.returncode == 1
    assert "Error starting agent: Could not open pid file" in out.stderr.decode()

