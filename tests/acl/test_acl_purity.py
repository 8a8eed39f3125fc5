"""The ACL core is pure: no IO, no clock, no threads, no randomness, no global state reached from outside.

Checked on the source of every module in ``registry/acl``: what it imports (the standard library's
pure parts, python-hcl2 and its Lark grammar engine, ``cryptography`` for JWT signatures, the package
itself, and the project's other pure computation: the bexpr filter compiler for binding-rule selectors and
the Go-compatible parsers) and which builtins it calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "registry" / "acl"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))
FORBIDDEN = {
    "asyncio", "socket", "time", "datetime", "threading", "os", "random", "secrets", "selectors",
    "subprocess", "signal", "ssl", "uvloop", "structlog", "logging", "pathlib", "io", "shutil",
    "tempfile", "urllib", "http", "aiohttp", "multiprocessing", "concurrent", "functools",
}  # fmt: skip
THIRD_PARTY = {"hcl2", "lark", "cryptography"}
# Pure modules outside the package an ACL module may use (they do no IO and read no clock themselves).
PURE_PROJECT = ("registry.acl", "registry.filtering", "registry.gocompat")
FORBIDDEN_CALLS = {"open", "print", "input", "eval", "exec", "compile", "__import__", "globals", "breakpoint"}


def _tree(module: str) -> ast.AST:
    path = PACKAGE / f"{module}.py"
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def test_the_package_has_the_expected_modules() -> None:
    assert {"rules", "syntax", "identities", "authorizer", "errors", "resolve"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_imports_are_pure(module: str) -> None:
    for name in _imports(_tree(module)):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"registry/acl/{module}.py imports {name}"
        if top in {"registry", "ca", "dns", "connect_proxy"}:
            assert name.startswith(PURE_PROJECT), f"registry/acl/{module}.py imports {name}"
        elif top in THIRD_PARTY:
            continue
        else:
            import sys

            assert top in sys.stdlib_module_names, f"registry/acl/{module}.py imports {name}"


@pytest.mark.parametrize("module", MODULES)
def test_no_io_builtins_and_no_mutable_globals(module: str) -> None:
    tree = _tree(module)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & FORBIDDEN_CALLS, (module, calls & FORBIDDEN_CALLS)
    assert not any(isinstance(n, ast.Global | ast.Nonlocal) for n in ast.walk(tree)), module


def test_the_scan_sees_every_import_form() -> None:
    tree = ast.parse("import os.path\nfrom time import monotonic\nimport asyncio as aio\n")
    assert _imports(tree) == {"os.path", "time", "asyncio"}
