"""The Raft core, and the link policy beside it, are pure: no IO, no clock, no threads, no ambient randomness."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

CORE = ("registry.raft.node", "registry.raft.log", "registry.raft.messages", "registry.raft.links")
FORBIDDEN = {"asyncio", "socket", "time", "threading", "os", "selectors", "subprocess", "signal", "datetime"}
ROOT = Path(__file__).resolve().parents[2]


def _core_files() -> dict[str, str]:
    # Import the core in a fresh interpreter: it must load on its own, and tells us which files it is.
    modules = ", ".join(repr(m) for m in CORE)
    code = f"import importlib, json; print(json.dumps({{m: importlib.import_module(m).__file__ for m in [{modules}]}}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_modules_import_nothing_impure() -> None:
    files = _core_files()
    assert set(files) == set(CORE)
    for module, path in files.items():
        tree = ast.parse(Path(path).read_text(), path)
        imported = _imported_modules(tree)
        bad = {name for name in imported if name.split(".")[0] in FORBIDDEN}
        assert not bad, f"{module} imports {sorted(bad)}"
        # Within the project the core may only lean on itself.
        project = {name for name in imported if name.startswith("registry")}
        assert project <= set(CORE), f"{module} imports {sorted(project - set(CORE))}"
        # __import__/importlib would smuggle IO back in.
        calls = {
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert not calls & {"__import__", "open", "eval", "exec", "input", "print"}, module


def test_the_import_scan_sees_every_form() -> None:
    tree = ast.parse("import os.path\nfrom time import monotonic\nimport asyncio as aio\nfrom . import x\n")
    assert _imported_modules(tree) == {"os.path", "time", "asyncio"}


def test_randomness_only_from_the_injected_generator() -> None:
    path = _core_files()["registry.raft.node"]
    tree = ast.parse(Path(path).read_text(), path)
    # The module may name random.Random as a type, but never call the module-level generator.
    uses = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "random"
    }
    assert uses <= {"Random"}, uses
