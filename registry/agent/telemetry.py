"""The agent's telemetry: the registry's clock, the gauges read every second, and Consul's names for what
the parts report.

The composition root builds one ``Metrics`` registry (``build_metrics``, from the ``telemetry`` block) and
hands it, or adapters over it, to the parts that record: the HTTP API times every request, the Raft server
and the RPC router report through ``RaftMetrics`` (the Raft library's observer seam), the DNS listener
times its answers, a client agent counts its calls to the servers. ``Telemetry.run`` is the shell around
the pure registry: once a second it reads the gauges (as go-metrics' runtime collector does), every 2 s it
ages the quantile windows, and at every 10 s boundary it closes the interval that
``GET /v1/agent/metrics`` shows and hands it to the ``/v1/agent/metrics/stream`` readers.

Python's equivalents of go-metrics' runtime gauges (``consul.runtime.*``): ``sys_bytes`` is the resident
set (VmRSS), ``alloc_bytes`` the anonymous resident memory (RssAnon: the heap the process allocated, not
its mapped files), ``heap_objects`` the allocated memory blocks, ``num_goroutines`` the asyncio tasks,
``total_gc_runs`` / ``total_gc_pause_ns`` the garbage collector's runs and time, and Proconsul's
``event_loop_lag``, how late the once-a-second wakeup ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from registry.config import Config
from registry.metrics import INTERVAL, WINDOW_TICK, Counter, Gauge, Labels, Metrics, PrefixFilter, Sample

log = structlog.get_logger("proconsul.telemetry")

# Series declared up front, as Consul declares its Prometheus definitions (shown from the start, never left
# out for being idle): (kind, key, help).
DECLARED: tuple[tuple[str, str, str], ...] = (
    ("counter", "raft.apply", "Raft transactions appended by this server as the leader."),
    ("counter", "raft.state.candidate", "Elections this server started."),
    ("counter", "raft.state.leader", "Times this server became the leader."),
    ("sample", "raft.commitTime", "Time to commit a new entry to the Raft log on the leader, in ms."),
    ("sample", "raft.leader.lastContact", "Time since the leader last heard from each follower, at each lease "
                                          "check, in ms."),
    ("sample", "raft.fsm.apply", "Time to apply one log entry to the state machine, in ms."),
    ("sample", "raft.snapshot.takeSnapshot", "Time to take a snapshot and compact the log, in ms."),
    ("sample", "catalog.register", "Time to complete a catalog register operation, in ms."),
    ("sample", "catalog.deregister", "Time to complete a catalog deregister operation, in ms."),
    ("sample", "kvs.apply", "Time to complete an update to the KV store, in ms."),
    ("sample", "txn.apply", "Time to apply a transaction, in ms."),
    ("sample", "session.apply", "Time to apply a session update, in ms."),
    ("counter", "rpc.request", "RPC requests this server received."),
    ("counter", "rpc.request_error", "RPC requests this server answered with an error."),
)
HELP: dict[str, str] = {
    "client.rpc": "RPC requests this client agent made to the servers.",
    "client.rpc.failed": "RPC requests this client agent made to the servers that failed.",
    "dns.domain_query": "Time to answer a DNS query, in ms.",
    "raft.replication.appendEntries.rpc": "Round trip of AppendEntries carrying log entries, by follower, in ms.",
    "raft.replication.appendEntries.logs": "Log entries acknowledged by each follower.",
    "raft.state.follower": "Times this server became a follower.",
    "server.isLeader": "1 when this server is the leader, else 0.",
    "autopilot.healthy": "1 when autopilot considers every server healthy, 0 when not; NaN on a non-leader.",
    "autopilot.failure_tolerance": "Voting servers the cluster can lose while keeping a quorum.",
    "mesh.active-root-ca.expiry": "Seconds until the Connect CA's active root certificate expires.",
    "agent.tls.cert.expiry": "Seconds until this agent's TLS certificate expires.",
    "members.servers": "Servers in the cluster.",
    "members.clients": "Client agents in the cluster.",
    "runtime.sys_bytes": "Resident memory of the agent process (VmRSS), in bytes.",
    "runtime.alloc_bytes": "Anonymous resident memory of the agent process (RssAnon), in bytes.",
    "runtime.heap_objects": "Memory blocks the Python allocator holds.",
    "runtime.num_goroutines": "asyncio tasks in the agent's event loop.",
    "runtime.total_gc_runs": "Garbage collections since the agent started.",
    "runtime.total_gc_pause_ns": "Time spent in garbage collection since the agent started, in ns.",
    "runtime.event_loop_lag": "How late the event loop ran a timer due now, in ms.",
}

# Autopilot's defaults (Consul's autopilot config): a server is healthy while the leader heard from it
# within LastContactThreshold and its log trails the leader's by at most MaxTrailingLogs.
LAST_CONTACT_THRESHOLD = 0.2
MAX_TRAILING_LOGS = 250


# The gossip pool's counters as Consul's memberlist and Serf metrics: (where the count is kept, its key in the
# driver's, the core's or the codec's stats) -> (metric, help).  Counters grow by what the stats grew by
# since the last reading.
GOSSIP_COUNTERS: dict[tuple[str, str], tuple[str, str]] = {
    ("driver", "bytes_in"): ("memberlist.udp.received", "Bytes of gossip received over UDP."),
    ("driver", "bytes_out"): ("memberlist.udp.sent", "Bytes of gossip sent over UDP."),
    ("driver", "tcp_accept"): ("memberlist.tcp.accept", "Gossip stream (TCP) connections accepted."),
    ("driver", "tcp_connect"): ("memberlist.tcp.connect", "Gossip stream (TCP) connections opened."),
    ("driver", "stream_bytes_out"): ("memberlist.tcp.sent", "Bytes of gossip sent over TCP."),
    ("driver", "packets_dropped"): ("memberlist.packets.dropped",
                                    "Gossip packets dropped: undecodable or refused by the codec."),
    ("driver", "streams_dropped"): ("memberlist.streams.dropped",
                                    "Gossip streams dropped: undecodable or refused by the codec."),
    ("driver", "member_join"): ("serf.member.join", "Members that joined (or came back), as this agent saw it."),
    ("driver", "member_failed"): ("serf.member.failed", "Members declared failed, as this agent saw it."),
    ("driver", "member_left"): ("serf.member.left", "Members that left, as this agent saw it."),
    ("driver", "member_update"): ("serf.member.update", "Members whose tags changed, as this agent saw it."),
    ("driver", "member_suspect"): ("memberlist.msg.suspect", "Members suspected of failure, as this agent saw it."),
    ("core", "degraded_timeouts"): ("memberlist.degraded.timeout",
                                    "Suspicions that ran out without the expected confirmations."),
    ("core", "refuted_suspect"): ("memberlist.msg.refuted", "Suspicions of this agent it refuted."),
    ("core", "queries_out"): ("serf.queries", "Queries this agent asked the pool."),
    ("core", "queries_in"): ("serf.queries.received", "Queries of other members this agent handled."),
    ("core", "query_acks_in"): ("serf.query_acks", "Acknowledgements received for this agent's queries."),
    ("core", "query_responses_in"): ("serf.query_responses", "Answers received for this agent's queries."),
}
# The codec's refusals, by reason, under one counter with a ``reason`` label.
GOSSIP_CODEC_DROPS = ("truncated", "bad_version", "undecryptable", "plaintext_refused", "stale", "replayed",
                      "replay_cache_evicted", "plaintext_accepted")  # fmt: skip


class GossipMetrics:
    """Reads the gossip pool's counters (the driver's, the core's and the codec's ``stats``) once a second
    into the registry under Consul's memberlist and Serf names, and its health score and broadcast queue as
    gauges.  The sources are callables so this module stays apart from the gossip package."""

    def __init__(self, metrics: Metrics, *, driver: Callable[[], Mapping[str, int]],
                 core: Callable[[], Mapping[str, int]], codec: Callable[[], Mapping[str, int]],
                 health: Callable[[], int], queued: Callable[[], int], members: Callable[[], int]) -> None:  # fmt: skip
        self._sources = {"driver": driver, "core": core, "codec": codec}
        self._last: dict[tuple[str, str], int] = {}
        self._counters = {src: metrics.counter(name, (), help_text)
                          for src, (name, help_text) in GOSSIP_COUNTERS.items()}  # fmt: skip
        self._drops = {reason: metrics.counter("memberlist.codec.dropped", (("reason", reason),),
                                               "Gossip packets the codec refused, by reason.")
                       for reason in GOSSIP_CODEC_DROPS}  # fmt: skip
        self._health = metrics.gauge("memberlist.health.score", (), "This agent's Lifeguard health score (0 best).")
        self._queued = metrics.gauge("memberlist.queue.broadcasts", (), "Gossip broadcasts waiting to be sent.")
        self._members = metrics.gauge("serf.members", (), "Members of the LAN pool alive or suspect, this one included.")
        self._health_fn, self._queued_fn, self._members_fn = health, queued, members

    def collect(self) -> None:
        stats = {name: fn() for name, fn in self._sources.items()}
        for key, counter in self._counters.items():
            self._bump(key, stats[key[0]].get(key[1], 0), counter)
        for reason, counter in self._drops.items():
            self._bump(("codec", reason), stats["codec"].get(reason, 0), counter)
        self._health.set(float(self._health_fn()))
        self._queued.set(float(self._queued_fn()))
        self._members.set(float(self._members_fn()))

    def _bump(self, key: tuple[str, str], value: int, counter: Counter) -> None:
        grown = value - self._last.get(key, 0)
        self._last[key] = value
        if grown > 0:
            counter.inc(grown)


def build_metrics(cfg: Config, now: float) -> Metrics:
    """The agent's one registry, from its ``telemetry`` block. A filter that blocks every name under the
    prefix turns recording off altogether (the HTTP API then times nothing)."""
    t = cfg.telemetry
    flt, bad = PrefixFilter.parse(t.prefix_filter, t.filter_default)
    for rule in bad:
        log.warning("Filter rule must begin with either '+' or '-'", rule=rule)
    metrics = Metrics(prefix=t.metrics_prefix, hostname="" if t.disable_hostname else socket.gethostname(),
                      retention=t.prometheus_retention_time, prefix_filter=flt,
                      enabled=not flt.blocks_everything(t.metrics_prefix), now=now)  # fmt: skip
    for kind, key, help_text in DECLARED:
        metrics.declare(kind, key, help_text)
    return metrics


class RaftMetrics:
    """The Raft server's and the RPC router's observer, in Consul's (hashicorp/raft's) names."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._state = {role: metrics.counter(f"raft.state.{role}", (), HELP.get(f"raft.state.{role}", ""))
                       for role in ("leader", "candidate", "follower")}  # fmt: skip
        self._apply = metrics.counter("raft.apply")
        self._commit = metrics.sample("raft.commitTime")
        self._fsm = metrics.sample("raft.fsm.apply")
        self._contact = metrics.sample("raft.leader.lastContact")
        self._snapshot = metrics.sample("raft.snapshot.takeSnapshot")
        self._request = metrics.counter("rpc.request")
        self._request_error = metrics.counter("rpc.request_error")
        self._peers: dict[str, tuple[Sample, Counter]] = {}

    def role_changed(self, role: str) -> None:
        counter = self._state.get(role)
        if counter is not None:
            counter.inc()

    def proposed(self, entries: int) -> None:
        self._apply.inc(float(entries))

    def committed(self, seconds: float) -> None:
        self._commit.observe(seconds * 1000.0)

    def fsm_applied(self, seconds: float) -> None:
        self._fsm.observe(seconds * 1000.0)

    def leader_contact(self, peer: str, seconds: float) -> None:
        self._contact.observe(seconds * 1000.0)

    def replicated(self, peer: str, entries: int, seconds: float | None) -> None:
        pair = self._peers.get(peer)
        if pair is None:
            labels: Labels = (("peer_id", peer),)
            pair = self._peers[peer] = (
                self._m.sample("raft.replication.appendEntries.rpc", labels, HELP["raft.replication.appendEntries.rpc"]),
                self._m.counter("raft.replication.appendEntries.logs", labels,
                                HELP["raft.replication.appendEntries.logs"]),
            )  # fmt: skip
        if seconds is not None:
            pair[0].observe(seconds * 1000.0)
        pair[1].inc(float(entries))

    def snapshot_taken(self, seconds: float) -> None:
        self._snapshot.observe(seconds * 1000.0)

    def request(self, method: str) -> None:
        self._request.inc()

    def request_error(self, method: str) -> None:
        self._request_error.inc()


