"""``pymigrate stats``: one container's resource usage, as docker and podman report it.

A sample holds raw counters (CPU time, bytes) with the monotonic time it was read at; the CPU
percentage is the CPU time used between two samples over the wall time between them, so 100 % is
one core busy (docker's ``cpu_delta / system_delta * online_cpus``, without the rounding of
/proc/stat's ticks). The first sample of a container has no percentage (``None``).

Where each number comes from:
- CPU time, memory usage and limit, pids: the container's cgroup (``CgroupManager.stats``).
  Memory usage has the cgroup's inactive page cache taken off (docker's rule, runtime/cgroups/stats.py);
  an unlimited container's limit is the host's memory (MemTotal), as docker shows it.
- Network: ``/proc/<init>/net/dev`` is the init's network namespace; every interface but ``lo``
  is counted. A ``--network host`` container's namespace is the host's: no numbers (``None``).
- Block I/O: the cgroup's io.stat / blkio counters; where no hierarchy of the container counts
  block I/O (hybrid hosts: cgroup2 without controllers, no blkio cgroup per container), the sum of
  ``read_bytes``/``write_bytes`` of /proc/<pid>/io over the processes alive now (``block_io_source``
  says which, since exited processes' I/O is not in that sum).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PROC_ROOT = Path("/proc")


@dataclass(frozen=True)
class ContainerStats:
    """One sample of a container's usage. ``None``: not known (not running, not counted here)."""

    name: str
    container_id: str
    status: str
    read_at_s: float  # time.monotonic() of this reading (CPU % is computed between two)
    cpu_percent: float | None = None  # 100.0 = one core busy
    cpu_usage_us: int | None = None
    online_cpus: int = 1
    memory_usage_bytes: int | None = None  # usage minus inactive page cache
    memory_limit_bytes: int | None = None  # the container's limit, else the host's memory
    memory_percent: float | None = None
    pids_current: int | None = None
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None
    block_read_bytes: int | None = None
    block_write_bytes: int | None = None
    block_io_source: str = ""  # "cgroup" | "proc" (processes alive now) | ""


def parse_net_dev(text: str) -> tuple[int, int]:
    """(rx bytes, tx bytes) summed over every interface of /proc/PID/net/dev except ``lo``."""
    rx = tx = 0
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, counters = line.partition(":")
        fields = counters.split()
        if not sep or name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def parse_proc_io(text: str) -> tuple[int, int]:
    """(read_bytes, write_bytes) of /proc/PID/io: what went to or came from storage."""
    keyed = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            keyed[key.strip()] = int(value)
    return keyed.get("read_bytes", 0), keyed.get("write_bytes", 0)


def host_memory_bytes(proc_root: Path = DEFAULT_PROC_ROOT) -> int | None:
    for line in (proc_root / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_percent(previous: ContainerStats | None, usage_us: int | None, read_at_s: float) -> float | None:
    """CPU time used since ``previous`` over the wall time since it; 100.0 = one core."""
    if previous is None or previous.cpu_usage_us is None or usage_us is None:
        return None
    wall_us = (read_at_s - previous.read_at_s) * 1e6
    if wall_us <= 0:
        return None
    return max(0.0, (usage_us - previous.cpu_usage_us) / wall_us * 100.0)


def sample(rt: Any, name: str, previous: ContainerStats | None = None,
           proc_root: Path = DEFAULT_PROC_ROOT) -> ContainerStats:
    """One sample of container ``name`` (a runtime.runtime.Runtime's); CPU % against ``previous``.

    A container that is not running or paused gives a sample with its name and status only.
    """
    c = rt.container(name)
    now = time.monotonic()
    base = ContainerStats(name=c.name, container_id=c.container_id, status=c.status, read_at_s=now,
                          online_cpus=len(os.sched_getaffinity(0)))
    if not c.is_live:
        return base
    from dataclasses import replace

    from runtime.cgroups.stats import block_io, inactive_file_bytes

    manager = rt.cgroups(c.spec.cgroup_parent)
    cg = manager.stats(c.container_id)
    info = manager.info(c.container_id)
    usage = cg.memory_current_bytes
    if usage is not None:
        usage = max(0, usage - inactive_file_bytes(info))
    limit = cg.memory_max_bytes or host_memory_bytes(proc_root)
    net = _net(c, proc_root)
    bio = block_io(info)
    source = "cgroup"
    if bio is None:
        read, write = _proc_io(manager.pids(c.container_id), proc_root)
        source = "proc"
    else:
        read, write = bio.read_bytes, bio.write_bytes
    return replace(
        base,
        cpu_percent=cpu_percent(previous, cg.cpu_usage_us, now),
        cpu_usage_us=cg.cpu_usage_us,
        memory_usage_bytes=usage,
        memory_limit_bytes=limit,
        memory_percent=(usage / limit * 100.0) if usage is not None and limit else None,
        pids_current=cg.pids_current,
        net_rx_bytes=net[0] if net else None,
        net_tx_bytes=net[1] if net else None,
        block_read_bytes=read,
        block_write_bytes=write,
        block_io_source=source,
    )


def _net(c: Any, proc_root: Path) -> tuple[int, int] | None:
    if c.spec.network == "host" or not c.state.pid:
        return None
    try:
        return parse_net_dev((proc_root / str(c.state.pid) / "net" / "dev").read_text())
    except OSError:  # the init exited between the state read and here
        return None


def _proc_io(pids: list[int], proc_root: Path) -> tuple[int, int]:
    read = write = 0
    for pid in pids:
        try:
            r, w = parse_proc_io((proc_root / str(pid) / "io").read_text())
        except OSError:  # exited meanwhile
            continue
        read, write = read + r, write + w
    return read, write

