"""``proconsul debug``: Consul's ``consul debug``, an archive of what an operator needs to look into an agent.

For ``-duration`` (default 5m) the command records the agent's log (``/v1/agent/monitor`` at trace level)
and its telemetry (``/v1/agent/metrics/stream``), after saving what does not change: ``agent.json``
(``/v1/agent/self``), ``host.json`` (``/v1/agent/host``) and ``members.json`` (``/v1/agent/members?wan``).
Then ``index.json`` and ``listpeers.json`` (the Raft peers as ``operator raft list-peers`` shows them), and
the directory becomes ``<output>.tar.gz`` (written to a temporary name, synced, renamed, the directory
removed), unless ``-archive=false``. The names of the files and of the archive are Consul's, so a tool that
reads Consul's bundles reads this one. Interrupted (Ctrl-C, SIGTERM), it stops recording and archives what it
has. ``-capture`` picks targets; ``pprof`` cannot be had (Proconsul serves no Go profiles) and is dropped
with a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from registry.cli.common import (
    Client,
    CLIError,
    _reason,
    go_bool,
    http_config,
    http_options,
    opt,
    parser,
    table,
)
from registry.client.http import AgentHTTP, AgentUnavailable, StatusError
from registry.gocompat import DurationError, format_duration, parse_duration

__all__ = ["cmd_debug"]

INTERVAL_S = 30.0
DURATION_S = 300.0
GRACE_S = 2.0  # added to the duration so the last interval is captured within it, as Consul adds
MIN_INTERVAL_S = 5.0
MIN_DURATION_S = 10.0
ARCHIVE_EXT = ".tar.gz"
PROTOCOL_VERSION = 1  # the bundle's layout version (index.json "Version"), Consul's
# Go's RFC 3339 with hyphens for colons (tar takes "host:path" for a remote file).
TIME_FORMAT = "%Y-%m-%dT%H-%M-%SZ"
TARGETS = ("metrics", "logs", "pprof", "host", "agent", "members")
DEPRECATED_TARGETS = ("cluster",)  # the old name of members


def _duration(raw: str) -> float:
    try:
        return parse_duration(raw, field="duration")
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _write_json(path: Path, value: Any) -> None:
    """Go's json.MarshalIndent with a tab, as Consul writes each file of the bundle."""
    path.write_text(json.dumps(value, indent="\t"))


def _say(line: str) -> None:
    print(line, flush=True)


