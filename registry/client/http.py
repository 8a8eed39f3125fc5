"""One asyncio client for the agent's HTTP API, shared by the ``proconsul`` commands, ``proconsul lock`` and the
Connect sidecar (as Consul's ``api`` package is shared by its CLI, ``consul lock`` and its built-in proxy).

What it owns, following Consul's ``api.Config`` and ``api.QueryOptions``:

* the address: ``-http-addr``, else ``PROCONSUL_HTTP_ADDR``, else ``CONSUL_HTTP_ADDR``, else
  ``http://127.0.0.1:8500``; an address without a scheme is ``https`` when ``CONSUL_HTTP_SSL`` is true;
* TLS towards an HTTPS agent (Consul's ``api.TLSConfig``): a CA file or directory (``-ca-file``/CONSUL_CACERT,
  ``-ca-path``/CONSUL_CAPATH), a client certificate and key for an agent with ``verify_incoming``
  (``-client-cert``/CONSUL_CLIENT_CERT, ``-client-key``/CONSUL_CLIENT_KEY), the name to verify and send as
  SNI (``-tls-server-name``/CONSUL_TLS_SERVER_NAME), or no verification (CONSUL_HTTP_SSL_VERIFY=false);
* the token (``X-Consul-Token``; from ``-token``/CONSUL_HTTP_TOKEN or a token file), the datacenter (``?dc=``) and ``?stale`` on reads;
* blocking queries: ``?index=`` and ``?wait=`` in, ``X-Consul-Index`` out (``Response.index``);
* errors that carry the HTTP status and Consul's text (``StatusError``), or say no answer came
  (``AgentUnavailable``): Consul's ``api.IsRetryableError`` is ``APIError.retryable``.

aiohttp (and yarl) are imported when the first call is made, not with the module: a command that never talks
to the agent (``version``, ``tls``, a usage error) starts without paying for them.

Paths are given already escaped (``escape`` for one segment, ``kv_path`` for a key), as Consul's client takes
them, so a key's ``/`` stays a separator and nothing is normalised on the way.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import aiohttp
    import yarl

__all__ = [
    "DEFAULT_HTTP_ADDR", "APIError", "AgentHTTP", "AgentUnavailable", "HTTPConfig", "Response", "StatusError",
    "TLSConfigError", "TLSFlags", "TokenFileError", "agent_address", "escape", "kv_path", "read_token_file",
]  # fmt: skip

DEFAULT_HTTP_ADDR = "http://127.0.0.1:8500"
_TRUE = ("1", "true")


def agent_address(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """The agent's base URL: ``-http-addr``, else PROCONSUL_HTTP_ADDR, else CONSUL_HTTP_ADDR, else the default.

    A bare ``host:port`` gets ``https://`` when CONSUL_HTTP_SSL is true (Consul's ``api.DefaultConfig``), else
    ``http://``; a trailing slash is dropped so paths can be appended."""
    env = os.environ if env is None else env
    addr = flag or env.get("PROCONSUL_HTTP_ADDR") or env.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR
    if "://" not in addr:
        scheme = "https" if env.get("CONSUL_HTTP_SSL", "").lower() in _TRUE else "http"
        addr = f"{scheme}://{addr}"
    return addr.rstrip("/")


def escape(segment: str) -> str:
    """One path segment, escaped so that a ``/`` in it stays part of it."""
    return urllib.parse.quote(segment, safe="")


def kv_path(key: str) -> str:
    """``/v1/kv/<key>``: the key's ``/`` stay separators, everything else is escaped (Consul's ``api.KV``)."""
    return "/v1/kv/" + urllib.parse.quote(key)


