"""``proconsul config write|read|list|delete`` against a dev agent (in this process through ``tests.cli_run``;
one write as a real process): HCL files in the form Consul's documentation writes them (HCL1 nested blocks,
snake_case and PascalCase keys), JSON files and stdin, CAS, and Consul's messages and exit codes.
``hcl1_objects`` (the HCL1 -> HCL2 rewrite) is checked directly."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.cli.common import CLIError
from registry.cli.config import hcl1_objects, parse_config_entry
from registry.testing import RunningAgent, dev_agent
from tests.cli_run import run_cli, run_process

DEFAULTS_HCL = """
Kind     = "service-defaults"
Name     = "web"
Protocol = "http"
"""

RESOLVER_HCL = """
kind           = "service-resolver"
name           = "web"
default_subset = "v1"
connect_timeout = "15s"
subsets = {
  "v1" = {
    filter = "Service.Meta.version == v1"
  }
  "v2" = {
    filter       = "Service.Meta.version == v2"
    only_passing = true
  }
}
"""

ROUTER_HCL = """
Kind = "service-router"
Name = "web"
# Routes are evaluated in order; { in a comment is not a block.
Routes = [
  {
    Match {
      HTTP {
        PathPrefix = "/admin"
        Header = [
          {
            Name  = "x-debug"
            Exact = "1"
          },
        ]
      }
    }
    Destination {
      ServiceSubset         = "v2"
      prefix_rewrite        = "/"
      num_retries           = 3
      retry_on_status_codes = [503]
    }
  },
]
"""


@pytest.fixture(scope="module")
def running() -> Iterator[RunningAgent]:
    with dev_agent() as running:
        yield running


def run(running: RunningAgent, *args: str, stdin: str | None = None,
        process: bool = False) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``proconsul config <args>`` in this process (``tests.cli_run``), or as the console script."""
    how = run_process if process else run_cli
    return how("config", *args, input=stdin, text=True, env={**os.environ, "CONSUL_HTTP_ADDR": running.http_addr})


def test_write_read_list_delete_hcl_and_json(running: RunningAgent, tmp_path: Path) -> None:
    for name, text in (("defaults.hcl", DEFAULTS_HCL), ("resolver.hcl", RESOLVER_HCL), ("router.hcl", ROUTER_HCL)):
        (tmp_path / name).write_text(text)
    out = run(running, "write", str(tmp_path / "defaults.hcl"))
    assert (out.returncode, out.stdout) == (0, "Config entry written: service-defaults/web\n"), out.stderr
    out = run(running, "write", str(tmp_path / "resolver.hcl"))
    assert out.stdout == "Config entry written: service-resolver/web\n", out.stderr
    out = run(running, "write", str(tmp_path / "router.hcl"))
    assert out.stdout == "Config entry written: service-router/web\n", out.stderr
    splitter = {"kind": "service-splitter", "name": "web",
                "splits": [{"weight": 90, "service_subset": "v1"}, {"weight": 10, "service_subset": "v2"}]}
    out = run(running, "write", "-", stdin=json.dumps(splitter), process=True)  # one real process, stdin and all
    assert out.stdout == "Config entry written: service-splitter/web\n", out.stderr
    out = run(running, "read", "-kind", "service-router", "-name", "web")
    router = json.loads(out.stdout)
    assert out.stdout.startswith('{\n    "Kind": "service-router"')  # 4-space indent, as Consul prints
    assert router["Routes"] == [{
        "Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-debug", "Exact": "1"}]}},
        "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/", "NumRetries": 3, "RetryOnStatusCodes": [503]},
    }]  # fmt: skip
    resolver = json.loads(run(running, "read", "-kind", "service-resolver", "-name", "web").stdout)
    assert resolver["ConnectTimeout"] == "15s" and resolver["Subsets"]["v2"] == {
        "Filter": "Service.Meta.version == v2", "OnlyPassing": True}
    out = run(running, "list", "-kind", "service-defaults")
    assert (out.returncode, out.stdout) == (0, "web\n")
    # CAS: a stale index is not written (exit 1), the current one is.
    index = router["ModifyIndex"]
    out = run(running, "write", "-cas", "-modify-index", str(index - 1), str(tmp_path / "router.hcl"))
    assert (out.returncode, out.stderr) == (1, "Config entry not updated: service-router/web\n")
    out = run(running, "write", "-cas", "-modify-index", str(index), str(tmp_path / "router.hcl"))
    assert out.returncode == 0
    # The agent's refusals come back with its text: here the protocol the router depends on.
    (tmp_path / "tcp.hcl").write_text(DEFAULTS_HCL.replace('"http"', '"tcp"'))
    out = run(running, "write", str(tmp_path / "tcp.hcl"))
    assert out.returncode == 1 and out.stderr == (
        "Error writing config entry service-defaults/web: Unexpected response code: 400 (discovery chain \"web\" "
        "uses a protocol \"tcp\" that does not permit advanced routing or splitting behavior)\n")
    out = run(running, "delete", "-kind", "service-router", "-name", "web", "-cas", "-modify-index", "1")
    assert (out.returncode, out.stderr) == (1, "Config entry not deleted: service-router/web\n")
    for kind in ("service-router", "service-splitter", "service-resolver", "service-defaults"):
        out = run(running, "delete", "-kind", kind, "-name", "web")
        assert (out.returncode, out.stdout) == (0, f"Config entry deleted: {kind}/web\n"), out.stderr
    out = run(running, "read", "-kind", "service-defaults", "-name", "web")
    assert out.returncode == 1 and out.stderr == (
        'Error reading config entry "service-defaults" / "web": Unexpected response code: 404 '
        '(Config entry not found for "service-defaults" / "web")\n')