class Debug:
    """One capture: the validated flags, the output directory and the client."""

    def __init__(self, http: AgentHTTP, args: argparse.Namespace) -> None:
        self.http = http
        self.client = Client(http)
        self.interval: float = args.interval
        self.duration: float = args.duration
        self.output = Path(args.output)
        self.archive: bool = args.archive
        self.capture: list[str] = list(args.capture or [])
        self.stop = asyncio.Event()

    def wants(self, target: str) -> bool:
        return target in self.capture or (target == "members" and "cluster" in self.capture)

    async def prepare(self) -> str:
        """Consul's checks before anything is written; the agent's version. CLIError("Capture validation
        failed: ...") for bad timings, an unknown target, an existing output or an agent not answering."""
        if self.duration < MIN_DURATION_S:
            raise CLIError(f"Capture validation failed: duration must be longer than {format_duration(MIN_DURATION_S)}")
        if self.interval < MIN_INTERVAL_S:
            raise CLIError(f"Capture validation failed: interval must be longer than {format_duration(MIN_INTERVAL_S)}")
        if self.duration < self.interval:
            raise CLIError(f"Capture validation failed: duration ({format_duration(self.duration)}) must be longer "
                           f"than interval ({format_duration(self.interval)})")  # fmt: skip
        try:
            resp = await self.http.request("GET", "/v1/agent/self")
        except AgentUnavailable as exc:
            raise CLIError(f"Capture validation failed: error querying target agent: {_reason(exc.cause)}. verify "
                           "connectivity and agent address") from None  # fmt: skip
        if resp.status >= 400:
            raise CLIError(f"Capture validation failed: error querying target agent: Unexpected response code: "
                           f"{resp.status} ({resp.text}). verify connectivity and agent address")  # fmt: skip
        try:
            me = resp.json()
        except ValueError:
            me = None
        version = ((me.get("Config") if isinstance(me, dict) else None) or {}).get("Version")
        if not isinstance(version, str):
            raise CLIError("Capture validation failed: agent response did not contain version key")
        if not self.capture:
            self.capture = list(TARGETS)
        if "pprof" in self.capture:
            self.capture = [t for t in self.capture if t != "pprof"]
            print("==> [WARN] Unable to capture pprof. Proconsul serves no Go profiles (/debug/pprof); the other "
                  "targets are captured.", file=sys.stderr)  # fmt: skip
        for target in self.capture:
            if target not in TARGETS and target not in DEPRECATED_TARGETS:
                raise CLIError(f"Capture validation failed: target not found: {target}")
        if self.output.exists():
            raise CLIError(f"Capture validation failed: output directory already exists: {self.output}")
        try:
            self.output.mkdir(parents=True, mode=0o755)
        except OSError as exc:
            raise CLIError(f"Capture validation failed: could not create output directory: {exc}") from None
        return version

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        resp = await self.client.request("GET", path, params)
        if resp.status >= 400:
            raise CLIError(f"Unexpected response code: {resp.status} ({resp.text})")
        return resp.json()

    async def capture_static(self) -> list[str]:
        """host.json, agent.json, members.json: each that fails is named, and the rest still written."""
        errors: list[str] = []
        for target, path, params in (("host", "/v1/agent/host", None), ("agent", "/v1/agent/self", None),
                                     ("members", "/v1/agent/members", {"wan": "1"})):  # fmt: skip
            if not self.wants(target):
                continue
            try:
                _write_json(self.output / f"{target}.json", await self._get(path, params))
            except (CLIError, OSError) as exc:
                errors.append(f"{target}: {exc}")
        return errors

    async def _record(self, path: str, params: dict[str, Any], name: str) -> None:
        """Write a streaming answer into ``name`` until the duration is up or the capture is stopped."""
        with (self.output / name).open("wb") as out:

            def chunk(piece: bytes) -> None:
                out.write(piece)

            try:
                await self.http.stream(path, params, chunk)
            except StatusError as exc:
                raise CLIError(f"{name}: Unexpected response code: {exc}") from None
            except AgentUnavailable as exc:
                raise CLIError(f"{name}: {exc.cause}") from None

    async def _intervals(self) -> None:
        """Consul's per-interval progress lines (it takes its heap and goroutine profiles there)."""
        count = 0
        _say(f"==> Beginning capture interval {_now()} ({count})")
        _say(f"==> Capture successful {_now()} ({count})")
        while True:
            await asyncio.sleep(self.interval)
            count += 1
            _say(f"==> Capture successful {_now()} ({count})")

    async def capture_dynamic(self) -> str | None:
        """Logs and metrics for the duration (plus the grace), with a progress line per interval; an error
        text when a recording failed or the capture was stopped early, else None."""
        jobs: list[asyncio.Task[None]] = [asyncio.ensure_future(self._intervals())]
        if self.wants("logs"):
            jobs.append(asyncio.ensure_future(self._record("/v1/agent/monitor", {"loglevel": "trace"}, "consul.log")))
        if self.wants("metrics"):
            jobs.append(asyncio.ensure_future(self._record("/v1/agent/metrics/stream", {}, "metrics.json")))
        stopped = asyncio.ensure_future(self.stop.wait())
        error: str | None = None
        try:
            pending: set[asyncio.Future[Any]] = {*jobs, stopped}
            deadline = time.monotonic() + self.duration
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if stopped in done:
                    error = "stopping collection due to shutdown signal"
                    break
                for job in done:
                    exc = job.exception()
                    if exc is not None and error is None:
                        error = str(exc)
        finally:
            for job in [*jobs, stopped]:
                job.cancel()
            await asyncio.gather(*jobs, stopped, return_exceptions=True)
        return error

    async def capture_raft(self) -> None:
        """listpeers.json: the Raft peers as a table, with how far each trails the leader."""
        conf = await self._get("/v1/operator/raft/configuration")
        servers = conf.get("Servers") or []
        leader_index = next((s.get("LastIndex", 0) for s in servers if s.get("Leader")), 0)
        rows = [["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit Index", "Trails Leader By"]]
        for s in servers:
            index = s.get("LastIndex", 0)
            behind = leader_index - index
            trails = "-" if s.get("Leader") else f"{behind} commit{'' if behind == 1 else 's'}"
            rows.append([s["Node"], s["ID"], s["Address"], "leader" if s.get("Leader") else "follower",
                         str(s.get("Voter")).lower(), s.get("ProtocolVersion") or "<=1", str(index), trails])  # fmt: skip
        (self.output / "listpeers.json").write_text(table(rows))

    def write_archive(self) -> Path:
        """``<output>.tar.gz`` holding the directory under its own name; written to a temporary file that is
        synced and renamed into place, then the directory is removed."""
        path = Path(str(self.output) + ARCHIVE_EXT)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    tar.add(self.output, arcname=self.output.name)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        shutil.rmtree(self.output)
        return path


