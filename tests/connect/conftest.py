"""Fixtures for the Connect tests: a fake clock, an FSM fed through the log, openssl verify."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from connect_helpers import FakeClock, Log


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log() -> Log:
    return Log()


Verify = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def openssl_verify(tmp_path: Path) -> Verify:
    """The real ``openssl verify``; returncode 0 means the chain verified."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    counter = iter(range(1_000_000))

    def write(pems: Sequence[str] | str) -> str:
        path = tmp_path / f"v{next(counter)}.pem"
        path.write_text(pems if isinstance(pems, str) else "".join(pems))
        return str(path)

    def verify(leaf: str, roots: Sequence[str] | str, untrusted: Sequence[str] | str = (), *,
               at: datetime | None = None, purpose: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        cmd = ["openssl", "verify", "-x509_strict", "-CAfile", write(roots)]
        if at is not None:
            cmd += ["-attime", str(int(at.timestamp()))]
        if untrusted:
            cmd += ["-untrusted", write(untrusted)]
        if purpose:
            cmd += ["-purpose", purpose]
        cmd.append(write(leaf))
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    return verify
