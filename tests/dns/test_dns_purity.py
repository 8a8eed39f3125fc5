"""The DNS cores are pure (no IO, no clock, no ambient randomness: checked on the source), and ``import dns``
is this project's package, not dnspython (whose top-level name is also ``dns``)."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Everything but the asyncio shell (dns/server.py).
PURE_MODULES = ["wire", "records", "config", "resolver", "encode", "answer", "catalog", "engine", "acl"]
FORBIDDEN = {"asyncio", "socket", "time", "random", "secrets", "os", "threading", "selectors", "subprocess",
             "ssl", "signal", "uvloop", "structlog", "logging"}  # fmt: skip
ALLOWED_PROJECT = {f"dns.{m}" for m in PURE_MODULES} | {
    "registry.structs", "registry.state.store", "registry.config", "registry.gocompat",
    "registry.acl.authorizer",  # a pure core itself (tests/acl/test_acl_purity.py)
    "registry.prepared_query",  # a pure core itself (tests/test_prepared_query.py)
}  # fmt: skip


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            names.append(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            raise AssertionError(f"{path}: dynamic import")
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports(module: str) -> None:
    path = ROOT / "dns" / f"{module}.py"
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"dns/{module}.py imports {name}"
        if top in {"dns", "registry", "ca", "connect_proxy"}:
            assert name in ALLOWED_PROJECT, f"dns/{module}.py imports {name}, which is not a pure core"


def test_the_resolver_takes_time_and_randomness_as_arguments() -> None:
    import inspect

    from dns.resolver import resolve

    params = inspect.signature(resolve).parameters
    assert {"now", "rng"} <= set(params)


def test_import_dns_is_ours() -> None:
    import dns
    import dns.resolver

    assert Path(dns.__file__).resolve() == ROOT / "dns" / "__init__.py"
    assert Path(dns.resolver.__file__).resolve() == ROOT / "dns" / "resolver.py"
    assert not hasattr(dns, "version")  # dnspython's package exposes dns.version
    requirements = importlib.metadata.requires("proconsul") or []
    assert not any(r.lower().replace("_", "-").startswith("dnspython") for r in requirements)
    # and nothing in the package reaches for dnspython's modules
    for path in (ROOT / "dns").glob("*.py"):
        for name in _imports(path):
            assert name.split(".")[:2] != ["dns", "rdata"] and name not in {"dns.message", "dns.name", "dns.query"}
