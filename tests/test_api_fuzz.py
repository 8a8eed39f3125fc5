"""Property-based tests of the HTTP API with schemathesis (the field's standard for OpenAPI fuzzing),
driven by the description generated from the route table, against a real ``proconsul agent -dev`` process
on free ports.

For every operation of ``docs/openapi.yaml`` Hypothesis draws requests from the description, both valid
(positive) and invalid (negative) ones, with the suite's fixed-seed profile and a small number of
examples, and each answer must:
  - never be a 5xx, except the two 500s Consul itself gives for bad input (an unknown ``?dc`` answers
    "No path to datacenter"; a ``?filter`` that does not compile answers "Failed to create boolean
    expression evaluator"), and only when the request carried that parameter;
  - have a status code and a content type the description declares, and a JSON body that matches its
    schema;
and the agent must still answer afterwards. ``make soak`` runs the same with many more examples.

The same harness runs against an agent with ACLs on (``default_policy = "deny"``) and no token, i.e. the
anonymous token: then no operation whose route needs a rule may succeed (a list may answer, filtered
to nothing), and each must be seen refusing with 403. That test skips itself while the agent does not
enforce ACLs (detected: a protected route answers without a token), so it turns on when enforcement does.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry.api.openapi import PATH_TEMPLATES, build_document
from registry.api.routes import ROUTES
from registry.testing import free_port

BIN = str(Path(sys.executable).with_name("proconsul"))
EXAMPLES = 10  # per operation and mode (positive, negative): the bounded run of `make test`
SOAK_EXAMPLES = 100  # `make soak`: about 8x the bounded run

# Excluded from the run, and why. Nothing else is: snapshot restore stays in, since no random body can
# pass its gzip, magic and CRC checks, so it exercises the decoder's refusals without replacing state.
EXCLUDED = {
    ("PUT", "/v1/agent/leave"): "leaves the cluster and stops the agent under test",
    ("PUT", "/v1/agent/join/"): "dials whatever address it is given (tests/test_membership.py covers its answers)",
    ("GET", "/v1/agent/metrics/stream"): "streams until the client goes away (tests/test_metrics.py reads it)",
    ("GET", "/v1/agent/monitor"): "a log stream that ends only when the client goes (tests/test_cli_ops.py)",
}

SCHEMA = schemathesis.openapi.from_dict(build_document())
OPERATIONS = [r.ok() for r in SCHEMA.get_all_operations()]
# (METHOD, templated path) -> the route's declared resource and name source
ROUTE_OF = {}
for _op in OPERATIONS:
    _raw = _op.definition.raw
    ROUTE_OF[(_op.method.upper(), _op.path)] = (_raw["x-consul-acl"], _raw["x-consul-acl-name"])

CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip


def _label(op: Any) -> str:
    return f"{op.method.upper()} {op.path}"


def _selected(ops: list[Any]) -> list[Any]:
    out = []
    for op in ops:
        reason = EXCLUDED.get((op.method.upper(), op.path))
        out.append(pytest.param(op, id=_label(op), marks=pytest.mark.skip(reason=reason)) if reason
                   else pytest.param(op, id=_label(op)))  # fmt: skip
    return out


# ---------------------------------------------------------------------- requests found by exploring runs


@dataclass(frozen=True)
class Found:
    """A request an exploring run (``HYPOTHESIS_PROFILE=explore``) drew that answered wrongly, kept as an
    explicit example: every run of its operation sends it first, to each agent, under the same checks as
    the drawn ones, and ``test_found_requests_answer_as_consul_does`` checks the open agent's answer
    against Consul's (status, and how the text starts)."""

    path_parameters: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = NOT_SET
    media_type: str | None = None
    status: int = 200
    text: str = ""
    why: str = ""


