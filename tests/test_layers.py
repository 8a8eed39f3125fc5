"""The layers hold: Raft is a library, the core knows no outer layer, only the agent builds listeners, no cycles.

The import graph is read from the source (every ``import``, at module level or inside a function, except
those under ``if TYPE_CHECKING:``), so a lazy import cannot hide a dependency. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "ca", "dns", "connect_proxy")

# The replicated state machine and what it is built from: none of them may know about HTTP, DNS, the agent,
# the CLI or the sidecar.
CORE_PREFIXES = ("registry.state", "registry.fsm", "registry.consensus", "registry.commands", "registry.txn",
                 "registry.sessions", "registry.structs")  # fmt: skip
OUTER_PREFIXES = ("registry.api", "registry.agent", "registry.cli", "dns", "connect_proxy", "registry.connect.service")
# Calls that open a listening socket: a module making one is a listener module.
LISTEN_CALLS = {"listen", "SockSite", "TCPSite", "UnixSite", "start_server", "create_server",
                "create_datagram_endpoint", "start_unix_server"}  # fmt: skip
# The composition roots: the agent (for the registry) and the sidecar's own entry point.
ROOTS = ("registry.agent", "connect_proxy.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` may be module ``a.b`` with attribute ``c``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                hidden.update(id(n) for n in ast.walk(stmt))
    return hidden


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    hidden = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(filter(None, (_resolve(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                hit = full if full in MODULES else _resolve(target)
                if hit:
                    found.add(hit)
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _listen_calls(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in LISTEN_CALLS:
                calls.add(name)
    return calls


# Leaf utilities the libraries share: process-wide state more than one of them must agree on (the collector
# holds of registry.gcpause are counted across Raft's snapshots and gossip's push-pulls). A leaf imports
# nothing of the project.
SHARED_LEAVES = ("registry.gcpause",)


def test_shared_leaves_import_nothing_of_the_project() -> None:
    assert {m: sorted(GRAPH[m]) for m in SHARED_LEAVES if GRAPH[m]} == {}


def test_raft_is_a_library() -> None:
    allowed = ("registry.raft", *SHARED_LEAVES)
    bad = {m: sorted(d for d in deps if d.startswith("registry.") and not _within(d, allowed))
           for m, deps in GRAPH.items() if _within(m, ("registry.raft",))}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}, "registry.raft imports the application"


def test_gossip_is_a_library() -> None:
    """Membership gossip, like Raft, knows nothing of the application (its coordinates module aside)."""
    allowed = ("registry.gossip", "registry.coordinate", *SHARED_LEAVES)
    bad = {m: sorted(d for d in deps if d.startswith("registry.") and not _within(d, allowed))
           for m, deps in GRAPH.items() if _within(m, allowed)}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}, "registry.gossip imports the application"


def test_the_ui_is_a_client_of_the_http_api() -> None:
    """The web UI reads and writes through the agent's public HTTP API only (the one client), never the store,
    the API's handlers or the agent's objects, so it shows what any agent's API shows a token."""
    allowed = ("registry.ui", "registry.client", "registry.config")
    bad = {m: sorted(d for d in deps if not _within(d, allowed))
           for m, deps in GRAPH.items() if _within(m, ("registry.ui",))}  # fmt: skip
    assert any(_within(m, ("registry.ui",)) for m in GRAPH), "the scan found no UI module: it is broken"
    assert not {m: d for m, d in bad.items() if d}, "registry.ui reaches past the HTTP API"


def test_core_imports_no_outer_layer() -> None:
    bad = {m: sorted(d for d in deps if _within(d, OUTER_PREFIXES))
           for m, deps in GRAPH.items() if _within(m, CORE_PREFIXES)}  # fmt: skip
    assert not {m: d for m, d in bad.items() if d}


def test_only_the_composition_roots_import_listeners() -> None:
    listeners = {m for m in MODULES if _listen_calls(m)}
    assert listeners, "the scan found no listener at all: it is broken"
    bad = {m: sorted(deps & listeners) for m, deps in GRAPH.items()
           if deps & listeners and not _within(m, ROOTS)}  # fmt: skip
    assert not bad, f"listener modules {sorted(listeners)} imported outside the composition roots"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles


def test_no_dynamic_imports() -> None:
    """``__import__`` and ``importlib`` would hide an edge from every check above."""
    bad = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
                if name in ("__import__", "import_module"):
                    bad.append(f"{m}:{node.lineno}")
    assert not bad


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import registry.api.http\n", {"registry.api.http"}),
        ("from registry.api import http\n", {"registry.api.http"}),
        ("from registry.api.http import Api\n", {"registry.api.http"}),
        ("def f():\n    from dns import server\n", {"dns.server"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from registry.agent import agent\n", set()),
    ],
)
def test_the_scan_sees_every_form(tmp_path: Path, source: str, expected: set[str], monkeypatch) -> None:
    probe = "registry.consensus"
    monkeypatch.setitem(MODULES, probe, tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source)
    assert imports_of(probe) == expected
