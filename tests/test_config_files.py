"""Config files as Consul reads them: HCL and JSON twins load into the same Config, files and directories
merge in order (later scalars win, blocks merge, lists append), keys Consul does not know fail with its
text, deprecated keys warn, and ``-config-format`` / extensions choose the parser."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registry.cli.agent import build_config
from registry.config import Config, ConfigError
from registry.config_files import load_paths, parse_hcl
from registry.registration import RegistrationRules, api_definition, build_service_registration

BIN = str(Path(sys.executable).with_name("proconsul"))
DATA = Path(__file__).parent / "data" / "consul_d"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    for args in (("ca", "create"), ("cert", "create", "-server"), ("cert", "create", "-server"),
                 ("cert", "create", "-server"), ("cert", "create", "-client")):  # fmt: skip
        out = subprocess.run([BIN, "tls", *args], cwd=d, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    return d


def materialize(name: str, dest: Path, pki: Path) -> Path:
    """A copy of one of the config directories with the certificate and data paths filled in."""
    out = dest / name
    shutil.copytree(DATA / name, out)
    for f in out.iterdir():
        f.write_text(f.read_text().replace("@PKI@", str(pki)).replace("@DATA@", str(dest / "data")))
    return out


def comparable(cfg: Config) -> dict[str, Any]:
    """A Config without what names the files it came from."""
    d = dataclasses.asdict(cfg)
    d.pop("config_files")
    d["unknown_keys"] = sorted(k.split(": ", 1)[-1] for k in cfg.unknown_keys)
    return d


@pytest.mark.parametrize("role", ["server", "client"])
def test_hcl_directory_loads_like_its_json_twin(role: str, pki: Path, tmp_path: Path) -> None:
    hcl_dir = materialize(f"{role}_hcl", tmp_path, pki)
    json_dir = materialize(f"{role}_json", tmp_path, pki)
    hcl_warnings: list[str] = []
    from_hcl = build_config(["-config-dir", str(hcl_dir)], hcl_warnings)
    from_json = build_config(["-config-dir", str(json_dir)])
    assert comparable(from_hcl) == comparable(from_json)
    if role == "client":
        assert not from_hcl.server and from_hcl.ports.http == 8530 and from_hcl.ports.dns == -1
        assert [s["name"] for s in from_hcl.services] == ["api"]
        return
    # What the files say, key by key, in Config's terms.
    assert from_hcl.config_files == [str(hcl_dir / n) for n in
                                     ("acl.hcl", "server.hcl", "services.hcl", "telemetry.hcl", "tls.hcl", "web.hcl")]
    assert f"skipping file {hcl_dir / 'notes.txt'}, extension must be .hcl or .json, or config format must be set" \
        in hcl_warnings
    assert (from_hcl.server, from_hcl.bootstrap_expect, from_hcl.datacenter) == (True, 3, "dc1")
    assert from_hcl.retry_join == ["127.0.0.1:8300", "127.0.0.1:8310", "127.0.0.1:8320"]
    assert (from_hcl.ports.https, from_hcl.ports.grpc, from_hcl.ports.dns, from_hcl.ports.http) == (8501, 8502, 8600, 8500)
    assert from_hcl.node_meta == {"rack": "r1"}
    assert from_hcl.limits.http_max_conns_per_client == 300
    assert from_hcl.acl == {"enabled": True, "default_policy": "deny", "enable_token_persistence": True,
                            "tokens": {"agent": "8f1e2d3c-0000-4000-8000-000000000001",
                                       "default": "8f1e2d3c-0000-4000-8000-000000000002"}}  # fmt: skip
    assert from_hcl.tls["defaults"]["cert_file"] == f"{pki}/dc1-server-consul-0.pem"
    assert from_hcl.tls["internal_rpc"] == {"verify_server_hostname": True}
    assert (from_hcl.telemetry.prometheus_retention_time, from_hcl.telemetry.disable_hostname) == (60.0, True)
    assert [s["name"] for s in from_hcl.services] == ["db", "cache", "web"]
    # The services register as the HTTP API would register them.
    rules = RegistrationRules(from_hcl.node_name)
    built = {svc.id: (svc, specs) for svc, specs in
             (build_service_registration(rules, api_definition(s)) for s in from_hcl.services)}  # fmt: skip
    web, web_checks = built["web-1"]
    assert web.enable_tag_override and web.tags == ("v1", "primary") and web.meta == {"version": "1.0"}
    assert [(c.check_id, c.type) for c in web_checks] == [("web-http", "http"), ("web-tcp", "tcp"), ("web-ttl", "ttl")]
    assert (web_checks[0].interval, web_checks[0].timeout, web_checks[2].ttl) == (10.0, 1.0, 30.0)
    assert [(c.check_id, c.tcp) for c in built["db"][1]] == [("service:db", "127.0.0.1:5432")]
    assert built["cache"][0].weights == (5, 1)


@pytest.mark.parametrize("node", ["server1", "server2", "server3", "client1"])
def test_cluster_hcl_is_cluster_yaml(node: str, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented cluster in HCL loads into the same Config as cluster.yaml, node by node."""
    root = Path(__file__).parent.parent
    monkeypatch.chdir(pki)  # the certificate paths are relative to where the agent starts
    same_id = ["-node", node, "-node-id", "4a1f7a7e-2b8e-4f7c-9d51-3c1a0e6f2b90"]
    from_hcl = build_config(["-config-file", str(root / "cluster.hcl"), *same_id])
    from_yaml = build_config(["-config-file", str(root / "cluster.yaml"), *same_id])
    assert comparable(from_hcl) == comparable(from_yaml)
    assert from_hcl.node_name == node and from_hcl.acl_default_policy == "deny"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_sources_merge_in_order(tmp_path: Path) -> None:
    """Directories in lexical order, flags' files and directories in the order given: later scalars win,
    blocks merge key by key, lists append (Consul's merge)."""
    d = tmp_path / "conf.d"
    write(d / "10-base.hcl", 'datacenter = "dc1"\nlog_level = "info"\nretry_join = ["a"]\n'
                             'node_meta { rack = "r1" }\nservice { name = "one" }\n')  # fmt: skip
    write(d / "20-more.json", json.dumps({"log_level": "warn", "retry_join": ["b"], "node_meta": {"zone": "z1"},
                                          "services": [{"name": "two"}]}))  # fmt: skip
    write(d / "05-first.hcl", 'datacenter = "dc0"\nlog_level = "debug"\n')
    late = write(tmp_path / "late.hcl", 'log_level = "error"\nretry_join = ["c"]\nnode_meta { rack = "r2" }\n')
    early = write(tmp_path / "early.json", json.dumps({"datacenter": "early", "log_level": "trace"}))
    cfg = build_config(["-dev", "-config-file", str(early), "-config-dir", str(d), "-config-file", str(late)])
    assert cfg.config_files == [str(early), str(d / "05-first.hcl"), str(d / "10-base.hcl"), str(d / "20-more.json"),
                                str(late)]  # fmt: skip
    assert cfg.datacenter == "dc1"
    assert cfg.log_level == "error"
    assert cfg.retry_join == ["a", "b", "c"]
    assert cfg.node_meta == {"rack": "r2", "zone": "z1"}
    assert [s["name"] for s in cfg.services] == ["one", "two"]
    # Flags win over every file.
    assert build_config(["-dev", "-config-dir", str(d), "-log-level", "warn"]).log_level == "warn"