FOUND: dict[tuple[str, str], list[Found]] = {
    ("PUT", "/v1/agent/check/register"): [
        # An exploring run drew 20 bodies that all failed validation (a check without a name, an HTTP check
        # without an interval, an overflowing duration: 400 before any ACL rule, as in Consul, whose
        # AgentRegisterCheck validates first), so the ACL run never saw the refusal it must see; about one
        # drawn body in twenty is valid. This one is: 200 on the open agent, 403 to the anonymous token.
        Found(body={"Name": "found-ttl", "TTL": "30s"}, media_type="application/json", why="a valid TTL check"),
    ],
    ("DELETE", "/v1/config/{kind}/{name}"): [
        # A ?cas beyond uint64 reached the log entry's encoder (500 "Integer value out of range"); Consul's
        # strconv.ParseUint(cas, 10, 64) refuses it, as this API refuses any cas that is not a uint64.
        Found({"kind": "proxy-defaults", "name": "global"}, {"cas": "104011111895404810076160"}, status=400,
              text="Failed to parse cas parameter", why="a ?cas beyond uint64"),
    ],
    ("PUT", "/v1/session/create"): [
        # A session linked to no node check: the session reads (list, node, info) answer its NodeChecks as
        # null, which the description did not allow (test_a_session_without_node_checks_reads_as_described).
        Found(body={"Name": "found-no-checks", "Checks": []}, media_type="application/json",
              why="a session with no node check"),
        # A LockDelay beyond int64 made the session's log entry unencodable ("Internal error: Integer value
        # out of range"); Consul converts it as Go does (float64 -> Duration) and creates the session.
        Found(body={"LockDelay": 47002501920065863680, "Checks": []}, media_type="application/json",
              why="a LockDelay beyond int64"),
    ],
    ("PUT", "/v1/kv/{key}"): [
        # kvsLockTxn's "invalid session %#v", an RPC error Consul's HTTP layer answers with 500 (was
        # answered so, but the description did not declare it).
        Found({"key": "found/lock"}, {"acquire": "8d0e1b7c-0000-4000-8000-000000000000"}, b"v",
              "application/octet-stream", 500, 'invalid session "8d0e1b7c-0000-4000-8000-000000000000"',
              "a lock by a session that does not exist"),
        Found({"key": "found/lock"}, {"acquire": 'no"such\\session\u00e9\n'}, b"", "application/octet-stream",
              500, 'invalid session "no\\"such\\\\session\u00e9\\n"', "Go's %#v quoting of the session"),
        Found({"key": "found/lock"}, {"acquire": ""}, NOT_SET, None, 500, "missing session", "an empty ?acquire"),
        Found({"key": "found/lock"}, {"release": ""}, NOT_SET, None, 500, "missing session", "an empty ?release"),
    ],
}  # fmt: skip


def _found_case(op: Any, found: Found) -> Any:
    kw: dict[str, Any] = {"path_parameters": dict(found.path_parameters), "query": dict(found.query)}
    if found.body is not NOT_SET:
        kw["body"] = found.body
        kw["media_type"] = found.media_type
    return op.Case(**kw)


# ---------------------------------------------------------------------- the agent under test


@dataclass
class LiveAgent:
    url: str
    proc: subprocess.Popen[bytes] | None  # None: a stand-in server of this module's own tests

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/v1/status/leader", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False


