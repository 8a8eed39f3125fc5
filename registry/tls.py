"""TLS for the cluster itself: ssl contexts for the HTTPS listener and the server RPC / Raft port.

Reads Consul's two spellings of the settings and merges them (later wins):

1. the old flat top-level keys: ``ca_file``, ``ca_path``, ``cert_file``, ``key_file``,
   ``verify_incoming`` (+ ``verify_incoming_rpc`` / ``verify_incoming_https``), ``verify_outgoing``,
   ``verify_server_hostname``, ``tls_min_version``;
2. the ``tls`` block: ``tls { defaults { ... } internal_rpc { ... } https { ... } }``
   (``verify_server_hostname`` belongs to ``internal_rpc``).

Lessons from Consul's CVEs are rules here, not advice: ``verify_server_hostname`` implies
``verify_outgoing`` (CVE-2018-19653: it once silently did not, leaving RPC in plaintext), settings that
cannot work together are refused at startup, and a Raft peer must present a certificate for
``server.<datacenter>.<domain>`` when hostname verification is on, so a client agent's certificate,
although signed by the same CA, can never act as a server (CVE-2021-37219).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from registry.config import Config, ConfigError

KIND_RAFT = b"R"
FLAT_KEYS = (
    "ca_file", "ca_path", "cert_file", "key_file", "verify_incoming", "verify_incoming_rpc",
    "verify_incoming_https", "verify_outgoing", "verify_server_hostname", "tls_min_version",
)  # fmt: skip
_BOOL_KEYS = ("verify_incoming", "verify_outgoing", "verify_server_hostname")
_STR_KEYS = ("ca_file", "ca_path", "cert_file", "key_file", "tls_min_version")
_VERSIONS = {
    "tls10": ssl.TLSVersion.TLSv1, "tlsv1_0": ssl.TLSVersion.TLSv1,
    "tls11": ssl.TLSVersion.TLSv1_1, "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tls12": ssl.TLSVersion.TLSv1_2, "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tls13": ssl.TLSVersion.TLSv1_3, "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}  # fmt: skip

PeerCheck = Callable[[Any, bytes], bool]


@dataclass(frozen=True)
class ListenerTLS:
    """The settings that apply to one kind of listener (https or internal_rpc)."""

    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False
    tls_min_version: str = "TLSv1_2"

    @property
    def has_cert(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def has_ca(self) -> bool:
        return bool(self.ca_file or self.ca_path)


@dataclass(frozen=True)
class TLSSettings:
    https: ListenerTLS
    internal_rpc: ListenerTLS
    datacenter: str
    domain: str

    @property
    def server_name(self) -> str:
        """The name every server certificate must carry: ``server.<dc>.<domain>``."""
        return f"server.{self.datacenter}.{self.domain}"


def _read(block: Any, where: str) -> dict[str, Any]:
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where} must be a map")
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in _BOOL_KEYS or key in ("verify_incoming_rpc", "verify_incoming_https"):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
            out[key] = value
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
            out[key] = value
    return out


def load_tls_settings(cfg: Config) -> TLSSettings:
    """Merge the flat keys and the ``tls`` block into per-listener settings; raise ConfigError for
    malformed values or combinations that cannot work."""
    flat = _read({k: cfg.extra[k] for k in FLAT_KEYS if k in cfg.extra}, "config")
    block = cfg.tls or {}
    if not isinstance(block, Mapping):
        raise ConfigError("tls must be a map")
    defaults = _read(block.get("defaults"), "tls.defaults")
    rpc_over = _read(block.get("internal_rpc"), "tls.internal_rpc")
    https_over = _read(block.get("https"), "tls.https")

    base = {k: v for k, v in flat.items() if k in _BOOL_KEYS or k in _STR_KEYS}
    base.update(defaults)
    rpc = dict(base)
    https = {k: v for k, v in base.items() if k != "verify_server_hostname"}
    if "verify_incoming_rpc" in flat:
        rpc["verify_incoming"] = flat["verify_incoming_rpc"]
    if "verify_incoming_https" in flat:
        https["verify_incoming"] = flat["verify_incoming_https"]
    rpc.update({k: v for k, v in rpc_over.items() if k in _BOOL_KEYS or k in _STR_KEYS})
    https.update({k: v for k, v in https_over.items() if k in _BOOL_KEYS or k in _STR_KEYS})
    https.pop("verify_server_hostname", None)

    rpc_tls = _finish(ListenerTLS(**{k: v for k, v in rpc.items() if k in ListenerTLS.__dataclass_fields__}), "internal_rpc")
    https_tls = _finish(ListenerTLS(**{k: v for k, v in https.items() if k in ListenerTLS.__dataclass_fields__}), "https")
    return TLSSettings(https_tls, rpc_tls, cfg.datacenter, cfg.domain.rstrip(".") or "consul")


def _finish(s: ListenerTLS, where: str) -> ListenerTLS:
    if s.verify_server_hostname and not s.verify_outgoing:
        # Consul documents verify_server_hostname as implying verify_outgoing; make it so.
        s = replace(s, verify_outgoing=True)
    if bool(s.cert_file) != bool(s.key_file):
        raise ConfigError(f"tls ({where}): cert_file and key_file must be set together")
    if s.verify_incoming and not (s.has_ca and s.has_cert):
        raise ConfigError(f"tls ({where}): verify_incoming needs ca_file (or ca_path), cert_file and key_file")
    if s.verify_outgoing and not s.has_ca:
        raise ConfigError(f"tls ({where}): verify_outgoing needs ca_file (or ca_path) to verify servers against")
    if s.tls_min_version.lower() not in _VERSIONS:
        raise ConfigError(f"tls ({where}): tls_min_version {s.tls_min_version!r} is not one of TLSv1_2, TLSv1_3")
    return s


def _base_context(side: ssl._SSLMethod, s: ListenerTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = max(_VERSIONS[s.tls_min_version.lower()], ssl.TLSVersion.TLSv1_2)
    try:
        if s.has_cert:
            ctx.load_cert_chain(s.cert_file, s.key_file)
        if s.has_ca:
            ctx.load_verify_locations(cafile=s.ca_file or None, capath=s.ca_path or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificates: {exc}") from exc
    return ctx


def https_server_context(settings: TLSSettings) -> ssl.SSLContext:
    """The HTTPS listener's context; client certificates are required with verify_incoming."""
    s = settings.https
    if not s.has_cert:
        raise ConfigError("ports.https is set but no cert_file / key_file is configured")
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, s)
    if s.verify_incoming:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif s.has_ca:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def peer_is_server(cert_der: bytes | None, server_name: str) -> bool:
    """True if the (already chain-verified) certificate names ``server_name`` in its DNS SANs."""
    if not cert_der:
        return False
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    want = server_name.lower()
    return any(n.lower() == want for n in names.get_values_for_type(x509.DNSName))


