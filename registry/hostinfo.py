"""What ``GET /v1/agent/host`` answers: the machine the agent runs on, in the shape Consul's answer has.

Consul fills it with gopsutil (agent/debug/host.go): ``Memory`` (mem.VirtualMemoryStat), ``CPU`` (one
cpu.InfoStat per logical CPU), ``Host`` (host.InfoStat), ``Disk`` (disk.UsageStat of ``/``),
``CollectionTime`` (Unix nanoseconds) and ``Errors``. The field names below are gopsutil's JSON names, so a
tool that reads Consul's answer (``consul debug``'s host.json, a support script) reads this one. Linux
only, from ``/proc`` and ``statvfs``; whatever cannot be read is left out of its block and named in
``Errors`` (Consul lists the collection errors there too), never an error answer.

The parsers take the files' text, so they are tested without the machine; ``collect`` reads the files.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DISK_USAGE_PATH", "collect", "cpu_info", "disk_usage", "host_info", "memory"]

DISK_USAGE_PATH = "/"  # the path Consul reports the disk usage of

_KIB = 1024


def memory(meminfo: str) -> dict[str, Any]:
    """``/proc/meminfo`` -> mem.VirtualMemoryStat's fields, in bytes; ``used`` and ``usedPercent`` as
    gopsutil counts them on Linux (total - free - buffers - cached, cached including reclaimable slab)."""
    kb: dict[str, int] = {}
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kb[name.strip()] = int(fields[0]) * (_KIB if fields[-1] == "kB" else 1)
    total, free = kb.get("MemTotal", 0), kb.get("MemFree", 0)
    buffers, cached = kb.get("Buffers", 0), kb.get("Cached", 0) + kb.get("SReclaimable", 0)
    available = kb.get("MemAvailable", free + buffers + cached)
    used = total - free - buffers - cached
    out: dict[str, Any] = {
        "total": total, "available": available, "used": used,
        "usedPercent": used / total * 100.0 if total else 0.0, "free": free,
        "active": kb.get("Active", 0), "inactive": kb.get("Inactive", 0), "buffers": buffers, "cached": cached,
        "writeBack": kb.get("Writeback", 0), "dirty": kb.get("Dirty", 0), "shared": kb.get("Shmem", 0),
        "slab": kb.get("Slab", 0), "sreclaimable": kb.get("SReclaimable", 0), "sunreclaim": kb.get("SUnreclaim", 0),
        "pageTables": kb.get("PageTables", 0), "swapCached": kb.get("SwapCached", 0),
        "commitLimit": kb.get("CommitLimit", 0), "committedAS": kb.get("Committed_AS", 0),
        "swapTotal": kb.get("SwapTotal", 0), "swapFree": kb.get("SwapFree", 0), "mapped": kb.get("Mapped", 0),
        "hugePagesTotal": kb.get("HugePages_Total", 0), "hugePagesFree": kb.get("HugePages_Free", 0),
        "hugePageSize": kb.get("Hugepagesize", 0), "anonHugePages": kb.get("AnonHugePages", 0),
    }  # fmt: skip
    return out


def cpu_info(cpuinfo: str) -> list[dict[str, Any]]:
    """``/proc/cpuinfo`` -> one cpu.InfoStat per logical CPU."""
    cpus: list[dict[str, Any]] = []
    for block in cpuinfo.strip().split("\n\n"):
        f: dict[str, str] = {}
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                f[name.strip()] = value.strip()
        if "processor" not in f:
            continue

        def num(key: str, cast: Callable[[str], Any] = int, fields: dict[str, str] = f) -> Any:
            try:
                return cast(fields.get(key, "").split()[0])
            except (ValueError, IndexError):
                return 0

        cpus.append({
            "cpu": num("processor"), "vendorId": f.get("vendor_id", ""), "family": f.get("cpu family", ""),
            "model": f.get("model", ""), "stepping": num("stepping"), "physicalId": f.get("physical id", ""),
            "coreId": f.get("core id", ""), "cores": num("cpu cores") or 1, "modelName": f.get("model name", ""),
            "mhz": num("cpu MHz", float), "cacheSize": num("cache size"), "flags": f.get("flags", "").split(),
            "microcode": f.get("microcode", ""),
        })  # fmt: skip
    return cpus


def _os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip().strip('"')
    return out


def host_info(*, hostname: str, uptime: str, stat: str, os_release: str, kernel: str, arch: str,
              procs: int, host_id: str) -> dict[str, Any]:  # fmt: skip
    """host.InfoStat from ``/proc/uptime``, ``/proc/stat`` (btime), ``/etc/os-release`` and uname."""
    boot = next((int(line.split()[1]) for line in stat.splitlines() if line.startswith("btime ")), 0)
    release = _os_release(os_release)
    family = (release.get("ID_LIKE") or release.get("ID") or "").split()
    return {
        "hostname": hostname, "uptime": int(float(uptime.split()[0])) if uptime.split() else 0, "bootTime": boot,
        "procs": procs, "os": "linux", "platform": release.get("ID", ""),
        "platformFamily": family[0] if family else "",
        "platformVersion": release.get("VERSION_ID", ""), "kernelVersion": kernel, "kernelArch": arch,
        "virtualizationSystem": "", "virtualizationRole": "", "hostId": host_id,
    }  # fmt: skip


def disk_usage(path: str, fstype: str = "") -> dict[str, Any]:
    """disk.UsageStat of ``path``, as gopsutil counts it (used = total - free, free as non-root sees it)."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    return {
        "path": path, "fstype": fstype, "total": total, "free": free, "used": used,
        "usedPercent": used / (used + free) * 100.0 if used + free else 0.0,
        "inodesTotal": st.f_files, "inodesUsed": inodes_used, "inodesFree": st.f_ffree,
        "inodesUsedPercent": inodes_used / st.f_files * 100.0 if st.f_files else 0.0,
    }  # fmt: skip


