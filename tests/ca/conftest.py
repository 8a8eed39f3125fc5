"""Shared fixtures for the Connect CA tests: deterministic randomness, a fixed clock, openssl verify."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

CLUSTER_ID = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
TRUST_DOMAIN = f"{CLUSTER_ID}.consul"
# A fixed instant: every certificate test states its own time and passes it to openssl (-attime).
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

Verify = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def rng() -> Callable[[int], bytes]:
    return random.Random(20260301).randbytes


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def openssl_verify(openssl_verify: Verify) -> Verify:
    """tests/conftest.py's ``openssl verify``, at the fixed test instant unless ``at`` says otherwise."""

    def verify(*args: object, at: datetime = NOW, **kw: object) -> subprocess.CompletedProcess[str]:
        return openssl_verify(*args, at=at, **kw)

    return verify
