"""The one HTTP route table: every module's ``ROUTES``, collected explicitly, and the docs rendered from it.

The agent builds its ``Api`` from ``ROUTES``; ``python -m registry.api.routes`` rewrites
``docs/http-api.md`` from the same table (``--check`` fails when the file is stale), so the documented
list of endpoints and the ACL rule each needs cannot drift from what is served.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from registry.api import (
    acl,
    acl_login,
    agent_endpoints,
    catalog,
    config_entries,
    connect,
    coordinate,
    discovery_chain,
    event,
    health,
    internal_ui,
    kv,
    metrics,
    operator,
    query,
    session,
    status,
    txn,
    ui_topology,
)
from registry.api.routing import Route

ROUTES: tuple[Route, ...] = (
    *agent_endpoints.ROUTES,
    *metrics.ROUTES,
    *catalog.ROUTES,
    *health.ROUTES,
    *kv.ROUTES,
    *status.ROUTES,
    *operator.ROUTES,
    *session.ROUTES,
    *query.ROUTES,
    *txn.ROUTES,
    *connect.ROUTES,
    *config_entries.ROUTES,
    *discovery_chain.ROUTES,
    *acl.ROUTES,
    *acl_login.ROUTES,
    *event.ROUTES,
    *coordinate.ROUTES,
    *internal_ui.ROUTES,
    *ui_topology.ROUTES,
)

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"

_NAME_WORDS = {
    "path": "path",
    "path-id": "object named by the ID in the path",
    "local-node": "this agent's node",
    "each": "each item",
    "unnamed": "",
    "none": "",
}


def _rule(r: Route) -> str:
    if r.resource == "none":
        return "none"
    return f"`{r.resource}:{r.access}`"


def _name(r: Route) -> str:
    if r.name.startswith("query:"):
        return f"query `?{r.name[6:]}`"
    if r.name.startswith("body:"):
        return f"body `{r.name[5:]}`"
    return _NAME_WORDS[r.name]


def render_markdown(routes: tuple[Route, ...] = ROUTES) -> str:
    """The route list as a Markdown page, one row per (method, path), in path order."""
    rows = sorted(((m, r) for r in routes for m in r.methods), key=lambda mr: (mr[1].path, mr[0]))
    out = [
        "# HTTP API routes",
        "",
        "Generated from the route table (`registry/api/routes.py`) by `python -m registry.api.routes`; do not",
        "edit by hand. A path ending in `/` takes a suffix (`/v1/kv/<key>`). *ACL rule* is the Consul ACL",
        "resource and access level the route needs; *name from* says where the name the rule is checked",
        "against comes from (*each item*: a list filtered, or a batch checked, item by item).",
        "The same table, with parameters, bodies and answers, is described as OpenAPI 3.0 in",
        "[`openapi.yaml`](openapi.yaml) (`python -m registry.api.openapi`).",
        "",
        "| Method | Path | ACL rule | Name from | What it does |",
        "|---|---|---|---|---|",
    ]
    for method, r in rows:
        path = r.path + "…" if r.is_prefix else r.path
        out.append(f"| {method} | `{path}` | {_rule(r)} | {_name(r)} | {r.summary} |")
    return "\n".join(out) + "\n"


def generated_doc_main(module: str, path: Path, render: Callable[[], str], argv: list[str] | None) -> int:
    """``python -m <module> [--check]``: write the document rendered from the route table to ``path``, or with
    ``--check`` fail (exit 1) when the file is not what the table renders."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--check", action="store_true", help=f"fail if {path.name} is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is stale: run python -m {module}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return generated_doc_main("registry.api.routes", DOC_PATH, render_markdown, argv)


if __name__ == "__main__":
    raise SystemExit(main())
