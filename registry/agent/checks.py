"""Health checks the agent runs: HTTP, TCP, UDP, gRPC, H2PING, OSService, TTL and script (alias checks,
which follow other checks rather than probing anything, are in ``registry.agent.alias``).

Each monitor reports raw results to a ``StatusHandler`` which applies SuccessBeforePassing,
FailuresBeforeWarning and FailuresBeforeCritical before the result reaches the agent's local state. Monitors
never raise out of their loop: a check that cannot run reports critical with the reason as its output.
Outputs are worded as Consul's checks word them (agent/checks/check.go, grpc.go, os_service*.go), so tools
that read them see the same text.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import structlog

from registry.gocompat import format_duration
from registry.registration import MIN_INTERVAL, CheckSpec
from registry.structs import HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING

if TYPE_CHECKING:
    import grpc

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
            elif self.failures >= self.spec.failures_before_warning:
                self._report(HEALTH_WARNING, output)


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


def _split_host_port(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (validated where the check was registered)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _reason(exc: BaseException) -> str:
    """An OS error the way Go words it ("connection refused"), anything else as it says itself."""
    if isinstance(exc, socket.gaierror):
        return "no such host"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def check_tls_context(spec: CheckSpec) -> ssl.SSLContext:
    """The TLS client settings of a check (Consul's OutgoingTLSConfigForCheck without
    enable_agent_tls_for_checks): the system's CAs, or no verification with TLSSkipVerify."""
    ctx = ssl.create_default_context()
    if spec.tls_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class UDPMonitor(Monitor):
    """Consul's CheckUDP: send a datagram (Consul's is empty) to the target; an answer, or silence until the
    timeout, is passing; an error, such as the ICMP port-unreachable a closed port answers with (read back as
    "connection refused"), is critical."""

    async def run_once(self) -> tuple[str, str]:
        target = self.spec.udp
        host, port = _split_host_port(target)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), self.timeout)
        except (OSError, TimeoutError) as exc:
            return HEALTH_CRITICAL, f"dial udp: lookup {host}: {_reason(exc)}"
        family, _, proto, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            try:
                sock.connect(address)
                local = sock.getsockname()
                # A zero-length datagram, as Consul's check writes its empty message (asyncio's transports
                # would drop an empty write, the socket does not).
                sock.send(b"")
            except OSError as exc:
                return HEALTH_CRITICAL, f"dial udp {target}: {_reason(exc)}"
            try:
                await asyncio.wait_for(loop.sock_recv(sock, 1), self.timeout)
            except TimeoutError:
                pass  # nothing came back, not even an ICMP error: the port is taken to be open
            except OSError as exc:
                return HEALTH_CRITICAL, f"read udp {_addr(local)}->{_addr(address)}: read: {_reason(exc)}"
            return HEALTH_PASSING, f"UDP connect {target}: Success"
        finally:
            sock.close()


async def _close(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Close a connection without waiting on the peer. What was written is flushed first; a TLS connection is
    then dropped rather than shut down, because servers (gRPC's among them) do not answer a close_notify and
    asyncio would hold the check for its 30 s shutdown timeout (Consul bounds its shutdown by the timeout)."""
    try:
        await asyncio.wait_for(writer.drain(), min(timeout / 2, 1.0))
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    if writer.get_extra_info("ssl_object") is not None:
        writer.transport.abort()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), min(timeout / 2, 1.0))
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()


def _addr(sockaddr: tuple[object, ...]) -> str:
    host, port = str(sockaddr[0]), sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class H2PingMonitor(Monitor):
    """Consul's CheckH2PING: open an HTTP/2 connection (over TLS with ALPN "h2" unless H2PingUseTLS is false,
    prior knowledge otherwise) and send a PING frame; the PING's acknowledgement is passing.

    The HTTP/2 framing comes from the ``h2`` library (python-hyper's sans-IO state machine) driven over
    asyncio streams: gRPC's client does not expose a PING, and aiohttp speaks only HTTP/1.1."""

    PING_DATA = b"consulh2"

    async def run_once(self) -> tuple[str, str]:
        import h2.config
        import h2.connection
        import h2.events
        import h2.exceptions

        spec = self.spec
        target = spec.h2ping
        host, port = _split_host_port(target)
        ctx: ssl.SSLContext | None = None
        if spec.h2ping_use_tls:
            ctx = check_tls_context(spec)
            ctx.set_alpn_protocols(["h2"])
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=(spec.tls_server_name or host) if ctx else None),
                self.timeout,
            )
        except TimeoutError:
            return HEALTH_CRITICAL, f"Failed to dial to {target}: dial tcp {target}: i/o timeout"
        except ssl.SSLError as exc:
            return HEALTH_CRITICAL, f"Failed to dial to {target}: tls: {exc.reason or exc}"
        except OSError as exc:
            return HEALTH_CRITICAL, f"Failed to dial to {target}: dial tcp {target}: connect: {_reason(exc)}"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        try:
            conn.initiate_connection()
            conn.ping(self.PING_DATA)
            writer.write(conn.data_to_send())
            async with asyncio.timeout(self.timeout):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return HEALTH_CRITICAL, "HTTP2 ping failed: EOF"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.PingAckReceived) and event.ping_data == self.PING_DATA:
                            return HEALTH_PASSING, "HTTP2 ping was successful"
                        if isinstance(event, h2.events.ConnectionTerminated):
                            return HEALTH_CRITICAL, f"HTTP2 ping failed: connection closed ({event.error_code!s})"
                    writer.write(conn.data_to_send())
        except TimeoutError:
            return HEALTH_CRITICAL, "HTTP2 ping failed: context deadline exceeded"
        except h2.exceptions.ProtocolError as exc:
            return HEALTH_CRITICAL, f"HTTP2 ping failed: {exc}"
        except OSError as exc:
            return HEALTH_CRITICAL, f"HTTP2 ping failed: {_reason(exc)}"
        finally:
            try:
                conn.close_connection()
                writer.write(conn.data_to_send())
            except Exception:  # noqa: BLE001 - the connection may already be unusable
                pass
            await _close(writer, self.timeout)


