"""The Connect control-plane cores are pure: no IO, no clock, no ambient randomness.

Checked on the source (AST), so a stray import fails here before it can hide behind a mock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_MODULES = ["__init__", "config", "model", "responses", "codec"]
PURE_MODULES = ["ca/spiffe.py", "ca/certs.py", "ca/csr.py", "registry/intentions.py", "registry/gocompat.py"] + [
    f"ca/provider/{m}.py" for m in PROVIDER_MODULES
]
# IO, clocks, threads and ambient randomness. (Key generation and ECDSA nonces come from OpenSSL's
# CSPRNG inside `cryptography`; every other random choice is drawn from a caller-supplied source.)
FORBIDDEN_MODULES = {
    "asyncio", "socket", "time", "os", "subprocess", "threading", "multiprocessing", "selectors",
    "ssl", "random", "secrets", "uuid", "urllib", "http", "logging", "structlog", "signal", "io",
    "shutil", "tempfile", "pathlib",
}
# Reading the clock through datetime is as impure as importing time.
FORBIDDEN_CALLS = {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"}
# Project modules a pure core may import: only other pure cores.
ALLOWED_PROJECT_IMPORTS = {"ca", "ca.spiffe", "ca.certs", "ca.csr", "ca.provider", "registry.intentions",
                           "registry.gocompat"} | {f"ca.provider.{m}" for m in PROVIDER_MODULES[1:]}


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", PURE_MODULES)
def test_pure_module_imports(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    for name in _imports(tree):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_MODULES, f"{path} imports {name}"
        if top in {"ca", "registry", "dns", "connect_proxy"}:
            module = name if name in ALLOWED_PROJECT_IMPORTS else name.rsplit(".", 1)[0]
            assert module in ALLOWED_PROJECT_IMPORTS, f"{path} imports non-pure project module {name}"


@pytest.mark.parametrize("path", PURE_MODULES)
def test_pure_module_reads_no_clock(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in FORBIDDEN_CALLS, (
                f"{path}:{node.lineno} calls .{node.func.attr}(): take `now` as an argument"
            )


def test_checker_catches_violations() -> None:
    bad = ast.parse("import asyncio\nfrom time import monotonic\nimport os.path\n")
    assert {n.split(".")[0] for n in _imports(bad)} & FORBIDDEN_MODULES == {"asyncio", "time", "os"}


def test_every_provider_module_is_checked() -> None:
    """A module added to the ca.provider package is a pure core too, and must be listed above."""
    found = {p.stem for p in (ROOT / "ca" / "provider").glob("*.py")}
    assert found == set(PROVIDER_MODULES)
