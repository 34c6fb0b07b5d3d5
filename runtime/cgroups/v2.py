"""Pure cgroup2 backend: memory.max, cpu.max, pids.max, cgroup.freeze, cgroup.kill.

Kernel facts (Documentation/admin-guide/cgroup-v2.rst):
- A controller's files appear in a child only when the parent lists it in
  ``cgroup.subtree_control``; enabling requires it to be in the parent's ``cgroup.controllers``.
- "No internal processes": a non-root cgroup with processes cannot enable controllers for its
  children (write to cgroup.subtree_control fails with EBUSY). The root cgroup is exempt. Like
  crun/runc hosts without systemd (and docker-in-docker's entrypoint), we then move the processes
  of our own cgroup into a leaf child ``<own>/pymigrate-init`` and retry.
- We never write files of a hierarchy's root cgroup: when we run in the root, only controllers
  already enabled there are used (``layout()`` reports the rest with a hint).
- ``cpu.max`` is ``$QUOTA $PERIOD`` (``max`` = unlimited); ``memory.events`` counts ``oom_kill``;
  ``cpu.stat`` has ``usage_usec`` even without the cpu controller.
- ``cgroup.kill`` (5.14+) SIGKILLs every process in the subtree, frozen ones included.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path, PurePosixPath

from runtime import freezer
from runtime.cgroups._base import BaseManager
from runtime.cgroups._files import (
    CGROUP_CONTROLLERS,
    CGROUP_EVENTS,
    CGROUP_FREEZE,
    CGROUP_KILL,
    CGROUP_PROCS,
    CGROUP_SUBTREE_CONTROL,
    CPU_MAX,
    CPU_STAT,
    MEMORY_CURRENT,
    MEMORY_EVENTS,
    MEMORY_MAX,
    PIDS_CURRENT,
    PIDS_MAX,
    CgroupFs,
    make_dirs,
    procs_recursive,
    read_int,
    read_keyed,
    read_procs,
    sigkill_until_empty,
    validate_limits,
    write,
)
from runtime.cgroups._interface import CgroupInfo, CgroupStats, Limits
from runtime.cgroups._layout import LIMIT_CONTROLLERS, UNIFIED, Hierarchy
from runtime.cgroups.devices import BpfDevicePolicy, DevicePolicy
from runtime.errors import CgroupError, Unsupported
from runtime.freezer import FreezerState

log = logging.getLogger(__name__)

INIT_LEAF = "pymigrate-init"  # where our own cgroup's processes go when it must become inner


def limits_required(limits: Limits) -> set[str]:
    need = set()
    if limits.memory_bytes is not None:
        need.add("memory")
    if limits.cpu_quota_us is not None:
        need.add("cpu")
    if limits.pids_max is not None:
        need.add("pids")
    return need


class V2CgroupManager(BaseManager):
    """Container cgroups in a pure cgroup2 hierarchy.

    Args:
        unified: the cgroup2 hierarchy (from ``layout()``)
        parent: relative path below our own cgroup (validated by ``detect``)
        fs: file-system calls (a fake in unit tests)
        controllers: limit controllers usable here (``CgroupLayout.limits`` keys)
        move_to_leaf: on EBUSY from the no-internal-processes rule, move our own cgroup's
            processes into ``<own>/pymigrate-init``; when false raise Unsupported instead
        devices: the device policy every new cgroup gets (default: runc's list as a BPF program)
    """

    mode = "v2"

    def __init__(
        self,
        unified: Hierarchy,
        parent: PurePosixPath,
        fs: CgroupFs,
        controllers: set[str],
        *,
        move_to_leaf: bool = True,
        devices: DevicePolicy | None = None,
    ) -> None:
        super().__init__([unified], parent, fs)
        self._unified = unified
        self._controllers = set(controllers) & set(LIMIT_CONTROLLERS)
        self._move_to_leaf = move_to_leaf
        self.devices: DevicePolicy = devices if devices is not None else BpfDevicePolicy()

    def _dir(self, name: str) -> Path:
        return self._require(name)[UNIFIED]

    # --- create / limits ---------------------------------------------------------------

    def create(self, name: str, limits: Limits) -> CgroupInfo:
        validate_limits(limits)
        self._check_supported(limits)
        self._enable_controllers()
        dirs = self._make(name)
        try:
            # before any process enters: nothing ever runs in it unconfined
            self.devices.apply(self._fs, dirs.get(self.devices.hierarchy or ""), name)
            self.set_limits(name, limits)
        except BaseException:
            self.destroy(name)
            raise
        log.info("cgroup %s created at %s", name, dirs[UNIFIED])
        return CgroupInfo(name=name, dirs=dirs)

    def _check_supported(self, limits: Limits) -> None:
        missing = sorted(limits_required(limits) - self._controllers)
        if missing:
            raise Unsupported(
                f"{'/'.join(missing)} limits",
                f"controller {', '.join(missing)} is not available below {self._unified.own_dir}",
                hint="see 'pymigrate check' for the cgroup layout",
            )

    def _enable_controllers(self) -> None:
        """Enable our limit controllers from our own cgroup down to ``<own>/<parent>``."""
        if not self._controllers:
            return
        own = self._unified.own_dir
        inner = [] if self._unified.own_is_root else [own]  # never write the root's files
        inner += make_dirs(self._fs, own, self._parent)
        for d in inner:
            self._enable_in(d, allow_move=(d == own))

    def _enable_in(self, directory: Path, *, allow_move: bool) -> None:
        try:
            current = set(self._fs.read(directory / CGROUP_SUBTREE_CONTROL).split())
            available = set(self._fs.read(directory / CGROUP_CONTROLLERS).split())
        except OSError as exc:
            raise CgroupError(f"cannot read controllers of {directory}: {exc.strerror}") from exc
        todo = sorted((self._controllers & available) - current)
        if not todo:
            return
        value = " ".join("+" + c for c in todo)
        try:
            write(self._fs, directory / CGROUP_SUBTREE_CONTROL, value, cgroup=str(directory))
        except CgroupError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.EBUSY and allow_move):
                raise
            if not self._move_to_leaf:
                raise Unsupported(
                    "cgroup2 controllers",
                    f"{directory} has processes, so it cannot enable {value} for child cgroups",
                    hint=f"run pymigrate in a leaf cgroup, e.g. mkdir {directory / INIT_LEAF} "
                    f"and echo $$ > {directory / INIT_LEAF / 'cgroup.procs'}",
                ) from exc
            self._move_own_processes(directory)
            write(self._fs, directory / CGROUP_SUBTREE_CONTROL, value, cgroup=str(directory))

    def _move_own_processes(self, own: Path) -> None:
        leaf = own / INIT_LEAF
        if not self._fs.exists(leaf):
            self._fs.mkdir(leaf)
        pids = read_procs(self._fs, own)
        log.warning(
            "moving %d processes of %s into %s (cgroup2 allows no processes in a cgroup that enables controllers)",
            len(pids),
            own,
            leaf,
        )
        for pid in pids:
            try:
                self._fs.write(leaf / CGROUP_PROCS, str(pid))
            except ProcessLookupError:
                continue  # exited meanwhile
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise CgroupError(f"cannot move pid {pid} from {own} into {leaf}: {exc.strerror}") from exc

    def set_limits(self, name: str, limits: Limits) -> None:
        validate_limits(limits)
        self._check_supported(limits)
        d = self._dir(name)
        if "memory" in self._controllers:
            mem = "max" if limits.memory_bytes is None else str(limits.memory_bytes)
            write(self._fs, d / MEMORY_MAX, mem, cgroup=name)
        if "cpu" in self._controllers:
            quota = "max" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
            write(self._fs, d / CPU_MAX, f"{quota} {limits.cpu_period_us}", cgroup=name)
        if "pids" in self._controllers:
            pids = "max" if limits.pids_max is None else str(limits.pids_max)
            write(self._fs, d / PIDS_MAX, pids, cgroup=name)

    def add_pid(self, name: str, pid: int) -> None:
        write(self._fs, self._dir(name) / CGROUP_PROCS, str(pid), cgroup=name)

    # --- freezer ---------------------------------------------------------------------------

    def freeze(self, name: str, timeout_s: float = 10.0) -> None:
        self._set_frozen(name, True, timeout_s)

    def thaw(self, name: str, timeout_s: float = 10.0) -> None:
        self._set_frozen(name, False, timeout_s)

    def _set_frozen(self, name: str, frozen: bool, timeout_s: float) -> None:
        d = self._dir(name)
        set_frozen_v2(self._fs, d, frozen, cgroup=name, timeout_s=timeout_s)

    def freezer_state(self, name: str) -> FreezerState:
        d = self._dir(name)
        return freezer.v2_state(self._fs.read(d / CGROUP_FREEZE), self._fs.read(d / CGROUP_EVENTS))

    # --- processes -------------------------------------------------------------------------

    def pids(self, name: str) -> list[int]:
        return sorted(procs_recursive(self._fs, self._dir(name)))

    def kill(self, name: str) -> None:
        kill_v2(self._fs, self._dir(name), cgroup=name)

    def stats(self, name: str) -> CgroupStats:
        d = self._dir(name)
        return CgroupStats(
            memory_current_bytes=read_int(self._fs, d / MEMORY_CURRENT),
            memory_max_bytes=read_int(self._fs, d / MEMORY_MAX),
            oom_kills=read_keyed(self._fs, d / MEMORY_EVENTS).get("oom_kill", 0),
            pids_current=read_int(self._fs, d / PIDS_CURRENT),
            cpu_usage_us=read_keyed(self._fs, d / CPU_STAT).get("usage_usec"),
        )

    def destroy(self, name: str, timeout_s: float = 5.0) -> None:
        self._kill_and_remove(
            name, timeout_s, lambda dirs: kill_v2(self._fs, dirs[UNIFIED], cgroup=name, timeout_s=timeout_s)
        )


# --- shared with the hybrid backend (its freezer and kill are cgroup2's) --------------------


def set_frozen_v2(fs: CgroupFs, directory: Path, frozen: bool, *, cgroup: str, timeout_s: float) -> float:
    """Write cgroup.freeze and wait until cgroup.events agrees; return the seconds waited."""
    if not fs.exists(directory / CGROUP_FREEZE):
        raise Unsupported("cgroup2 freezer", f"{directory / CGROUP_FREEZE} is missing", hint="needs Linux 5.2 or later")
    write(fs, directory / CGROUP_FREEZE, "1" if frozen else "0", cgroup=cgroup)
    events = directory / CGROUP_EVENTS

    def reached() -> bool:
        return freezer.parse_events_frozen(fs.read(events)) is frozen

    return freezer.wait_until(
        reached,
        cgroup=cgroup,
        wanted="frozen" if frozen else "thawed",
        timeout_s=timeout_s,
        events_path=events,
    )


def kill_v2(fs: CgroupFs, directory: Path, *, cgroup: str, timeout_s: float = 5.0) -> None:
    """SIGKILL the subtree: cgroup.kill where present, else signal each pid until none is left."""
    if fs.exists(directory / CGROUP_KILL):
        write(fs, directory / CGROUP_KILL, "1", cgroup=cgroup)
        return
    # Before Linux 5.14. A fatal signal also ends cgroup2-frozen tasks, so no thaw is needed.
    sigkill_until_empty(fs, [directory], cgroup=cgroup, timeout_s=timeout_s)