def make_peer_check(settings: TLSSettings) -> PeerCheck:
    """``peer_check(ssl_object, kind_byte) -> bool`` for the server port: with verify_server_hostname,
    Raft traffic (kind b"R") is accepted only from a peer whose certificate is for
    ``server.<dc>.<domain>``; plaintext Raft is refused. RPC traffic (client agents) passes here and is
    authorised per method."""
    s = settings.internal_rpc
    server_name = settings.server_name

    def peer_check(ssl_object: Any, kind: bytes) -> bool:
        if kind != KIND_RAFT or not s.verify_server_hostname:
            return True
        return _presents_server_cert(ssl_object, server_name)

    return peer_check


def server_authorizer(cfg: Config | TLSSettings) -> Callable[[Any], bool] | None:
    """``is_server(ssl_object) -> bool`` for RPC connections to the server port, or None when the port
    does not verify incoming certificates (no TLS, or ``verify_incoming`` off): then nothing tells a
    server's connection from a client agent's, every caller is trusted as a server (Consul's
    ``AuthorizeServerConn`` returns at once without ``VerifyIncomingRPC``) and only the secure defaults
    (``tls.internal_rpc.verify_incoming``, refused without ``-insecure``) make the roles real.

    With ``verify_incoming`` every connection presented a certificate our CA signed; it is a server's only
    when that certificate names ``server.<dc>.<domain>`` (CVE-2021-37219: a client certificate from the same
    CA must not reach server-only methods)."""
    settings = cfg if isinstance(cfg, TLSSettings) else load_tls_settings(cfg)
    s = settings.internal_rpc
    if not s.has_cert or not s.verify_incoming:
        return None
    server_name = settings.server_name

    def is_server(ssl_object: Any) -> bool:
        return _presents_server_cert(ssl_object, server_name)

    return is_server


