"""The ``jwt`` auth method with real signed tokens: config checks, signatures, times, issuer, audience and
claim mappings, each with Consul's texts."""

from __future__ import annotations

import json

import pytest

from registry.acl.jwt import AuthMethodError, JWTConfig, JWTValidator, LoginError, parse_jwks
from tests.acl.jwtkit import b64, jwk, new_key, public_pem, sign

NOW = 1_800_000_000.0
RSA = new_key("RS256")
EC = new_key("ES256")


def validator(key=RSA, **config) -> JWTValidator:
    return JWTValidator(JWTConfig.from_wire({"JWTValidationPubKeys": [public_pem(key)], **config}))


def claims(**extra) -> dict:
    return {"iss": "https://idp.example", "sub": "job-1", "iat": NOW - 10, "exp": NOW + 300, **extra}


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "Invalid Auth Method: exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be "
             'set for type "jwt"'),
        ({"JWTValidationPubKeys": ["x"], "JWKSURL": "https://idp.example/jwks"},
         "Invalid Auth Method: exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be "
         'set for type "jwt"'),
        ({"OIDCDiscoveryURL": "https://idp.example"}, "Invalid Auth Method: 'OIDCDiscoveryURL' is not supported"),
        ({"JWTValidationPubKeys": ["not a key"]},
         "Invalid Auth Method: error parsing public key JWTValidationPubKeys[0]: data does not contain any valid "
         "RSA, ECDSA, or ED25519 public keys"),
        ({"JWKSURL": "https://idp.example/jwks", "JWKSCACert": "junk"},
         "Invalid Auth Method: error checking JWKSCACert: could not parse CA PEM value successfully"),
        ({"JWKSURL": "ftp://idp.example/jwks"}, "Invalid Auth Method: error checking JWKSURL"),
        ({"JWKSURL": "https://idp.example/jwks", "JWTSupportedAlgs": ["HS256"]},
         "Invalid Auth Method: Invalid supported algorithm: HS256"),
        ({"JWKSURL": "https://idp.example/jwks", "JWTSupportedAlgs": ["none"]},
         "Invalid Auth Method: Invalid supported algorithm: none"),
        ({"JWKSURL": "https://idp.example/jwks", "ClaimMappings": {"a": "x", "b": "x"}},
         'Invalid Auth Method: ClaimMappings contains multiple mappings for key "x"'),
        ({"JWKSURL": "https://idp.example/jwks", "ListClaimMappings": {"a": "x", "b": "x"}},
         'Invalid Auth Method: ListClaimMappings contains multiple mappings for key "x"'),
        ({"JWKSURL": "https://idp.example/jwks", "Bogus": 1},
         "Invalid Auth Method: error decoding config: 1 error(s) decoding:\n\n* '' has invalid keys: Bogus"),
        ({"JWKSURL": "https://idp.example/jwks", "ExpirationLeeway": "soon"},
         "Invalid Auth Method: error decoding config: 'ExpirationLeeway' time: invalid duration \"soon\""),
        ({"JWTValidationPubKeys": ["x"], "JWKSCACert": "y"},
         "Invalid Auth Method: 'JWKSCACert' should not be set unless 'JWKSURL' is set"),
    ],
)
def test_config_is_checked_with_consuls_texts(config: dict, message: str) -> None:
    with pytest.raises(AuthMethodError) as err:
        JWTConfig.from_wire(config)
    assert str(err.value).startswith(message)


def test_config_keys_match_case_insensitively_and_durations_take_both_forms() -> None:
    cfg = JWTConfig.from_wire({"jwksurl": "https://idp.example/jwks", "ExpirationLeeway": "90s",
                               "NotBeforeLeeway": 30_000_000_000, "ClockSkewLeeway": -1,
                               "BoundAudiences": "consul"})  # fmt: skip
    assert (cfg.jwks_url, cfg.expiration_leeway_s, cfg.not_before_leeway_s, cfg.clock_skew_leeway_s) == (
        "https://idp.example/jwks", 90.0, 30.0, -1e-9)
    assert cfg.bound_audiences == ("consul",)


def test_a_certificate_serves_as_a_key() -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(EC.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
            .sign(EC, hashes.SHA256()))  # fmt: skip
    v = JWTValidator(JWTConfig.from_wire({"JWTValidationPubKeys": [cert.public_bytes(serialization.Encoding.PEM).decode()]}))
    assert v.claims(sign(EC, "ES256", claims()), now=NOW)["sub"] == "job-1"


