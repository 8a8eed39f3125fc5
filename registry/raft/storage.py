"""Storage and recovery: open the data directory, rebuild the node's state from disk, recover from
peers.json, persist each Ready, and take snapshots.

On disk (``<data-dir>/raft``): the WAL (``registry.raft.wal``), the stable store with term, vote and the
known servers (``registry.raft.stable``), and snapshots (``registry.raft.snapshots``). Without a data
directory (tests) the log lives in memory. Snapshots follow hashicorp/raft's rule of thumb: one every
``snapshot_threshold`` applied entries, keeping ``trailing_logs`` entries behind it so a slightly-behind
follower catches up from the log rather than from a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path

import msgpack

from registry.gcpause import GCHold
from registry.raft import node as raftnode
from registry.raft.base import (
    ELECTION_TICKS,
    SM,
    ServerBase,
    ServerInfo,
    config_from_dict,
    config_to_dict,
    log,
)
from registry.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from registry.raft.snapshots import SnapshotStore
from registry.raft.stable import StableStore
from registry.raft.wal import WAL

# The snapshot child's niceness: it shares the servers' cores and nothing waits on it (the log is kept until it
# is done), so it takes what the servers leave rather than a third of a core from each of them.
SNAPSHOT_CHILD_NICE = 10
# The longest the collector stays off for one snapshot child. A 10,000-node catalog is written in well under a
# second; a child still running after this is stuck (a dead disk, a stopped process), and the server must not
# go without cyclic collections for as long as the child does.
SNAPSHOT_GC_HOLD_MAX_S = 30.0


class Storage(ServerBase[SM]):
    def _open_storage(self) -> None:
        if self.opts.data_dir is None:
            return
        base = self.opts.data_dir / "raft"
        base.mkdir(parents=True, exist_ok=True)
        self._stable = StableStore.open(base)
        self._wal = WAL.open(base / "wal")
        self._snaps = SnapshotStore.open(base / "snapshots")
        raw_servers = self._stable.metadata.get("servers")
        known = msgpack.unpackb(raw_servers, raw=False) if isinstance(raw_servers, bytes) else {}
        for sid, info in (known if isinstance(known, dict) else {}).items():
            if isinstance(info, dict) and sid != self.id:
                self.servers[sid] = ServerInfo(sid, str(info.get("address", "")), str(info.get("name", "")),
                                               str(info.get("http", "")))  # fmt: skip
        self._recover_peers_json(base)

    def _load_state(self) -> raftnode.PersistentState | None:
        """Rebuild the node's PersistentState from disk (None: never bootstrapped or joined)."""
        if self._snaps is None or self._wal is None or self._stable is None:
            return None
        latest = self._snaps.latest()
        snap_meta: SnapshotMeta | None = None
        index = 0
        if latest is not None:
            meta, data = latest
            index = meta.index
            snap_meta = SnapshotMeta(meta.index, meta.term, config_from_dict(meta.configuration))
            self.fsm.restore(data)
        self._snapshot_index = index
        if 0 < self._wal.last_index <= index:
            # Every entry on disk is covered by the snapshot: a crash came between installing a snapshot
            # and discarding the log it replaced. Discard it now, or the next entry (index + 1) could not
            # follow the stale tail.
            log.warning("dropping log entries the snapshot covers (an install was interrupted)",
                        log_last=self._wal.last_index, snapshot_index=index)  # fmt: skip
            self._wal.truncate_suffix(0)
        entries = tuple(
            Entry(e.term, e.index, EntryKind(e.kind), e.data) for e in self._wal.iter_entries() if e.index > index
        )
        if entries and entries[0].index != index + 1:
            raise RuntimeError(
                f"Raft data in {self.opts.data_dir} is inconsistent: the log starts at index {entries[0].index} but "
                f"the newest usable snapshot ends at {index}. Restore the data directory from a backup, or remove "
                "it and let this server rejoin from the leader (proconsul operator raft remove-peer first)."
            )
        if snap_meta is None and not entries and self._stable.term == 0:
            return None  # never bootstrapped, never joined
        hs = HardState(self._stable.term, self._stable.vote, index)
        return raftnode.PersistentState(hs, snap_meta, entries)

    def _recover_peers_json(self, base: Path) -> None:
        """Consul-style outage recovery: <data-dir>/raft/peers.json lists the servers that remain. Every
        entry in the local log is applied, a snapshot is taken with the new configuration, and the file is
        removed. Run it on every surviving server with the same peers.json, then start them."""
        path = base / "peers.json"
        if not path.exists():
            return
        try:
            peers = json.loads(path.read_text())
            ids = {str(p["id"]): str(p["address"]) for p in peers}
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{path} is not valid: expected [{{\"id\": ..., \"address\": ...}}, ...]: {exc}") from exc
        assert self._snaps is not None and self._wal is not None
        latest = self._snaps.latest()
        if latest is not None and latest[1]:
            self.fsm.restore(latest[1])
        index = latest[0].index if latest else 0
        term = latest[0].term if latest else 0
        for e in self._wal.iter_entries():
            if e.index <= index:
                continue
            if e.kind == EntryKind.NORMAL:
                self.fsm.apply(e.index, e.data)
            else:
                self.fsm.advance(e.index)
            index, term = e.index, e.term
        for sid, addr in ids.items():
            self.servers.setdefault(sid, ServerInfo(sid, addr)).address = addr
        conf = Configuration(frozenset(ids))
        self._snaps.create(index, term, config_to_dict(conf), self.fsm.snapshot())
        self._wal.truncate_suffix(0)
        self._save_servers()
        path.rename(path.with_suffix(".json.applied"))
        log.warning("recovered from peers.json", index=index, voters=sorted(ids))

    def _persist(self, rd: raftnode.Ready) -> None:
        if rd.snapshot is not None:
            snap = rd.snapshot
            if self._snaps is not None and snap.meta.index > 0:
                self._snaps.create(snap.meta.index, snap.meta.term, config_to_dict(snap.meta.configuration),
                                   snap.data)  # fmt: skip
            if self._wal is not None:
                self._wal.truncate_suffix(0)
            self._mem_entries.clear()
            if snap.data:
                self.fsm.restore(snap.data)
            self._snapshot_index = snap.meta.index
        if rd.entries:
            first = rd.entries[0].index
            if self._wal is not None:
                if self._wal.last_index >= first:
                    self._wal.truncate_suffix(first)
                self._wal.append((e.index, e.term, int(e.kind), e.data) for e in rd.entries)
            else:
                while self._mem_entries and self._mem_entries[-1].index >= first:
                    self._mem_entries.pop()
                self._mem_entries.extend(rd.entries)
        if self._stable is not None and rd.hard_state is not None:
            hs = rd.hard_state
            if hs.term != self._stable.term or hs.vote != self._stable.vote:
                self._stable.save(hs.term, hs.vote)

    def _snapshot_source(self) -> Snapshot | None:
        if self._snaps is None:
            return None
        latest = self._snaps.latest()
        if latest is None:
            return None
        meta, data = latest
        return Snapshot(SnapshotMeta(meta.index, meta.term, config_from_dict(meta.configuration)), data)

    def _maybe_snapshot(self) -> None:
        node = self.node
        if node is None or self._snaps is None or self._wal is None or self._snapshotting:
            return
        applied = node.applied_index
        behind = applied - self._snapshot_index
        if self.opts.snapshot_interval > 0:
            now = time.monotonic()
            if self._next_snapshot_check is None:
                self._next_snapshot_check = now + self._snapshot_wait()
                # The log lives in memory until a snapshot lets it go: past this many entries (three to
                # five thresholds, drawn per server so that they do not all reach it at one index) the
                # snapshot is taken without waiting for the look, however fast the writes come.
                self._snapshot_cap = int(self.opts.snapshot_threshold * (3 + 2 * self._rng.random()))
            if now < self._next_snapshot_check and behind < self._snapshot_cap:
                return
            if now >= self._next_snapshot_check:
                self._next_snapshot_check = now + self._snapshot_wait()
        if behind < self.opts.snapshot_threshold:
            return
        meta = node.snapshot_meta(applied)
        self._snapshotting = True
        if hasattr(os, "fork") and self.opts.fork_snapshots:
            asyncio.get_running_loop().create_task(self._snapshot_in_child(meta))
        else:
            started = time.monotonic()
            try:
                self._snaps.create(meta.index, meta.term, config_to_dict(meta.configuration), self.fsm.snapshot())
            finally:
                self._snapshotting = False
            self._snapshot_done(meta, time.monotonic() - started)

    def _snapshot_wait(self) -> float:
        """The wait before the next look at the threshold: between one and two snapshot intervals."""
        return self.opts.snapshot_interval * (1.0 + self._rng.random())

    async def _snapshot_in_child(self, meta: SnapshotMeta) -> None:
        """Serialize the state machine in a forked child, as Redis does: the child sees a copy-on-write image
        of the store exactly as of ``meta.index`` while this process keeps serving and replicating. A big
        catalog takes a noticeable fraction of a second to serialize; doing that on the event loop would
        stall heartbeats and invite needless elections.

        While the child lives, both sides keep the shared pages shared: neither runs the cyclic collector
        (a full collection writes to every object's header, so each page it walks would be copied), and the
        child runs at a lower priority than the servers it shares cores with (``SNAPSHOT_CHILD_NICE``): the
        snapshot is not waited for, requests are. Seen at 10,000 nodes with three servers on one core, all
        snapshotting at the same index: 26 ms young collections in each parent and 300 ms of slow writes. A
        child still running after ``SNAPSHOT_GC_HOLD_MAX_S`` is stuck: the collector comes back on then."""
        assert self._snaps is not None
        started = time.monotonic()
        conf = config_to_dict(meta.configuration)
        quiet = GCHold()
        quiet.acquire()
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which only writes the file and exits
                code = 1
                try:
                    with contextlib.suppress(OSError):
                        os.nice(SNAPSHOT_CHILD_NICE)
                    self._snaps.create(meta.index, meta.term, conf, self.fsm.snapshot())
                    code = 0
                finally:
                    os._exit(code)
            waiting = asyncio.ensure_future(asyncio.to_thread(os.waitpid, pid, 0))
            try:
                _, status = await asyncio.wait_for(asyncio.shield(waiting), SNAPSHOT_GC_HOLD_MAX_S)
            except TimeoutError:
                quiet.release()
                log.warning("snapshot child still running; the garbage collector is back on meanwhile",
                            pid=pid, index=meta.index, after_seconds=SNAPSHOT_GC_HOLD_MAX_S)  # fmt: skip
                _, status = await waiting
        finally:
            quiet.release()
            self._snapshotting = False
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("snapshot child failed; the log is kept until the next attempt", index=meta.index)
            return
        self._snapshot_done(meta, time.monotonic() - started)

    def _snapshot_done(self, meta: SnapshotMeta, seconds: float) -> None:
        node = self.node
        if node is None or self._wal is None:
            return
        self._snapshot_index = meta.index
        keep_from = max(0, meta.index - self.opts.trailing_logs)
        if keep_from > node.log.snapshot_index:
            node.compact(keep_from)
            self._wal.compact(keep_from)
        log.info("snapshot taken", index=meta.index, seconds=round(seconds, 3))
        self.observer.snapshot_taken(seconds)

    def _build_node(self, state: raftnode.PersistentState) -> None:
        cfg = raftnode.RaftConfig(election_tick=ELECTION_TICKS, heartbeat_tick=1, check_quorum=True, pre_vote=True)
        self.node = raftnode.RaftNode(self.id, cfg, self._rng, state, snapshot_source=self._snapshot_source,
                                      applied=state.snapshot.index if state.snapshot else 0)  # fmt: skip
        self._wake.set()