def _presents_server_cert(ssl_object: Any, server_name: str) -> bool:
    """Whether a TLS connection's peer presented a certificate naming ``server_name``."""
    if ssl_object is None:
        return False
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return False
    return peer_is_server(der, server_name)


def rpc_contexts(cfg: Config | TLSSettings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None, str | None,
                                                     PeerCheck | None]:  # fmt: skip
    """(server_ctx, client_ctx, server_hostname, peer_check) for the server RPC/Raft port, or four
    Nones when internal RPC TLS is not configured (no cert_file / key_file).

    The server side asks for a client certificate (required with verify_incoming, optional but
    verified otherwise, so peer_check can see it). The client side presents its own certificate,
    verifies the server's chain with verify_outgoing and its name ``server.<dc>.<domain>`` with
    verify_server_hostname."""
    settings = cfg if isinstance(cfg, TLSSettings) else load_tls_settings(cfg)
    s = settings.internal_rpc
    if not s.has_cert:
        if s.verify_server_hostname:
            raise ConfigError("tls (internal_rpc): verify_server_hostname needs cert_file and key_file")
        return None, None, None, None
    server = _base_context(ssl.PROTOCOL_TLS_SERVER, s)
    if s.verify_incoming:
        server.verify_mode = ssl.CERT_REQUIRED
    elif s.has_ca:
        server.verify_mode = ssl.CERT_OPTIONAL
    client = _base_context(ssl.PROTOCOL_TLS_CLIENT, s)
    if s.verify_outgoing:
        client.verify_mode = ssl.CERT_REQUIRED
        client.check_hostname = s.verify_server_hostname
    else:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    return server, client, settings.server_name, make_peer_check(settings)


class ReplaceableServerContext:
    """A server-side context handed once to a listener (the HTTPS port, the server RPC port) whose
    certificates a config reload replaces for the connections that come after, as Consul's reload updates
    its TLS configurator (certificate, key and CAs; whether TLS is on, and the verify_* settings, take a
    restart, as in Consul). The listener's context selects the newest one during each handshake
    (``sni_callback``, which OpenSSL calls for every ClientHello, with or without SNI)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.front = ctx
        self.current = ctx
        ctx.sni_callback = self._select

    def _select(self, ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.current
        if current is not self.front:
            ssl_object.context = current

    def replace(self, ctx: ssl.SSLContext) -> None:
        self.current = ctx


def reload_client_context(ctx: ssl.SSLContext, settings: TLSSettings) -> None:
    """Load a reloaded config's certificate, key and CAs into the context outgoing RPC connections are
    dialled with (shared by every link, read at each dial): new connections present the new certificate
    and trust the new CAs. OpenSSL has no way to forget a CA already loaded: a CA dropped from the config
    stays trusted for outgoing connections until the agent restarts."""
    s = settings.internal_rpc
    try:
        if s.has_cert:
            ctx.load_cert_chain(s.cert_file, s.key_file)
        if s.has_ca:
            ctx.load_verify_locations(cafile=s.ca_file or None, capath=s.ca_path or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load certificates: {exc}") from exc
