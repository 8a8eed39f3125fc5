"""The built-in CA provider state machine: bootstrap, signing, rotation, pruning, config, encoding."""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import msgpack
import pytest
from cryptography import x509

from ca import certs
from ca import provider as p
from ca.csr import CSRError, make_csr
from ca.spiffe import AgentIdentity, ServiceIdentity

CLUSTER = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
TD = f"{CLUSTER}.consul"
WEB = ServiceIdentity(TD, "default", "dc1", "web")
DB = ServiceIdentity(TD, "default", "dc1", "db")
NODE = AgentIdentity(TD, "dc1", "node-1")
LEAF_KEY = certs.generate_key()

Rng = Callable[[int], bytes]
Verify = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def state(rng: Rng, now: datetime) -> p.CAState:
    return p.initialize(CLUSTER, p.CAConfig(), now, rng, index=5)


def sign(state: p.CAState, now: datetime, rng: Rng, ident: ServiceIdentity = WEB,
         ttl: timedelta | None = None) -> p.LeafResult:
    return p.sign_leaf(state, make_csr(LEAF_KEY, ident), ident, now, ttl, rng)


# ---------------------------------------------------------------------------------------------------
# bootstrap and roots API


def test_initialize(state: p.CAState, now: datetime) -> None:
    assert state.cluster_id == CLUSTER and state.trust_domain == TD
    root = state.active_root
    cert = root.certificate()
    assert len(state.roots) == 1 and root.active
    assert root.name == "Consul CA Primary Cert"
    assert re.fullmatch(r"CN=pri-[0-9a-z]{8}\.consul\.ca\.7f42f496\.consul", cert.subject.rfc4514_string())
    assert certs.spiffe_uris(cert) == [f"spiffe://{TD}"]
    assert root.not_after == now + timedelta(hours=87600)
    assert (root.private_key_type, root.private_key_bits) == ("ec", 256)
    assert root.id == certs.fingerprint_sha1_colon(cert)
    assert root.signing_key_id == certs.colon_hex(
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest)
    assert root.create_index == root.modify_index == 5
    assert root.private_key_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert "PRIVATE KEY" not in repr(state)


def test_roots_response_shape(state: p.CAState) -> None:
    body = p.roots_response(state)
    assert list(body) == ["ActiveRootID", "TrustDomain", "Roots"]
    assert body["TrustDomain"] == TD
    assert len(body["Roots"]) == 1
    r = body["Roots"][0]
    assert list(r) == ["ID", "Name", "SerialNumber", "SigningKeyID", "ExternalTrustDomain", "NotBefore",
                       "NotAfter", "RootCert", "IntermediateCerts", "Active", "PrivateKeyType",
                       "PrivateKeyBits", "CreateIndex", "ModifyIndex"]
    assert r["ID"] == body["ActiveRootID"] == state.active_root.id
    assert re.fullmatch(r"([0-9a-f]{2}:){19}[0-9a-f]{2}", r["ID"])
    assert re.fullmatch(r"([0-9a-f]{2}:){31}[0-9a-f]{2}", r["SigningKeyID"])
    assert isinstance(r["SerialNumber"], int) and 0 < r["SerialNumber"] < 1 << 64
    assert r["ExternalTrustDomain"] == CLUSTER
    assert r["NotBefore"] == "2026-03-01T11:59:00Z"
    assert r["NotAfter"] == "2036-02-27T12:00:00Z"
    assert r["RootCert"].startswith("-----BEGIN CERTIFICATE-----") and r["RootCert"].endswith("\n")
    assert r["IntermediateCerts"] is None
    assert r["Active"] is True
    assert (r["PrivateKeyType"], r["PrivateKeyBits"]) == ("ec", 256)
    assert (r["CreateIndex"], r["ModifyIndex"]) == (5, 5)
    assert "PRIVATE KEY" not in json.dumps(body)


