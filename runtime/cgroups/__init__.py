"""cgroup management behind one interface, chosen once at start-up.

Layouts:
- ``v2``: pure cgroup2 at /sys/fs/cgroup (memory.max, cpu.max, pids.max, cgroup.freeze, cgroup.kill).
- ``hybrid``: v1 controllers under /sys/fs/cgroup/<controller>, cgroup2 (no controllers) at
  /sys/fs/cgroup/unified; limits go to v1, freezing through cgroup2's cgroup.freeze, falling back
  to the v1 freezer when the unified tree is missing.
- ``v1``: v1 only (freezer.state for freezing).

Rule: cgroups are created only *below* the cgroup this process already runs in (from
/proc/self/cgroup, per hierarchy) or below an explicit parent; never directly at a hierarchy root.

``detect()`` is the only place that asks "which layout?"; everything else talks to a
``CgroupManager``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

FreezerState = Literal["thawed", "freezing", "frozen"]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container. ``None`` means unlimited."""

    memory_bytes: int | None = None
    cpu_quota_us: int | None = None  # per cpu_period_us; --cpus 0.5 -> 50000/100000
    cpu_period_us: int = 100_000
    pids_max: int | None = None


@dataclass(frozen=True)
class CgroupStats:
    memory_current_bytes: int | None = None
    memory_max_bytes: int | None = None
    oom_kills: int = 0  # processes killed by the OOM killer inside this cgroup
    pids_current: int | None = None
    cpu_usage_us: int | None = None


@dataclass(frozen=True)
class CgroupInfo:
    """Where one container's cgroup lives: hierarchy name -> absolute directory.

    Hierarchy names: ``unified`` for cgroup2 (in both v2 and hybrid), v1 controller names
    (``memory``, ``cpu``, ``pids``, ``freezer``, ...) in hybrid and v1.
    """

    name: str
    dirs: dict[str, Path] = field(default_factory=dict)


class CgroupManager(Protocol):
    """Creates, limits, freezes and removes container cgroups.

    Does not decide whether an operation is legal for a container (``Container`` does) and never
    touches a cgroup it did not create, except to read its own position.
    """

    mode: str  # "v2" | "hybrid" | "v1"

    def create(self, name: str, limits: Limits) -> CgroupInfo:
        """Create cgroup ``name`` below the parent in every hierarchy and apply ``limits``."""
        ...

    def info(self, name: str) -> CgroupInfo: ...

    def add_pid(self, name: str, pid: int) -> None:
        """Move ``pid`` into the cgroup in every hierarchy."""
        ...

    def set_limits(self, name: str, limits: Limits) -> None: ...

    def freeze(self, name: str, timeout_s: float = 10.0) -> None:
        """Freeze and wait (bounded) until the kernel reports frozen; raise FreezeTimeout."""
        ...

    def thaw(self, name: str, timeout_s: float = 10.0) -> None: ...

    def freezer_state(self, name: str) -> FreezerState: ...

    def pids(self, name: str) -> list[int]:
        """Every pid in the cgroup (recursively)."""
        ...

    def kill(self, name: str) -> None:
        """SIGKILL every process (cgroup.kill where present)."""
        ...

    def stats(self, name: str) -> CgroupStats: ...

    def destroy(self, name: str, timeout_s: float = 5.0) -> None:
        """Remove the cgroup in every hierarchy; kills leftovers first. Missing is fine."""
        ...

    def exists(self, name: str) -> bool: ...


# --- layout and detection (implementation in _layout.py, v2.py, v1.py) ---------------------

from runtime.cgroups._layout import (  # noqa: E402  (after the interface the backends import)
    DEFAULT_PROC_ROOT,
    DEFAULT_SYS_ROOT,
    UNIFIED,
    CgroupLayout,
    Hierarchy,
    layout,
)
from runtime.cgroups._layout import layout as _read_layout  # noqa: E402  (detect's arg shadows it)