def test_usage_errors(running: RunningAgent, tmp_path: Path) -> None:
    assert run(running, "read", "-name", "web").stderr == "Must specify the -kind parameter\n"
    assert run(running, "read", "-kind", "service-defaults").stderr == "Must specify the -name parameter\n"
    assert run(running, "list").stderr == "Must specify the -kind parameter\n"
    out = run(running, "write")
    assert (out.returncode, out.stderr) == (
        1, "Must provide exactly one positional argument to specify the config entry to write\n")
    (tmp_path / "typo.hcl").write_text('Kind = "service-defaults"\nName = "web"\nProtocl = "http"\n')
    out = run(running, "write", str(tmp_path / "typo.hcl"))
    assert (out.returncode, out.stderr) == (
        1, 'Failed to decode config entry input: 1 error occurred:\n\t* invalid config key "Protocl"\n\n\n')


def test_hcl1_nested_blocks_become_hcl2_attributes() -> None:
    assert hcl1_objects('a = [{ M { H { p = "/" } } }]') == 'a = [{ M = { H = { p = "/" } } }]'
    # Blocks in a body stay blocks; strings, comments and heredocs are untouched.
    assert hcl1_objects('redirect {\n  x = "{ y {"\n}') == 'redirect {\n  x = "{ y {"\n}'
    assert hcl1_objects('o = { # k {\n k { } }') == 'o = { # k {\n k = { } }'
    text = 'o = {\n  h = <<EOT\nk {\nEOT\n  k { }\n}'
    assert hcl1_objects(text) == 'o = {\n  h = <<EOT\nk {\nEOT\n  k = { }\n}'
    assert parse_config_entry('kind = "service-resolver"\nname = "w"\nredirect {\n  datacenter = "dc2"\n}\n') == {
        "Kind": "service-resolver", "Name": "w", "Redirect": {"Datacenter": "dc2"}}
    with pytest.raises(CLIError, match="Failed to decode config entry input"):
        parse_config_entry('kind = "service-defaults"\nname = ')