def test_a_rotated_out_root_stays_listed_with_when_it_went_out(state: p.CAState, rng: Rng, now: datetime) -> None:
    """Consul keeps the old root (Active false) until it is pruned; Proconsul also says when it was rotated
    out (``RotatedOutAt``, which Consul keeps but does not publish), and only on that root."""
    when = now + timedelta(days=3, seconds=7)
    rotated = p.rotate(state, p.CAConfig(private_key_type="ec", private_key_bits=384), when, rng, index=9)
    body = p.roots_response(rotated)
    by_id = {r["ID"]: r for r in body["Roots"]}
    old, new = by_id[state.active_root.id], by_id[body["ActiveRootID"]]
    assert old["Active"] is False and old["RotatedOutAt"] == "2026-03-04T12:00:07Z"
    assert list(old)[list(old).index("Active") + 1] == "RotatedOutAt"
    assert new["Active"] is True and "RotatedOutAt" not in new
    assert (new["PrivateKeyType"], new["PrivateKeyBits"]) == ("ec", 384)
    assert old["ModifyIndex"] == 9
    # Pruned 2 x LeafCertTTL (72h by default) after it went out, as Consul's pruneCARoots.
    assert len(p.prune(rotated, when + timedelta(hours=143)).roots) == 2
    assert [r.id for r in p.prune(rotated, when + timedelta(hours=144, seconds=1)).roots] == [new["ID"]]


def test_no_private_key_in_any_api_output(state: p.CAState, rng: Rng, now: datetime) -> None:
    rotated = p.rotate(state, p.CAConfig(), now + timedelta(days=1), rng, index=9)
    leaf = sign(rotated, now + timedelta(days=1), rng)
    for body in (p.roots_response(rotated), p.ca_configuration_response(rotated),
                 p.issued_cert_response(leaf)):
        assert "PRIVATE KEY" not in json.dumps(body)
    assert "PRIVATE KEY" not in p.roots_pem(rotated)
    # ... while the replicated encoding does carry the active key.
    assert "PRIVATE KEY" in json.dumps(p.to_msgpack_dict(rotated))


# ---------------------------------------------------------------------------------------------------
# signing


def test_sign_leaf(state: p.CAState, rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    r = sign(state, now, rng)
    leaf = certs.cert_from_pem(r.cert_pem)
    assert r.chain_pem == r.cert_pem  # no intermediates before any rotation
    assert r.uri == WEB.uri() and certs.spiffe_uris(leaf) == [WEB.uri()]
    assert r.valid_after == now - timedelta(minutes=1) == leaf.not_valid_before_utc
    assert r.valid_before == now + timedelta(hours=72) == leaf.not_valid_after_utc
    assert r.serial == leaf.serial_number and r.serial_colon == certs.serial_colon(leaf.serial_number)
    assert r.root_id == state.active_root.id and r.signing_key_id == state.active_root.signing_key_id
    assert certs.colon_hex(leaf.extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier).value.key_identifier or b"") == r.signing_key_id
    assert openssl_verify(r.cert_pem, state.active_root.root_cert_pem, purpose="sslclient").returncode == 0


def test_sign_leaf_serial_is_deterministic_under_seed(state: p.CAState, now: datetime) -> None:
    a = sign(state, now, random.Random(1).randbytes)
    b = sign(state, now, random.Random(1).randbytes)
    c = sign(state, now, random.Random(2).randbytes)
    assert a.serial == b.serial != c.serial


def test_issued_cert_response(state: p.CAState, rng: Rng, now: datetime) -> None:
    r = sign(state, now, rng)
    body = p.issued_cert_response(r, private_key_pem="KEY", index=11)
    assert body == {
        "SerialNumber": r.serial_colon,
        "CertPEM": r.chain_pem,
        "PrivateKeyPEM": "KEY",
        "Service": "web",
        "ServiceURI": WEB.uri(),
        "ValidAfter": "2026-03-01T11:59:00Z",
        "ValidBefore": "2026-03-04T12:00:00Z",
        "CreateIndex": 11,
        "ModifyIndex": 11,
    }
    agent = p.sign_leaf(state, make_csr(LEAF_KEY, NODE), NODE, now, None, rng)
    body = p.issued_cert_response(agent)
    assert body["Agent"] == "node-1" and body["AgentURI"] == NODE.uri()
    assert "Service" not in body and "PrivateKeyPEM" not in body