if TYPE_CHECKING:
    from runtime.cgroups._files import CgroupFs
    from runtime.cgroups.devices import DevicePolicy


def detect(
    parent: str | None = None,
    *,
    layout: CgroupLayout | None = None,
    sys_root: Path = DEFAULT_SYS_ROOT,
    proc_root: Path = DEFAULT_PROC_ROOT,
    fs: CgroupFs | None = None,
    move_to_leaf: bool = True,
) -> CgroupManager:
    """The one place that decides v2, hybrid or v1, and returns the manager for it.

    Container cgroups go to ``<own cgroup>/<parent>/<name>`` in each hierarchy used, where
    ``<own cgroup>`` is this process's cgroup there (/proc/self/cgroup).

    Args:
        parent: path relative to our own cgroup; default ``pymigrate``
        layout: a layout found earlier (else ``layout(proc_root, sys_root)`` is read)
        sys_root, proc_root: where cgroupfs and /proc are (tests pass tmp_path trees)
        fs: the file-system calls (tests pass a fake cgroupfs)
        move_to_leaf: v2 only; see ``V2CgroupManager``

    Raises:
        InvalidArgument: ``parent`` is absolute or contains ``.``/``..``
        Unsupported: no usable cgroup hierarchy
    """
    from runtime.cgroups._files import CgroupFs, validate_parent
    from runtime.errors import Unsupported

    rel = validate_parent(parent)
    lay = layout if layout is not None else _read_layout(proc_root=proc_root, sys_root=sys_root)
    files = fs if fs is not None else CgroupFs()
    devices_h, device_policy = device_policy_for(lay)
    if lay.mode == "v2":
        from runtime.cgroups.v2 import V2CgroupManager

        unified = lay.unified
        if unified is None:  # layout() never says v2 without it
            raise Unsupported("cgroup2", "no cgroup2 hierarchy found")
        return V2CgroupManager(unified, rel, files, set(lay.limits), move_to_leaf=move_to_leaf, devices=device_policy)

    from runtime.cgroups.v1 import V1CgroupManager

    limit_h = {c: h for c in lay.limits if (h := lay.hierarchy(lay.limits[c])) is not None}
    use_unified = lay.unified if lay.freezer == "cgroup2" else None
    return V1CgroupManager(
        limit_hierarchies=limit_h,
        unified=use_unified,
        freezer=lay.v1_with("freezer") if lay.freezer == "v1" else None,
        cpuacct=lay.v1_with("cpuacct"),
        parent=rel,
        fs=files,
        mode=lay.mode,
        devices=devices_h,
        device_policy=device_policy,
    )


def device_policy_for(lay: CgroupLayout) -> tuple[Hierarchy | None, "DevicePolicy"]:
    """The device policy a manager for ``lay`` applies, and the v1 hierarchy it needs (if any).

    v2: a BPF program. hybrid / v1: the v1 devices controller, else a BPF program on the cgroup2
    tree the manager freezes with (the kernel checks both kinds, security/device_cgroup.c), else
    nothing (logged for every cgroup created).
    """
    from runtime.cgroups.devices import BpfDevicePolicy, NoDevicePolicy, V1DevicePolicy

    if lay.mode == "v2":
        return None, BpfDevicePolicy()
    devices = lay.v1_with("devices")
    if devices is not None:
        return devices, V1DevicePolicy(devices.name)
    if lay.unified is not None and lay.freezer == "cgroup2":
        return None, BpfDevicePolicy()
    return None, NoDevicePolicy("neither the v1 devices controller nor a usable cgroup2 tree is mounted")


__all__ = [
    "DEFAULT_PROC_ROOT",
    "DEFAULT_SYS_ROOT",
    "UNIFIED",
    "CgroupInfo",
    "CgroupLayout",
    "CgroupManager",
    "CgroupStats",
    "FreezerState",
    "Hierarchy",
    "Limits",
    "detect",
    "device_policy_for",
    "layout",
]