def _go_status_code(code: grpc.StatusCode) -> str:
    """A gRPC status code as Go's codes.Code prints it: NOT_FOUND -> "NotFound"."""
    return "OK" if code.name == "OK" else "".join(part.title() for part in code.name.split("_"))


class GRPCMonitor(Monitor):
    """Consul's CheckGRPC: the standard health service, ``grpc.health.v1.Health/Check`` for the service named
    after the target's ``/`` (the whole server when none), over a new connection each time; SERVING is
    passing, anything else (another status, an error, an unreachable server) critical.

    The call is made by grpcio's asyncio client with the stubs grpcio-health-checking ships, over gRPC's own
    TLS when GRPCUseTLS is set (the system's CAs; TLSServerName as the name verified). gRPC's client cannot
    skip certificate verification, so with TLSSkipVerify the channel is plaintext HTTP/2 to a one-call relay
    on the loopback that carries the bytes over a TLS connection made by Python's ``ssl`` without
    verification (ALPN "h2"; TLSServerName as SNI): the server sees a TLS client, as with Consul's."""

    async def run_once(self) -> tuple[str, str]:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        spec = self.spec
        target, _, service = spec.grpc.partition("/")
        relay: asyncio.Server | None = None
        if spec.grpc_use_tls and spec.tls_skip_verify:
            relay = await _tls_relay(target, spec.tls_server_name, self.timeout)
            channel = grpc.aio.insecure_channel(_addr(relay.sockets[0].getsockname()))
        elif spec.grpc_use_tls:
            options = [("grpc.ssl_target_name_override", spec.tls_server_name)] if spec.tls_server_name else []
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            channel = grpc.aio.insecure_channel(target)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            return HEALTH_CRITICAL, f"rpc error: code = {_go_status_code(exc.code())} desc = {exc.details() or ''}"
        finally:
            await channel.close()
            if relay is not None:
                relay.close()
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            return HEALTH_CRITICAL, f"gRPC {spec.grpc} serving status: {status}"
        return HEALTH_PASSING, f"gRPC check {spec.grpc}: success"


async def _tls_relay(target: str, server_name: str, timeout: float) -> asyncio.Server:
    """A loopback listener whose connections are carried to ``target`` over unverified TLS (ALPN h2).
    A connection that cannot be made upstream is closed at once, which gRPC reports as Unavailable."""
    host, port = _split_host_port(target)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            await _close(writer, timeout)

    async def carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name or None), timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            log.debug("gRPC check could not reach its target", target=target, error=str(exc))
            await _close(writer, timeout)
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(carry, "127.0.0.1", 0)


OS_SERVICE_TIMEOUT = 30.0  # Consul's default for OSService checks, as for scripts


class OSServiceMonitor(Monitor):
    """Consul's CheckOSService, for systemd: ``systemctl is-active <unit>``. Consul checks Windows services
    (Running is passing, Stopped or Paused critical, a pending state warning, an error querying warning);
    here "active" is passing, "inactive" and "failed" (also what systemctl says of a unit it does not know)
    critical, a transition ("activating", "reloading", ...) warning, and systemctl failing to answer a
    warning with what it said. Without systemctl the check is critical, worded as Go words a missing
    executable."""

    @property
    def check_timeout(self) -> float:
        return self.spec.timeout or OS_SERVICE_TIMEOUT

    async def run_once(self) -> tuple[str, str]:
        unit = self.spec.os_service
        exe = shutil.which("systemctl")
        if exe is None:
            return HEALTH_CRITICAL, 'error accessing service: exec: "systemctl": executable file not found in $PATH'
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, "is-active", "--", unit,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            return HEALTH_CRITICAL, f"error accessing service: {exc}"
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.check_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return HEALTH_CRITICAL, f"Timed out ({format_duration(self.check_timeout)}) running check"
        state = out.decode("utf-8", "replace").strip()
        if state == "active":
            return HEALTH_PASSING, f'Service "{unit}" is healthy'
        if state in ("inactive", "failed"):
            return HEALTH_CRITICAL, f"service status: {state} - OS Service unhealthy"
        if state:
            return HEALTH_WARNING, f"service status: {state}"
        said = err.decode("utf-8", "replace").strip() or f"systemctl exited with status {proc.returncode}"
        return HEALTH_WARNING, f"error querying service status: {said}"
