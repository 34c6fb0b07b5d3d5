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

from pathlib import Path

# The interface and the implementation live in submodules, which import each other and never
# this package: importing it back from them would be an import circle.
from runtime.cgroups._files import CgroupFs, validate_parent
from runtime.cgroups._interface import CgroupInfo, CgroupManager, CgroupStats, Limits
from runtime.cgroups._layout import (
    DEFAULT_PROC_ROOT,
    DEFAULT_SYS_ROOT,
    UNIFIED,
    CgroupLayout,
    Hierarchy,
    layout,
)
from runtime.cgroups._layout import layout as _read_layout  # detect's argument shadows it
from runtime.cgroups.devices import BpfDevicePolicy, DevicePolicy, NoDevicePolicy, V1DevicePolicy
from runtime.cgroups.v1 import V1CgroupManager
from runtime.cgroups.v2 import V2CgroupManager
from runtime.errors import Unsupported
from runtime.freezer import FreezerState


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
    rel = validate_parent(parent)
    lay = layout if layout is not None else _read_layout(proc_root=proc_root, sys_root=sys_root)
    files = fs if fs is not None else CgroupFs()
    devices_h, device_policy = device_policy_for(lay)
    if lay.mode == "v2":
        unified = lay.unified
        if unified is None:  # layout() never says v2 without it
            raise Unsupported("cgroup2", "no cgroup2 hierarchy found")
        return V2CgroupManager(unified, rel, files, set(lay.limits), move_to_leaf=move_to_leaf, devices=device_policy)

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


def device_policy_for(lay: CgroupLayout) -> tuple[Hierarchy | None, DevicePolicy]:
    """The device policy a manager for ``lay`` applies, and the v1 hierarchy it needs (if any).

    v2: a BPF program. hybrid / v1: the v1 devices controller, else a BPF program on the cgroup2
    tree the manager freezes with (the kernel checks both kinds, security/device_cgroup.c), else
    nothing (logged for every cgroup created).
    """
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
    "validate_parent",
]
