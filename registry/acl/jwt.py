"""The ``jwt`` auth method, the pure part: its config, the verification of a JWT, and the claims it yields.

Consul's ``jwt`` method (agent/consul/authmethod/ssoauth, internal/go-sso/oidcauth ``Config.Validate``,
``verifyVanillaJWT``, ``extractClaims``) checks a bearer JWT against keys it trusts and turns the claims
it names (``ClaimMappings``, ``ListClaimMappings``) into the variables binding rules select on
(``value.<name>``, ``list.<name>``) and interpolate (``${value.<name>}``). This module does the same with
no IO and no clock: the time comes in as ``now`` (seconds since the epoch) and the keys as values --
``JWTValidationPubKeys`` are parsed here once, when the config is; keys behind ``JWKSURL`` are fetched by a
thin shell and handed in already parsed (``parse_jwks``).

Verification follows go-jose as Consul uses it, with ``cryptography`` doing the arithmetic:

* the compact JWS form only; a ``crit`` header is refused (no extension is understood);
* asymmetric algorithms only: RS256/384/512, PS256/384/512, ES256/384/512 (the curve must match) and EdDSA
  (Ed25519); ``none`` and the HMAC family are refused whatever the config says -- with public keys
  configured, accepting HS256 would let anyone sign with the public key as the secret.
  ``JWTSupportedAlgs``, when set, narrows the list further (Consul's validator accepts RS*, ES*, PS*);
* then the claims, exactly as ``verifyVanillaJWT``: at least one of ``iat``/``nbf``/``exp``; a missing
  ``exp`` defaults to the latest of ``iat``/``nbf`` plus ``ExpirationLeeway`` (150 s when 0, none when
  negative), a missing ``nbf`` to ``iat``, or ``exp`` minus ``NotBeforeLeeway``; then ``iss`` against
  ``BoundIssuer``, ``nbf``/``exp``/``iat`` against ``now`` with ``ClockSkewLeeway`` (60 s when 0), and
  ``aud`` against ``BoundAudiences`` strictly (an ``aud`` with no bound audiences is refused).

Error texts are Consul's (and go-jose's, which Consul passes through). Durations in the config are Go
durations: a number of nanoseconds, as Consul's decoder takes them, or a duration string such as ``"90s"``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from registry.acl.errors import ACLObjectError
from registry.gocompat import parse_duration_ns

__all__ = [
    "DEFAULT_ALGS",
    "AuthMethodError",
    "Identity",
    "JWTConfig",
    "JWTValidator",
    "LoginError",
    "PublicKey",
    "VerifyKey",
    "parse_jwks",
    "parse_public_key_pem",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# go-sso's defaults, in seconds (claimDefaultLeeway; go-jose's jwt.DefaultLeeway).
DEFAULT_EXPIRATION_LEEWAY_S = 150.0
DEFAULT_NOT_BEFORE_LEEWAY_S = 150.0
DEFAULT_CLOCK_SKEW_LEEWAY_S = 60.0

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384,
                                                   "512": hashes.SHA512}  # fmt: skip
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "ES256": (ec.SECP256R1, 32),
    "ES384": (ec.SECP384R1, 48),
    "ES512": (ec.SECP521R1, 66),
}
# What Consul's config validator accepts in JWTSupportedAlgs (go-oidc's names).
CONFIGURABLE_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
# What a token may be signed with when JWTSupportedAlgs is empty: every asymmetric algorithm go-jose verifies.
DEFAULT_ALGS = (*CONFIGURABLE_ALGS, "EdDSA")

# The keys of Consul CE's ssoauth.Config; mapstructure matches them case-insensitively.
_KEYS = ("JWTSupportedAlgs", "BoundAudiences", "ClaimMappings", "ListClaimMappings", "OIDCDiscoveryURL",
         "OIDCDiscoveryCACert", "JWKSURL", "JWKSCACert", "JWTValidationPubKeys", "BoundIssuer",
         "ExpirationLeeway", "NotBeforeLeeway", "ClockSkewLeeway")  # fmt: skip
_KEY_BY_LOWER = {k.lower(): k for k in _KEYS}
_MAX_TOKEN_BYTES = 64 * 1024
# http(s) with a host, or a local file (the shell reads it): JWKS from a URL or from a file.
_JWKS_URL = re.compile(r"(https?://[^/?#\s]+(?:[/?#]\S*)?|file:///\S+)")


class AuthMethodError(ACLObjectError):
    """An auth method Consul would refuse to store; ``str()`` is Consul's whole answer (HTTP 400)."""


