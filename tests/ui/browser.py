"""What the UI's browser tests, timing test and screenshot script share: a real ``proconsul agent -dev`` process
on free ports, Debian's headless Chromium driven through its chromedriver by Selenium, and the agent's API.

Chromium is Debian's ``chromium`` package and its driver ``chromium-driver`` (.ci/run installs both); no
browser is downloaded at run time. ``missing()`` says which is absent, for the tests' skip reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.testing import free_port

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

BIN = str(Path(sys.executable).with_name("proconsul"))
CHROMIUM = ("chromium", "/usr/bin/chromium")
DRIVER = ("chromedriver", "/usr/bin/chromedriver")


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        found = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    absent = [pkg for pkg, names in (("chromium", CHROMIUM), ("chromium-driver", DRIVER)) if _which(names) is None]
    if absent:
        return f"needs Debian's {' and '.join(absent)} (apt-get install {' '.join(absent)}; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    return None


def chromium(width: int = 1280, height: int = 800) -> WebDriver:
    """A headless Chromium whose viewport is exactly ``width`` x ``height`` CSS pixels.

    ``--window-size`` sizes the window, and headless Chromium keeps part of it for its (invisible) frame:
    1280x800 gave a 1280x657 viewport. The DevTools device-metrics override sets the viewport itself, as
    a phone of that width when it is under 600 px (overlay scrollbars, the page's viewport meta)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    binary = _which(CHROMIUM)
    assert binary is not None
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=_which(DRIVER)), options=opts)
    driver.set_window_size(width, height)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    return driver


@dataclass
class LiveAgent:
    url: str
    proc: subprocess.Popen[bytes]
    token: str = ""

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             token: str | None = None) -> tuple[int, Any]:  # fmt: skip
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("X-Consul-Token", tok)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload

    def register(self, name: str, sid: str, *, node: str = "ui-node", status: str = "passing", port: int = 80,
                 tags: list[str] | None = None, meta: dict[str, str] | None = None, output: str = "") -> None:  # fmt: skip
        code, text = self.call("PUT", "/v1/catalog/register", {
            "Node": node, "Address": "127.0.0.1",
            "Service": {"ID": sid, "Service": name, "Port": port, "Tags": tags or [], "Meta": meta or {}},
            "Check": {"CheckID": f"{sid}-check", "Name": f"{name} HTTP", "Status": status, "ServiceID": sid,
                      "Output": output or f"HTTP GET http://127.0.0.1:{port}/health: {status}",
                      "Notes": "GET /health every 10s"}})  # fmt: skip
        assert code == 200, text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_agent(tmp: Path, config: dict[str, Any] | None = None, node: str = "ui-node") -> LiveAgent:
    """``proconsul agent -dev`` as a user starts it (the UI is on in -dev), on a free HTTP port."""
    port = free_port()
    cfg = tmp / "agent.json"
    cfg.write_text(json.dumps(config or {}))
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", node, "-http-port", str(port), "-dns-port", "-1",
                             "-config-file", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    agent = LiveAgent(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if agent.call("GET", "/v1/status/leader", token="")[0] == 200:
                return agent
        except OSError:
            pass
        if time.monotonic() > deadline:
            agent.stop()
            raise AssertionError("agent did not start")
        time.sleep(0.1)


def wait_for(driver: WebDriver, css: str, timeout: float = 5.0) -> Any:
    """The first element matching ``css`` once it is on the page (TimeoutException after ``timeout``)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def wait_live(driver: WebDriver, css: str) -> None:
    """Wait until the live section matched by ``css`` has its blocking request in flight (htmx marks the
    element with ``htmx-request`` while it waits), so a change made next is seen by that request."""
    wait_for(driver, css + ".htmx-request", 5.0)


def text_of(driver: WebDriver, css: str) -> str:
    """The text of the first element matching ``css``, read in one step inside the page ("" when none):
    a live section may be swapped between finding an element and reading it."""
    return str(driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                                     css) or "")  # fmt: skip
