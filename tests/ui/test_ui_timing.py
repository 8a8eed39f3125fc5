"""How fast the UI is with a big catalog, timed by Chromium: 1,000 services with 5,000 instances (each with a
check) on 100 nodes, and one service with 100 instances. "Usable" is the browser's own navigation timing:
from the start of the navigation to the end of the load event (HTML parsed and laid out, the style sheet
and the deferred scripts run, htmx wired to the live section). Seeding takes a while: soak only.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui.browser import LiveAgent, chromium, missing, start_agent, wait_for

pytestmark = [pytest.mark.soak, pytest.mark.skipif(missing() is not None, reason=str(missing()))]

NODES, SERVICES, PER_SERVICE, BIG = 100, 1000, 5, 100
BATCH = 128  # Consul's most operations in one transaction


def seed(agent: LiveAgent) -> None:
    """The catalog, through PUT /v1/txn in batches of 128 operations."""
    ops: list[dict[str, Any]] = [{"Node": {"Verb": "set", "Node": {"Node": f"node-{n:03d}", "Address": f"10.0.{n // 250}.{n % 250 + 1}"}}}
                                 for n in range(NODES)]  # fmt: skip
    statuses = ("passing", "passing", "passing", "warning", "critical")
    for s in range(SERVICES):
        for i in range(PER_SERVICE):
            node = f"node-{(s + i * 7) % NODES:03d}"
            sid = f"svc-{s:04d}-{i}"
            ops.append({"Service": {"Verb": "set", "Node": node, "Service": {
                "ID": sid, "Service": f"svc-{s:04d}", "Port": 8000 + i, "Tags": [f"t{s % 10}", "prod"]}}})
            ops.append({"Check": {"Verb": "set", "Check": {
                "Node": node, "CheckID": f"{sid}-check", "Name": "http", "ServiceID": sid,
                "Status": statuses[(s + i) % 5] if i == 0 else "passing", "Output": "HTTP 200 OK"}}})
    for i in range(BIG):
        node = f"node-{i % NODES:03d}"
        ops.append({"Service": {"Verb": "set", "Node": node, "Service": {"ID": f"big-{i}", "Service": "big",
                                                                           "Port": 9000 + i, "Meta": {"i": str(i)}}}})
        ops.append({"Check": {"Verb": "set", "Check": {"Node": node, "CheckID": f"big-{i}-check", "Name": "tcp",
                                                        "ServiceID": f"big-{i}", "Status": "passing",
                                                        "Output": "TCP connect 10.0.0.1: Success"}}})
    for start in range(0, len(ops), BATCH):
        status, body = agent.call("PUT", "/v1/txn", ops[start:start + BATCH])
        assert status == 200, body


@pytest.fixture(scope="module")
def big_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAgent]:
    agent = start_agent(tmp_path_factory.mktemp("ui-big"))
    try:
        seed(agent)
        yield agent
    finally:
        agent.stop()


def _usable_ms(driver: Any, url: str, ready: str) -> float:
    driver.get(url)
    wait_for(driver, ready, 10)
    timing = driver.execute_script("const t = performance.getEntriesByType('navigation')[0];"
                                   "return [t.startTime, t.loadEventEnd, t.responseEnd];")  # fmt: skip
    return float(timing[1] - timing[0])


def test_big_catalog_pages_are_usable_fast(big_agent: LiveAgent) -> None:
    driver = chromium()
    try:
        _usable_ms(driver, big_agent.url + "/ui/services", 'tr[data-service="svc-0999"]')  # warm caches
        services = [_usable_ms(driver, big_agent.url + "/ui/services", 'tr[data-service="svc-0999"]') for _ in range(5)]
        _usable_ms(driver, big_agent.url + "/ui/services/big", 'section[data-instance="big-99"]')
        one = [_usable_ms(driver, big_agent.url + "/ui/services/big", 'section[data-instance="big-99"]') for _ in range(5)]
        rows = len(driver.find_elements("css selector", "section[data-instance]"))
    finally:
        driver.quit()
    s_med, o_med = statistics.median(services), statistics.median(one)
    print(f"\nservices page, {SERVICES} services / {SERVICES * PER_SERVICE + BIG} instances: median {s_med:.0f} ms "
          f"(runs {', '.join(f'{v:.0f}' for v in services)})")  # fmt: skip
    print(f"service page, {rows} instances: median {o_med:.0f} ms (runs {', '.join(f'{v:.0f}' for v in one)})")
    assert rows == BIG
    assert s_med < 1000, f"services page took {s_med:.0f} ms"
    assert o_med < 500, f"service page took {o_med:.0f} ms"
