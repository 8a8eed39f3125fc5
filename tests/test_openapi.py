"""The OpenAPI description is generated from the route table, is current, and is valid OpenAPI 3.0."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from registry.api import openapi
from registry.api.openapi import OPERATIONS, PATH_TEMPLATES, OpenAPIError, build_document, render_yaml
from registry.api.routes import ROUTES
from registry.api.routing import route
from registry.registration import CATALOG_REGISTER_SCHEMA, CHECK_SCHEMA, SERVICE_SCHEMA


def test_docs_openapi_yaml_is_up_to_date() -> None:
    """Regenerate with ``python -m registry.api.openapi`` after changing a route."""
    assert openapi.DOC_PATH.read_text() == render_yaml()
    assert openapi.main(["--check"]) == 0


def test_the_document_is_valid_openapi_3() -> None:
    doc = yaml.safe_load(openapi.DOC_PATH.read_text())
    validate(doc)  # raises on any violation of the OpenAPI 3.0 schema
    assert doc["openapi"].startswith("3.0.")


def _operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}


def test_every_route_is_described_with_its_acl_rule() -> None:
    ops = _operations(build_document())
    for r in ROUTES:
        for m in r.methods:
            templates = PATH_TEMPLATES.get(r.path, ()) if r.is_prefix else (r.path,)
            paths = [p for (om, p) in ops if om == m and p in templates]
            assert paths, f"{m} {r.path} is not in the description"
            for p in paths:
                op = ops[(m, p)]
                assert op["x-consul-acl"] == ("none" if r.resource == "none" else f"{r.resource}:{r.access}")
                assert op["x-consul-acl-name"] == r.name and op["summary"] == r.summary
                # A route that needs a rule can answer 403; one that needs none only says so when its own
                # check can refuse (token/self with an unknown token, a login refused).
                assert ("403" in op["responses"]) == (r.resource != "none" or 403 in OPERATIONS[(m, r.path)].errors)
    # Every operation comes from a route: /v1/config/ GET serves {kind} and {kind}/{name}, PUT /v1/acl/token/
    # serves {AccessorID} and {AccessorID}/clone, each agent token has its own path, and GET /v1/query/ serves
    # {uuid}, {uuid}/execute and {uuid}/explain, as Consul documents.
    assert len(ops) == sum(len(r.methods) for r in ROUTES) + 1 + 1 + 4 + 2
    assert ("PUT", "/v1/acl/token/{AccessorID}/clone") in ops and ("PUT", "/v1/agent/token/agent_recovery") in ops


def test_prefix_routes_take_consuls_parameter_names() -> None:
    ops = _operations(build_document())
    assert ("GET", "/v1/kv/{key}") in ops and ("PUT", "/v1/kv/{key}") in ops
    assert ("GET", "/v1/catalog/service/{service}") in ops
    assert ("PUT", "/v1/agent/service/deregister/{service_id}") in ops
    assert ("DELETE", "/v1/config/{kind}/{name}") in ops and ("DELETE", "/v1/config/{kind}") not in ops
    for (_, path), op in ops.items():
        in_path = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
        assert in_path == [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]


def test_common_query_parameters_where_consul_documents_them() -> None:
    ops = _operations(build_document())

    def query(method: str, path: str) -> set[str]:
        return {p["$ref"].rsplit("/", 1)[1] for p in ops[(method, path)].get("parameters", []) if "$ref" in p}

    assert {"dc", "index", "wait", "stale", "consistent", "filter", "passing", "tag", "near", "node-meta"} <= query(
        "GET", "/v1/health/service/{service}")
    assert {"recurse", "keys", "separator", "raw", "index", "wait"} <= query("GET", "/v1/kv/{key}")
    assert {"cas", "acquire", "release", "flags"} <= query("PUT", "/v1/kv/{key}")
    assert "ns" not in query("GET", "/v1/catalog/nodes")  # namespaces are Enterprise; Proconsul has none


def test_bodies_come_from_the_registration_schemas() -> None:
    """One source: the fields the decoder takes are the fields the description documents."""
    schemas = build_document()["components"]["schemas"]
    assert set(schemas["ServiceDefinition"]["properties"]) == set(SERVICE_SCHEMA)
    assert set(schemas["CheckDefinition"]["properties"]) == set(CHECK_SCHEMA)
    assert set(schemas["CatalogRegistration"]["properties"]) == set(CATALOG_REGISTER_SCHEMA)
    assert schemas["ServiceDefinition"]["properties"]["Port"] == {"type": "integer", "format": "int64"}
    assert schemas["CatalogRegistration"]["properties"]["Service"]["properties"]["Checks"]["type"] == "array"
    kv_put = _operations(build_document())[("PUT", "/v1/kv/{key}")]
    assert list(kv_put["requestBody"]["content"]) == ["application/octet-stream"]
    assert list(kv_put["responses"]["200"]["content"]) == ["application/json"]  # true or false
    kv_get = _operations(build_document())[("GET", "/v1/kv/{key}")]
    assert set(kv_get["responses"]["200"]["content"]) == {"application/json", "text/plain"}  # JSON, or ?raw


def test_errors_are_plain_text_and_500s_are_only_consuls_own() -> None:
    ops = _operations(build_document())
    for (m, p), op in ops.items():
        for status, resp in op["responses"].items():
            if status.startswith("4") and status != "409":
                assert set(resp.get("content", {})) <= {"text/plain", "application/json"}, (m, p, status)
            if status == "500":
                assert resp["x-consul-errors"], (m, p)
    assert ops[("GET", "/v1/catalog/nodes")]["responses"]["500"]["x-consul-errors"] == [
        "No path to datacenter", "Failed to create boolean expression evaluator"]
    # A KV write fails with a 500 for a datacenter there is no path to, and for a lock (?acquire) or release
    # (?release) the state store refuses, as Consul's does: kvsLockTxn's "missing session" and
    # "invalid session %#v" come back from its KVS.Apply RPC, which its HTTP layer answers with 500.
    assert ops[("PUT", "/v1/kv/{key}")]["responses"]["500"]["x-consul-errors"] == [
        "missing session", 'invalid session "', "No path to datacenter"]  # fmt: skip


def test_the_security_schemes_are_consuls_token_places() -> None:
    schemes = build_document()["components"]["securitySchemes"]
    assert schemes["ConsulToken"] == {**schemes["ConsulToken"], "type": "apiKey", "in": "header",
                                      "name": "X-Consul-Token"}
    assert schemes["BearerToken"]["scheme"] == "bearer"
    assert schemes["TokenQuery"]["in"] == "query" and schemes["TokenQuery"]["name"] == "token"


async def _h(api, request, suffix):  # type: ignore[no-untyped-def]
    raise AssertionError("not called")


def test_a_new_route_without_a_description_fails_the_generator() -> None:
    new_prefix = route("GET", "/v1/new/", _h, "read", "node", "path", "s")
    try:
        build_document((*ROUTES, new_prefix))
    except OpenAPIError as exc:
        assert "/v1/new/" in str(exc)
    else:
        raise AssertionError("a prefix route without a template was accepted")
    assert "/v1/new/" not in PATH_TEMPLATES and ("GET", "/v1/new") not in OPERATIONS
    try:
        build_document((*ROUTES, route("GET", "/v1/new", _h, "read", "node", "each", "s")))
    except OpenAPIError as exc:
        assert "OPERATIONS" in str(exc)
    else:
        raise AssertionError("a route without an OPERATIONS entry was accepted")