def _now() -> str:
    """Go's time.Time.String() of now in UTC, as Consul prints it in its progress lines."""
    t = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d} +0000 UTC"


def cmd_debug(argv: list[str]) -> int:
    p = parser("proconsul debug", "Records a debugging archive for operators")
    http_options(p)
    default_output = "consul-debug-" + time.strftime(TIME_FORMAT, time.gmtime())
    opt(p, "capture", action="append", default=None,
        help=f"One or more types of information to capture ({', '.join(TARGETS)}); repeatable. Default: all.")  # fmt: skip
    opt(p, "interval", type=_duration, default=INTERVAL_S,
        help="How often to capture dynamic information. Defaults to 30s.")  # fmt: skip
    opt(p, "duration", type=_duration, default=DURATION_S, help="The total time to record information. Defaults to 5m0s.")
    opt(p, "archive", type=go_bool, nargs="?", const=True, default=True,
        help="Archive and compress the files (default true); false leaves the directory.")  # fmt: skip
    opt(p, "output", default=default_output, help="The path of the archive (without .tar.gz) or directory.")
    opt(p, "since", default="", help="Consul runs hcdiag with it; not available in Proconsul.")
    p.add_argument("rest", nargs="*")
    args = p.parse_args(argv)
    try:
        if args.rest:
            raise CLIError("debug: Too many arguments provided, expected 0")
        if args.since:
            raise CLIError("-since runs HashiCorp's hcdiag, which Proconsul does not ship; capture the present "
                           "with -duration instead.")  # fmt: skip
        return asyncio.run(_capture(args))
    except CLIError as exc:
        raise CLIError(f"==> {exc}", exc.code) from None  # Consul's prefixed error lines


async def _capture(args: argparse.Namespace) -> int:
    """The capture ``cmd_debug`` runs, once the flags are read."""
    async with AgentHTTP(http_config(args), total=None, connect=10.0) as http:
        d = Debug(http, args)
        version = await d.prepare()
        name = str(d.output) + (ARCHIVE_EXT if d.archive else "")
        _say("==> Starting debugger and capturing static information...")
        _say(f"     Agent Version: '{version}'")
        _say(f"          Interval: '{format_duration(d.interval)}'")
        _say(f"          Duration: '{format_duration(d.duration)}'")
        _say(f"            Output: '{name}'")
        _say(f"           Capture: '{', '.join(d.capture)}'")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, d.stop.set)
        d.duration += GRACE_S
        errors = await d.capture_static()
        if errors:
            print(f"==> Static capture failed: {'; '.join(errors)}", file=sys.stderr)
        if d.wants("metrics") or d.wants("logs"):
            error = await d.capture_dynamic()
            if error:
                print(f"==> Error encountered during collection: {error}", file=sys.stderr)
        _write_json(d.output / "index.json", {
            "Version": PROTOCOL_VERSION, "AgentVersion": version, "Interval": format_duration(d.interval),
            "Duration": format_duration(d.duration), "Targets": d.capture,
        })  # fmt: skip
        try:
            await d.capture_raft()
        except (CLIError, OSError, KeyError) as exc:
            print(f"==> Raft list peers capture failed: {exc}", file=sys.stderr)
        if d.archive:
            try:
                await loop.run_in_executor(None, d.write_archive)
            except OSError as exc:
                print(f"==> Archive creation failed: {exc}", file=sys.stderr)
                return 1
        _say(f"    Saved debug archive: {name}")
        return 0