@dataclass(frozen=True, slots=True)
class HTTPConfig:
    """Where the agent is and how to talk to it (Consul's ``api.Config``)."""

    address: str = DEFAULT_HTTP_ADDR
    token: str = ""
    datacenter: str | None = None
    stale: bool = False  # reads (GET) ask for ?stale: any server may answer
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    ca_path: str | None = None
    tls_server_name: str | None = None

    @classmethod
    def from_flags(cls, http_addr: str | None, token: str | None, datacenter: str | None = None,
                   stale: bool = False, env: Mapping[str, str] | None = None,
                   token_file: str | None = None, tls: TLSFlags | None = None) -> HTTPConfig:  # fmt: skip
        """The flags a command was given, completed from the environment as Consul's commands do.

        The token follows Consul's ``api.NewClient``: a token file (``-token-file``, else
        CONSUL_HTTP_TOKEN_FILE) wins when it holds a token, then ``-token``, then CONSUL_HTTP_TOKEN.
        An unreadable token file is a TokenFileError ("Error loading token file: ...").
        TLS: each flag wins over its environment variable (Consul's ``api.DefaultConfig`` reads the
        environment, the command's flags then replace what they set)."""
        env = os.environ if env is None else env
        chosen = token or env.get("CONSUL_HTTP_TOKEN") or ""
        path = token_file or env.get("CONSUL_HTTP_TOKEN_FILE") or ""
        if path:
            chosen = read_token_file(path) or chosen
        tls = tls or TLSFlags()
        verify = env.get("CONSUL_HTTP_SSL_VERIFY", "")
        return cls(address=agent_address(http_addr, env), token=chosen, datacenter=datacenter, stale=stale,
                   ca_file=tls.ca_file or env.get("CONSUL_CACERT") or None,
                   ca_path=tls.ca_path or env.get("CONSUL_CAPATH") or None,
                   cert_file=tls.client_cert or env.get("CONSUL_CLIENT_CERT") or None,
                   key_file=tls.client_key or env.get("CONSUL_CLIENT_KEY") or None,
                   tls_server_name=tls.tls_server_name or env.get("CONSUL_TLS_SERVER_NAME") or None,
                   insecure_skip_verify=verify.lower() in _FALSE)  # fmt: skip

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context for the options given; None leaves the default (the system's CAs, verified).
        A file that cannot be loaded is a TLSConfigError naming it."""
        if not (self.ca_file or self.ca_path or self.cert_file or self.insecure_skip_verify):
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file, capath=self.ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"Error loading CA {self.ca_file or self.ca_path}: {_why(exc)}") from None
        if self.cert_file:
            if not self.key_file:
                raise TLSConfigError("Error loading client certificate: -client-key (CONSUL_CLIENT_KEY) is "
                                     "required with -client-cert (CONSUL_CLIENT_CERT)")  # fmt: skip
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise TLSConfigError(f"Error loading client certificate {self.cert_file}: {_why(exc)}") from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class TLSFlags:
    """Consul's TLS client flags as a command was given them (None: not given; the environment decides)."""

    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None


_FALSE = ("0", "f", "false")


class TLSConfigError(ValueError):
    """A TLS client option that cannot be used (a file missing or not a certificate); says which."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


class TokenFileError(ValueError):
    """A token file that cannot be read; the text names the file, never its content."""


def read_token_file(path: str) -> str:
    """The token in ``path``, surrounding whitespace stripped ("" for an empty file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokenFileError(f"Error loading token file: open {path}: {reason.lower()}") from None


class APIError(Exception):
    """A call to the agent failed. ``status`` is 0 when no answer came at all."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Consul's ``api.IsRetryableError``: a 5xx answer, or no answer at all."""
        return self.status == 0 or self.status >= 500


class AgentUnavailable(APIError):
    """The agent could not be reached, or the exchange broke off (refused, reset, timed out). ``cause`` is the
    transport's own exception, for callers that word the failure their way."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or f"{type(cause).__name__}: {cause}")
        self.cause = cause


class StatusError(APIError):
    """The agent answered with an error status: Consul's client text, ``Unexpected response code: 500 (...)``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"Unexpected response code: {status} ({text})", status)
        self.text = text


class Response(NamedTuple):
    """One answer: unpacks as ``status, body, headers``."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def index(self) -> int:
        """``X-Consul-Index``, the index a blocking query waits past next (0 when absent or not a number)."""
        try:
            return int(self.headers.get("X-Consul-Index", "0") or 0)
        except ValueError:
            return 0

    @property
    def text(self) -> str:
        """The body as Consul's client quotes it in errors: decoded leniently, whitespace stripped."""
        return self.body.decode(errors="replace").strip()

    def json(self) -> Any:
        """The JSON body; None for an empty one."""
        return json.loads(self.body) if self.body.strip() else None

    def raise_for_status(self) -> Response:
        if self.status >= 400:
            raise StatusError(self.status, self.text)
        return self


class AgentHTTP:
    """The agent's HTTP API over one aiohttp session (opened on first use, so it is built inside the loop).

    ``timeout`` is the session's default: ``total`` bounds a whole exchange, ``connect`` the wait for a
    connection, ``sock_read`` the silence between two reads. A request may give its own ``timeout`` (a total in
    seconds): a blocking query must allow for its ``wait`` and the agent's jitter."""

    def __init__(self, config: HTTPConfig, *, total: float | None = 30.0, connect: float | None = None,
                 sock_read: float | None = None) -> None:  # fmt: skip
        self.config = config
        self.base = config.address.rstrip("/")
        self._timeouts = (total, connect, sock_read)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentHTTP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            import aiohttp

            total, connect, sock_read = self._timeouts
            timeout = aiohttp.ClientTimeout(total=total, connect=connect, sock_connect=connect, sock_read=sock_read)
            headers = {"X-Consul-Token": self.config.token} if self.config.token else {}
            ctx = self.config.ssl_context()
            connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
            session = self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector)
        return session

    def url(self, path: str, params: Mapping[str, Any] | None = None, *, method: str = "GET", index: int = 0,
            wait: str | None = None, consistent: bool = False) -> yarl.URL:  # fmt: skip
        """The URL of a call: ``path`` (escaped) and the query, with the config's ``dc`` and ``stale``.

        Parameters whose value is None are left out; ``""`` is a flag (``?recurse=``); a list repeats the
        parameter once per item, as Consul's client sends ``?node-meta=`` pairs."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if index:
            query["index"] = index
            if wait:
                query["wait"] = wait
        if consistent:
            query["consistent"] = ""
        if self.config.datacenter:
            query.setdefault("dc", self.config.datacenter)
        if self.config.stale and method == "GET":
            query.setdefault("stale", "")
        qs = urllib.parse.urlencode(query, doseq=True)  # a list value repeats the parameter (?node-meta=a&node-meta=b)
        import yarl

        return yarl.URL(f"{self.base}{path}" + (f"?{qs}" if qs else ""), encoded=True)

    async def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                      body: bytes | None = None, *, index: int = 0, wait: str | None = None,
                      consistent: bool = False, timeout: float | None = None,
                      content_type: str | None = None, token: str | None = None) -> Response:  # fmt: skip
        """One call, whatever the status. ``index``/``wait`` make a GET a blocking query (Consul's WaitIndex,
        WaitTime as a Go duration); ``token`` is this call's own ``X-Consul-Token`` (the web UI calls for
        each visitor with the visitor's token; Consul's api.QueryOptions.Token); AgentUnavailable when no
        answer came."""
        session = self._open()
        import aiohttp

        url = self.url(path, params, method=method, index=index, wait=wait, consistent=consistent)
        kwargs: dict[str, Any] = {}
        if self.config.tls_server_name and self.base.startswith("https://"):
            kwargs["server_hostname"] = self.config.tls_server_name
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        headers: dict[str, str] = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if token:
            headers["X-Consul-Token"] = token
        if headers:
            kwargs["headers"] = headers
        try:
            async with session.request(method, url, data=body, **kwargs) as resp:
                return Response(resp.status, await resp.read(), resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise AgentUnavailable(exc) from exc

    async def stream(self, path: str, params: Mapping[str, Any] | None, chunk: Callable[[bytes], None]) -> None:
        """GET a streaming answer (``/v1/agent/monitor``), handing each piece to ``chunk`` as it arrives, until
        the agent ends it. StatusError for an error status, AgentUnavailable when the agent cannot be reached."""
        session = self._open()
        import aiohttp

        try:
            async with session.get(self.url(path, params), timeout=aiohttp.ClientTimeout(total=None)) as resp:
                if resp.status >= 400:
                    raise StatusError(resp.status, (await resp.read()).decode(errors="replace"))
                async for piece in resp.content.iter_any():
                    chunk(piece)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise AgentUnavailable(exc) from exc

    async def checked(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                      body: bytes | None = None, *, index: int = 0, wait: str | None = None,
                      consistent: bool = False, timeout: float | None = None) -> Response:  # fmt: skip
        """``request``, with a status of 400 or more raised as StatusError."""
        resp = await self.request(method, path, params, body, index=index, wait=wait, consistent=consistent,
                                  timeout=timeout)  # fmt: skip
        return resp.raise_for_status()

    async def json(self, method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None,
                   *, timeout: float | None = None) -> Any:  # fmt: skip
        """A JSON call: ``body`` encoded as JSON (when given), the answer decoded (None when empty)."""
        data = json.dumps(body).encode() if body is not None else None
        resp = await self.checked(method, path, params, data, timeout=timeout)
        return resp.json()