def start_agent(tmp: Path, extra: dict[str, Any]) -> LiveAgent:
    """``proconsul agent -dev`` as a user starts it, on free ports. Blocking queries are capped at 10 ms
    (``max_query_time``): a generated ``?index`` far in the future must not hold a request for minutes, and
    the run checks answers, not waits (a blocking read still blocks, then answers as at its timeout)."""
    port = free_port()
    cfg = tmp / "agent.json"
    cfg.write_text(json.dumps({"max_query_time": "10ms", "default_query_time": "10ms", **extra}))
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "fuzz-node", "-http-port", str(port), "-dns-port", "-1",
                             "-config-file", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    agent = LiveAgent(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    while not agent.alive():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("agent did not start")
        time.sleep(0.1)
    return agent


def stop_agent(agent: LiveAgent) -> None:
    if agent.proc is not None and agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(15)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(5)


@pytest.fixture(scope="module")
def open_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    agent = start_agent(tmp_path_factory.mktemp("fuzz-open"), {})
    yield agent
    stop_agent(agent)


@pytest.fixture(scope="module")
def acl_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    agent = start_agent(tmp_path_factory.mktemp("fuzz-acl"), {"acl": {"enabled": True, "default_policy": "deny"}})
    yield agent
    stop_agent(agent)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# ---------------------------------------------------------------------- the run


def _consul_500(case: Any, response: requests.Response | Any) -> bool:
    """A 500 the description declares for this operation: its text starts as one Consul answers with
    500 (``x-consul-errors``: an unknown datacenter, a filter that does not compile, a session refused by
    the state store). A handler that crashes answers "Internal error: ..." and never matches."""
    if response.status_code != 500:
        return False
    declared = case.operation.definition.raw["responses"].get("500", {}).get("x-consul-errors", [])
    return any(response.text.startswith(prefix) for prefix in declared)


def _strip_tokens(case: Any) -> None:
    """Send no token at all: the request runs as the anonymous token (or, with ACLs off, as nobody)."""
    for name in list(case.headers or {}):
        if name.lower() in ("x-consul-token", "authorization"):
            del case.headers[name]
    if case.query and "token" in case.query:
        del case.query["token"]


# The requests drawn for each (operation, mode, number of examples), kept by the run that drew them so that
# the next run of the same operation sends them again instead of drawing them again. With the suite's fixed
# seed (the "ci" profile: ``derandomize``) Hypothesis would draw exactly these requests again anyway (its seed
# is a digest of the test function, the same ``run`` for every agent), so the ACL run of an operation sends
# the same requests as the open run did, as it always has, and only the second drawing (about half of this
# file's time) is saved. Under a random profile ("explore") every run draws afresh, as before.
_DRAWN: dict[tuple[str, str, int], list[Any]] = {}


def _copy(case: Any) -> Any:
    """A case's own copy of its headers, query and body; the operation (and its schema) is shared."""
    new = object.__new__(type(case))
    for name in type(case).__slots__:
        value = getattr(case, name)
        object.__setattr__(new, name, value if name == "operation" else copy.deepcopy(value))
    return new


def _keeping(drawn: list[Any]) -> Callable[[Any], Any]:
    def keep(case: Any) -> Any:
        drawn.append(_copy(case))  # as drawn: run() strips its tokens and call() records the URL
        return case

    return keep


def _replay(drawn: list[Any], run: Callable[[Any], None]) -> None:
    for case in drawn:
        run(_copy(case))


def fuzz(op: Any, agent: LiveAgent, http: requests.Session, examples: int,
         on_response: Callable[[Any, Any], None]) -> None:  # fmt: skip
    """Draw ``examples`` valid and ``examples`` invalid requests for ``op``, send each to ``agent``, and
    hand each (case, response) to ``on_response`` after the common checks (no 5xx but Consul's own)."""
    modes = [GenerationMode.POSITIVE]
    raw = op.definition.raw
    if "requestBody" in raw or any("$ref" in p for p in raw.get("parameters", ())):
        # Invalid path parameters are not generated (schemathesis cannot send a path segment that is
        # not one), so only an operation with a query or a body has invalid requests to draw.
        modes.append(GenerationMode.NEGATIVE)
    strategies = {mode: op.as_strategy(generation_mode=mode) for mode in modes}

    def run(case: Any) -> None:
        _strip_tokens(case)
        response = case.call(base_url=agent.url, session=http, timeout=20)
        if response.status_code >= 500 and not _consul_500(case, response):
            raise AssertionError(f"{_label(op)} answered {response.status_code}: {response.text[:500]!r}\n"
                                 f"reproduce: {case.as_curl_command()}")  # fmt: skip
        on_response(case, response)

    for found in FOUND.get((op.method.upper(), op.path), ()):
        try:
            run(_found_case(op, found))
        except Exception as exc:  # noqa: BLE001 - re-raised with the request that failed
            exc.add_note(f"found request: {found.why or found}")
            raise
    for mode, strategy in strategies.items():
        key = (_label(op), mode.value, examples)
        drawn = _DRAWN.get(key) if settings.default.derandomize else None
        if drawn is not None:
            test = functools.partial(_replay, drawn, run)
        else:
            drawn = []
            # Kept on the way from the strategy to run(): a .map draws nothing, and run() stays the function
            # whose digest seeds the draws. (The valid requests are the very ones drawn before; the map's
            # span shifts some of Hypothesis's choices for the invalid ones: as many, another fixed sample.)
            kept = strategy.map(_keeping(drawn))
            # No shrinking: the first failing request is reported as drawn, with a curl line to replay it;
            # shrinking a request through a live server costs minutes on a shared 2-core machine.
            test = settings(max_examples=examples, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
                            suppress_health_check=list(HealthCheck))(given(case=kept)(run))  # fmt: skip
        try:
            test()
        except Exception as exc:  # noqa: BLE001 - re-raised with the mode that found it
            exc.add_note(f"generation mode: {mode.value}")
            raise
        _DRAWN[key] = drawn
    assert agent.alive(), f"the agent stopped answering after {_label(op)}"


def _conforms(case: Any, response: Any) -> None:
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("op", _selected(OPERATIONS))
def test_every_operation_answers_as_described(op: Any, open_agent: LiveAgent, http: requests.Session) -> None:
    fuzz(op, open_agent, http, EXAMPLES, _conforms)


@pytest.mark.soak
@pytest.mark.parametrize("op", _selected(OPERATIONS))
def test_every_operation_answers_as_described_soak(op: Any, open_agent: LiveAgent, http: requests.Session) -> None:
    fuzz(op, open_agent, http, SOAK_EXAMPLES, _conforms)


@pytest.mark.parametrize(("label", "found"), [(f"{m} {p}", f) for (m, p), fs in FOUND.items() for f in fs],
                         ids=lambda v: v.why if isinstance(v, Found) else v)  # fmt: skip
def test_found_requests_answer_as_consul_does(label: str, found: Found, open_agent: LiveAgent,
                                              http: requests.Session) -> None:  # fmt: skip
    op = next(o for o in OPERATIONS if _label(o) == label)
    response = _found_case(op, found).call(base_url=open_agent.url, session=http, timeout=20)
    got = (response.status_code, response.text[: len(found.text)])
    assert got == (found.status, found.text), response.text


def test_a_session_without_node_checks_reads_as_described(open_agent: LiveAgent,
                                                          http: requests.Session) -> None:  # fmt: skip
    """Found by an exploring run: a session linked to no node check (``"Checks": []``) made GET
    /v1/session/list answer what its description refused (NodeChecks null where it declared an array)."""
    body = {"Name": "no-checks", "Checks": []}
    created = http.put(f"{open_agent.url}/v1/session/create", json=body, timeout=10)
    assert created.status_code == 200, created.text
    sid = created.json()["ID"]
    reads = {"GET /v1/session/list": {}, "GET /v1/session/node/{node}": {"node": "fuzz-node"},
             "GET /v1/session/info/{uuid}": {"uuid": sid}}  # fmt: skip
    for label, params in reads.items():
        op = next(o for o in OPERATIONS if _label(o) == label)
        case = op.Case(path_parameters=params)
        response = case.call(base_url=open_agent.url, session=http, timeout=20)
        assert response.status_code == 200 and sid in {s["ID"] for s in response.json()}, response.text
        assert next(s for s in response.json() if s["ID"] == sid)["NodeChecks"] is None
        case.validate_response(response, checks=CHECKS)


def test_the_agent_survived_the_run(open_agent: LiveAgent) -> None:
    assert open_agent.alive()
    with urllib.request.urlopen(f"{open_agent.url}/v1/agent/self", timeout=5) as r:
        assert json.load(r)["Config"]["NodeName"] == "fuzz-node"


# ---------------------------------------------------------------------- ACLs on, no token

PROTECTED = [op for op in OPERATIONS if op.definition.raw["x-consul-acl"] != "none"]


def enforces(agent: LiveAgent) -> bool:
    """Whether the agent enforces its ACLs: a route that needs ``agent:read`` refused without a token."""
    try:
        with urllib.request.urlopen(f"{agent.url}/v1/agent/self", timeout=5):
            return False
    except urllib.error.HTTPError as exc:
        return exc.code == 403


def _empty(body: Any) -> bool:
    """An answer filtered down to nothing: an empty list or map, a node hidden from its services listing
    (``{"Node": null, "Services": []}``), or a transaction whose reads were all filtered out."""
    if isinstance(body, dict) and body.keys() >= {"Results", "Errors"}:
        return not body["Results"] and not body["Errors"]
    return body in ([], {}, None, "", {"Node": None, "Services": []})


def denied_outcome(acl_name: str, response: Any) -> str:
    """How an anonymous request to a protected operation ended: ``denied`` (403), ``filtered`` (a list
    route answering with nothing in it, or a transaction whose operations were each refused, as Consul
    answers them), ``refused`` (a 4xx for bad input before any authorization), or ``reached``."""
    status = response.status_code
    if status == 403:
        return "denied"
    if status >= 400 and status != 409:
        return "refused"
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if acl_name == "each":
        if 200 <= status < 300 and _empty(body):
            return "filtered"
        if status == 409 and isinstance(body, dict) and body.get("Errors") and all(
            "Permission denied" in (e.get("What") or "") for e in body["Errors"]
        ):
            return "filtered"
    if status == 409:
        return "refused"
    return "reached"


# Operations whose every random request ends before a rule can be asked, as in Consul; the route walk
# (tests/acl/test_route_walk.py) asks each of them with a valid request and sees it refuse.
NO_RULE_REACHED = {
    # Consul's Session.Apply answers a destroy of a session that does not exist with success before any
    # ACL check (there is no session, so no node whose session rules apply), and changes nothing.
    ("PUT", "/v1/session/destroy/{uuid}"): "true",
    # A config entry is decoded and validated before its kind's ACL rule is asked (Consul's
    # ConfigEntry.Apply: Normalize, Validate, then CanWrite); random entries never validate.
    ("PUT", "/v1/config"): None,
    # A prepared query's rule is its Name's: an ID that names no query answers 404 (Consul's "Query not
    # found", "Cannot modify non-existent prepared query") before any rule can be chosen.
    ("GET", "/v1/query/{uuid}"): None,
    ("GET", "/v1/query/{uuid}/execute"): None,
    ("GET", "/v1/query/{uuid}/explain"): None,
    ("DELETE", "/v1/query/{uuid}"): None,
}


def acl_fuzz(op: Any, agent: LiveAgent, http: requests.Session, examples: int) -> None:
    acl_name = op.definition.raw["x-consul-acl-name"]
    no_rule = NO_RULE_REACHED.get((op.method.upper(), op.path), "")
    outcomes: dict[str, int] = {}

    def record(case: Any, response: Any) -> None:
        outcome = denied_outcome(acl_name, response)
        if outcome == "reached" and no_rule and response.text.strip() == no_rule:
            outcome = "nothing"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcome != "reached", (f"{_label(op)} needs {op.definition.raw['x-consul-acl']} but answered "
                                      f"{response.status_code} to the anonymous token: {response.text[:300]!r}\n"
                                      f"reproduce: {case.as_curl_command()}")  # fmt: skip

    fuzz(op, agent, http, examples, record)
    if acl_name == "path-id" or no_rule != "":
        # The ID names the object whose rule applies (a service, check, session or intention ID); an ID
        # that names nothing answers 404 before any rule can be chosen, as Consul's vetServiceUpdate and
        # vetCheckUpdate do, and random IDs name nothing. tests/acl/test_route_walk.py asks these routes
        # about real IDs and sees each refuse.
        return
    assert outcomes.get("denied", 0) + outcomes.get("filtered", 0) > 0, (
        f"{_label(op)} was never seen refusing the anonymous token: {outcomes}")


@pytest.mark.parametrize("op", _selected(PROTECTED))
def test_no_operation_is_reachable_without_its_permission(op: Any, acl_agent: LiveAgent,
                                                          http: requests.Session) -> None:  # fmt: skip
    if not enforces(acl_agent):
        pytest.skip("ACLs are not enforced yet: an agent with acl.default_policy=deny answers GET /v1/agent/self "
                    "without a token (this test turns on by itself once they are)")
    acl_fuzz(op, acl_agent, http, EXAMPLES)


@pytest.mark.soak
@pytest.mark.parametrize("op", _selected(PROTECTED))
def test_no_operation_is_reachable_without_its_permission_soak(op: Any, acl_agent: LiveAgent,
                                                               http: requests.Session) -> None:  # fmt: skip
    if not enforces(acl_agent):
        pytest.skip("ACLs are not enforced yet")
    acl_fuzz(op, acl_agent, http, SOAK_EXAMPLES)


def test_every_protected_route_is_in_the_acl_run() -> None:
    """The ACL run covers every (method, path) of the route table that declares a resource."""
    covered = {(op.method.upper(), op.path) for op in PROTECTED}
    for r in ROUTES:
        if r.resource == "none":
            continue
        for m in r.methods:
            templates = PATH_TEMPLATES.get(r.path, ()) if r.is_prefix else (r.path,)
            assert any((m, t) in covered for t in templates), f"{m} {r.path} is missing from the ACL run"



# ---------------------------------------------------------------------- the ACL harness, proven on stand-ins


class _StandIn(BaseHTTPRequestHandler):
    """Answers every request as ``server.answer(method, path)`` says: (status, content type, body)."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status, ctype, body = self.server.answer(self.command, self.path.split("?")[0])  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _serve

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def stand_in(answer: Callable[[str, str], tuple[int, str, bytes]]) -> Iterator[LiveAgent]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.answer = answer  # type: ignore[attr-defined]
    # shutdown() waits for the serving loop to notice: poll often, not every 0.5 s (the default).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield LiveAgent(f"http://127.0.0.1:{server.server_address[1]}", None)
    finally:
        server.shutdown()
        server.server_close()


def _by_label(label: str) -> Any:
    return next(op for op in PROTECTED if _label(op) == label)


def _enforcing(method: str, path: str) -> tuple[int, str, bytes]:
    if path == "/v1/status/leader":
        return 200, "application/json", b'"127.0.0.1:8300"'
    if path == "/v1/catalog/nodes":
        return 200, "application/json", b"[]"  # a list filtered to nothing
    return 403, "text/plain", b"Permission denied: anonymous token lacks permission"


def test_the_acl_harness_accepts_an_agent_that_refuses(http: requests.Session) -> None:
    with stand_in(_enforcing) as agent:
        assert enforces(agent)
        for label in ("GET /v1/kv/{key}", "PUT /v1/agent/service/register", "GET /v1/catalog/nodes"):
            acl_fuzz(_by_label(label), agent, http, 3)


def test_the_acl_harness_catches_a_route_reachable_without_its_permission(http: requests.Session) -> None:
    def leaky(method: str, path: str) -> tuple[int, str, bytes]:
        if path.startswith("/v1/kv/"):
            return 200, "application/json", b'[{"Key": "secret", "Value": "c2VjcmV0"}]'
        return _enforcing(method, path)

    with stand_in(leaky) as agent:
        with pytest.raises(AssertionError, match="needs key:read but answered 200"):
            acl_fuzz(_by_label("GET /v1/kv/{key}"), agent, http, 3)
        with pytest.raises(AssertionError, match="needs node:read but answered 200"):
            with stand_in(lambda m, p: (200, "application/json", b'[{"Node": "n1"}]')) as open_agent:
                acl_fuzz(_by_label("GET /v1/catalog/nodes"), open_agent, http, 3)
