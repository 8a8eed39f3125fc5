"""``proconsul lock [options] prefix child...``: run a child process while holding a KV lock (Consul's ``consul lock``).

The lock itself is Consul's lock recipe (or, with ``-n`` above 1, its semaphore recipe) from
``registry.client.lock``. This command adds what ``consul lock`` adds around it: Go ``flag`` parsing with Consul's
messages, the child (started once the lock is held, with ``CONSUL_LOCK_HELD=true``), signals forwarded to it,
SIGTERM then SIGKILL after a grace period when the lock is lost, and Consul's exit codes.

The argument parsing and exit-code rules are pure functions, tested without an agent; ``run_lock`` is the
asyncio shell that performs them.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from registry.client.http import AgentHTTP, APIError, HTTPConfig, TLSConfigError, TLSFlags, TokenFileError
from registry.client.lock import MONITOR_RETRY, LockAPI, LockFailed, LockOptions, Mutex, Semaphore, lock_key
from registry.gocompat import DurationError, parse_duration

KILL_GRACE_S = 5.0  # lockKillGracePeriod: SIGTERM, then SIGKILL after this long
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

USAGE = """\
Usage: proconsul lock [options] prefix child...

  Acquire a lock on a KV prefix and run the child command while it is held.
  The child sees CONSUL_LOCK_HELD=true in its environment. If the lock is lost
  or the agent cannot be reached, the child gets SIGTERM and, 5 seconds later,
  SIGKILL. When the child exits the lock is released.

  The lock lives at <prefix>/.lock; every holder of a prefix must use the same -n.

Command Options:

  -child-exit-code       Exit 2 when the child fails (otherwise the child's
                         failure is not propagated). Default false.
  -monitor-retry=<int>   How many 500 errors (with 1s between tries) to ride out
                         while watching the lock. Default 3; 0 disables.
  -n=<int>               Number of concurrent holders. Default 1 (a mutex);
                         more than 1 is a semaphore.
  -name=<string>         Name of the lock session. Default: derived from the
                         child command and the prefix.
  -pass-stdin            Give the child this process's stdin.
  -shell                 Run the child through $SHELL -c (or /bin/sh -c).
                         Default true; -shell=false runs it directly.
  -timeout=<duration>    Give up acquiring after this long, e.g. "500ms", "3h".
                         Default 0: wait forever. -try is a deprecated alias.
  -verbose               Log what the command does (on stderr).

HTTP API Options:

  -http-addr=<address>   Agent address (env CONSUL_HTTP_ADDR / PROCONSUL_HTTP_ADDR).
                         Default http://127.0.0.1:8500.
  -token=<value>         ACL token (env CONSUL_HTTP_TOKEN).
  -token-file=<path>     File holding the ACL token; wins over -token (env CONSUL_HTTP_TOKEN_FILE).
  -datacenter=<name>     Datacenter to use. Default: the agent's.
  -stale                 Accepted for compatibility; the lock always reads consistently.
