"""Runs testdata/precedence.txt: readable cases of rules and the decisions Consul makes with them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry.acl.authorizer import OPERATIONS, Authorizer
from registry.acl.identities import BUILTIN_POLICIES, NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.resolve import Policy, Token, compile_token

TRANSCRIPT = Path(__file__).parent / "testdata" / "precedence.txt"
BUILTINS = {p.name: p.id for p in BUILTIN_POLICIES.values()}


@dataclass
class Case:
    title: str
    line: int
    default: str = "deny"
    management: bool = False
    policies: list[Policy] = field(default_factory=list)
    policy_ids: list[str] = field(default_factory=list)
    service_identities: list[ServiceIdentity] = field(default_factory=list)
    node_identities: list[NodeIdentity] = field(default_factory=list)
    templates: list[TemplatedPolicy] = field(default_factory=list)
    checks: list[tuple[int, str, str | None, bool]] = field(default_factory=list)

    def authorizer(self) -> Authorizer:
        if self.management:
            return Authorizer.management("recovery")
        token = Token(
            "transcript",
            tuple(self.policy_ids + [p.id for p in self.policies]),
            (),
            tuple(self.service_identities),
            tuple(self.node_identities),
            tuple(self.templates),
        )
        table = {p.id: p for p in self.policies}
        return compile_token(token, policies=table, roles={}, datacenter="dc1", default_policy=self.default)


def load(path: Path) -> list[Case]:
    cases: list[Case] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        number, text = i + 1, lines[i].strip()
        i += 1
        if not text or text.startswith("#"):
            continue
        if text.startswith("=== "):
            cases.append(Case(text[4:], number))
            continue
        case = cases[-1]
        words = shlex.split(text)
        if "->" in words:
            arrow = words.index("->")
            op, name = words[0], (words[1] if arrow == 2 else None)
            assert words[arrow + 1] in ("allow", "deny"), f"line {number}: {text}"
            case.checks.append((number, op, name, words[arrow + 1] == "allow"))
        elif words[0] == "default":
            case.default = words[1]
        elif words[0] == "management":
            case.management = True
        elif words[0] == "policy":
            body: list[str] = []
            while lines[i].strip() != "end":
                body.append(lines[i])
                i += 1
            i += 1
            case.policies.append(Policy.from_source(f"p{number}", f"policy-{number}", "\n".join(body)))
        elif words[0] == "builtin":
            case.policy_ids.append(BUILTINS[words[1]])
        elif words[0] == "service-identity":
            case.service_identities.append(ServiceIdentity(words[1]))
        elif words[0] == "node-identity":
            case.node_identities.append(NodeIdentity(words[1], words[2]))
        elif words[0] == "template":
            case.templates.append(TemplatedPolicy(words[1], words[2] if len(words) > 2 else ""))
        else:
            raise AssertionError(f"{path.name}:{number}: cannot read {text!r}")
    return cases


CASES = load(TRANSCRIPT)


@pytest.mark.parametrize("case", CASES, ids=[c.title for c in CASES])
def test_case(case: Case) -> None:
    authz = case.authorizer()
    wrong = []
    for number, op, name, expected in case.checks:
        got = authz.allowed(op, name)
        if got != expected:
            wrong.append(f"line {number}: {op} {name!r} -> {'allow' if got else 'deny'}, expected {'allow' if expected else 'deny'}")
    assert not wrong, "\n".join(wrong)


def test_the_transcript_asks_every_operation_both_ways() -> None:
    answers: dict[str, set[bool]] = {}
    for case in CASES:
        for _, op, _, expected in case.checks:
            answers.setdefault(op, set()).add(expected)
    assert set(answers) == set(OPERATIONS)
    one_sided = {op for op, seen in answers.items() if seen != {True, False}}
    assert not one_sided, f"operations only ever allowed or only ever denied: {sorted(one_sided)}"
