"""ACL authorization in-process: decisions per second for a realistically large token, and compile time.

The token links 5 policies directly and 3 roles of 5 policies each: 20 policies, 1,000 rules in all
(50 per policy), over services, nodes and keys, half exact names and half prefixes, some deny and some
read/write, with the names teams really use (``payments-api``, ``ip-10-0-3-17``, ``app/team-3/...``).
The questions are a mix like the HTTP API's: mostly ``service:read``, ``node:read`` and ``key:read``,
some writes, intentions and recursive deletes; 60% of the names match an exact rule, 30% only a prefix,
10% nothing (the default policy answers).

There is no external peer for an in-process authorizer (Consul's is Go code inside its server), so this
prints the ratio to the target instead: at least 200,000 decisions/s on one core.  Compile time is
reported in two parts: parsing the 20 policies' HCL (done once per policy write, in the store) and
merging and compiling one token's rules (done once per token, in the resolver cache).

Run: ``python -m bench.acl`` (``--no-docs`` to leave docs/benchmarks.md alone).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench import _util
from registry.acl.authorizer import Authorizer
from registry.acl.resolve import Policy, Role, Token, compile_token, token_rules
from registry.acl.rules import parse_rules, render_hcl

SECTION = "ACL authorization"
TARGET = 200_000
TEAMS = [f"team-{i}" for i in range(40)]
WORDS = ["api", "web", "db", "cache", "worker", "payments", "search", "auth", "billing", "queue", "gateway"]


def _policy_text(rng: random.Random, index: int) -> tuple[str, list[str], list[str], list[str]]:
    """One policy of 50 rules; returns its HCL and the exact service/node/key names it mentions."""
    lines: list[str] = []
    services: list[str] = []
    nodes: list[str] = []
    keys: list[str] = []
    team = TEAMS[index % len(TEAMS)]
    for n in range(50):
        kind = ("service", "node", "key")[n % 3]
        policy = rng.choices(["read", "write", "deny"], weights=[5, 4, 1])[0]
        prefix = n % 2 == 1
        if kind == "service":
            name = f"{team}-{rng.choice(WORDS)}" + ("-" if prefix else f"-{n}")
            (services if not prefix else []).append(name)
        elif kind == "node":
            name = f"ip-10-{index}-{n}" + ("-" if prefix else f"-{rng.randrange(256)}")
            (nodes if not prefix else []).append(name)
        else:
            name = f"app/{team}/{rng.choice(WORDS)}/" + ("" if prefix else f"config-{n}")
            (keys if not prefix else []).append(name)
        block = f"{kind}_prefix" if prefix else kind
        lines.append(f'{block} "{name}" {{\n  policy = "{policy}"\n}}')
    return "\n".join(lines), services, nodes, keys


def build(rng: random.Random) -> tuple[Token, dict[str, Policy], dict[str, Role], dict[str, list[str]], float]:
    texts = []
    names: dict[str, list[str]] = {"service": [], "node": [], "key": []}
    for i in range(20):
        text, services, nodes, keys = _policy_text(rng, i)
        texts.append(text)
        names["service"] += services
        names["node"] += nodes
        names["key"] += keys
    t0 = time.perf_counter()
    policies = {f"p{i}": Policy.from_source(f"p{i}", f"policy-{i}", text) for i, text in enumerate(texts)}
    parse_seconds = time.perf_counter() - t0
    roles = {f"r{r}": Role(f"r{r}", f"role-{r}", tuple(f"p{5 + 5 * r + k}" for k in range(5))) for r in range(3)}
    token = Token("bench-token", tuple(f"p{k}" for k in range(5)), tuple(roles))
    return token, policies, roles, names, parse_seconds


def questions(authz: Authorizer, names: dict[str, list[str]], rng: random.Random, count: int) -> list[tuple]:
    """(bound method, name) pairs in the mix described in the module docstring."""

    def pick(kind: str) -> str:
        roll = rng.random()
        if roll < 0.6:
            return rng.choice(names[kind])  # an exact rule
        if roll < 0.9:  # under a prefix rule only
            team = rng.choice(TEAMS[:20])
            return {
                "service": f"{team}-{rng.choice(WORDS)}-{rng.randrange(10_000)}",
                "node": f"ip-10-{rng.randrange(20)}-{rng.randrange(50)}-{rng.randrange(256)}",
                "key": f"app/{team}/{rng.choice(WORDS)}/{rng.choice(WORDS)}/{rng.randrange(100)}",
            }[kind]
        return {"service": "unmatched-service", "node": "other-host", "key": "elsewhere/x"}[kind]

    mix = [
        (authz.service_read, "service", 30),
        (authz.node_read, "node", 20),
        (authz.key_read, "key", 20),
        (authz.service_write, "service", 8),
        (authz.key_write, "key", 7),
        (authz.intention_read, "service", 6),
        (authz.node_write, "node", 4),
        (authz.intention_write, "service", 3),
        (authz.key_write_prefix, "key", 2),
    ]
    methods = [(m, k) for m, k, _ in mix]
    weights = [w for _, _, w in mix]
    out = []
    for method, kind in rng.choices(methods, weights=weights, k=count):
        out.append((method, pick(kind)))
    return out


def decisions_per_second(qs: list[tuple], rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for method, name in qs:
            method(name)
        rates.append(len(qs) / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--questions", type=int, default=200_000)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    m = _util.machine()
    rng = random.Random(9)
    token, policies, roles, names, parse_seconds = build(rng)
    rule_sets = list(token_rules(token, policies=policies, roles=roles, datacenter="dc1"))
    rule_count = sum(r.rule_count() for r in rule_sets)
    assert len(rule_sets) == 20 and rule_count == 1000, (len(rule_sets), rule_count)
    compile_ms = []
    for _ in range(20):
        t0 = time.perf_counter()
        authz = compile_token(token, policies=policies, roles=roles, datacenter="dc1", default_policy="deny")
        compile_ms.append((time.perf_counter() - t0) * 1000)
    qs = questions(authz, names, rng, args.questions)
    allowed = sum(bool(method(name)) for method, name in qs)
    rates = decisions_per_second(qs, args.rounds)
    best, median = max(rates), statistics.median(rates)
    hcl_bytes = sum(len(render_hcl(p.rules)) for p in policies.values())
    assert all(parse_rules(render_hcl(p.rules)) == p.rules for p in list(policies.values())[:2])
    load_after = _util.loadavg()

    print(f"# machine: {m['nproc']} cores, {m['cpu']}; load before {m['load']}, after {load_after}")
    print(f"token: 20 policies ({len(token.policy_ids)} direct + 3 roles x 5), {rule_count} rules, {hcl_bytes} bytes of HCL")
    print(f"questions: {len(qs)} ({allowed / len(qs):.0%} allowed), {args.rounds} rounds")
    print(f"decisions/s: median {median:,.0f}, best {best:,.0f}; ratio to target {median / TARGET:.2f}x")
    print(f"parse 20 policies (HCL): {parse_seconds * 1000:.0f} ms; compile the token: median "
          f"{statistics.median(compile_ms):.2f} ms")  # fmt: skip
    print("peer: none (an in-process authorizer has no external counterpart); the ratio is to the target")

    if args.no_docs:
        return
    rows = [
        ("decisions/s, one core, median of rounds", f"{median:,.0f} (best {best:,.0f})", f">= {TARGET:,}/s",
         _util.verdict(median >= TARGET)),
        ("ratio to target", f"{median / TARGET:.2f}x", ">= 1.0x", _util.verdict(median >= TARGET)),
        ("compile one token (merge 20 policies, build tables)", f"{statistics.median(compile_ms):.2f} ms", "", ""),
        ("parse the 20 policies' HCL (once per policy write)", f"{parse_seconds * 1000:.0f} ms", "", ""),
    ]  # fmt: skip
    body = "\n\n".join(
        [
            f"{_util.machine_line(m)} Load average after the run: {load_after}.",
            f"`python -m bench.acl`: a token with 3 roles and 20 policies, {rule_count} rules (services, nodes, "
            f"keys; half exact, half prefix), asked {len(qs):,} questions per round ({args.rounds} rounds) in "
            "a mix like the HTTP API's (service/node/key reads first, then writes, intentions, recursive "
            "deletes); 60% of names match an exact rule, 30% only a prefix, 10% nothing. In-process, one "
            "thread, no cache of decisions.",
            _util.markdown_table(rows),
            "There is no external peer for an in-process authorizer (Consul's is Go inside its server "
            "process), so the ratio is to the target instead.",
        ]
    )
    _util.update_docs_section(SECTION, body)
    print(f"# wrote the '{SECTION}' section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
