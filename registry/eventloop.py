"""Running a command's main coroutine: on uvloop (a dependency on POSIX), Ctrl-C as a clean exit."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.run
    try:
        return runner(main)
    except KeyboardInterrupt:
        return 0