def failure(tmp_path: Path, name: str, text: str, *extra: str) -> str:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as err:
        build_config(["-dev", "-config-file", str(path), *extra])
    return str(err.value)


def test_unknown_keys_fail_with_consuls_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.hcl"
    assert failure(tmp_path, "bad.hcl", 'datacenter = "dc1"\nbogus_key = 1\n') == \
        f"failed to parse {path}: 1 error occurred:\n\t* invalid config key bogus_key\n\n"
    text = failure(tmp_path, "bad.hcl", 'ports {\n  foo = 1\n}\nservices {\n  name = "x"\n  colour = "red"\n}\n')
    assert text == (f"failed to parse {path}: 2 errors occurred:\n\t* invalid config key ports.foo\n\t"
                    f"* invalid config key services[0].colour\n\n")  # fmt: skip
    jpath = tmp_path / "bad.json"
    assert failure(tmp_path, "bad.json", json.dumps({"service": {"name": "x", "check": {"ttl": "1s", "nope": 1}}})) \
        == f"failed to parse {jpath}: 1 error occurred:\n\t* invalid config key service.check.nope\n\n"
    # A labelled block where Consul takes none names the label as a key, as HCL1 decodes it.
    assert "invalid config key service.web" in failure(tmp_path, "bad.hcl", 'service "web" {\n  port = 1\n}\n')