"""


# ---------------------------------------------------------------------- pure core: arguments


class UsageError(Exception):
    """Bad command line: the message, then (when ``show_usage``) the usage text; exit 1."""

    def __init__(self, message: str, show_usage: bool = True) -> None:
        super().__init__(message)
        self.show_usage = show_usage


class HelpRequested(Exception):
    pass


@dataclass(frozen=True)
class Options:
    prefix: str
    child: tuple[str, ...]
    limit: int = 1
    name: str = ""
    pass_stdin: bool = False
    shell: bool = True
    timeout: float = 0.0
    monitor_retry: int = MONITOR_RETRY
    child_exit_code: bool = False
    verbose: bool = False
    http_addr: str | None = None
    token: str | None = None
    token_file: str | None = None
    datacenter: str | None = None
    stale: bool = False
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None

    @property
    def key(self) -> str:
        return lock_key(self.prefix)

    @property
    def session_name(self) -> str:
        return self.name or default_session_name(self.child, self.prefix)

    def lock_options(self) -> LockOptions:
        """What the recipe needs of these options."""
        return LockOptions(prefix=self.prefix, session_name=self.session_name, limit=self.limit,
                           timeout=self.timeout, monitor_retry=self.monitor_retry)  # fmt: skip

    def http_config(self) -> HTTPConfig:
        """The agent to talk to. ``-stale`` is accepted but not used: the lock always reads consistently."""
        tls = TLSFlags(ca_file=self.ca_file, ca_path=self.ca_path, client_cert=self.client_cert,
                       client_key=self.client_key, tls_server_name=self.tls_server_name)  # fmt: skip
        return HTTPConfig.from_flags(self.http_addr, self.token, self.datacenter, token_file=self.token_file, tls=tls)


_BOOL_FLAGS = {"pass-stdin": "pass_stdin", "shell": "shell", "child-exit-code": "child_exit_code",
               "verbose": "verbose", "stale": "stale"}  # fmt: skip
_VALUE_FLAGS = {"n": "limit", "name": "name", "timeout": "timeout", "try": "timeout",
                "monitor-retry": "monitor_retry", "http-addr": "http_addr", "token": "token",
                "token-file": "token_file", "datacenter": "datacenter", "ca-file": "ca_file", "ca-path": "ca_path",
                "client-cert": "client_cert", "client-key": "client_key",
                "tls-server-name": "tls_server_name"}  # fmt: skip
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _convert(flag: str, attr: str, raw: str) -> Any:
    if attr in ("limit", "monitor_retry"):
        try:
            return int(raw, 0)
        except ValueError:
            raise UsageError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    if attr == "timeout":
        try:
            return parse_duration(raw, allow_negative=True, field=flag)
        except DurationError:
            raise UsageError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    return raw


def parse_args(argv: list[str]) -> Options:
    """Go ``flag`` semantics: flags (``-f``, ``--f``, ``-f=v``, ``-f v``) up to the first non-flag argument or
    ``--``; everything after is the prefix and the child command, untouched (so the child's own flags stay its
    own). Then Consul's checks, in Consul's order and with its messages."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if len(arg) < 2 or not arg.startswith("-"):
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name.startswith("-") or name.startswith("="):
            raise UsageError(f"bad flag syntax: {arg}")
        name, eq, raw = name.partition("=")
        i += 1
        if name in ("h", "help"):
            raise HelpRequested
        if name in _BOOL_FLAGS:
            if not eq:
                values[_BOOL_FLAGS[name]] = True
            elif raw in _TRUE or raw in _FALSE:
                values[_BOOL_FLAGS[name]] = raw in _TRUE
            else:
                raise UsageError(f'invalid boolean value "{raw}" for -{name}: parse error')
        elif name in _VALUE_FLAGS:
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                raw = argv[i]
                i += 1
            values[_VALUE_FLAGS[name]] = _convert(name, _VALUE_FLAGS[name], raw)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
    extra = argv[i:]
    if values.get("limit", 1) <= 0:
        raise UsageError("Lock holder limit must be positive", show_usage=False)
    if len(extra) < 2:
        raise UsageError("Key prefix and child command must be specified", show_usage=False)
    if values.get("timeout", 0.0) < 0:
        raise UsageError("Timeout must be positive", show_usage=False)
    if values.get("monitor_retry", MONITOR_RETRY) < 0:
        raise UsageError("Number for 'monitor-retry' must be >= 0", show_usage=False)
    return Options(prefix=extra[0].lstrip("/"), child=tuple(extra[1:]), **values)


def default_session_name(child: tuple[str, ...] | list[str], prefix: str) -> str:
    return f"Consul lock for '{' '.join(child)}' at '{prefix}'"


def child_argv(child: tuple[str, ...], use_shell: bool, env: dict[str, str]) -> list[str]:
    """Consul's exec.Script (``$SHELL -c "<args joined by spaces>"``, /bin/sh by default) or exec.Subprocess."""
    if use_shell:
        return [env.get("SHELL") or "/bin/sh", "-c", " ".join(child)]
    return list(child)


# ---------------------------------------------------------------------- pure core: exit codes


class Outcome(enum.Enum):
    CHILD_EXITED = "child exited"
    LOCK_LOST = "lock lost"
    SHUTDOWN = "shutdown"


def exit_code(outcome: Outcome, child_failed: bool, propagate: bool) -> int:
    """Consul's rules: 0 after the child ran, whatever it returned, unless ``-child-exit-code``, then 2 when the
    child failed (non-zero exit, killed, or could not start). Losing the lock exits 1, as Consul's does (there
    through the release of a lock no longer held failing): the caller can tell the child's work was cut short."""
    if outcome is Outcome.LOCK_LOST:
        return 1
    if outcome is Outcome.CHILD_EXITED and propagate and child_failed:
        return 2
    return 0


