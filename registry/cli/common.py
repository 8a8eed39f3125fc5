"""What every ``proconsul`` command shares: Consul's flag forms (``-flag`` and ``--flag``), the HTTP API options
(``-http-addr``, ``-token``, ``-token-file``, ``-datacenter``, ``-stale``, and the TLS client options ``-ca-file``,
``-ca-path``, ``-client-cert``, ``-client-key``, ``-tls-server-name``), the agent client with the CLI's error texts,
the error that ends a command with its exit code, and the table output of Consul's ``columnize``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from registry.client.http import (
    AgentHTTP,
    AgentUnavailable,
    HTTPConfig,
    Response,
    TLSConfigError,
    TLSFlags,
    TokenFileError,
)
from registry.gocompat import go_parse_bool

__all__ = [
    "CLIError", "Client", "Command", "go_bool", "http_config", "http_options", "opt", "parser", "run_client", "subcommand",
    "table", "tls_flags", "tls_options",
]  # fmt: skip

Command = Callable[[list[str]], int]
# Consul's CLI client: no overall deadline (a snapshot may take long), but a silent agent is an error.
SOCKET_TIMEOUT_S = 30.0


class CLIError(Exception):
    """Ends a command: the message goes to stderr and the process exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def opt(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """A flag in both of Consul's spellings, ``-name`` and ``--name``."""
    p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def go_bool(text: str) -> bool:
    """A flag's boolean value as Go's strconv.ParseBool reads it, for ``type=`` (argparse names the flag)."""
    try:
        return go_parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


def http_options(p: argparse.ArgumentParser) -> None:
    """Consul's HTTP API options, on every command that talks to the agent."""
    opt(p, "http-addr", default=None, help="agent HTTP address (env CONSUL_HTTP_ADDR / PROCONSUL_HTTP_ADDR)")
    opt(p, "token", default=None, help="ACL token (env CONSUL_HTTP_TOKEN)")
    opt(p, "token-file", default=None, help="file holding the ACL token; wins over -token (env CONSUL_HTTP_TOKEN_FILE)")
    opt(p, "datacenter", default=None)
    opt(p, "stale", action="store_true")
    tls_options(p)


def tls_options(p: argparse.ArgumentParser) -> None:
    """Consul's TLS client flags (each also read from its environment variable)."""
    opt(p, "ca-file", default=None, help="CA file to verify the agent's HTTPS certificate (env CONSUL_CACERT)")
    opt(p, "ca-path", default=None, help="directory of CA certificates (env CONSUL_CAPATH)")
    opt(p, "client-cert", default=None, help="client certificate, for an agent with verify_incoming (env CONSUL_CLIENT_CERT)")
    opt(p, "client-key", default=None, help="the client certificate's key (env CONSUL_CLIENT_KEY)")
    opt(p, "tls-server-name", default=None, help="server name to verify and send as SNI (env CONSUL_TLS_SERVER_NAME)")


def tls_flags(args: argparse.Namespace) -> TLSFlags:
    return TLSFlags(ca_file=args.ca_file, ca_path=args.ca_path, client_cert=args.client_cert,
                    client_key=args.client_key, tls_server_name=args.tls_server_name)  # fmt: skip


def http_config(args: argparse.Namespace) -> HTTPConfig:
    """The agent a command talks to, from ``http_options``' flags and the environment; a token file or TLS
    file that cannot be used ends the command with what is wrong."""
    try:
        config = HTTPConfig.from_flags(args.http_addr, args.token, args.datacenter, args.stale,
                                       token_file=args.token_file, tls=tls_flags(args))  # fmt: skip
        config.ssl_context()  # a missing or unreadable CA or client certificate fails here, named
    except (TokenFileError, TLSConfigError) as exc:
        raise CLIError(str(exc)) from None
    return config


def _reason(cause: BaseException) -> str:
    """Why the agent could not be reached, worded as the operating system words it ("[Errno 111] Connection
    refused"), not as the HTTP library wraps it."""
    import aiohttp

    err: BaseException = cause
    if isinstance(cause, aiohttp.ClientConnectorCertificateError):
        cert_err = cause.certificate_error
        if isinstance(cert_err, ssl.SSLCertVerificationError):
            return f"x509: {cert_err.verify_message}"
        return f"tls: {cert_err}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        err = cause.os_error
    if isinstance(err, ssl.SSLError):
        return f"tls: {err.reason or err}"
    if isinstance(err, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(err, OSError) and not isinstance(err, socket.gaierror) and err.errno:
        return f"[Errno {err.errno}] {os.strerror(err.errno)}"
    return str(err) or type(err).__name__


def _tls_failure(cause: BaseException, https: bool) -> bool:
    """Whether the agent answered but TLS failed: a certificate refused either way. Over TLS 1.3 an agent
    with verify_incoming refuses a client without a certificate after the handshake, which the client sees
    as the server disconnecting."""
    import aiohttp

    if isinstance(cause, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return True
    if https and isinstance(cause, aiohttp.ServerDisconnectedError):
        return True
    # The agent's close after its alert can reach the client as a reset before the alert is read (a request
    # already sent and unread makes the kernel answer with RST), so a reset over https counts too.
    os_error = cause.os_error if isinstance(cause, aiohttp.ClientConnectorError) else cause
    reset = isinstance(os_error, ConnectionResetError) or (isinstance(os_error, OSError) and os_error.errno == errno.ECONNRESET)
    if https and reset:
        return True
    return isinstance(cause, aiohttp.ClientConnectorError) and isinstance(cause.os_error, ssl.SSLError)


class Client:
    """The agent's HTTP API as the commands use it: the shared ``AgentHTTP`` with the CLI's texts for an agent
    that cannot be reached and for an error answer."""

    def __init__(self, http: AgentHTTP) -> None:
        self.http = http
        self.base = http.base

    async def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                      body: bytes | None = None) -> Response:  # fmt: skip
        """One call, whatever its status (unpacks as ``status, body, headers``)."""
        try:
            return await self.http.request(method, path, params, body)
        except AgentUnavailable as exc:
            hint = ("Check the TLS options: -ca-file/-ca-path (CONSUL_CACERT/CONSUL_CAPATH), -client-cert and "
                    "-client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY), -tls-server-name." if _tls_failure(exc.cause, self.base.startswith("https://"))
                    else "Is the agent running? Set -http-addr or CONSUL_HTTP_ADDR to point at it.")  # fmt: skip
            raise CLIError(f"Error connecting to Proconsul agent at {self.base}: {_reason(exc.cause)}\n{hint}") from exc

    async def json(self, method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None) -> Any:
        """A JSON call; an error status is Consul's ``Unexpected response code: <status> (<text>)``."""
        resp = await self.request(method, path, params, json.dumps(body).encode() if body is not None else None)
        if resp.status >= 400:
            raise CLIError(f"Unexpected response code: {resp.status} ({resp.text})")
        return resp.json()


def run_client(args: argparse.Namespace, action: Callable[[Client], Awaitable[int]]) -> int:
    """Run ``action`` with a client for the agent the HTTP options name, and close it after."""

    async def go() -> int:
        async with AgentHTTP(http_config(args), total=None, connect=SOCKET_TIMEOUT_S,
                             sock_read=SOCKET_TIMEOUT_S) as http:  # fmt: skip
            return await action(Client(http))

    return asyncio.run(go())


def subcommand(argv: list[str], group: str, choices: tuple[str, ...], usage: str) -> tuple[str, list[str]]:
    """Split ``proconsul <group> <sub> ...``; an unknown or missing sub-command prints the usage (exit 1)."""
    if not argv or argv[0] not in choices:
        raise CLIError(f"Usage: proconsul {group} <{'|'.join(choices)}> {usage}")
    return argv[0], argv[1:]


def table(rows: list[list[str]]) -> str:
    """Columns two spaces apart, each as wide as its widest cell, no trailing blanks."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