def test_sign_leaf_refuses_other_identity(state: p.CAState, rng: Rng, now: datetime) -> None:
    with pytest.raises(CSRError, match="does not match the requested identity"):
        p.sign_leaf(state, make_csr(LEAF_KEY, WEB), DB, now, None, rng)


def test_sign_leaf_ttl_override_and_clamp(state: p.CAState, rng: Rng, now: datetime) -> None:
    assert sign(state, now, rng, ttl=timedelta(hours=2)).valid_before == now + timedelta(hours=2)
    near_end = state.active_root.not_after - timedelta(hours=10)
    r = sign(state, near_end, rng)
    assert r.valid_before == state.active_root.not_after
    with pytest.raises(ValueError):
        sign(state, now, rng, ttl=timedelta(0))


def test_sign_leaf_refuses_with_expired_root(state: p.CAState, rng: Rng) -> None:
    with pytest.raises(p.CAError, match="root expired"):
        sign(state, state.active_root.not_after + timedelta(seconds=1), rng)


def test_sign_leaf_copies_only_allowed_dns_sans(state: p.CAState, rng: Rng, now: datetime) -> None:
    csr = make_csr(LEAF_KEY, NODE, dns_sans=["localhost"])
    with pytest.raises(CSRError, match="DNS name that is not allowed"):
        p.sign_leaf(state, csr, NODE, now, None, rng)
    r = p.sign_leaf(state, csr, NODE, now, None, rng, allowed_dns_sans={"localhost"})
    san = certs.cert_from_pem(r.cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]


# ---------------------------------------------------------------------------------------------------
# rotation


def test_rotation_cross_signs_and_keeps_old_root(state: p.CAState, rng: Rng, now: datetime,
                                                 openssl_verify: Verify) -> None:
    old = state.active_root
    old_leaf = sign(state, now, rng)
    t = now + timedelta(hours=1)
    rotated = p.rotate(state, p.CAConfig(), t, rng, index=20)
    new = rotated.active_root
    assert new.id != old.id and len(rotated.roots) == 2
    retired = next(r for r in rotated.roots if r.id == old.id)
    assert not retired.active and retired.private_key_pem == ""
    assert retired.rotated_out_at == t and retired.prune_after == t + timedelta(hours=144)
    assert retired.modify_index == 20 and retired.create_index == 5
    assert new.create_index == new.modify_index == 20
    assert len(new.intermediate_certs) == 1

    body = p.roots_response(rotated)
    assert body["ActiveRootID"] == new.id
    by_id = {r["ID"]: r for r in body["Roots"]}
    assert by_id[old.id]["Active"] is False and by_id[old.id]["IntermediateCerts"] is None
    assert by_id[new.id]["Active"] is True and len(by_id[new.id]["IntermediateCerts"]) == 1

    new_leaf = sign(rotated, t, rng)
    assert new_leaf.chain_pem == new_leaf.cert_pem + new.intermediate_certs[0]
    cross = new.intermediate_certs[0]
    # A new leaf verifies with only the OLD root trusted, via the cross-signed intermediate ...
    assert openssl_verify(new_leaf.cert_pem, old.root_cert_pem, cross, at=t).returncode == 0
    # ... and with only the new root trusted.
    assert openssl_verify(new_leaf.cert_pem, new.root_cert_pem, at=t).returncode == 0
    # Old leaves keep verifying against the published trust set while the old root is in it.
    assert openssl_verify(old_leaf.cert_pem, p.roots_pem(rotated), at=t).returncode == 0
    assert openssl_verify(old_leaf.cert_pem, new.root_cert_pem, at=t).returncode != 0


