"""The web UI in a real browser: Debian's headless Chromium (Selenium) against a real ``proconsul agent -dev``.

Each page renders the agent's real data; what changes through the API (a registration, a check turning
critical, a KV edit) shows on the open page within a second, without a reload; what is done in the UI (a KV
edit, an intention) is visible through the API; a token without rights sees the API's refusal on screen.
One agent and one browser serve the whole module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.ui.browser import LiveAgent, chromium, missing, start_agent, text_of, wait_for, wait_live

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

ROOT = "5f0c8f52-8a5c-4b8e-9d51-6e0f7f6b2d10"
LIVE_LIMIT = 1.0  # seconds from an API write to the open page showing it


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    live = start_agent(tmp_path_factory.mktemp("ui-agent"))
    live.register("web", "web-1", tags=["v1", "edge"], meta={"team": "shop"}, port=8080)
    live.register("web", "web-2", node="ui-node-2", port=8081)
    live.register("db", "db-1", status="warning", port=5432, output="replication lag 3s")
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _until(check: object, timeout: float) -> float:
    """Seconds until ``check()`` holds (AssertionError past ``timeout``)."""
    started = time.monotonic()
    while True:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not shown within {timeout}s")
        time.sleep(0.02)


def _rows(driver: WebDriver) -> dict[str, str]:
    """Service -> health, in page order, read in one step (the live section may be swapped meanwhile)."""
    pairs = driver.execute_script(
        "return Array.from(document.querySelectorAll('#services-live tr[data-service]'))"
        ".map(r => [r.dataset.service, r.dataset.health]);")
    return {str(name): str(health) for name, health in pairs}


def test_services_page_renders_and_follows_registrations_and_checks_live(agent: LiveAgent, browser: WebDriver) -> None:
    browser.get(agent.url + "/ui/services")
    wait_for(browser, 'tr[data-service="web"]')
    rows = _rows(browser)
    assert rows["web"] == "passing" and rows["db"] == "warning" and "consul" in rows
    assert list(rows).index("db") < list(rows).index("web")  # worst health first
    assert "v1" in text_of(browser, 'tr[data-service="web"]')
    wait_live(browser, "#services-live")
    agent.register("payments", "payments-1", port=9000)
    took = _until(lambda: "payments" in _rows(browser), 5)
    assert took < LIVE_LIMIT, f"a registration took {took:.2f}s to show"
    wait_live(browser, "#services-live")
    agent.register("payments", "payments-1", port=9000, status="critical", output="connection refused")
    took = _until(lambda: _rows(browser).get("payments") == "critical", 5)
    assert took < LIVE_LIMIT, f"a check turning critical took {took:.2f}s to show"
    assert list(_rows(browser))[0] == "payments"


def test_service_filter_narrows_the_list(agent: LiveAgent, browser: WebDriver) -> None:
    browser.get(agent.url + "/ui/services")
    box = wait_for(browser, "#q")
    box.send_keys("edge")
    _until(lambda: list(_rows(browser)) == ["web"], 5)


def test_service_page_shows_instances_and_check_output(agent: LiveAgent, browser: WebDriver) -> None:
    browser.get(agent.url + "/ui/services")
    wait_for(browser, 'tr[data-service="db"] a').click()
    wait_for(browser, 'section[data-instance="db-1"]')
    text = text_of(browser, "main")
    assert "replication lag 3s" in text and "127.0.0.1:5432" in text and "GET /health every 10s" in text
    browser.get(agent.url + "/ui/services/web")
    wait_for(browser, 'section[data-instance="web-2"]')
    assert "team=shop" in text_of(browser, 'section[data-instance="web-1"]')


def test_nodes_page_marks_the_leader(agent: LiveAgent, browser: WebDriver) -> None:
    browser.get(agent.url + "/ui/nodes")
    wait_for(browser, 'section[data-node="ui-node-2"]')
    assert "leader" in text_of(browser, 'section[data-node="ui-node"] h2')
    assert "leader" not in text_of(browser, 'section[data-node="ui-node-2"] h2')


def test_kv_edit_in_the_ui_reaches_the_api_and_an_api_edit_shows_live(agent: LiveAgent, browser: WebDriver) -> None:
    agent.call("PUT", "/v1/kv/app/config", raw=b'{"replicas": 2}')
    browser.get(agent.url + "/ui/kv/")
    wait_for(browser, 'tr[data-key="app/"] a').click()
    wait_for(browser, 'tr[data-key="app/config"] a').click()
    value = wait_for(browser, "textarea#value")
    value.clear()
    value.send_keys('{"replicas": 3}')
    browser.find_element("css selector", 'input[name="format"][value="json"]').click()
    browser.find_element("css selector", 'button[value="save"]').click()
    wait_for(browser, "p.note")
    assert agent.call("GET", "/v1/kv/app/config?raw")[1] == {"replicas": 3}
    wait_live(browser, "#kv-value-live")
    agent.call("PUT", "/v1/kv/app/config", raw=b'{"replicas": 5}')
    took = _until(lambda: "5" in text_of(browser, "#current-value"), 5)
    assert took < LIVE_LIMIT, f"a KV edit took {took:.2f}s to show"


def test_intention_made_in_the_ui_is_visible_through_the_api(agent: LiveAgent, browser: WebDriver) -> None:
    browser.get(agent.url + "/ui/intentions")
    wait_for(browser, "#source").send_keys("web")
    browser.find_element("css selector", "#destination").send_keys("db")
    browser.find_element("css selector", 'input[name="action"][value="allow"]').click()
    browser.find_element("css selector", "#description").send_keys("shop reads stock")
    browser.find_element("css selector", "form.edit button[type=submit]").click()
    wait_for(browser, 'tr[data-intention="web>db"]')
    status, got = agent.call("GET", "/v1/connect/intentions/exact?source=web&destination=db")
    assert status == 200 and got["Action"] == "allow" and got["Description"] == "shop reads stock"


def test_ca_page_shows_a_rotation_through_the_api_live(agent: LiveAgent, browser: WebDriver) -> None:
    _, roots = agent.call("GET", "/v1/connect/ca/roots")
    first = roots["ActiveRootID"]
    browser.get(agent.url + "/ui/ca")
    wait_for(browser, f'#active-root[data-root="{first}"]')
    assert "EC P-256" in text_of(browser, "#active-root") and "expires in 9 years" in text_of(browser, "#root-expiry")
    assert "has not been rotated" in text_of(browser, "#rotation-history")
    wait_live(browser, "#ca-live")
    status, text = agent.call("PUT", "/v1/connect/ca/configuration",
                              {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
    assert status == 200, text
    # The open page follows the roots' blocking query: the new root becomes the active one, the old one
    # moves to the history with the time it was rotated out, as the API says it.
    _until(lambda: "EC P-384" in text_of(browser, "#active-root"), 5)
    _, roots = agent.call("GET", "/v1/connect/ca/roots")
    old = next(r for r in roots["Roots"] if r["ID"] == first)
    shown = browser.execute_script("return document.getElementById('active-root').dataset.root")
    assert shown == roots["ActiveRootID"] != first
    row = text_of(browser, f'#rotation-history tr[data-root="{first}"]')
    assert old["RotatedOutAt"] in row and "ago" in row and old["NotAfter"] in row


def test_service_page_draws_the_topology_from_the_api(agent: LiveAgent, browser: WebDriver) -> None:
    code, text = agent.call("PUT", "/v1/catalog/register", {
        "Node": "ui-node", "Address": "127.0.0.1",
        "Service": {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                    "Proxy": {"DestinationServiceName": "web", "Upstreams": [{"DestinationName": "db",
                                                                              "LocalBindPort": 9191}]}}})  # fmt: skip
    assert code == 200, text
    browser.get(agent.url + "/ui/services/web")
    svg = wait_for(browser, "section.topology svg[role=img]")
    assert "Upstreams: db (" in (svg.get_attribute("aria-label") or "")
    assert svg.size["width"] > 300 and "named in a proxy's upstreams" in str(browser.execute_script(
        "return document.getElementById('topology-edges').textContent"))


def test_the_phone_width_layout_keeps_every_page_usable(agent: LiveAgent) -> None:
    phone = chromium(390, 844)
    try:
        phone.get(agent.url + "/ui/services")
        link = wait_for(phone, 'tr[data-service="web"] a')
        assert link.is_displayed() and link.location["x"] + link.size["width"] <= 390
        # The filter's labels stay beside their fields; a stacked row names its values.
        label, box = phone.find_element("css selector", 'label[for="status"]'), phone.find_element("css selector", "#status")
        assert abs(label.location["y"] - box.location["y"]) < 40
        assert phone.execute_script("return getComputedStyle(document.querySelector("
                                    "'tr[data-service=\"web\"] td[data-label=Instances]'), '::before').content") != "none"
        for path, ready in (("/ui/services", "#services-live"), ("/ui/services/web", "section.instance"),
                            ("/ui/nodes", "section.node"), ("/ui/intentions", "table.list"), ("/ui/ca", "#ca-live"),
                            ("/ui/kv/", "#kv-live")):  # fmt: skip
            phone.get(agent.url + path)
            wait_for(phone, ready)
            scroll_width = phone.execute_script("return document.documentElement.scrollWidth")
            assert scroll_width <= 390, f"{path} scrolls sideways at phone width ({scroll_width}px)"
    finally:
        phone.quit()


def test_a_token_without_rights_sees_the_apis_refusal(tmp_path: Path) -> None:
    acl = start_agent(tmp_path, {"acl": {"enabled": True, "default_policy": "deny",
                                         "tokens": {"initial_management": ROOT}}}, node="acl-node")  # fmt: skip
    driver = chromium()
    try:
        acl.call("PUT", "/v1/kv/secret/plan", raw=b"launch", token=ROOT)
        status, reason = acl.call("GET", "/v1/kv/secret/plan", token="")
        assert status == 403
        driver.get(acl.url + "/ui/kv/secret/plan")
        wait_for(driver, ".refusal")
        shown = text_of(driver, ".refusal")
        assert "403" in shown and str(reason).strip() in shown
        # Logged in with a token that may read it, the same page shows the value.
        driver.get(acl.url + "/ui/login")
        wait_for(driver, "#token").send_keys(ROOT)
        driver.find_element("css selector", "form.edit button[type=submit]").click()
        wait_for(driver, "#services-live")
        driver.get(acl.url + "/ui/kv/secret/plan")
        wait_for(driver, "#current-value")
        assert "launch" in text_of(driver, "#current-value")
        driver.get(acl.url + "/ui/acl/tokens")
        wait_for(driver, "table.list")
        assert "00000000-0000-0000-0000-000000000002" in text_of(driver, "table.list")
    finally:
        driver.quit()
        acl.stop()
