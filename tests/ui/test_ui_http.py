"""The web UI's HTML endpoints over plain HTTP, against a real in-process dev agent (the UI is on in -dev).

What a browser would see, without the browser: redirects, pages with the API's data, headers (pages never
cached, assets cached for good under their digest), live fragments that block on the API's index and come
back when the catalog changes, forms that write through the API (KV with CAS, intentions), the API's
refusals shown with its own text, and /v1/internal/ui/* in Consul's shapes.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from registry.testing import async_dev_agent
from tests.conftest import Http

ROOT = "7b1c2b7e-6d7c-4c3b-9a0e-2f9d8d0c1a11"


async def _register(h: Http, name: str, sid: str, *, status: str = "passing", port: int = 80,
                    tags: list[str] | None = None, notes: str = "", node: str = "test-agent") -> None:  # fmt: skip
    body: dict[str, Any] = {"Node": node, "Address": "127.0.0.1",
                            "Service": {"ID": sid, "Service": name, "Port": port, "Tags": tags or [],
                                        "Meta": {"version": "1"}},
                            "Check": {"CheckID": f"{sid}-chk", "Name": f"{sid} health", "Status": status,
                                      "ServiceID": sid, "Notes": notes, "Output": f"{sid} says {status}"}}  # fmt: skip
    status_code, text, _ = await h.put("/v1/catalog/register", body)
    assert status_code == 200, text


async def _page(h: Http, path: str, **kw: Any) -> tuple[int, str, Any]:
    async with h.session.get(h.base + path, allow_redirects=False, **kw) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_root_redirects_to_the_ui_and_pages_are_never_cached(http: Http) -> None:
    status, _, headers = await _page(http, "/")
    assert (status, headers["Location"]) == (302, "/ui/")
    status, _, headers = await _page(http, "/ui/")
    assert (status, headers["Location"]) == (302, "/ui/services")
    status, body, headers = await _page(http, "/ui/services")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-store"
    assert '<html lang="en">' in body and 'aria-current="page"' in body
    status, body, _ = await _page(http, "/nowhere")
    assert status == 404 and "ensure the path starts with '/v1/'" in body


@pytest.mark.agent_config(ui_config={"enabled": False})
async def test_ui_off_answers_consuls_ui_disabled(http: Http) -> None:
    status, body, _ = await _page(http, "/")
    assert status == 200 and body.startswith("Consul Agent: UI disabled.")
    status, _, _ = await _page(http, "/ui/services")
    assert status == 404


async def test_assets_are_versioned_and_cached_for_good(http: Http) -> None:
    _, body, _ = await _page(http, "/ui/services")
    urls = re.findall(r'(?:src|href)="(/ui/assets/[0-9a-f]{12}/[^"]+)"', body)
    assert {u.rsplit("/", 1)[1] for u in urls} == {"ui.css", "htmx-2.0.11.min.js", "ui.js"}
    for url in urls:
        status, text, headers = await _page(http, url)
        assert status == 200 and text
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    stale = re.sub(r"/ui/assets/[0-9a-f]{12}/", "/ui/assets/000000000000/", urls[0])
    assert (await _page(http, stale))[0] == 404


async def test_internal_ui_services_summarizes_in_consuls_shape(http: Http) -> None:
    await _register(http, "web", "web1", tags=["v1"])
    await _register(http, "web", "web2", status="critical", tags=["v2"], node="other")
    status, body, headers = await http.get("/v1/internal/ui/services")
    assert status == 200 and int(headers["X-Consul-Index"]) > 0
    web = next(s for s in body if s["Name"] == "web")
    assert web["InstanceCount"] == 2 and web["Tags"] == ["v1", "v2"] and web["Nodes"] == ["other", "test-agent"]
    # web1's check and its node's serfHealth pass (a node check counts towards the node's services, as in
    # Consul's summarizeServices); web2's check is critical ("other" has no node check).
    assert (web["ChecksPassing"], web["ChecksWarning"], web["ChecksCritical"]) == (2, 0, 1)
    assert web["Datacenter"] == "dc1" and "Kind" not in web
    status, nodes, _ = await http.get("/v1/internal/ui/nodes")
    other = next(n for n in nodes if n["Node"] == "other")
    assert [s["ID"] for s in other["Services"]] == ["web2"]
    assert [c["CheckID"] for c in other["Checks"]] == ["web2-chk"]


async def test_services_page_sorts_by_health_and_filters(http: Http) -> None:
    await _register(http, "alpha", "alpha1", tags=["blue"])
    await _register(http, "beta", "beta1", status="critical")
    await _register(http, "gamma", "gamma1", status="warning")
    _, body, _ = await _page(http, "/ui/services")
    order = re.findall(r'data-service="([^"]+)"', body)
    assert order.index("beta") < order.index("gamma") < order.index("alpha")
    assert 'data-service="beta" data-health="critical"' in body
    _, body, _ = await _page(http, "/ui/services?q=blu")
    assert re.findall(r'data-service="([^"]+)"', body) == ["alpha"]
    _, body, _ = await _page(http, "/ui/services?status=warning&fragment=1")
    assert re.findall(r'data-service="([^"]+)"', body) == ["gamma"]
    assert "<html" not in body  # a fragment is the live section alone


async def test_live_fragment_blocks_on_the_index_and_returns_on_a_change(http: Http) -> None:
    await _register(http, "first", "first1")
    _, body, _ = await _page(http, "/ui/services?fragment=1")
    index = int(re.search(r'data-index="(\d+)"', body).group(1))  # type: ignore[union-attr]
    waiting = asyncio.ensure_future(_page(http, f"/ui/services?fragment=1&index={index}"))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the fragment must wait for a change"
    started = time.monotonic()
    await _register(http, "second", "second1", status="critical")
    status, body, _ = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 1.0
    assert status == 200 and 'data-service="second" data-health="critical"' in body
    assert int(re.search(r'data-index="(\d+)"', body).group(1)) > index  # type: ignore[union-attr]


async def test_service_page_shows_instances_checks_notes_and_output(http: Http) -> None:
    await _register(http, "api", "api1", port=8080, tags=["primary"], notes="see runbook")
    status, body, _ = await _page(http, "/ui/services/api")
    assert status == 200
    assert "127.0.0.1:8080" in body and "primary" in body and "version=1" in body
    assert "see runbook" in body and "api1 says passing" in body and 'data-check="api1-chk"' in body
    status, body, _ = await _page(http, "/ui/services/nothing-here")
    assert status == 200 and "No instances" in body


async def test_nodes_page_marks_the_leader(http: Http) -> None:
    await _register(http, "db", "db1", node="far", status="critical")
    _, body, _ = await _page(http, "/ui/nodes")
    assert re.search(r'data-node="test-agent" data-health="\w+">\s*<h2[^>]*>.*leader', body)
    assert 'data-node="far" data-health="critical"' in body


async def test_kv_create_edit_with_cas_and_delete_through_the_api(http: Http) -> None:
    form = {"name": "cfg/app", "value": '{"a": 1}', "format": "json", "cas": "0", "action": "save"}
    status, _, headers = await _post(http, "/ui/kv/", form)
    assert (status, headers["Location"]) == (303, "/ui/kv/cfg/app?message=saved")
    status, raw, _ = await http.get("/v1/kv/cfg/app?raw")
    assert (status, raw) == (200, '{"a": 1}')
    _, body, _ = await _page(http, "/ui/kv/cfg/")
    assert 'data-key="cfg/app"' in body
    _, body, _ = await _page(http, "/ui/kv/cfg/app?format=json")
    modify = int(re.search(r'name="cas" value="(\d+)"', body).group(1))  # type: ignore[union-attr]
    assert "&#34;a&#34;: 1" in body
    await http.put("/v1/kv/cfg/app", raw=b"changed elsewhere")  # the page's CAS index is now stale
    status, body, _ = await _post(http, "/ui/kv/cfg/app", {"value": "mine", "cas": str(modify), "format": "text"})
    assert status == 409 and "was changed since this page was loaded" in body
    assert (await http.get("/v1/kv/cfg/app?raw"))[1] == "changed elsewhere"
    status, body, _ = await _post(http, "/ui/kv/cfg/app", {"value": "{not json", "cas": "0", "format": "json"})
    assert status == 400 and "not valid JSON" in body
    _, body, _ = await _page(http, "/ui/kv/cfg/app")
    modify = int(re.search(r'name="cas" value="(\d+)"', body).group(1))  # type: ignore[union-attr]
    status, _, _ = await _post(http, "/ui/kv/cfg/app", {"action": "delete", "cas": str(modify)})
    assert status == 303
    assert (await http.get("/v1/kv/cfg/app"))[0] == 404


async def _post(h: Http, path: str, form: dict[str, str], **kw: Any) -> tuple[int, str, Any]:
    async with h.session.post(h.base + path, data=form, allow_redirects=False, **kw) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_intentions_created_edited_and_deleted_through_the_api(http: Http) -> None:
    status, _, _ = await _post(http, "/ui/intentions", {"source": "web", "destination": "db", "action": "allow",
                                                       "description": "web reads db"})  # fmt: skip
    assert status == 303
    status, got, _ = await http.get("/v1/connect/intentions/exact?source=web&destination=db")
    assert (status, got["Action"], got["Description"]) == (200, "allow", "web reads db")
    await _post(http, "/ui/intentions", {"source": "*", "destination": "db", "action": "deny"})
    _, body, _ = await _page(http, "/ui/intentions")
    order = re.findall(r'data-intention="([^"]+)"', body)
    assert order == ["web>db", "*>db"]  # the exact source outranks the wildcard
    _, body, _ = await _page(http, "/ui/intentions/edit?source=web&destination=db")
    assert 'value="web" readonly' in body and "checked> allow" in body
    await _post(http, "/ui/intentions/delete", {"source": "web", "destination": "db"})
    assert (await http.get("/v1/connect/intentions/exact?source=web&destination=db"))[0] == 404


async def test_ca_page_shows_the_active_root_and_the_rotation_history(http: Http) -> None:
    _, roots, _ = await http.get("/v1/connect/ca/roots")
    first = roots["ActiveRootID"]
    _, body, _ = await _page(http, "/ui/ca")
    assert f'id="active-root" data-root="{first}"' in body and roots["TrustDomain"] in body
    assert "EC P-256" in body and "expires in 9 years 364 days" in body  # a new root lives 87600h
    assert "None: the active root has not been rotated" in body
    status, text, _ = await http.put("/v1/connect/ca/configuration", {
        "Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
    assert status == 200, text
    _, roots, _ = await http.get("/v1/connect/ca/roots")
    old = next(r for r in roots["Roots"] if r["ID"] == first)
    assert old["Active"] is False and old["RotatedOutAt"]
    _, body, _ = await _page(http, "/ui/ca")
    assert f'id="active-root" data-root="{roots["ActiveRootID"]}"' in body and "EC P-384" in body
    assert "Cross-signed" in body  # the new root carries its predecessor's signature
    row = body[body.index(f'<tr data-root="{first}"'):]
    row = row[:row.index("</tr>")]
    assert f'datetime="{old["RotatedOutAt"]}"' in row and "less than a minute ago" in row


@pytest.mark.agent_config(ui_config={"content_path": "console"})
async def test_the_ui_is_served_under_its_content_path(http: Http) -> None:
    status, _, headers = await _page(http, "/")
    assert (status, headers["Location"]) == (302, "/console/")
    for bare in ("/console/", "/console"):
        status, _, headers = await _page(http, bare)
        assert (status, headers["Location"]) == (302, "/console/services")
    status, body, _ = await _page(http, "/console/services")
    assert status == 200
    urls = re.findall(r'(?:href|src|action|hx-get)="([^"#]+)"', body)
    assert len(urls) > 8 and all(u.startswith("/console/") for u in urls), urls
    assets = re.findall(r'(?:src|href)="(/console/assets/[0-9a-f]{12}/[^"]+)"', body)
    assert len(assets) == 3
    for url in assets:
        assert (await _page(http, url))[0] == 200
    status, body, _ = await _page(http, "/ui/services")  # the default path is not served besides it
    assert status == 404 and "ensure the path starts with '/v1/'" in body
    # A form's redirect and the login cookie follow the path.
    status, _, headers = await _post(http, "/console/kv/", {"name": "k", "value": "v", "cas": "0"})
    assert (status, headers["Location"]) == (303, "/console/kv/k?message=saved")
    _, body, _ = await _page(http, "/console/kv/k")
    assert 'action="/console/kv/k"' in body and 'href="/console/kv/"' in body
    status, _, headers = await _post(http, "/console/login", {"token": "anything"})
    assert (status, headers["Location"]) == (303, "/console/services") and "Path=/console" in headers["Set-Cookie"]


@pytest.fixture
async def acl_http() -> AsyncIterator[Http]:
    async with async_dev_agent(acl={"enabled": True, "default_policy": "deny",
                                    "tokens": {"initial_management": ROOT}}) as running:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            yield Http(session, running.url)


async def test_a_token_without_rights_sees_the_apis_refusal(acl_http: Http) -> None:
    h = acl_http
    await h.put("/v1/kv/secret", raw=b"x", headers={"X-Consul-Token": ROOT})
    api_status, api_text, _ = await h.get("/v1/kv/secret")
    assert api_status == 403
    status, body, _ = await _page(h, "/ui/kv/secret")
    assert status == 403 and "Refused by the API (403)" in body
    assert "Permission denied" in api_text and api_text.strip() in html.unescape(body)
    # Logged in with the management token, the same page shows the key; the cookie carries the token.
    status, _, headers = await _post(h, "/ui/login", {"token": ROOT})
    assert status == 303 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    cookies = {"proconsul_ui_token": ROOT}
    status, body, _ = await _page(h, "/ui/kv/secret", cookies=cookies)
    assert status == 200 and ">x</textarea>" in body
    status, body, _ = await _page(h, "/ui/acl/tokens", cookies=cookies)
    assert status == 200 and "00000000-0000-0000-0000-000000000002" in body  # the anonymous token
    assert (await _page(h, "/ui/acl/policies", cookies=cookies))[0] == 200
    assert (await _page(h, "/ui/acl/roles", cookies=cookies))[0] == 200
    # A wrong token is refused at login with the API's words.
    status, body, _ = await _post(h, "/ui/login", {"token": "not-a-token"})
    assert status == 403 and "ACL not found" in body


async def _register_proxy(h: Http, for_service: str, upstream: str) -> None:
    body = {"Node": "test-agent", "Address": "127.0.0.1",
            "Service": {"ID": f"{for_service}-sidecar-proxy", "Service": f"{for_service}-sidecar-proxy",
                        "Kind": "connect-proxy", "Port": 21000,
                        "Proxy": {"DestinationServiceName": for_service, "DestinationServiceID": for_service,
                                  "Upstreams": [{"DestinationName": upstream, "LocalBindPort": 9191}]}}}  # fmt: skip
    status, text, _ = await h.put("/v1/catalog/register", body)
    assert status == 200, text


async def test_service_page_draws_its_mesh_topology_with_the_intentions_decisions(http: Http) -> None:
    await _register(http, "web", "web")
    await _register(http, "api", "api")
    await _register(http, "db", "db")
    await _register_proxy(http, "web", "db")  # web -> db
    await _register_proxy(http, "api", "web")  # api -> web
    await http.put("/v1/connect/intentions/exact?source=web&destination=db",
                   {"SourceName": "web", "DestinationName": "db", "Action": "allow"})
    await http.put("/v1/connect/intentions/exact?source=api&destination=web",
                   {"SourceName": "api", "DestinationName": "web", "Action": "deny"})
    _, body, _ = await _page(http, "/ui/services/web")
    svg = body[body.index("<svg"):body.index("</svg>")]
    assert 'role="img"' in svg and "Downstreams: api (denied). Upstreams: db (allowed)." in svg
    assert "Upstream db: allowed by intentions" in body and "Downstream api: denied by intentions" in body
    _, body, _ = await _page(http, "/ui/services/db")
    assert "Downstreams: web (allowed). Upstreams: none." in body
    await _register(http, "lonely", "lonely")
    _, body, _ = await _page(http, "/ui/services/lonely")
    assert "Not in the service mesh" in body and "<svg" not in body


def test_the_topology_picture_escapes_names() -> None:
    from registry.ui.topology import Edge, render_svg

    svg = render_svg("a<b", [Edge("x&y", "a<b", True)], [])
    assert "a&lt;b" in svg and "x&amp;y" in svg and "a<b" not in svg and "x&y" not in svg