def test_prune_with_fake_clock(state: p.CAState, rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    old_leaf = sign(state, now, rng)
    rotated = p.rotate(state, p.CAConfig(), now, rng, index=20)
    old_id = state.active_root.id
    assert p.prune(rotated, now + timedelta(hours=143, minutes=59)) is rotated
    later = now + timedelta(hours=144)
    pruned = p.prune(rotated, later, index=30)
    assert [r.id for r in pruned.roots] == [rotated.active_root.id]
    assert pruned.active_root.intermediate_certs == rotated.active_root.intermediate_certs
    assert old_id not in json.dumps(p.roots_response(pruned))
    # Every leaf of the old root had expired by then.
    assert old_leaf.valid_before < later
    assert openssl_verify(old_leaf.cert_pem, p.roots_pem(pruned), at=later).returncode != 0
    # The cross-signed cert (7 days) is dropped once it expires.
    assert p.prune(pruned, now + timedelta(days=7) - timedelta(minutes=2)) is pruned
    final = p.prune(pruned, now + timedelta(days=7), index=40)
    assert final.active_root.intermediate_certs == () and final.active_root.modify_index == 40
    assert p.roots_response(final)["Roots"][0]["IntermediateCerts"] is None


def test_prune_keeps_longer_with_longer_leaf_ttls(state: p.CAState, rng: Rng, now: datetime) -> None:
    cfg = p.CAConfig(leaf_cert_ttl="240h")
    rotated = p.rotate(state, cfg, now, rng)
    assert p.prune(rotated, now + timedelta(hours=479)) is rotated
    assert len(p.prune(rotated, now + timedelta(hours=480)).roots) == 1
    cross = certs.cert_from_pem(rotated.active_root.intermediate_certs[0])
    assert cross.not_valid_after_utc == now + timedelta(hours=480)


def test_rotate_after_old_root_expired_skips_cross_signing(rng: Rng, now: datetime) -> None:
    cfg = p.CAConfig(root_cert_ttl="400h")
    s = p.initialize(CLUSTER, cfg, now, rng)
    rotated = p.rotate(s, cfg, now + timedelta(hours=401), rng)
    assert rotated.active_root.intermediate_certs == ()


def test_double_rotation(state: p.CAState, rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    s1 = p.rotate(state, p.CAConfig(), now, rng)
    s2 = p.rotate(s1, p.CAConfig(), now + timedelta(hours=1), rng)
    assert len(s2.roots) == 3 and sum(r.active for r in s2.roots) == 1
    assert [bool(r.private_key_pem) for r in s2.roots] == [False, False, True]
    leaf = sign(s2, now + timedelta(hours=1), rng)
    assert openssl_verify(leaf.cert_pem, s1.active_root.root_cert_pem,
                          s2.active_root.intermediate_certs[0], at=now + timedelta(hours=1)).returncode == 0


def test_update_config_rotates_only_on_key_change(state: p.CAState, rng: Rng, now: datetime,
                                                   openssl_verify: Verify) -> None:
    ttl_only = p.update_config(state, p.CAConfig(leaf_cert_ttl="24h"), now, rng, index=7)
    assert ttl_only.roots == state.roots and ttl_only.config.leaf_cert_ttl == "24h"
    assert ttl_only.config_modify_index == 7
    assert sign(ttl_only, now, rng).valid_before == now + timedelta(hours=24)
    rsa_cfg = p.CAConfig(private_key_type="rsa", private_key_bits=2048)
    rotated = p.update_config(state, rsa_cfg, now, rng)
    assert len(rotated.roots) == 2 and rotated.active_root.private_key_type == "rsa"
    leaf = sign(rotated, now, rng)
    assert openssl_verify(leaf.cert_pem, state.active_root.root_cert_pem,
                          rotated.active_root.intermediate_certs).returncode == 0


# ---------------------------------------------------------------------------------------------------
# auto-rotation and expiry warnings (fake clock)


def test_needs_auto_rotation(state: p.CAState, now: datetime) -> None:
    root = state.active_root
    life = root.not_after - root.not_before
    assert not p.needs_auto_rotation(state, now)
    assert not p.needs_auto_rotation(state, root.not_after - life * 0.2 - timedelta(seconds=1))
    assert p.needs_auto_rotation(state, root.not_after - life * 0.2)
    assert p.needs_auto_rotation(state, root.not_after + timedelta(days=1))
    assert p.needs_auto_rotation(state, now + timedelta(days=365), fraction=0.95)
    with pytest.raises(ValueError):
        p.needs_auto_rotation(state, now, fraction=1.5)


def test_auto_rotation_floor_is_three_leaf_ttls(rng: Rng, now: datetime) -> None:
    s = p.initialize(CLUSTER, p.CAConfig(root_cert_ttl="300h"), now, rng)
    end = s.active_root.not_after
    assert not p.needs_auto_rotation(s, end - timedelta(hours=217))
    assert p.needs_auto_rotation(s, end - timedelta(hours=216))
    assert p.needs_auto_rotation(s, end - timedelta(hours=250), min_remaining=timedelta(hours=260))
    # Auto-rotating resets the clock.
    rotated = p.rotate(s, s.config, end - timedelta(hours=216), rng)
    assert not p.needs_auto_rotation(rotated, end - timedelta(hours=216))


def test_expiry_warnings(state: p.CAState, now: datetime) -> None:
    end = state.active_root.not_after
    assert p.expiry_warnings(state, now) == []
    assert p.expiry_warnings(state, end - timedelta(days=31)) == []
    [w] = p.expiry_warnings(state, end - timedelta(days=12))
    assert not w.expired and w.remaining == timedelta(days=12) and w.root_id == state.active_root.id
    assert "expires in 288h0m0s" in w.message
    [w] = p.expiry_warnings(state, end - timedelta(days=50), threshold=timedelta(days=60))
    assert not w.expired
    [w] = p.expiry_warnings(state, end + timedelta(hours=1))
    assert w.expired and "expired at" in w.message


# ---------------------------------------------------------------------------------------------------
# configuration


def test_configuration_response_defaults(state: p.CAState) -> None:
    assert p.ca_configuration_response(state) == {
        "Provider": "consul",
        "Config": {
            "LeafCertTTL": "72h",
            "IntermediateCertTTL": "8760h",
            "RootCertTTL": "87600h",
            "RotationPeriod": "2160h",
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "CSRMaxPerSecond": 50,
            "CSRMaxConcurrent": 0,
        },
        "State": None,
        "ForceWithoutCrossSigning": False,
        "CreateIndex": 5,
        "ModifyIndex": 5,
    }
    assert json.dumps(p.ca_configuration_response(state)).count('"CSRMaxPerSecond": 50,') == 1


def test_parse_configuration() -> None:
    cfg = p.parse_ca_configuration({
        "Provider": "consul",
        "Config": {"LeafCertTTL": "24h", "private_key_bits": "384", "csrmaxpersecond": "12.5",
                   "CSRMaxConcurrent": 2, "SomethingUnknown": 1},
        "ForceWithoutCrossSigning": True,
    })
    assert cfg.leaf_cert_ttl == "24h" and cfg.leaf_ttl == timedelta(hours=24)
    assert cfg.private_key_bits == 384 and cfg.csr_max_per_second == 12.5 and cfg.csr_max_concurrent == 2
    assert cfg.force_without_cross_signing is True
    assert p.parse_ca_configuration({}) == p.CAConfig()
    assert p.parse_ca_configuration({"provider": "consul", "config": {"leaf_cert_ttl": "1h30m"}}).leaf_ttl == \
        timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(("config", "message"), [
    ({"LeafCertTTL": "59m"}, "leaf cert TTL must be greater or equal than 1h0m0s"),
    ({"LeafCertTTL": "8761h"}, "leaf cert TTL must be less than 8760h0m0s"),
    ({"LeafCertTTL": "forever"}, "LeafCertTTL: invalid duration 'forever'"),
    ({"LeafCertTTL": 72}, "LeafCertTTL must be a string"),
    ({"IntermediateCertTTL": "2h", "LeafCertTTL": "1h"}, "Intermediate Cert TTL must be greater or equal than 3h"),
    ({"IntermediateCertTTL": "100h"}, "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>=216h0m0s)."),
    ({"RootCertTTL": "200h"}, "Root Cert TTL must be greater or equal than 4 * LeafCertTTL (>=288h0m0s)"),
    ({"PrivateKeyType": "dsa"}, "private key type must be either 'ec' or 'rsa'"),
    ({"PrivateKeyBits": 224}, "EC key length must be one of (256, 384) bits"),
    ({"PrivateKeyType": "rsa", "PrivateKeyBits": 1024}, "RSA key length must be 2048 or 4096 bits"),
    ({"PrivateKeyBits": "lots"}, "PrivateKeyBits must be an integer"),
    ({"PrivateKeyBits": True}, "PrivateKeyBits must be a number"),
    ({"CSRMaxPerSecond": -1}, "CSRMaxPerSecond must be zero (no limit) or positive"),
    ({"CSRMaxConcurrent": -1}, "CSRMaxConcurrent must be zero (no limit) or positive"),
    ({"RootCert": "x"}, "must provide a private key when providing a root cert"),
    ({"PrivateKey": "not a key"}, "PrivateKey: cannot parse PEM private key"),
])
def test_configuration_validation(config: dict[str, object], message: str) -> None:
    with pytest.raises(p.CAConfigError, match=re.escape(message)):
        p.parse_ca_configuration({"Provider": "consul", "Config": config})


def test_configuration_validation_top_level() -> None:
    with pytest.raises(p.CAConfigError, match="not supported"):
        p.parse_ca_configuration({"Provider": "vault", "Config": {}})
    with pytest.raises(p.CAConfigError):
        p.parse_ca_configuration({"Config": []})
    with pytest.raises(p.CAConfigError):
        p.parse_ca_configuration({"ForceWithoutCrossSigning": "yes"})


def test_go_durations() -> None:
    assert p.parse_go_duration("72h") == timedelta(hours=72)
    assert p.parse_go_duration("1h30m15.5s") == timedelta(hours=1, minutes=30, seconds=15.5)
    assert p.parse_go_duration("1.5h") == timedelta(minutes=90)
    assert p.parse_go_duration("500ms") == timedelta(milliseconds=500)
    assert p.parse_go_duration("0") == timedelta(0)
    for bad in ["", "h", "1", "1d", "1h x", "--1h", " 1h"]:
        with pytest.raises(ValueError):
            p.parse_go_duration(bad)
    assert p.format_go_duration(timedelta(hours=1)) == "1h0m0s"
    assert p.format_go_duration(timedelta(hours=216)) == "216h0m0s"
    assert p.format_go_duration(timedelta(minutes=1, seconds=30)) == "1m30s"
    assert p.format_go_duration(timedelta(seconds=1.5)) == "1.5s"
    assert p.format_go_duration(timedelta(milliseconds=500)) == "500ms"
    assert p.format_go_duration(timedelta(0)) == "0s"


# ---------------------------------------------------------------------------------------------------
# operator-supplied CA


def test_operator_private_key_only(rng: Rng, now: datetime) -> None:
    key = certs.generate_key("ec", 384)
    s = p.initialize(CLUSTER, p.CAConfig(private_key=certs.private_key_to_pem(key)), now, rng)
    assert s.active_root.signing_key_id == certs.key_id_colon(key)
    assert (s.active_root.private_key_type, s.active_root.private_key_bits) == ("ec", 384)
    assert not s.active_root.external
    assert "PRIVATE KEY" not in repr(s.config)


def test_operator_root(rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    key = certs.generate_key()
    cert = certs.build_root(key, CLUSTER, TD, 77, now, timedelta(days=400), "Operator Root")
    cfg = p.CAConfig(private_key=certs.private_key_to_pem(key), root_cert=certs.cert_to_pem(cert))
    s = p.initialize(CLUSTER, cfg, now, rng)
    assert s.active_root.external and s.active_root.serial == 77
    assert s.active_root.id == certs.fingerprint_sha1_colon(cert)
    assert not p.needs_auto_rotation(s, cert.not_valid_after_utc - timedelta(days=1))
    assert p.expiry_warnings(s, cert.not_valid_after_utc - timedelta(days=1))
    assert p.ca_configuration_response(s)["Config"]["RootCert"] == certs.cert_to_pem(cert)
    leaf = sign(s, now, rng)
    assert openssl_verify(leaf.cert_pem, certs.cert_to_pem(cert)).returncode == 0
    # Re-applying the same operator root is not a rotation.
    assert p.rotate(s, cfg, now, rng).roots == s.roots
    # Moving from the operator root to a generated one cross-signs with the operator key.
    moved = p.update_config(s, p.CAConfig(), now, rng)
    assert len(moved.roots) == 2 and not moved.active_root.external


def test_operator_root_checks(rng: Rng, now: datetime) -> None:
    key = certs.generate_key()
    other = "11111111-2222-3333-4444-555555555555"
    foreign = certs.build_root(key, other, f"{other}.consul", 77, now, timedelta(days=400), "x")
    cfg = p.CAConfig(private_key=certs.private_key_to_pem(key), root_cert=certs.cert_to_pem(foreign))
    with pytest.raises(p.CAConfigError, match="must have exactly one URI SAN"):
        p.initialize(CLUSTER, cfg, now, rng)
    mine = certs.build_root(key, CLUSTER, TD, 77, now, timedelta(days=400), "x")
    with pytest.raises(p.CAConfigError, match="does not match PrivateKey"):
        p.CAConfig(private_key=certs.private_key_to_pem(certs.generate_key()),
                   root_cert=certs.cert_to_pem(mine))


# ---------------------------------------------------------------------------------------------------
# replicated encoding


def test_msgpack_round_trip(state: p.CAState, rng: Rng, now: datetime) -> None:
    rotated = p.rotate(state, p.CAConfig(leaf_cert_ttl="48h"), now, rng, index=9)
    packed = msgpack.packb(p.to_msgpack_dict(rotated), use_bin_type=True)
    back = p.from_msgpack_dict(msgpack.unpackb(packed, raw=False))
    assert back == rotated
    assert back.active_root.private_key_pem == rotated.active_root.private_key_pem
    # The restored state signs leaves that chain to the same root.
    assert sign(back, now, rng).root_id == rotated.active_root.id


def test_msgpack_tamper_detection(state: p.CAState) -> None:
    d = p.to_msgpack_dict(state)
    d["roots"][0]["id"] = "00:" * 19 + "00"
    with pytest.raises(p.CAError, match="does not match its certificate"):
        p.from_msgpack_dict(d)
    d = p.to_msgpack_dict(state)
    d["roots"][0]["private_key_pem"] = certs.private_key_to_pem(certs.generate_key())
    with pytest.raises(p.CAError, match="private key does not match"):
        p.from_msgpack_dict(d)
    d = p.to_msgpack_dict(state)
    d["v"] = 99
    with pytest.raises(p.CAError, match="version"):
        p.from_msgpack_dict(d)


def test_state_invariants(state: p.CAState) -> None:
    root = state.active_root
    with pytest.raises(p.CAError, match="exactly one active root"):
        replace(state, roots=(root, replace(root, id="x")))
    with pytest.raises(p.CAError, match="no private key"):
        replace(state, roots=(replace(root, private_key_pem=""),))


# ---------------------------------------------------------------------------------------------------
# timing (not an assertion: targets belong in benchmarks)


@pytest.mark.soak
def test_sign_leaf_timing(state: p.CAState, rng: Rng, now: datetime) -> None:
    csr = make_csr(LEAF_KEY, WEB)
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        p.sign_leaf(state, csr, WEB, now, None, rng)
    elapsed = time.perf_counter() - start
    print(f"\nsign_leaf (validate CSR + sign P-256 leaf): {n / elapsed:,.0f}/s, {elapsed / n * 1e6:.0f} us each")
