"""config.validate checks the keys it knows and runs the validators of the parts that own the other blocks."""

from __future__ import annotations

import pytest

from registry.agent.agent import CONFIG_VALIDATORS
from registry.config import Config, ConfigError, apply_mapping, dev_defaults, validate


def _dev(**keys: object) -> Config:
    cfg = Config(node_name="n1")
    dev_defaults(cfg)
    apply_mapping(cfg, dict(keys), "test")
    return cfg


def test_validate_runs_the_validators_it_is_given_in_order() -> None:
    seen: list[str] = []
    validate(_dev(), (lambda c: seen.append("a"), lambda c: seen.append(c.node_name)))
    assert seen == ["a", "n1"]


def test_validate_checks_its_own_keys_before_the_validators() -> None:
    seen: list[str] = []
    with pytest.raises(ConfigError, match="node_name"):
        validate(_dev(node_name="a b"), (lambda c: seen.append("ran"),))
    assert seen == []


def test_without_validators_the_blocks_of_other_parts_are_not_judged() -> None:
    validate(_dev(connect={"ca_config": {"leaf_cert_ttl": "10m"}}))


def test_the_agents_validators_refuse_a_bad_connect_block() -> None:
    with pytest.raises(ConfigError, match="connect.ca_config: leaf cert TTL must be greater or equal than 1h0m0s"):
        validate(_dev(connect={"ca_config": {"leaf_cert_ttl": "10m"}}), CONFIG_VALIDATORS)


def test_the_agents_validators_refuse_a_tls_file_that_is_missing(tmp_path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError):
        validate(_dev(tls={"defaults": {"ca_file": missing, "cert_file": missing, "key_file": missing}}),
                 CONFIG_VALIDATORS)  # fmt: skip