# ------------------------------------------------------------------ signatures


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                                 "EdDSA"])  # fmt: skip
def test_every_asymmetric_algorithm_verifies(alg: str) -> None:
    key = RSA if alg.startswith(("RS", "PS")) else EC if alg == "ES256" else new_key(alg)
    assert validator(key).claims(sign(key, alg, claims()), now=NOW)["sub"] == "job-1"


def test_a_token_signed_by_another_key_is_refused() -> None:
    with pytest.raises(LoginError, match="^no known key successfully validated the token signature$"):
        validator().claims(sign(new_key("RS256"), "RS256", claims()), now=NOW)


def test_any_configured_key_may_have_signed() -> None:
    other = new_key("ES256")
    v = JWTValidator(JWTConfig.from_wire({"JWTValidationPubKeys": [public_pem(RSA), public_pem(other)]}))
    assert v.claims(sign(other, "ES256", claims()), now=NOW)


def test_alg_none_is_refused() -> None:
    token = sign(None, "none", claims())
    with pytest.raises(LoginError, match="no known key successfully validated"):
        validator().claims(token, now=NOW)
    with pytest.raises(LoginError, match="no known key successfully validated"):
        validator().claims(token + "AAAA", now=NOW)


def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    """The classic key-confusion attack: HS256 keyed with the RSA public key the server trusts."""
    token = sign(public_pem(RSA).encode(), "HS256", claims())
    with pytest.raises(LoginError, match="no known key successfully validated"):
        validator().claims(token, now=NOW)


def test_a_tampered_payload_is_refused() -> None:
    header, _, sig = sign(RSA, "RS256", claims(sub="job-1")).split(".")
    forged = f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{sig}"
    with pytest.raises(LoginError, match="no known key successfully validated"):
        validator().claims(forged, now=NOW)


def test_the_curve_must_match_the_algorithm() -> None:
    p384 = new_key("ES384")
    token = sign(p384, "ES384", claims())
    header = b64(json.dumps({"alg": "ES256"}).encode())
    relabelled = ".".join([header, *token.split(".")[1:]])
    with pytest.raises(LoginError):
        validator(p384).claims(relabelled, now=NOW)


def test_supported_algs_narrow_the_accepted_algorithms() -> None:
    v = validator(JWTSupportedAlgs=["RS512"])
    with pytest.raises(LoginError):
        v.claims(sign(RSA, "RS256", claims()), now=NOW)
    assert v.claims(sign(RSA, "RS512", claims()), now=NOW)


def test_crit_headers_are_refused() -> None:
    with pytest.raises(LoginError):
        validator().claims(sign(RSA, "RS256", claims(), header={"crit": ["exp"], "exp": 1}), now=NOW)


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.e30"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(LoginError):
        validator().claims(token, now=NOW)


def test_errors_never_quote_the_token() -> None:
    token = sign(new_key("RS256"), "RS256", claims(secret="hunter2-secret"))
    with pytest.raises(LoginError) as err:
        validator().claims(token, now=NOW)
    assert "hunter2" not in str(err.value) and token[:20] not in str(err.value)


# ------------------------------------------------------------------ times, issuer, audience


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"exp": NOW - 61}, "error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)"),
        ({"nbf": NOW + 61}, "error validating claims: go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)"),
        ({"iat": NOW + 61}, "error validating claims: go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)"),
        ({"iss": "https://evil.example"},
         "error validating claims: go-jose/go-jose/jwt: validation failed, invalid issuer claim (iss)"),
        ({"aud": "other"}, "error validating claims: aud claim does not match any bound audience"),
        ({"aud": ["a", "b"]}, "error validating claims: aud claim does not match any bound audience"),
    ],
)
def test_time_issuer_and_audience_are_checked(extra: dict, message: str) -> None:
    v = validator(BoundIssuer="https://idp.example", BoundAudiences=["consul"])
    with pytest.raises(LoginError) as err:
        v.claims(sign(RSA, "RS256", claims(**extra)), now=NOW)
    assert str(err.value) == message


def test_clock_skew_leeway_is_sixty_seconds_by_default_and_configurable() -> None:
    token = sign(RSA, "RS256", claims(exp=NOW - 30))
    assert validator().claims(token, now=NOW)
    with pytest.raises(LoginError, match="expired"):
        validator(ClockSkewLeeway=-1).claims(token, now=NOW)
    with pytest.raises(LoginError, match="expired"):
        validator(ClockSkewLeeway="10s").claims(token, now=NOW)


