"""Screenshots of every UI page into docs/ui/ (PNG): ``python -m tests.ui.screenshots``.

A real ``proconsul agent -dev`` is started and given a small, plausible catalog (services in each health,
a sidecar, KV folders, intentions, a CA rotation); Debian's headless Chromium takes each page with a
1280x800 viewport, and the services and a service page at phone width (390x844) too.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.ui.browser import chromium, missing, start_agent, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ui"


def main() -> int:
    why = missing()
    if why is not None:
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 1
    DOCS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(Path(tmp), node="server-1")
        try:
            agent.register("web", "web-1", node="server-1", tags=["v2", "edge"], meta={"team": "shop"}, port=8080)
            agent.register("web", "web-2", node="worker-1", tags=["v2"], port=8080)
            agent.register("api", "api-1", node="worker-1", status="warning", port=9090,
                           output="HTTP GET http://127.0.0.1:9090/health: 429 Too Many Requests")
            agent.register("billing", "billing-1", node="worker-2", status="critical", port=7000,
                           output="dial tcp 127.0.0.1:7000: connect: connection refused")
            agent.register("db", "db-1", node="worker-2", port=5432, tags=["primary"])
            agent.call("PUT", "/v1/kv/config/web/replicas", raw=b"3")
            agent.call("PUT", "/v1/kv/config/web/limits", raw=b'{"rps": 200, "burst": 50}')
            agent.call("PUT", "/v1/kv/config/api/flags", raw=b"beta=true")
            agent.call("PUT", "/v1/connect/intentions/exact?source=web&destination=api",
                       {"SourceName": "web", "DestinationName": "api", "Action": "allow"})
            agent.call("PUT", "/v1/connect/intentions/exact?source=*&destination=db",
                       {"SourceName": "*", "DestinationName": "db", "Action": "deny",
                        "Description": "only named services reach the database"})
            agent.call("PUT", "/v1/connect/intentions/exact?source=api&destination=db",
                       {"SourceName": "api", "DestinationName": "db", "Action": "allow"})
            for svc, upstream in (("web", "api"), ("api", "db"), ("billing", "db")):
                agent.call("PUT", "/v1/catalog/register", {
                    "Node": "worker-1", "Address": "127.0.0.2",
                    "Service": {"ID": f"{svc}-sidecar-proxy", "Service": f"{svc}-sidecar-proxy", "Kind": "connect-proxy",
                                "Port": 21000, "Proxy": {"DestinationServiceName": svc,
                                                         "Upstreams": [{"DestinationName": upstream, "LocalBindPort": 9191}]}}})  # fmt: skip
            # One rotation, so the CA page has a history to show.
            status, text = agent.call("PUT", "/v1/connect/ca/configuration",
                                      {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
            assert status == 200, text
            pages = [("services", "/ui/services", "#services-live"), ("service", "/ui/services/api", "section.instance"),
                     ("nodes", "/ui/nodes", "section.node"), ("kv", "/ui/kv/config/web/", "#kv-live"),
                     ("kv-key", "/ui/kv/config/web/limits?format=json", "#current-value"),
                     ("intentions", "/ui/intentions", "table.list"), ("ca", "/ui/ca", "#rotation-history"),
                     ("login", "/ui/login", "#token")]  # fmt: skip
            driver = chromium(1280, 800)
            try:
                for name, path, ready in pages:
                    driver.get(agent.url + path)
                    wait_for(driver, ready)
                    driver.save_screenshot(str(DOCS / f"{name}.png"))
                    print(f"docs/ui/{name}.png")
            finally:
                driver.quit()
            phone = chromium(390, 844)
            try:
                for name, path, ready in (("services-phone", "/ui/services", "#services-live"),
                                          ("service-phone", "/ui/services/api", "section.instance")):
                    phone.get(agent.url + path)
                    wait_for(phone, ready)
                    phone.save_screenshot(str(DOCS / f"{name}.png"))
                    print(f"docs/ui/{name}.png")
            finally:
                phone.quit()
        finally:
            agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