class LoginError(ValueError):
    """A bearer token the method does not accept; ``str()`` is Consul's text. It never quotes the token."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key a token may be signed with; ``kid`` is the JWKS key ID ("" for configured PEM keys)."""

    key: PublicKey
    kid: str = ""


def parse_public_key_pem(data: str) -> PublicKey:
    """An RSA, ECDSA or Ed25519 public key from a PEM ``PUBLIC KEY`` or a certificate (go-sso's
    ``parsePublicKeyPEM``); ValueError with its text otherwise."""
    raw = data.encode()
    key: object = None
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = x509.load_pem_x509_certificate(raw).public_key()
        except (ValueError, UnsupportedAlgorithm):
            key = None
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key
    raise ValueError("data does not contain any valid RSA, ECDSA, or ED25519 public keys")


def _b64url(text: str) -> bytes:
    """Base64url without padding (RFC 7515 section 2); padding or other characters are refused."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("illegal base64 data")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwk_int(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"missing or invalid JWK member {name!r}")
    return int.from_bytes(_b64url(value), "big")


def _jwk_key(jwk: Mapping[str, Any]) -> PublicKey | None:
    """One JWK as a public key; None for a key this method cannot use (symmetric, private-only, other use)."""
    if jwk.get("use", "sig") != "sig":
        return None
    kty = jwk.get("kty")
    if kty == "RSA":
        return rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
    if kty == "EC":
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        curve = curves.get(str(jwk.get("crv")))
        if curve is None:
            return None
        return ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), curve).public_key()
    if kty == "OKP" and jwk.get("crv") == "Ed25519":
        x = jwk.get("x")
        if not isinstance(x, str):
            raise ValueError("missing or invalid JWK member 'x'")
        return ed25519.Ed25519PublicKey.from_public_bytes(_b64url(x))
    return None


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> tuple[VerifyKey, ...]:
    """The signing keys of a JWKS document (RFC 7517 ``{"keys": [...]}``). Keys of unknown types are
    skipped, as go-jose skips them; a document that is not a key set raises ValueError (whose text never
    quotes the document)."""
    doc: Any = document
    if isinstance(document, bytes | str):
        try:
            doc = json.loads(document)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("failed to decode keys: the document is not JSON") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError("failed to decode keys: the document has no \"keys\" list")
    out: list[VerifyKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, Mapping):
            raise ValueError("failed to decode keys: a key is not an object")
        try:
            key = _jwk_key(jwk)
        except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
            raise ValueError(f"failed to decode keys: {exc}") from None
        if key is not None:
            kid = jwk.get("kid")
            out.append(VerifyKey(key, kid if isinstance(kid, str) else ""))
    return tuple(out)


def _seconds(value: Any, key: str) -> float:
    """A Go ``time.Duration`` as Consul's weakly typed decoder takes it: nanoseconds as a number, or a
    string (a duration such as "90s", or plain nanoseconds)."""
    if isinstance(value, bool) or value is None:
        raise AuthMethodError(f"Invalid Auth Method: error decoding config: '{key}' expected a duration")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text) / 1e9
        try:
            return parse_duration_ns(text) / 1e9
        except ValueError as exc:
            raise AuthMethodError(f"Invalid Auth Method: error decoding config: '{key}' {exc}") from None
    raise AuthMethodError(f"Invalid Auth Method: error decoding config: '{key}' expected a duration")


def _strings(value: Any, key: str) -> tuple[str, ...]:
    """A list of strings; a single string is a list of one (mapstructure's weak decoding)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AuthMethodError(f"Invalid Auth Method: error decoding config: '{key}' expected a list of strings")


def _string(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AuthMethodError(f"Invalid Auth Method: error decoding config: '{key}' expected a string")
    return value


def _mapping(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):  # fmt: skip
        raise AuthMethodError(
            f"Invalid Auth Method: error decoding config: '{key}' expected a map of strings to strings"
        )
    targets: set[str] = set()
    for target in value.values():
        if target in targets:
            raise AuthMethodError(f"Invalid Auth Method: {key} contains multiple mappings for key \"{target}\"")
        targets.add(target)
    return tuple(value.items())


def _leeway(configured: float, default: float) -> float:
    """go-sso's rule for each leeway: 0 means the default, a negative value means none."""
    if configured < 0:
        return 0.0
    return default if configured == 0 else configured


@dataclass(frozen=True, slots=True)
class JWTConfig:
    """A validated ``jwt`` auth method config. Build it with ``from_wire``; keys are parsed there, once."""

    static_keys: tuple[VerifyKey, ...] = ()
    jwks_url: str = ""
    jwks_ca_cert: str = ""
    bound_audiences: tuple[str, ...] = ()
    bound_issuer: str = ""
    expiration_leeway_s: float = 0.0
    not_before_leeway_s: float = 0.0
    clock_skew_leeway_s: float = 0.0
    claim_mappings: tuple[tuple[str, str], ...] = ()
    list_claim_mappings: tuple[tuple[str, str], ...] = ()
    supported_algs: tuple[str, ...] = ()
    wire: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_wire(cls, config: Mapping[str, Any] | None) -> JWTConfig:
        """Check ``Config`` of a ``jwt`` auth method as Consul's ``oidcauth.Config.Validate`` does, with its
        texts (each prefixed ``Invalid Auth Method: `` as the ACL endpoint prefixes them)."""
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise AuthMethodError("Invalid Auth Method: error decoding config: expected a map")
        values: dict[str, Any] = {}
        unknown = []
        for key, value in config.items():
            canon = _KEY_BY_LOWER.get(str(key).lower())
            if canon is None:
                unknown.append(str(key))
            else:
                values[canon] = value
        if unknown:
            raise AuthMethodError(
                "Invalid Auth Method: error decoding config: 1 error(s) decoding:\n\n"
                f"* '' has invalid keys: {', '.join(sorted(unknown))}"
            )
        pem_keys = _strings(values.get("JWTValidationPubKeys"), "JWTValidationPubKeys")
        jwks_url = _string(values.get("JWKSURL"), "JWKSURL")
        jwks_ca = _string(values.get("JWKSCACert"), "JWKSCACert")
        discovery = _string(values.get("OIDCDiscoveryURL"), "OIDCDiscoveryURL")
        discovery_ca = _string(values.get("OIDCDiscoveryCACert"), "OIDCDiscoveryCACert")
        if sum(1 for v in (discovery, pem_keys, jwks_url) if v) != 1:
            raise AuthMethodError(
                "Invalid Auth Method: exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' "
                'must be set for type "jwt"'
            )
        if discovery:
            raise AuthMethodError(
                "Invalid Auth Method: 'OIDCDiscoveryURL' is not supported by this server: set "
                "'JWTValidationPubKeys' or 'JWKSURL' instead"
            )
        if discovery_ca:
            raise AuthMethodError("Invalid Auth Method: 'OIDCDiscoveryCACert' should not be set unless "
                                  "'OIDCDiscoveryURL' is set")  # fmt: skip
        if jwks_url:
            if _JWKS_URL.fullmatch(jwks_url) is None:
                raise AuthMethodError(
                    "Invalid Auth Method: error checking JWKSURL: it must be an http://, https:// or file:// URL"
                )
            if jwks_ca:
                try:
                    x509.load_pem_x509_certificates(jwks_ca.encode())
                except ValueError:
                    raise AuthMethodError("Invalid Auth Method: error checking JWKSCACert: could not parse CA PEM "
                                          "value successfully") from None  # fmt: skip
        elif jwks_ca:
            raise AuthMethodError("Invalid Auth Method: 'JWKSCACert' should not be set unless 'JWKSURL' is set")
        static = []
        for i, pem in enumerate(pem_keys):
            try:
                static.append(VerifyKey(parse_public_key_pem(pem)))
            except ValueError as exc:
                raise AuthMethodError(
                    f"Invalid Auth Method: error parsing public key JWTValidationPubKeys[{i}]: {exc}"
                ) from None
        algs = _strings(values.get("JWTSupportedAlgs"), "JWTSupportedAlgs")
        for alg in algs:
            if alg not in CONFIGURABLE_ALGS:
                raise AuthMethodError(f"Invalid Auth Method: Invalid supported algorithm: {alg}")
        return cls(
            static_keys=tuple(static),
            jwks_url=jwks_url,
            jwks_ca_cert=jwks_ca,
            bound_audiences=_strings(values.get("BoundAudiences"), "BoundAudiences"),
            bound_issuer=_string(values.get("BoundIssuer"), "BoundIssuer"),
            expiration_leeway_s=_seconds(values.get("ExpirationLeeway", 0), "ExpirationLeeway"),
            not_before_leeway_s=_seconds(values.get("NotBeforeLeeway", 0), "NotBeforeLeeway"),
            clock_skew_leeway_s=_seconds(values.get("ClockSkewLeeway", 0), "ClockSkewLeeway"),
            claim_mappings=_mapping(values.get("ClaimMappings"), "ClaimMappings"),
            list_claim_mappings=_mapping(values.get("ListClaimMappings"), "ListClaimMappings"),
            supported_algs=algs,
            wire=dict(config),
        )

    @property
    def allowed_algs(self) -> tuple[str, ...]:
        return self.supported_algs or DEFAULT_ALGS


@dataclass(frozen=True, slots=True)
class Identity:
    """What a login proves: ``values`` (from ClaimMappings) and ``lists`` (from ListClaimMappings).

    Binding rules select on ``value.<name>`` and ``list.<name>`` (Consul's ``fieldDetails`` with bexpr
    tags ``value``/``list``) and interpolate ``${value.<name>}`` (its ``ProjectedVars``)."""

    values: Mapping[str, str]
    lists: Mapping[str, tuple[str, ...]]

    def selectable(self) -> dict[str, Any]:
        return {"value": dict(self.values), "list": {k: list(v) for k, v in self.lists.items()}}

    def projected_vars(self) -> dict[str, str]:
        return {f"value.{k}": v for k, v in self.values.items()}


def _verify(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``key``'s signature of ``signing_input`` under JWS algorithm ``alg``."""
    try:
        if alg.startswith(("RS", "PS")) and isinstance(key, rsa.RSAPublicKey):
            digest = _HASHES[alg[2:]]()
            pad: padding.AsymmetricPadding
            if alg[0] == "R":
                pad = padding.PKCS1v15()
            else:
                pad = padding.PSS(mgf=padding.MGF1(_HASHES[alg[2:]]()), salt_length=padding.PSS.AUTO)
            key.verify(signature, signing_input, pad, digest)
            return True
        if alg in _CURVES and isinstance(key, ec.EllipticCurvePublicKey):
            curve, size = _CURVES[alg]
            if not isinstance(key.curve, curve) or len(signature) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big"))
            key.verify(der, signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
            return True
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)
            return True
    except InvalidSignature:
        return False
    return False


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    """A NumericDate claim in whole seconds, 0 when absent (go-jose truncates fractions)."""
    value = claims.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise LoginError(f"failed to unmarshal claims: json: cannot unmarshal {name} into a NumericDate")
    try:
        return int(value)
    except OverflowError:
        raise LoginError(f"failed to unmarshal claims: {name} is out of range") from None


def _audience(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        return ()
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise LoginError("failed to unmarshal claims: go-jose/go-jose/jwt: expected string or array value to "
                     "unmarshal to Audience")  # fmt: skip


def _pointer(claims: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup (``/a/b/0``), None when it leads nowhere (pointerstructure.Get)."""
    node = claims
    for raw in pointer[1:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            if part not in node:
                return None
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return None
            node = node[int(part)]
        else:
            return None
    return node


def _claim(claims: Mapping[str, Any], source: str) -> Any:
    return _pointer(claims, source) if source.startswith("/") else claims.get(source)


def _go_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list):
        return "[]interface {}"
    return "interface {}"


def _stringify(value: Any) -> str | None:
    """go-sso's ``stringifyMetadataValue``: strings as they are, booleans as true/false, numbers truncated
    to an integer; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return str(int(value))
    return None


def _verify_signature(token: str, config: JWTConfig, keys: Sequence[VerifyKey]) -> dict[str, Any]:
    """The claims of ``token`` once its signature checks out with one of ``keys``."""
    static = bool(config.static_keys)
    if len(token) > _MAX_TOKEN_BYTES:
        raise LoginError("error parsing token: go-jose/go-jose: token is too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise LoginError("error parsing token: go-jose/go-jose: compact JWS format must have three parts")
    try:
        header = json.loads(_b64url(parts[0]))
        signature = _b64url(parts[2])
        payload = _b64url(parts[1])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise LoginError("error parsing token: go-jose/go-jose: invalid compact serialization") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise LoginError("error parsing token: go-jose/go-jose: invalid compact serialization")
    alg = header["alg"]
    refused = "no known key successfully validated the token signature" if static else \
        "error verifying token: failed to verify id token signature"  # fmt: skip
    if "crit" in header or alg not in config.allowed_algs:
        raise LoginError(refused)
    kid = header.get("kid")
    candidates = [k for k in keys if not static and isinstance(kid, str) and kid and k.kid == kid] or list(keys)
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not any(_verify(alg, k.key, signing_input, signature) for k in candidates):
        raise LoginError(refused)
    try:
        claims = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoginError("failed to unmarshal claims: the payload is not JSON") from None
    if not isinstance(claims, dict):
        raise LoginError("failed to unmarshal claims: the payload is not a JSON object")
    return claims


def _check_claims(claims: Mapping[str, Any], config: JWTConfig, now: float) -> None:
    """go-sso's ``verifyVanillaJWT`` after the signature: times, issuer, audience."""
    iat = _numeric_date(claims, "iat")
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    audience = _audience(claims)
    issuer = claims.get("iss", "")
    if iat == 0 and exp == 0 and nbf == 0:
        raise LoginError("no issue time, notbefore, or expiration time encoded in token")
    if exp == 0:
        exp = max(iat, nbf) + int(_leeway(config.expiration_leeway_s, DEFAULT_EXPIRATION_LEEWAY_S))
    if nbf == 0:
        nbf = iat if iat != 0 else exp - int(_leeway(config.not_before_leeway_s, DEFAULT_NOT_BEFORE_LEEWAY_S))
    skew = _leeway(config.clock_skew_leeway_s, DEFAULT_CLOCK_SKEW_LEEWAY_S)
    if config.bound_issuer and config.bound_issuer != issuer:
        raise LoginError("error validating claims: go-jose/go-jose/jwt: validation failed, invalid issuer claim (iss)")
    if now + skew < nbf:
        raise LoginError("error validating claims: go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)")
    if now - skew > exp:
        raise LoginError("error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)")
    if now + skew < iat:
        raise LoginError("error validating claims: go-jose/go-jose/jwt: validation field, token issued in the "
                         "future (iat)")  # fmt: skip
    if not config.bound_audiences:
        if audience:
            raise LoginError("error validating claims: audience claim found in JWT but no audiences are bound")
    elif not set(config.bound_audiences) & set(audience):
        raise LoginError("error validating claims: aud claim does not match any bound audience")


class JWTValidator:
    """One ``jwt`` auth method, ready to check logins (Consul's ``ssoauth.Validator``)."""

    def __init__(self, config: JWTConfig) -> None:
        self.config = config

    @property
    def needs_jwks(self) -> bool:
        """True when the keys live behind ``JWKSURL``: the shell fetches them and passes them in."""
        return not self.config.static_keys

    def blank_identity(self) -> Identity:
        """Every mapped name present and empty, so ``value.x == ""`` selects and ``${value.x}`` interpolates
        even when a token lacks the claim (Consul's ``NewIdentity``)."""
        return Identity({t: "" for _, t in self.config.claim_mappings},
                        {t: () for _, t in self.config.list_claim_mappings})  # fmt: skip

    def claims(self, token: str, *, now: float, jwks: Sequence[VerifyKey] = ()) -> dict[str, Any]:
        """All the claims of a valid ``token`` at ``now`` (seconds since the epoch); LoginError otherwise."""
        if token == "":
            raise LoginError("missing jwt")
        keys = self.config.static_keys or tuple(jwks)
        claims = _verify_signature(token, self.config, keys)
        _check_claims(claims, self.config, now)
        return claims

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """The mapped claims of a verified token (go-sso's ``extractClaims``)."""
        blank = self.blank_identity()
        values = dict(blank.values)
        for source, target in self.config.claim_mappings:
            raw = _claim(claims, source)
            if raw is None:
                continue
            text = _stringify(raw)
            if text is None:
                raise LoginError(f"error converting claim '{source}' to string from unknown type {_go_type(raw)}")
            values[target] = text
        lists = dict(blank.lists)
        for source, target in self.config.list_claim_mappings:
            raw = _claim(claims, source)
            if raw is None:
                continue
            items = raw if isinstance(raw, list) else [raw]
            if isinstance(raw, Mapping):
                raise LoginError(f'"{source}" list claim could not be converted to string list')
            out = []
            for item in items:
                text = _stringify(item)
                if text is None:
                    raise LoginError(f'value in "{source}" list claim could not be parsed as string')
                if text:
                    out.append(text)
            lists[target] = tuple(out)
        return Identity(values, lists)

    def validate_login(self, token: str, *, now: float, jwks: Sequence[VerifyKey] = ()) -> Identity:
        """``claims`` then ``identity``: what binding rules see of a valid login token."""
        return self.identity(self.claims(token, now=now, jwks=jwks))