def test_a_token_without_any_time_is_refused() -> None:
    with pytest.raises(LoginError, match="^no issue time, notbefore, or expiration time encoded in token$"):
        validator().claims(sign(RSA, "RS256", {"sub": "x"}), now=NOW)


def test_a_missing_exp_defaults_to_iat_plus_the_expiration_leeway() -> None:
    token = sign(RSA, "RS256", {"iat": NOW - 200})
    with pytest.raises(LoginError, match="expired"):  # exp = iat + 150 s, 50 s ago, and no skew allowed
        validator(ClockSkewLeeway=-1).claims(token, now=NOW)
    assert validator(ExpirationLeeway="300s", ClockSkewLeeway=-1).claims(token, now=NOW)


def test_audience_is_strict_when_none_is_bound() -> None:
    with pytest.raises(LoginError, match="audience claim found in JWT but no audiences are bound"):
        validator().claims(sign(RSA, "RS256", claims(aud="consul")), now=NOW)
    assert validator(BoundAudiences=["x", "consul"]).claims(sign(RSA, "RS256", claims(aud=["consul"])), now=NOW)


# ------------------------------------------------------------------ JWKS


def test_jwks_keys_verify_and_kid_picks_the_key() -> None:
    ec2 = new_key("ES256")
    doc = json.dumps({"keys": [jwk(RSA, "r1"), jwk(ec2, "e1"), jwk(new_key("EdDSA"), "o1"),
                               {"kty": "oct", "k": "c2VjcmV0"}]})  # fmt: skip
    keys = parse_jwks(doc)
    assert [k.kid for k in keys] == ["r1", "e1", "o1"]  # the symmetric key is never a verification key
    v = JWTValidator(JWTConfig.from_wire({"JWKSURL": "https://idp.example/jwks"}))
    assert v.needs_jwks
    assert v.claims(sign(ec2, "ES256", claims(), header={"kid": "e1"}), now=NOW, jwks=keys)
    assert v.claims(sign(RSA, "RS256", claims()), now=NOW, jwks=keys)
    with pytest.raises(LoginError, match="^error verifying token: failed to verify id token signature$"):
        v.claims(sign(new_key("RS256"), "RS256", claims()), now=NOW, jwks=keys)
    with pytest.raises(LoginError, match="failed to verify"):
        v.claims(sign(RSA, "RS256", claims()), now=NOW, jwks=())


@pytest.mark.parametrize("doc", [b"not json", b"[]", b'{"keys": 1}', b'{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}'])
def test_bad_jwks_documents_are_refused_without_echoing_them(doc: bytes) -> None:
    with pytest.raises(ValueError) as err:
        parse_jwks(doc)
    assert "!!" not in str(err.value) and "not json" not in str(err.value)


# ------------------------------------------------------------------ claim mappings


def test_claim_mappings_give_values_and_lists() -> None:
    v = validator(ClaimMappings={"namespace": "ns", "/nested/team": "team", "admin": "admin", "uid": "uid"},
                  ListClaimMappings={"groups": "groups", "role": "roles", "/nested/tags": "tags"})  # fmt: skip
    token = sign(RSA, "RS256", claims(namespace="web", nested={"team": "blue", "tags": ["a", "", 7]}, admin=True,
                                      uid=12.9, groups=["dev", "ops"], role="lead"))  # fmt: skip
    ident = v.validate_login(token, now=NOW)
    assert ident.values == {"ns": "web", "team": "blue", "admin": "true", "uid": "12"}
    assert ident.lists == {"groups": ("dev", "ops"), "roles": ("lead",), "tags": ("a", "7")}
    assert ident.projected_vars() == {"value.ns": "web", "value.team": "blue", "value.admin": "true",
                                      "value.uid": "12"}  # fmt: skip


def test_missing_claims_stay_empty_and_objects_are_refused() -> None:
    v = validator(ClaimMappings={"namespace": "ns"}, ListClaimMappings={"groups": "groups"})
    assert v.validate_login(sign(RSA, "RS256", claims()), now=NOW).selectable() == {"value": {"ns": ""},
                                                                                     "list": {"groups": []}}
    with pytest.raises(LoginError, match="error converting claim 'namespace' to string from unknown type map"):
        v.validate_login(sign(RSA, "RS256", claims(namespace={"a": 1})), now=NOW)
    with pytest.raises(LoginError, match='"groups" list claim could not be converted to string list'):
        v.validate_login(sign(RSA, "RS256", claims(groups={"a": 1})), now=NOW)
