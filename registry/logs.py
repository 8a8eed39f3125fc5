"""Structured logging: key-value events, human-readable in a terminal, JSON with -log-json; written to stdout,
to a rotated log file, to syslog, and to every ``/v1/agent/monitor`` stream attached.

As Consul's agent does (logging/logger.go, logging/logfile.go, logging/monitor): one event is rendered once
per format and handed to each sink at that sink's level.

- stdout: the agent's format; colour only when stdout is a terminal (journald, a pipe or a file get plain
  lines, tracebacks included).
- ``log_file``: a path, or a directory (ending in ``/``) holding ``proconsul.log``. The active file always has
  that name; rotation (``log_rotate_bytes``, ``log_rotate_duration``, default 24h) renames it to
  ``<name>-<unix nanoseconds><ext>`` and, with ``log_rotate_max_files`` > 0, keeps that many archives (-1:
  none), exactly Consul's LogFile.
- ``enable_syslog``: the same plain lines to the local syslog with ``syslog_facility`` (default LOCAL0).
- monitors: each has its own level and format and a bounded buffer; a slow reader never blocks the agent:
  lines beyond the buffer are dropped and counted (Consul's monitor drops, then says how many).

structlog's configuration is process-wide; ``configure`` builds the one ``LogRouter`` the process logs
through and returns it, and the agent hands it to the HTTP API for the monitor endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from registry.gocompat import DurationError, parse_duration

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "off": logging.CRITICAL + 10}  # fmt: skip
# structlog's method names (add_log_level's "level") -> numbers.
_EVENT_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
                 "error": logging.ERROR, "exception": logging.ERROR, "critical": logging.CRITICAL,
                 "fatal": logging.CRITICAL}  # fmt: skip
DEFAULT_LOG_NAME = "proconsul.log"
DEFAULT_ROTATE_DURATION = 24 * 3600.0
SYSLOG_FACILITIES = ("KERN", "USER", "MAIL", "DAEMON", "AUTH", "SYSLOG", "LPR", "NEWS", "UUCP", "CRON", "AUTHPRIV",
                     "FTP", "LOCAL0", "LOCAL1", "LOCAL2", "LOCAL3", "LOCAL4", "LOCAL5", "LOCAL6", "LOCAL7")  # fmt: skip
MONITOR_BUFFER = 512  # lines a monitor holds for a slow reader (Consul's monitor buffer size)


class LogConfigError(ValueError):
    """A logging setting that cannot work; worded for the operator."""


def level_number(name: str) -> int | None:
    """A Consul log level name (trace, debug, info, warn, error, off; any case) as a number, or None."""
    return _LEVELS.get(name.strip().lower())


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The agent's logging keys (Consul's ``log_level``, ``log_json``, ``log_file``, ``log_rotate_*``,
    ``enable_syslog``, ``syslog_facility``)."""

    level: str = "info"
    json: bool = False
    file: str = ""
    rotate_bytes: int = 0
    rotate_duration: float = DEFAULT_ROTATE_DURATION
    rotate_max_files: int = 0
    syslog: bool = False
    syslog_facility: str = "LOCAL0"


def settings_from(level: str, json_output: bool, extra: Mapping[str, Any]) -> LogSettings:
    """Validate the logging keys (the top-level ``log_level``/``log_json`` plus the others, which the agent
    config keeps in ``extra``); raises ``LogConfigError`` naming the key."""
    if level_number(level) is None:
        raise LogConfigError(f"log_level {level!r} is not one of trace, debug, info, warn, error")
    path = extra.get("log_file", "")
    if not isinstance(path, str):
        raise LogConfigError(f"log_file must be a path, got {path!r}")
    rotate_bytes = extra.get("log_rotate_bytes", 0)
    if isinstance(rotate_bytes, bool) or not isinstance(rotate_bytes, int) or rotate_bytes < 0:
        raise LogConfigError(f"log_rotate_bytes must be a non-negative number of bytes, got {rotate_bytes!r}")
    max_files = extra.get("log_rotate_max_files", 0)
    if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < -1:
        raise LogConfigError(f"log_rotate_max_files must be a number of files (0: keep all, -1: keep none), "
                             f"got {max_files!r}")  # fmt: skip
    duration = DEFAULT_ROTATE_DURATION
    if extra.get("log_rotate_duration") not in (None, "", 0):
        try:
            duration = parse_duration(extra["log_rotate_duration"], field="log_rotate_duration")
        except DurationError as exc:
            raise LogConfigError(str(exc)) from None
        if duration <= 0:
            raise LogConfigError("log_rotate_duration must be positive")
    syslog = extra.get("enable_syslog", False)
    if not isinstance(syslog, bool):
        raise LogConfigError(f"enable_syslog must be true or false, got {syslog!r}")
    facility = extra.get("syslog_facility", "LOCAL0")
    if not isinstance(facility, str) or facility.upper() not in SYSLOG_FACILITIES:
        raise LogConfigError(f"syslog_facility {facility!r} is not a syslog facility (e.g. LOCAL0, DAEMON)")
    return LogSettings(level.lower(), json_output, path, rotate_bytes, duration, max_files, syslog, facility.upper())


