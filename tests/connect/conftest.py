"""Fixtures for the Connect tests: a fake clock and an FSM fed through the log (openssl_verify is in
tests/conftest.py)."""

from __future__ import annotations

import pytest
from connect_helpers import FakeClock, Log


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log() -> Log:
    return Log()