# Commands whose proposals Consul times under these names (its Catalog, KVS, Txn and Session endpoints).
COMMAND_TIMERS = {"register": "catalog.register", "check.update": "catalog.register",
                  "deregister": "catalog.deregister", "kv": "kvs.apply", "txn": "txn.apply",
                  "session": "session.apply"}  # fmt: skip


class CommandTimers:
    """Times a proposal by its command's type, under Consul's endpoint metric names."""

    def __init__(self, metrics: Metrics | None) -> None:
        """``metrics`` None: nothing is timed (a client agent; the servers time what it sends them)."""
        self._by_type = {t: metrics.sample(key) for t, key in COMMAND_TIMERS.items()} \
            if metrics is not None and metrics.enabled else {}  # fmt: skip

    def timer(self, command_type: str) -> Sample | None:
        return self._by_type.get(command_type)


# ---------------------------------------------------------------------- the shell


class Telemetry:
    """Runs the registry's clock and the gauge collectors; ``/v1/agent/metrics/stream`` readers subscribe.

    Collectors are plain functions that set gauges; ``every_second`` ones run once a second (runtime, Raft
    and autopilot state), the others once per interval (what is costlier to compute and changes slowly)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        self._fast: list[Callable[[], None]] = []
        self._slow: list[Callable[[], None]] = []
        self._streams: set[asyncio.Queue[dict[str, Any]]] = set()
        self._gc_started: float | None = None
        self._gc_pause_ns = 0
        self._lag = metrics.gauge("runtime.event_loop_lag", (), HELP["runtime.event_loop_lag"])

    def add_collector(self, fn: Callable[[], None], every_second: bool = True) -> None:
        (self._fast if every_second else self._slow).append(fn)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that receives each interval's summary as it closes (Consul's metrics stream)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=4)
        self._streams.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._streams.discard(q)

    def collect(self, slow: bool = True) -> None:
        for fn in (*self._fast, *self._slow) if slow else self._fast:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a collector's failure must not stop the clock
                log.debug("metrics collector failed", collector=repr(fn), error=str(exc))

    async def run(self) -> None:
        if not self.metrics.enabled:
            return
        gc.callbacks.append(self._gc_event)
        try:
            await self._run()
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._gc_event)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self.collect()
        next_window = loop.time() + WINDOW_TICK
        while True:
            due = loop.time() + 1.0 - (self.clock() % 1.0)  # wake on the wall clock's second
            await asyncio.sleep(max(0.0, due - loop.time()))
            self._lag.set(max(0.0, loop.time() - due) * 1000.0)
            now = self.clock()
            if loop.time() >= next_window:
                self.metrics.tick_window()
                next_window += WINDOW_TICK
                if loop.time() > next_window:  # the loop stalled: do not age twice in a row
                    next_window = loop.time() + WINDOW_TICK
            self.advance(now)

    def advance(self, now: float) -> dict[str, Any] | None:
        """Read the gauges (the slower ones too when the interval ends); when ``now`` has passed the current
        interval, close it and hand its summary to the stream readers (one that fell behind loses its oldest)."""
        # The gauges are read before the interval closes, so each closed interval shows all of them.
        closing = now >= self.metrics.interval_start + INTERVAL
        self.collect(slow=closing)
        summary = self.metrics.rotate(now) if closing else None
        if summary is not None:
            for q in list(self._streams):
                if q.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        q.get_nowait()
                q.put_nowait(summary)
        return summary

    def _gc_event(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_pause_ns += int((time.perf_counter() - self._gc_started) * 1e9)
            self._gc_started = None

    # ------------------------------------------------------------------ collectors

    def runtime_collector(self) -> Callable[[], None]:
        m = self.metrics
        g: dict[str, Gauge] = {k: m.gauge(f"runtime.{k}", (), HELP[f"runtime.{k}"])
                               for k in ("sys_bytes", "alloc_bytes", "heap_objects", "total_gc_runs",
                                         "total_gc_pause_ns")}  # fmt: skip
        status = Path("/proc/self/status")

        def collect() -> None:
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        g["sys_bytes"].set(float(line.split()[1]) * 1024)
                    elif line.startswith("RssAnon:"):
                        g["alloc_bytes"].set(float(line.split()[1]) * 1024)
            g["heap_objects"].set(float(sys.getallocatedblocks()))
            g["total_gc_runs"].set(float(sum(s["collections"] for s in gc.get_stats())))
            g["total_gc_pause_ns"].set(float(self._gc_pause_ns))

        return collect

    def tasks_collector(self) -> Callable[[], None]:
        """``runtime.num_goroutines`` as the number of asyncio tasks: counting them walks every task (one per
        parked blocking query), so it runs once per interval rather than every second."""
        gauge = self.metrics.gauge("runtime.num_goroutines", (), HELP["runtime.num_goroutines"])

        def collect() -> None:
            gauge.set(float(len(asyncio.all_tasks())))

        return collect


def raft_health(status: Any, voters: frozenset[str], self_id: str, last_index: int, tick: float) -> tuple[bool, int]:
    """Autopilot's view from the leader, as Consul's autopilot computes it: a voter is healthy when the
    leader heard from it within ``LAST_CONTACT_THRESHOLD`` and its log trails the leader's by at most
    ``MAX_TRAILING_LOGS``; the leader is healthy. Answers (every voter healthy, failure tolerance: healthy
    voters beyond a quorum)."""
    healthy = 0
    for voter in voters:
        if voter == self_id:
            healthy += 1
            continue
        peer = status.peers.get(voter)
        if peer is None:
            continue
        if peer.ticks_since_heard * tick <= LAST_CONTACT_THRESHOLD and last_index - peer.match_index <= MAX_TRAILING_LOGS:
            healthy += 1
    quorum = len(voters) // 2 + 1
    return healthy == len(voters), max(0, healthy - quorum)


def seconds_until(not_after: datetime, now: float) -> float:
    return (not_after - datetime.fromtimestamp(now, UTC)).total_seconds()


def cert_not_after(path: str) -> datetime | None:
    """The expiry of the first certificate in a PEM file (None when it cannot be read)."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None