def test_key_spellings_consul_accepts(tmp_path: Path) -> None:
    """Field names match case-insensitively (JSON's ``Name``), and the older spellings of check fields
    (``ServiceID``, ``ScriptArgs``, ``DeregisterCriticalServiceAfter``) are their new names; a CamelCase
    name that is not one of those is not a key (``EnableTagOverride``)."""
    path = write(tmp_path / "svc.json", json.dumps({
        "service": {"Name": "web", "ID": "web-1", "Port": 80, "Tags": ["a"],
                    "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "90m"}},
        "check": {"Name": "script", "ScriptArgs": ["/bin/true"], "Interval": "5s", "ServiceID": "web-1"},
    }))  # fmt: skip
    cfg = build_config(["-dev", "-config-file", str(path)])
    assert cfg.services == [{"name": "web", "id": "web-1", "port": 80, "tags": ["a"],
                             "check": {"ttl": "10s", "deregister_critical_service_after": "90m"}}]  # fmt: skip
    assert cfg.checks == [{"name": "script", "interval": "5s", "args": ["/bin/true"], "service_id": "web-1"}]
    bad = tmp_path / "bad.json"
    assert failure(tmp_path, "bad.json", json.dumps({"service": {"Name": "x", "EnableTagOverride": True}})) == \
        f"failed to parse {bad}: 1 error occurred:\n\t* invalid config key service.EnableTagOverride\n\n"


def test_config_format_and_extensions(tmp_path: Path) -> None:
    conf = write(tmp_path / "agent.conf", '{"datacenter": "dc7"}')
    assert failure(tmp_path, "agent.conf", '{"datacenter": "dc7"}') == \
        f"file {conf} has unknown extension; must be .hcl or .json, or config format must be set"
    assert build_config(["-dev", "-config-format", "json", "-config-file", str(conf)]).datacenter == "dc7"
    hcl_conf = write(tmp_path / "d" / "agent.conf", 'datacenter = "dc8"\n')
    assert build_config(["-dev", "-config-format", "hcl", "-config-dir", str(hcl_conf.parent)]).datacenter == "dc8"
    with pytest.raises(ConfigError, match="^config: -config-format must be either 'hcl' or 'json'$"):
        build_config(["-dev", "-config-format", "yaml", "-config-file", str(conf)])
    missing = tmp_path / "nope.hcl"
    with pytest.raises(ConfigError, match=f"^config: Open failed on {missing}. "):
        build_config(["-dev", "-config-file", str(missing)])
    # An empty file is skipped; YAML (cluster.yaml's format) still loads.
    write(tmp_path / "y" / "a.hcl", "")
    write(tmp_path / "y" / "b.yaml", "datacenter: dc9\n")
    assert build_config(["-dev", "-config-dir", str(tmp_path / "y")]).datacenter == "dc9"
    assert failure(tmp_path, "broken.hcl", 'datacenter = "dc1\n').startswith(f"failed to parse {tmp_path / 'broken.hcl'}: ")
    assert failure(tmp_path, "broken.json", '{"datacenter": ').startswith(f"failed to parse {tmp_path / 'broken.json'}: ")


def test_deprecated_keys_warn_and_move(tmp_path: Path) -> None:
    path = write(tmp_path / "old.json", json.dumps({"acl_token": "t1", "acl_default_policy": "deny",
                                                    "acl": {"enabled": True, "tokens": {"master": "m"}},
                                                    "start_join": ["127.0.0.1:8300"]}))  # fmt: skip
    warnings: list[str] = []
    cfg = build_config(["-dev", "-config-file", str(path)], warnings)
    assert cfg.acl == {"enabled": True, "default_policy": "deny", "tokens": {"master": "m", "default": "t1"}}
    assert cfg.retry_join == ["127.0.0.1:8300"]
    assert warnings == [
        "The 'acl_token' field is deprecated. Use the 'acl.tokens.default' field instead.",
        "The 'acl_default_policy' field is deprecated. Use the 'acl.default_policy' field instead.",
        "The 'start_join' field is deprecated. Use the 'retry_join' field instead.",
        "The 'acl.tokens.master' field is deprecated. Use the 'acl.tokens.initial_management' field instead.",
    ]


def test_hcl_values() -> None:
    data = parse_hcl('a = "tab\\there \\"q\\" $${lit}"\nb = <<EOF\nline one\n  line two\nEOF\n'
                     'c = <<-EOT\n    x\n      y\n    EOT\nd = -1\ne = 1.5\nf = [1, "two", true]\n'
                     'meta = { "k-1" = "v" }\n', "x.hcl")  # fmt: skip
    assert data == {"a": 'tab\there "q" ${lit}', "b": "line one\n  line two\n", "c": "x\n  y\n", "d": -1, "e": 1.5,
                    "f": [1, "two", True], "meta": {"k-1": "v"}}  # fmt: skip
    with pytest.raises(ConfigError, match="unsupported expression"):
        parse_hcl("a = b\n", "x.hcl")


def test_not_implemented_keys_are_accepted_and_named(tmp_path: Path) -> None:
    path = write(tmp_path / "a.hcl", 'disable_remote_exec = true\nperformance {\n  raft_multiplier = 1\n'
                                     '  leave_drain_time = "5s"\n}\n')  # fmt: skip
    loaded = load_paths([str(path)])
    assert loaded.sources[0].data == {"disable_remote_exec": True,
                                      "performance": {"raft_multiplier": 1, "leave_drain_time": "5s"}}  # fmt: skip
    cfg = build_config(["-dev", "-config-file", str(path)])
    assert cfg.extra["disable_remote_exec"] is True
    # performance.raft_multiplier is implemented (it scales the Raft timings); its sibling is not.
    assert cfg.raft_multiplier == 1
    assert cfg.unknown_keys == [f"{path}: disable_remote_exec", "performance.leave_drain_time"]


def test_raft_snapshot_keys_reach_the_raft_server(tmp_path: Path) -> None:
    """raft_snapshot_threshold, raft_snapshot_interval and raft_trailing_logs are read (HCL here) and given to
    the server's Raft; unset, Raft keeps its defaults."""
    from registry.agent.agent import Agent
    from registry.raft.base import SNAPSHOT_INTERVAL, SNAPSHOT_THRESHOLD, TRAILING_LOGS

    path = write(tmp_path / "raft.hcl", 'raft_snapshot_threshold = 16384\nraft_snapshot_interval = "45s"\n'
                                        "raft_trailing_logs = 10240\n")  # fmt: skip
    base = ["-server", "-bootstrap-expect", "1", "-insecure", "-bind", "127.0.0.1"]
    cfg = build_config([*base, "-data-dir", str(tmp_path / "a"), "-config-file", str(path)])
    assert (cfg.raft_snapshot_threshold, cfg.raft_snapshot_interval, cfg.raft_trailing_logs) == (16384, 45.0, 10240)
    assert not [k for k in cfg.unknown_keys if "raft_" in k]
    opts = Agent(cfg).consensus.opts  # type: ignore[attr-defined]
    assert (opts.snapshot_threshold, opts.snapshot_interval, opts.trailing_logs) == (16384, 45.0, 10240)
    plain = Agent(build_config([*base, "-data-dir", str(tmp_path / "b")])).consensus.opts  # type: ignore[attr-defined]
    assert (plain.snapshot_threshold, plain.snapshot_interval, plain.trailing_logs) == (
        SNAPSHOT_THRESHOLD, SNAPSHOT_INTERVAL, TRAILING_LOGS)


@pytest.mark.parametrize("data, message", [
    ({"raft_snapshot_threshold": 0}, "raft_snapshot_threshold must be a positive integer, got 0"),
    ({"raft_snapshot_threshold": "many"}, "raft_snapshot_threshold must be a positive integer, got 'many'"),
    ({"raft_trailing_logs": -1}, "raft_trailing_logs must be a non-negative integer, got -1"),
    ({"raft_snapshot_interval": "1ms"}, "raft_snapshot_interval must be at least 5ms, got '1ms'"),
    ({"raft_snapshot_interval": "soon"}, "raft_snapshot_interval"),
])  # fmt: skip
def test_bad_raft_snapshot_keys_are_refused(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    path = write(tmp_path / "raft.json", json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        build_config(["-dev", "-config-file", str(path)])


@pytest.mark.parametrize("value", [0, -1, 11, 20])
def test_raft_multiplier_out_of_range_is_refused_with_consuls_text(tmp_path: Path, value: int) -> None:
    path = write(tmp_path / "perf.json", json.dumps({"performance": {"raft_multiplier": value}}))
    with pytest.raises(ConfigError) as info:
        build_config(["-dev", "-config-file", str(path)])
    assert str(info.value) == f"performance.raft_multiplier cannot be {value}. Must be between 1 and 10"


def test_raft_multiplier_is_checked_after_the_files_merge(tmp_path: Path) -> None:
    """As Consul's builder checks the merged value: a later file may set a valid one over an invalid one,
    and a value that is not a whole number is refused naming the key."""
    a = write(tmp_path / "a.hcl", "performance {\n  raft_multiplier = 0\n}\n")
    b = write(tmp_path / "b.hcl", "performance {\n  raft_multiplier = 7\n}\n")
    assert build_config(["-dev", "-config-file", str(a), "-config-file", str(b)]).raft_multiplier == 7
    assert build_config(["-dev"]).raft_multiplier is None
    c = write(tmp_path / "c.json", json.dumps({"performance": {"raft_multiplier": "5"}}))
    with pytest.raises(ConfigError, match="performance.raft_multiplier must be a whole number"):
        build_config(["-dev", "-config-file", str(c)])


def test_watches_stay_a_list_of_watches(tmp_path: Path) -> None:
    """``watches`` is Consul's slice of maps: one watch in JSON or one HCL block is a list of one, not the map."""
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"watches": [{"type": "key", "key": "k", "args": ["true"]}]}))
    two = tmp_path / "two.hcl"
    two.write_text('watches = [{ type = "key" key = "a" args = ["true"] }, { type = "event" args = ["true"] }]\n')
    assert load_paths([str(one)]).sources[0].data["watches"] == [{"type": "key", "key": "k", "args": ["true"]}]
    assert [w["type"] for w in load_paths([str(two)]).sources[0].data["watches"]] == ["key", "event"]
