"""Run a ``proconsul`` command the way a test wants it: in this process (``run_cli``) or as a real process
(``run_process``), both answering with a ``subprocess.CompletedProcess`` (``returncode``, ``stdout``,
``stderr``), so a test reads the same either way.

In this process the command is ``registry.cli.app.main(argv)``, the function the console script calls, with
its own stdin, stdout and stderr and exactly the environment given (as a child process would see it). It
costs milliseconds where a process costs the interpreter's start and the imports (0.3-1 s each on a busy
2-core CI machine), which is what made the CLI test files slow. A test about the command's behaviour (its
output, its messages, its exit code) runs it here; a test about the process boundary (the console script
itself, ``python -m``, signals, a child process, the agent) keeps ``run_process``, and each command family
keeps at least one real-process test so the entry point stays covered.

What differs from a process, on purpose: an exception the command does not handle fails the test with its
traceback (a process would print it and exit 1, which every test here also treats as a failure).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BIN = str(Path(sys.executable).with_name("proconsul"))

__all__ = ["BIN", "run_cli", "run_process"]


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is exactly ``env`` inside (what a child started with ``env=`` would see), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args: str, env: Mapping[str, str] | None = None, input: bytes | str | None = None,  # noqa: A002
            text: bool = False) -> subprocess.CompletedProcess[Any]:  # fmt: skip
    """``proconsul <args>`` in this process. ``env`` is the whole environment (default: this process's), as
    ``subprocess.run(env=...)`` takes it; ``input`` is stdin (default: empty); ``text`` decodes the output as
    ``subprocess.run(text=True)`` does."""
    from registry.cli.app import main

    environ = dict(os.environ if env is None else env)
    # argparse wraps help at the terminal's width; a child whose output is a pipe has none and gets 80.
    environ.setdefault("COLUMNS", "80")
    raw_in = input.encode() if isinstance(input, str) else (input or b"")
    out, err = io.BytesIO(), io.BytesIO()
    stdin = io.TextIOWrapper(io.BytesIO(raw_in), encoding="utf-8")
    stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        with _environment(environ):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors and -h, as a process exits
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
    finally:
        stdout.flush()
        stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = saved
    stdout_b, stderr_b = out.getvalue(), err.getvalue()
    if text:  # decoded with universal newlines, as subprocess.run(text=True) does
        return subprocess.CompletedProcess(["proconsul", *args], code, _text(stdout_b), _text(stderr_b))
    return subprocess.CompletedProcess(["proconsul", *args], code, stdout_b, stderr_b)


def _text(raw: bytes) -> str:
    return raw.decode().replace("\r\n", "\n").replace("\r", "\n")


def run_process(*args: str, env: Mapping[str, str] | None = None, input: bytes | str | None = None,  # noqa: A002
                text: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[Any]:  # fmt: skip
    """``proconsul <args>`` as a real process (the console script), with the same arguments as ``run_cli``."""
    if isinstance(input, str) and not text:
        input = input.encode()  # noqa: A001
    return subprocess.run([BIN, *args], capture_output=True, timeout=timeout, input=input, text=text,
                          env=dict(os.environ if env is None else env))  # fmt: skip