# ---------------------------------------------------------------------- the log file


class LogFile:
    """Consul's rotating log file (logging/logfile.go): the active file keeps its name and is appended to;
    once it holds ``max_bytes`` (when > 0) or is ``duration`` old it is renamed with the current time in unix
    nanoseconds before the extension, and archives beyond ``max_files`` are deleted oldest first."""

    def __init__(self, path: str, duration: float = DEFAULT_ROTATE_DURATION, max_bytes: int = 0, max_files: int = 0,
                 clock: Callable[[], float] = time.monotonic, now_ns: Callable[[], int] = time.time_ns) -> None:  # fmt: skip
        directory, name = os.path.split(path)
        self.dir = Path(directory or ".")
        self.name = name or DEFAULT_LOG_NAME
        self.duration = duration
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._clock = clock
        self._now_ns = now_ns
        self._file: IO[str] | None = None
        self._created = 0.0
        self._written = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.dir / self.name

    def _pattern(self) -> tuple[str, str]:
        stem, ext = os.path.splitext(self.name)
        return stem + "-", ext or ".log"

    def archives(self) -> list[Path]:
        """The rotated files, oldest first (their names sort by creation time)."""
        prefix, ext = self._pattern()
        return sorted(p for p in self.dir.glob(f"{prefix}*{ext}") if p.name[len(prefix):-len(ext)].isdigit())

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across writes
        os.chmod(self.path, 0o640)
        self._created = self._clock()
        self._written = 0

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        prefix, ext = self._pattern()
        os.replace(self.path, self.dir / f"{prefix}{self._now_ns()}{ext}")
        self._prune()
        self._open()

    def _prune(self) -> None:
        if self.max_files == 0:
            return
        found = self.archives()
        doomed = found if self.max_files < 0 else found[: max(0, len(found) - self.max_files)]
        for p in doomed:
            try:
                p.unlink()
            except OSError:
                pass

    def write(self, line: str) -> None:
        with self._lock:
            if self._file is None:
                self._open()
            elif (self.max_bytes > 0 and self._written >= self.max_bytes) or \
                    self._clock() - self._created >= self.duration:  # fmt: skip
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()
            self._written += len(line.encode())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ---------------------------------------------------------------------- monitors


class Monitor:
    """One /v1/agent/monitor stream: lines at or above ``level`` in its format, buffered up to ``capacity``
    lines; more than that while the reader is slow are dropped and counted, never waited for."""

    def __init__(self, level: int, json_format: bool, capacity: int = MONITOR_BUFFER) -> None:
        self.level = level
        self.json = json_format
        self.capacity = capacity
        self.dropped = 0
        self._lines: deque[str] = deque()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._ready = asyncio.Event()

    def offer(self, line: str) -> None:
        """From any thread: keep the line if there is room, else count it as dropped."""
        if len(self._lines) >= self.capacity:
            self.dropped += 1
            return
        self._lines.append(line)
        if threading.get_ident() == self._thread:
            self._ready.set()
        else:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def next_lines(self) -> list[str]:
        """Wait for lines; return them all (and a note of what was dropped since the last call)."""
        await self._ready.wait()
        self._ready.clear()
        out = []
        while self._lines:
            out.append(self._lines.popleft())
        if self.dropped:
            out.append(f"Monitor dropped {self.dropped} logs during monitor request\n")
            self.dropped = 0
        return out


# ---------------------------------------------------------------------- the router


