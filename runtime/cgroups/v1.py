"""cgroup v1 backend, for hybrid hosts (v1 controllers plus a controller-less cgroup2) and pure v1.

Limits go to the v1 controllers; freezing and kill go to cgroup2's ``cgroup.freeze`` and
``cgroup.kill`` when a unified hierarchy is mounted (hybrid), else to the v1 freezer.

A container's processes are placed in every hierarchy used: memory, cpu (maybe joined as
``cpu,cpuacct``), cpuacct (for usage), pids, and unified (hybrid) or freezer (v1).

Kernel facts (Documentation/admin-guide/cgroup-v1/*.rst):
- ``memory.limit_in_bytes``: ``-1`` = unlimited; reads back as PAGE_COUNTER_MAX * PAGE_SIZE.
  ``memory.oom_control`` has ``oom_kill N`` (kills inside this cgroup) since Linux 4.13.
- ``cpu.cfs_quota_us`` (``-1`` = unlimited) per ``cpu.cfs_period_us``; ``cpuacct.usage`` is
  nanoseconds and includes descendants.
- ``freezer.state``: THAWED/FREEZING/FROZEN; a SIGKILLed v1-frozen task dies only once thawed.
- The root of the pids hierarchy has no ``pids.max``; we never write a root's files anyway.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path, PurePosixPath

from runtime import freezer
from runtime.cgroups._base import BaseManager
from runtime.cgroups._files import (
    CGROUP_EVENTS,
    CGROUP_FREEZE,
    CGROUP_PROCS,
    CPU_CFS_PERIOD_US,
    CPU_CFS_QUOTA_US,
    CPU_STAT,
    CPUACCT_USAGE,
    FREEZER_STATE,
    MEMORY_LIMIT_IN_BYTES,
    MEMORY_OOM_CONTROL,
    MEMORY_USAGE_IN_BYTES,
    PIDS_CURRENT,
    PIDS_MAX,
    V1_UNLIMITED_THRESHOLD,
    CgroupFs,
    procs_recursive,
    read_int,
    read_keyed,
    sigkill_until_empty,
    validate_limits,
    write,
)
from runtime.cgroups._interface import CgroupInfo, CgroupStats, Limits
from runtime.cgroups._layout import Hierarchy
from runtime.cgroups.devices import DevicePolicy, NoDevicePolicy
from runtime.cgroups.v2 import kill_v2, limits_required, set_frozen_v2
from runtime.errors import Unsupported
from runtime.freezer import FreezerState

log = logging.getLogger(__name__)


class V1CgroupManager(BaseManager):
    """Container cgroups in v1 hierarchies, with cgroup2 freezing in hybrid mode.

    Args:
        limit_hierarchies: limit controller (memory, cpu, pids) -> its v1 hierarchy
        unified: the cgroup2 hierarchy used for freeze and kill (hybrid), or None
        freezer: the v1 freezer hierarchy, used when ``unified`` is None
        cpuacct: the hierarchy with cpuacct (usage statistics), if mounted
        parent: relative path below our own cgroup
        fs: file-system calls (a fake in unit tests)
        mode: what ``mode`` reports (default: hybrid with ``unified``, else v1); a hybrid host
            whose cgroup2 cannot freeze (before 5.2) stays "hybrid" though it freezes via v1
        devices: the v1 devices hierarchy, when ``device_policy`` uses it
        device_policy: what every new cgroup gets (``detect`` picks it; default: none, logged)
    """

    def __init__(
        self,
        *,
        limit_hierarchies: dict[str, Hierarchy],
        unified: Hierarchy | None,
        freezer: Hierarchy | None,
        cpuacct: Hierarchy | None,
        parent: PurePosixPath,
        fs: CgroupFs,
        mode: str | None = None,
        devices: Hierarchy | None = None,
        device_policy: DevicePolicy | None = None,
    ) -> None:
        used: dict[str, Hierarchy] = {}
        for h in [*limit_hierarchies.values(), cpuacct, unified, None if unified else freezer, devices]:
            if h is not None:
                used[h.name] = h
        super().__init__(list(used.values()), parent, fs)
        self.mode = mode or ("hybrid" if unified is not None else "v1")
        self._limit = {c: h.name for c, h in limit_hierarchies.items()}
        self._unified = unified.name if unified else None
        self._freezer = freezer.name if (freezer and not unified) else None
        self._cpuacct = cpuacct.name if cpuacct else None
        self.devices: DevicePolicy = device_policy or NoDevicePolicy("no device policy configured")

    # --- create / limits ---------------------------------------------------------------

    def create(self, name: str, limits: Limits) -> CgroupInfo:
        validate_limits(limits)
        self._check_supported(limits)
        dirs = self._make(name)
        try:
            # before any process enters: nothing ever runs in it unconfined
            self.devices.apply(self._fs, dirs.get(self.devices.hierarchy or ""), name)
            self.set_limits(name, limits)
        except BaseException:
            self.destroy(name)
            raise
        log.info("cgroup %s created in %s", name, ", ".join(str(d) for d in dirs.values()))
        return CgroupInfo(name=name, dirs=dirs)

    def _check_supported(self, limits: Limits) -> None:
        missing = sorted(limits_required(limits) - set(self._limit))
        if missing:
            raise Unsupported(
                f"{'/'.join(missing)} limits",
                f"v1 controller {', '.join(missing)} is not mounted",
                hint="see 'pymigrate check' for the cgroup layout",
            )

    def set_limits(self, name: str, limits: Limits) -> None:
        validate_limits(limits)
        self._check_supported(limits)
        dirs = self._require(name)
        if "memory" in self._limit:
            mem = "-1" if limits.memory_bytes is None else str(limits.memory_bytes)
            write(self._fs, dirs[self._limit["memory"]] / MEMORY_LIMIT_IN_BYTES, mem, cgroup=name)
        if "cpu" in self._limit:
            d = dirs[self._limit["cpu"]]
            # The kernel checks quota/period against the parent's on every write; lifting the
            # quota first means the period write can never be refused for the old quota.
            quota = "-1" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
            write(self._fs, d / CPU_CFS_QUOTA_US, "-1", cgroup=name)
            write(self._fs, d / CPU_CFS_PERIOD_US, str(limits.cpu_period_us), cgroup=name)
            if quota != "-1":
                write(self._fs, d / CPU_CFS_QUOTA_US, quota, cgroup=name)
        if "pids" in self._limit:
            pids = "max" if limits.pids_max is None else str(limits.pids_max)
            write(self._fs, dirs[self._limit["pids"]] / PIDS_MAX, pids, cgroup=name)

    def add_pid(self, name: str, pid: int) -> None:
        for d in self._require(name).values():
            write(self._fs, d / CGROUP_PROCS, str(pid), cgroup=name)

    # --- freezer ---------------------------------------------------------------------------

    def freeze(self, name: str, timeout_s: float = 10.0) -> None:
        self._set_frozen(name, True, timeout_s)

    def thaw(self, name: str, timeout_s: float = 10.0) -> None:
        self._set_frozen(name, False, timeout_s)

    def _set_frozen(self, name: str, frozen: bool, timeout_s: float) -> None:
        dirs = self._require(name)
        if self._unified is not None:
            set_frozen_v2(self._fs, dirs[self._unified], frozen, cgroup=name, timeout_s=timeout_s)
            return
        if self._freezer is None:
            raise Unsupported("freezing", "neither cgroup.freeze nor the v1 freezer controller is available")
        path = dirs[self._freezer] / FREEZER_STATE
        word = "FROZEN" if frozen else "THAWED"
        write(self._fs, path, word, cgroup=name)
        freezer.wait_until(
            lambda: self._fs.read(path).strip() == word,
            cgroup=name,
            wanted="frozen" if frozen else "thawed",
            timeout_s=timeout_s,
            retry=lambda: write(self._fs, path, word, cgroup=name),
        )

    def freezer_state(self, name: str) -> FreezerState:
        dirs = self._require(name)
        if self._unified is not None:
            d = dirs[self._unified]
            return freezer.v2_state(self._fs.read(d / CGROUP_FREEZE), self._fs.read(d / CGROUP_EVENTS))
        if self._freezer is not None:
            return freezer.parse_v1_state(self._fs.read(dirs[self._freezer] / FREEZER_STATE))
        return "thawed"

    # --- processes -------------------------------------------------------------------------

    def pids(self, name: str) -> list[int]:
        pids: set[int] = set()
        for d in self._require(name).values():
            pids |= procs_recursive(self._fs, d)
        return sorted(pids)

    def kill(self, name: str) -> None:
        self._kill(self._require(name), name, timeout_s=5.0)

    def _kill(self, dirs: dict[str, Path], name: str, *, timeout_s: float) -> None:
        if self._unified is not None and self._unified in dirs:
            kill_v2(self._fs, dirs[self._unified], cgroup=name, timeout_s=timeout_s)
            return
        # No cgroup.kill: signal every pid; v1-frozen tasks die only once thawed, so thaw after
        # the signal is queued (runc does the same), then repeat until the cgroups are empty.
        for pid in self.pids_in(dirs):
            try:
                self._fs.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._freezer is not None and self._freezer in dirs:
            write(self._fs, dirs[self._freezer] / FREEZER_STATE, "THAWED", cgroup=name)
        sigkill_until_empty(self._fs, list(dirs.values()), cgroup=name, timeout_s=timeout_s)

    def pids_in(self, dirs: dict[str, Path]) -> list[int]:
        pids: set[int] = set()
        for d in dirs.values():
            pids |= procs_recursive(self._fs, d)
        return sorted(pids)

    def stats(self, name: str) -> CgroupStats:
        dirs = self._require(name)
        mem_dir = dirs.get(self._limit.get("memory", ""))
        pids_dir = dirs.get(self._limit.get("pids", ""))
        limit = read_int(self._fs, mem_dir / MEMORY_LIMIT_IN_BYTES) if mem_dir else None
        cpu_us = None
        if self._cpuacct is not None:
            ns = read_int(self._fs, dirs[self._cpuacct] / CPUACCT_USAGE)
            cpu_us = ns // 1000 if ns is not None else None
        elif self._unified is not None:
            cpu_us = read_keyed(self._fs, dirs[self._unified] / CPU_STAT).get("usage_usec")
        return CgroupStats(
            memory_current_bytes=read_int(self._fs, mem_dir / MEMORY_USAGE_IN_BYTES) if mem_dir else None,
            memory_max_bytes=None if limit is None or limit >= V1_UNLIMITED_THRESHOLD else limit,
            oom_kills=read_keyed(self._fs, mem_dir / MEMORY_OOM_CONTROL).get("oom_kill", 0) if mem_dir else 0,
            pids_current=read_int(self._fs, pids_dir / PIDS_CURRENT) if pids_dir else None,
            cpu_usage_us=cpu_us,
        )

    def destroy(self, name: str, timeout_s: float = 5.0) -> None:
        self._kill_and_remove(name, timeout_s, lambda dirs: self._kill(dirs, name, timeout_s=timeout_s))

