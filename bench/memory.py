"""Memory: 100,000 registered instances (10,000 services x 10 instances) under 1 GiB RSS.

A dev agent runs in this process (``registry.testing.async_dev_agent`` on uvloop, the same code as
``proconsul agent -dev``). The instances go through the real write path, ``consensus.propose(command)`` ->
log -> FSM -> store, with the command the /v1/catalog/register handler builds: instance j of service i sits
on node ``(10 i + j) mod 10,000`` (10,000 nodes, 10 instances each) with one passing check. RSS is read
from /proc/self/status after a full garbage collection, before and after loading; bytes per instance is the
difference over 100,000. A few reads through the HTTP API confirm the catalog holds what was written.

There is no peer process for this one; the figures are printed with their ratio to the target.

    python -m bench.memory [--services 10000] [--per-service 10] [--docs] [--strict]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import _util

TARGET_RSS = 1 << 30


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def register_command(service: int, instance: int, nodes: int, per_service: int) -> dict[str, Any]:
    """The command /v1/catalog/register proposes for one instance with one passing check."""
    k = (service * per_service + instance) % nodes
    node, name = f"node-{k}", f"svc-{service}"
    sid = f"{name}-{instance}"
    return {
        "Type": "register", "ID": "", "Node": node, "Address": f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}",
        "Datacenter": "dc1", "TaggedAddresses": {}, "NodeMeta": {}, "SkipNodeUpdate": False,
        "Service": {
            "ID": sid, "Service": name, "Kind": "", "Tags": ["v1"], "Address": "", "TaggedAddresses": {},
            "Meta": {}, "Port": 8000 + instance, "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False, "Proxy": None, "Connect": None,
        },
        "Checks": [{
            "Node": node, "CheckID": f"service:{sid}", "Name": f"{name} alive", "Status": "passing", "Notes": "",
            "Output": "", "ServiceID": sid, "Type": "", "Definition": {},
        }],
    }  # fmt: skip


async def measure(services: int, per_service: int) -> dict[str, Any]:
    from registry.fsm import CommandError
    from registry.testing.agent import async_dev_agent

    total = services * per_service
    nodes = min(total, 10_000)
    async with async_dev_agent() as running:
        agent = running.agent
        gc.collect()
        before = rss_bytes()
        start = time.perf_counter()
        for s in range(services):
            for i in range(per_service):
                result = await agent.consensus.propose(register_command(s, i, nodes, per_service))
                if isinstance(result, CommandError):
                    raise SystemExit(f"register svc-{s}-{i} refused: {result.message}")
        load_s = time.perf_counter() - start
        gc.collect()
        after = rss_bytes()
        store = agent.store
        held = sum(len(v) for v in store.by_service_name.values() if v)
        # Read back through the HTTP API, on this loop, as a client would.
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{running.url}/v1/catalog/services") as r:
                names = len(await r.json())
            async with http.get(f"{running.url}/v1/health/service/svc-{services // 2}?passing") as r:
                sample = len(await r.json())
    return {
        "instances": total, "nodes": nodes, "held": held, "names": names, "sample": sample,
        "before": before, "after": after, "load_s": load_s,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--per-service", type=int, default=10)
    ap.add_argument("--docs", action="store_true", help="write the result into docs/benchmarks.md")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)

    import uvloop

    _util.wait_for_quiet_machine()
    mach = _util.machine()
    print(f"# {_util.machine_line(mach)}", flush=True)
    m = uvloop.run(measure(args.services, args.per_service))
    mach["load"] = _util.loadavg()
    total = m["instances"]
    if m["held"] < total or m["sample"] != args.per_service or m["names"] < args.services:
        raise SystemExit(f"the catalog does not hold what was written: {json.dumps(m)}")
    grown = m["after"] - m["before"]
    per_instance = grown / total
    ok = m["after"] < TARGET_RSS
    mib = 1 << 20
    rows = [
        ("instances loaded (services x instances, nodes)",
         f"{total:,} ({args.services:,} x {args.per_service}, {m['nodes']:,} nodes)", f"{100_000:,}", "-"),
        ("RSS before -> after", f"{m['before'] / mib:,.0f} MiB -> {m['after'] / mib:,.0f} MiB", "< 1,024 MiB",
         _util.verdict(ok)),
        ("bytes per instance (RSS growth / instances)", f"{per_instance:,.0f}", f"< {TARGET_RSS // total:,}", "-"),
        ("time to load through propose -> FSM -> store",
         f"{m['load_s']:.1f} s ({total / m['load_s']:,.0f} registrations/s)", "-", "-"),
        ("ratio to target (1 GiB / RSS after)", f"{TARGET_RSS / m['after']:.2f}x", ">= 1x", _util.verdict(ok)),
    ]  # fmt: skip
    table = _util.markdown_table(rows)
    setup = (
        "One in-process dev agent on uvloop; each instance is one `register` command (node, service with one tag, "
        "one passing check), the shape `/v1/catalog/register` builds, through `consensus.propose`. RSS from "
        "`/proc/self/status` after `gc.collect()`; the 'before' figure is the interpreter plus a started agent. "
        "No peer: ratio is to the target."
    )
    doc = f"{_util.machine_line(mach)}\n\n{setup}\n\n{table}\n"
    print()
    print(table)
    print(f"\nratio to target: {TARGET_RSS / m['after']:.2f}x (RSS {m['after'] / mib:,.0f} MiB vs 1,024 MiB)")
    if args.docs:
        _util.update_docs_section("Memory", doc)
        print(f"# wrote the Memory section of {_util.DOCS}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