class LogRouter:
    """Renders each event once per format and hands it to the sinks whose level it meets. The last
    structlog processor: it writes, then drops the event (nothing is left for structlog's own logger)."""

    def __init__(self, settings: LogSettings, stream: IO[str] | None = None) -> None:
        self.settings = settings
        self.level = _LEVELS[settings.level]
        self.stream: IO[str] = stream if stream is not None else sys.stdout
        colors = self.stream.isatty()
        self._console = _console(colors)
        self._plain = self._console if not colors else _console(False)
        self._json = structlog.processors.JSONRenderer()
        self._file: LogFile | None = None
        if settings.file:
            self._file = LogFile(settings.file, settings.rotate_duration, settings.rotate_bytes,
                                 settings.rotate_max_files)  # fmt: skip
        self._syslog_priority: Callable[[int], int] | None = None
        if settings.syslog:
            import syslog

            syslog.openlog("proconsul", 0, getattr(syslog, f"LOG_{settings.syslog_facility}"))
            prio = {logging.DEBUG: syslog.LOG_DEBUG, logging.INFO: syslog.LOG_INFO, logging.WARNING: syslog.LOG_WARNING,
                    logging.ERROR: syslog.LOG_ERR, logging.CRITICAL: syslog.LOG_CRIT}  # fmt: skip
            self._syslog_priority = lambda n: prio.get(n, syslog.LOG_INFO)
        self.monitors: list[Monitor] = []
        self._write_lock = threading.Lock()  # events come from worker threads too: whole lines, never interleaved
        self._on_level_change: Callable[[int], None] | None = None

    @property
    def floor(self) -> int:
        """The lowest level anything listens at: structlog filters below it before any work is done."""
        return min([self.level, *(m.level for m in self.monitors)])

    def attach(self, monitor: Monitor) -> None:
        before = self.floor
        self.monitors.append(monitor)
        if self.floor != before and self._on_level_change is not None:
            self._on_level_change(self.floor)

    def detach(self, monitor: Monitor) -> None:
        before = self.floor
        if monitor in self.monitors:
            self.monitors.remove(monitor)
        if self.floor != before and self._on_level_change is not None:
            self._on_level_change(self.floor)

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        number = _EVENT_LEVELS.get(str(event_dict.get("level", method)), logging.INFO)
        rendered: dict[str, str] = {}

        def line(kind: str) -> str:
            text = rendered.get(kind)
            if text is None:
                copy = dict(event_dict)
                if kind == "json":
                    text = str(self._json(logger, method, structlog.processors.format_exc_info(logger, method, copy)))
                else:
                    text = str((self._console if kind == "console" else self._plain)(logger, method, copy))
                text = rendered[kind] = text + "\n"
            return text

        if number >= self.level:
            own = "json" if self.settings.json else "console"
            try:
                with self._write_lock:
                    self.stream.write(line(own))
                    self.stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (a closed pipe): the other sinks still get the line
            if self._file is not None:
                try:
                    self._file.write(line("json" if self.settings.json else "plain"))
                except OSError:
                    pass
            if self._syslog_priority is not None:
                import syslog

                syslog.syslog(self._syslog_priority(number), line("plain").rstrip("\n"))
        for monitor in list(self.monitors):
            if number >= monitor.level:
                monitor.offer(line("json" if monitor.json else "plain"))
        raise structlog.DropEvent

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _console(colors: bool) -> structlog.dev.ConsoleRenderer:
    # structlog's default exception formatter (rich) forces colour codes into tracebacks whatever ``colors``
    # says: plain tracebacks unless this is a terminal.
    formatter = structlog.dev.RichTracebackFormatter() if colors else structlog.dev.plain_traceback
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter)


def configure(level: str = "info", json_output: bool = False, stream: IO[str] | None = None,
              settings: LogSettings | None = None) -> LogRouter:  # fmt: skip
    """Make ``router`` the process's log output (as Consul does: logs on stdout, fatal start-up errors on
    stderr) and return it. ``settings`` wins over ``level``/``json_output`` when given."""
    if settings is None:
        settings = LogSettings(level=level.lower() if level_number(level) is not None else "info", json=json_output)
    router = LogRouter(settings, stream)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.json:
        processors.append(structlog.processors.format_exc_info)
    processors.append(router)

    def set_floor(floor: int) -> None:
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(floor),
            logger_factory=structlog.PrintLoggerFactory(router.stream),
            cache_logger_on_first_use=False,
        )

    router._on_level_change = set_floor
    set_floor(router.floor)
    return router
