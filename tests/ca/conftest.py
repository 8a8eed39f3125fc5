"""Shared fixtures for the Connect CA tests: deterministic randomness, a fixed clock, openssl verify."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

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
def openssl_verify(tmp_path: Path) -> Verify:
    """Run the real ``openssl verify``. Returns the CompletedProcess; ``.returncode == 0`` means OK."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    counter = iter(range(1_000_000))

    def write(pems: Sequence[str] | str) -> str:
        path = tmp_path / f"pem{next(counter)}.pem"
        path.write_text(pems if isinstance(pems, str) else "".join(pems))
        return str(path)

    def verify(
        leaf: str,
        roots: Sequence[str] | str,
        untrusted: Sequence[str] | str = (),
        *,
        at: datetime = NOW,
        purpose: str | None = None,
        strict: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["openssl", "verify", "-CAfile", write(roots), "-attime", str(int(at.timestamp()))]
        if untrusted:
            cmd += ["-untrusted", write(untrusted)]
        if purpose:
            cmd += ["-purpose", purpose]
        if strict:
            cmd.append("-x509_strict")
        cmd.append(write(leaf))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    return verify