def _fstype(mounts: str, path: str) -> str:
    """The file system type of the mount ``path`` is on, from ``/proc/mounts`` (longest mount point wins)."""
    best, kind = -1, ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > best:
                best, kind = len(parts[1]), parts[2]
    return kind


def collect(root: Path = Path("/"), now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Everything ``/v1/agent/host`` answers, read now; each block that fails is named in ``Errors``."""
    errors: list[str] = []

    def read(rel: str) -> str:
        return (root / rel).read_text(errors="replace")

    def optional(rel: str) -> str:
        """A file some systems lack (a container without /etc/machine-id): empty then."""
        try:
            return read(rel)
        except OSError:
            return ""

    def host() -> dict[str, Any]:
        uname = platform.uname()
        return host_info(hostname=socket.gethostname(), uptime=read("proc/uptime"), stat=read("proc/stat"),
                         os_release=optional("etc/os-release"), kernel=uname.release, arch=uname.machine,
                         procs=sum(1 for p in (root / "proc").iterdir() if p.name.isdigit()),
                         host_id=optional("etc/machine-id").strip())  # fmt: skip

    def disk() -> dict[str, Any]:
        usage = disk_usage(str(root / DISK_USAGE_PATH.lstrip("/")) if root != Path("/") else DISK_USAGE_PATH,
                           _fstype(optional("proc/mounts"), DISK_USAGE_PATH))  # fmt: skip
        return {**usage, "path": DISK_USAGE_PATH}

    blocks: tuple[tuple[str, str, Callable[[], Any]], ...] = (
        ("Memory", "memory", lambda: memory(read("proc/meminfo"))),
        ("CPU", "cpu", lambda: cpu_info(read("proc/cpuinfo"))),
        ("Host", "host", host),
        ("Disk", "disk", disk),
    )
    out: dict[str, Any] = {}
    for key, label, build in blocks:
        try:
            out[key] = build()
        except OSError as exc:
            out[key] = None
            errors.append(f"{label}: {exc}")
    out["CollectionTime"] = int(now() * 1e9)
    out["Errors"] = errors or None
    return out
