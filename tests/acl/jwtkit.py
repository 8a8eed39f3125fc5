"""Real signed JWTs for tests: keys generated with ``cryptography``, tokens signed as an identity provider
would sign them (compact JWS, base64url without padding, raw r||s ECDSA signatures)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_SIZE = {"ES256": 32, "ES384": 48, "ES512": 66}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg: str) -> PrivateKey:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "ES512":
        return ec.generate_private_key(ec.SECP521R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_pem(key: PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip


def sign(key: PrivateKey | bytes | None, alg: str, claims: dict[str, Any], *, header: dict[str, Any] | None = None) -> str:
    """A compact JWS of ``claims``. ``key`` None with alg "none" gives an unsigned token; bytes an HMAC."""
    hdr = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = f"{b64(json.dumps(hdr).encode())}.{b64(json.dumps(claims).encode())}".encode()
    if alg == "none":
        sig = b""
    elif alg.startswith("HS"):
        import hmac

        assert isinstance(key, bytes)
        sig = hmac.new(key, signing_input, {"256": "sha256", "384": "sha384", "512": "sha512"}[alg[2:]]).digest()
    elif alg.startswith("RS"):
        assert isinstance(key, rsa.RSAPrivateKey)
        sig = key.sign(signing_input, padding.PKCS1v15(), _HASH[alg[2:]]())
    elif alg.startswith("PS"):
        assert isinstance(key, rsa.RSAPrivateKey)
        h = _HASH[alg[2:]]()
        sig = key.sign(signing_input, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    elif alg.startswith("ES"):
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(_HASH[alg[2:]]())))
        size = _EC_SIZE[alg]
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        sig = key.sign(signing_input)
    else:
        raise ValueError(alg)
    return f"{signing_input.decode()}.{b64(sig)}"


def jwk(key: PrivateKey, kid: str) -> dict[str, str]:
    """The public JWK of ``key``, as an identity provider publishes it at its JWKS URL."""
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "use": "sig", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}  # fmt: skip
    if isinstance(pub, ec.EllipticCurvePublicKey):
        n2 = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[pub.curve.name]
        return {"kty": "EC", "kid": kid, "crv": crv, "x": b64(n2.x.to_bytes(size, "big")),
                "y": b64(n2.y.to_bytes(size, "big"))}  # fmt: skip
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(raw)}
