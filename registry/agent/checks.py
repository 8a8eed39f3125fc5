"""Health checks the agent runs: HTTP, TCP, TTL and script.

Each monitor reports raw results to a ``StatusHandler`` which applies SuccessBeforePassing and
FailuresBeforeCritical before the result reaches the agent's local state. Monitors never raise out of their
loop: a check that cannot run reports critical with the reason as its output.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aiohttp
import structlog

from registry.registration import MIN_INTERVAL, CheckSpec
from registry.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

log = structlog.get_logger("proconsul.checks")

DEFAULT_TIMEOUT = 10.0
USER_AGENT = "Consul Health Check"

Report = Callable[[str, str], None]  # (status, output)


class StatusHandler:
    """Consecutive-result thresholds: a single blip does not flip a check."""

    def __init__(self, spec: CheckSpec, report: Report) -> None:
        self.spec = spec
        self._report = report
        self.successes = 0
        self.failures = 0

    def __call__(self, status: str, output: str) -> None:
        output = cap_output(output, self.spec.output_max_size)
        if status in (HEALTH_PASSING, HEALTH_WARNING):
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.success_before_passing:
                self._report(status, output)
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.spec.failures_before_critical:
                self._report(HEALTH_CRITICAL, output)


def cap_output(output: str, limit: int) -> str:
    if limit > 0 and len(output) > limit:
        return output[:limit] + f" ... (captured {limit} of {len(output)} bytes)"
    return output


class Monitor:
    """Base of interval checks: run once at once, then every interval until stopped."""

    def __init__(self, spec: CheckSpec, report: Report) -> None:
        self.spec = spec
        self.report = report
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"check:{self.spec.check_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None

    async def _loop(self) -> None:
        interval = max(self.spec.interval, MIN_INTERVAL)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                status, output = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a check must never kill its loop
                status, output = HEALTH_CRITICAL, f"check failed: {exc}"
            self.report(status, output)
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def run_once(self) -> tuple[str, str]:
        raise NotImplementedError

    @property
    def timeout(self) -> float:
        return self.spec.timeout or DEFAULT_TIMEOUT


class HTTPMonitor(Monitor):
    def __init__(self, spec: CheckSpec, report: Report, session: aiohttp.ClientSession) -> None:
        super().__init__(spec, report)
        self.session = session
        self._ssl: ssl.SSLContext | bool = True
        if spec.tls_skip_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx

    async def run_once(self) -> tuple[str, str]:
        spec = self.spec
        headers = {"User-Agent": USER_AGENT, "Accept": "text/plain, text/*, */*"}
        extra: list[tuple[str, str]] = [(k, v) for k, vs in spec.header.items() for v in vs]
        for k, _ in extra:
            headers.pop(k, None)
        hdrs = list(headers.items()) + extra
        try:
            async with self.session.request(
                spec.method or "GET",
                spec.http,
                headers=hdrs,
                data=spec.body.encode() if spec.body else None,
                # Following redirects turned Consul's checks into an SSRF tool (CVE-2022-29153).
                allow_redirects=not spec.disable_redirects,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                ssl=self._ssl,
                server_hostname=spec.tls_server_name or None,
            ) as resp:
                body = await resp.content.read(spec.output_max_size if spec.output_max_size > 0 else 4096)
                text = body.decode("utf-8", "replace")
                output = f"HTTP {spec.method or 'GET'} {spec.http}: {resp.status} {resp.reason or ''} Output: {text}"
                if 200 <= resp.status < 300:
                    return HEALTH_PASSING, output
                if resp.status == 429:
                    return HEALTH_WARNING, output
                return HEALTH_CRITICAL, output
        except TimeoutError:
            return HEALTH_CRITICAL, f"Get \"{spec.http}\": request timed out after {self.timeout:g}s"
        except aiohttp.ClientError as exc:
            return HEALTH_CRITICAL, f"{spec.method or 'GET'} \"{spec.http}\": {exc}"


class TCPMonitor(Monitor):
    async def run_once(self) -> tuple[str, str]:
        host, _, port = self.spec.tcp.rpartition(":")
        host = host.strip("[]")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.timeout)
        except TimeoutError:
            return HEALTH_CRITICAL, f"dial tcp {self.spec.tcp}: i/o timeout"
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return HEALTH_CRITICAL, f"dial tcp {self.spec.tcp}: connect: {reason.lower()}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return HEALTH_PASSING, f"TCP connect {self.spec.tcp}: Success"


class ScriptMonitor(Monitor):
    @property
    def script_timeout(self) -> float:
        return self.spec.timeout or 30.0  # Consul's default for script checks

    async def run_once(self) -> tuple[str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return HEALTH_CRITICAL, f"Check failed to start: {exc}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.script_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return HEALTH_CRITICAL, f"Timed out ({self.script_timeout:g}s) running check"
        text = out.decode("utf-8", "replace")
        if proc.returncode == 0:
            return HEALTH_PASSING, text
        if proc.returncode == 1:
            return HEALTH_WARNING, text
        return HEALTH_CRITICAL, text


class TTLMonitor:
    """Critical with "TTL expired" unless refreshed by pass/warn/fail/update within the TTL."""

    def __init__(self, spec: CheckSpec, report: Report) -> None:
        self.spec = spec
        self.report = report
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.reset()

    def reset(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self.spec.ttl, self._expired)

    def _expired(self) -> None:
        self._handle = None
        self.report(HEALTH_CRITICAL, "TTL expired")

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