def describe_exit(returncode: int) -> str:
    """Go's ExitError text, which Consul prints as ``Error running handler: <this>``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"signal: {_SIGNAL_WORDS.get(name, name)}"
    return f"exit status {returncode}"


_SIGNAL_WORDS = {"SIGTERM": "terminated", "SIGKILL": "killed", "SIGINT": "interrupt", "SIGHUP": "hangup",
                 "SIGQUIT": "quit", "SIGABRT": "aborted", "SIGSEGV": "segmentation fault",
                 "SIGUSR1": "user defined signal 1", "SIGUSR2": "user defined signal 2"}  # fmt: skip


# ---------------------------------------------------------------------- shell: the child


class Runner:
    def __init__(self, opts: Options, log: Any) -> None:
        self.opts = opts
        self.log = log
        self.child: asyncio.subprocess.Process | None = None
        self.shutdown = asyncio.Event()
        self.forwarded: set[int] = set()

    def on_signal(self, sig: int) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            try:
                child.send_signal(sig)
                self.forwarded.add(sig)
            except ProcessLookupError:
                pass
            except OSError as exc:
                print(f"Warning, could not forward signal: {exc}", file=sys.stderr)
        if sig in SHUTDOWN_SIGNALS:
            self.log.debug("shutdown triggered", signal=signal.Signals(sig).name)
            self.shutdown.set()

    async def start_child(self) -> asyncio.subprocess.Process | None:
        env = {**os.environ, "CONSUL_LOCK_HELD": "true"}
        argv = child_argv(self.opts.child, self.opts.shell, env)
        self.log.debug("starting handler", argv=argv, pass_stdin=self.opts.pass_stdin)
        try:
            self.child = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=None if self.opts.pass_stdin else asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            print(f"Error starting handler: {exc}", file=sys.stderr)
            return None
        return self.child

    async def kill_child(self) -> None:
        child = self.child
        if child is None or child.returncode is not None:
            self.log.debug("no child process to kill")
            return
        if signal.SIGTERM not in self.forwarded:
            self.log.debug("terminating child", pid=child.pid)
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(child.wait(), KILL_GRACE_S)
            self.log.debug("child terminated", pid=child.pid)
            return
        except TimeoutError:
            self.log.debug("child did not exit after grace period, killing", pid=child.pid, grace_s=KILL_GRACE_S)
        try:
            child.kill()
        except ProcessLookupError:
            pass
        await child.wait()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_lock(opts: Options, config: HTTPConfig, log: Any) -> int:
    loop = asyncio.get_running_loop()
    runner = Runner(opts, log)
    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, runner.on_signal, sig)
    api = LockAPI(AgentHTTP(config))
    try:
        try:
            await api.node_name()
        except APIError as exc:
            print(f"Error querying Consul agent: {exc}", file=sys.stderr)
            return 1
        if opts.limit > 1:
            mutex: Mutex = Semaphore(api, opts.lock_options(), log)
            log.debug("setting up semaphore", limit=opts.limit, prefix=opts.prefix)
        else:
            mutex = Mutex(api, opts.lock_options(), log)
            log.debug("setting up lock", key=opts.key)
        try:
            rc = await _hold_and_run(opts, runner, mutex, log)
        except BaseException:
            await mutex.release_and_cleanup()
            raise
        errors = await mutex.release_and_cleanup()
        for err in errors:
            print(err, file=sys.stderr)
        return 1 if errors else rc  # Consul: a failed release or cleanup is exit 1, whatever the child did
    finally:
        await api.close()
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)


async def _hold_and_run(opts: Options, runner: Runner, mutex: Mutex, log: Any) -> int:
    log.debug("attempting lock acquisition", key=opts.key)
    acquired: list[bool] = []
    failure: list[str] = []

    async def acquire() -> None:
        try:
            await mutex.create_session()
            acquired.append(await mutex.acquire())
        except LockFailed as exc:
            failure.append(str(exc))

    await _first(acquire(), runner.shutdown.wait())
    if failure:
        print(f"Lock acquisition failed: {failure[0]}", file=sys.stderr)
        return 1
    if not acquired or not acquired[0]:
        print("Shutdown triggered or timeout during lock acquisition", file=sys.stderr)
        return 1
    if runner.shutdown.is_set():
        print("Shutdown triggered during lock acquisition", file=sys.stderr)
        return 1

    child = await runner.start_child()
    if child is None:
        return exit_code(Outcome.CHILD_EXITED, True, opts.child_exit_code)
    child_wait = asyncio.ensure_future(child.wait())
    await _first(asyncio.shield(child_wait), mutex.wait_lost(), runner.shutdown.wait())
    if child_wait.done():
        rc = child_wait.result()
        if rc != 0:
            print(f"Error running handler: {describe_exit(rc)}", file=sys.stderr)
        log.debug("child terminated, releasing lock", returncode=rc)
        return exit_code(Outcome.CHILD_EXITED, rc != 0, opts.child_exit_code)
    if runner.shutdown.is_set():
        log.debug("shutdown triggered, killing child")
        outcome = Outcome.SHUTDOWN
    else:
        print(f"Lock lost, killing child: {mutex.lost_reason}", file=sys.stderr)
        outcome = Outcome.LOCK_LOST
    await runner.kill_child()
    await child_wait
    return exit_code(outcome, True, opts.child_exit_code)


# ---------------------------------------------------------------------- entry point


def cmd_lock(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
    except HelpRequested:
        print(USAGE)
        return 0
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        if exc.show_usage:
            print(f"\n{USAGE}", file=sys.stderr)
        return 1
    from registry import eventloop, logs

    logs.configure("debug" if opts.verbose else "warn", stream=sys.stderr)
    import structlog

    log = structlog.get_logger("proconsul.lock").bind(prefix=opts.prefix)
    try:
        config = opts.http_config()
        config.ssl_context()  # a TLS file that cannot be used fails here, named
    except (TokenFileError, TLSConfigError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return eventloop.run(run_lock(opts, config, log))

