"""Where the cgroup hierarchies are and where this process sits in each of them.

Read-only: parses ``/proc/self/mountinfo`` (which hierarchies are mounted where) and
``/proc/self/cgroup`` (this process's cgroup per hierarchy) and looks at a few files below our
own cgroups. Nothing here writes to cgroupfs.

Kernel facts that matter (Documentation/admin-guide/cgroup-v1/cgroups.rst, cgroup-v2.rst, proc(5)):

- ``/proc/self/cgroup`` lines are ``hierarchy-id:controller-list:path``. cgroup2 is always
  ``0::/path``; a v1 hierarchy lists its controllers comma-joined (``4:cpu,cpuacct:/x``) or a
  name (``1:name=systemd:/``). The line ``0::/`` is printed even when no cgroup2 is mounted, so the
  *mode* is decided by mounts, not by these lines.
- mountinfo fields: ``id parent major:minor root mount-point options [optional...] - fstype source
  super-options``; v1 super options carry the bound controllers (``rw,cpu,cpuacct``). Spaces and
  backslashes in paths are octal escaped (``\\040``). One hierarchy may be mounted several times
  (bind mounts); the first mount wins.
- ``root`` is the directory of the hierarchy that is mounted; inside a cgroup namespace both it
  and /proc/self/cgroup paths are relative to the namespace root.
- The root cgroup of cgroup2 has no ``cgroup.freeze`` (it cannot be frozen); children have it from
  Linux 5.2, ``cgroup.kill`` from 5.14.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtime.cgroups._files import CGROUP_CONTROLLERS, CGROUP_FREEZE, CGROUP_SUBTREE_CONTROL

DEFAULT_SYS_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PROC_ROOT = Path("/proc")

UNIFIED = "unified"  # hierarchy name of cgroup2, in v2 and in hybrid mode
LIMIT_CONTROLLERS = ("memory", "cpu", "pids")

Mode = Literal["v2", "hybrid", "v1"]
FreezeMethod = Literal["cgroup2", "v1", "none"]


@dataclass(frozen=True)
class MountEntry:
    """One cgroup or cgroup2 line of mountinfo."""

    device: str  # major:minor, identifies the hierarchy
    root: str
    mount_point: Path
    fstype: str  # "cgroup" | "cgroup2"
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class ProcCgroupEntry:
    """One line of /proc/<pid>/cgroup."""

    hierarchy_id: int
    controllers: tuple[str, ...]  # () for cgroup2; ("name=systemd",) for a named v1 hierarchy
    path: str


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and this process's place in it.

    Attributes:
        name: ``unified`` for cgroup2, else the controller list as /proc/self/cgroup spells it
            (``memory``, ``cpu,cpuacct``, ``name=systemd``)
        version: 1 or 2
        controllers: v1: the controllers bound to it; v2: the controllers listed in our own
            cgroup's ``cgroup.controllers`` (those our subtree may enable)
        mount_point: where it is mounted
        own_path: this process's cgroup in it, as /proc/self/cgroup says (``/process_api/ab12``)
        own_dir: that cgroup's directory
    """

    name: str
    version: int
    controllers: tuple[str, ...]
    mount_point: Path
    own_path: str
    own_dir: Path

    @property
    def own_is_root(self) -> bool:
        return self.own_dir == self.mount_point


@dataclass(frozen=True)
class CgroupLayout:
    """The cgroup layout of this host as seen from this process.

    Attributes:
        mode: ``v2`` (only cgroup2), ``hybrid`` (v1 controllers plus a cgroup2 without them),
            ``v1`` (no cgroup2 mounted)
        hierarchies: every mounted hierarchy we are a member of
        freezer: how containers are frozen: ``cgroup2`` (cgroup.freeze), ``v1`` (freezer.state)
            or ``none``
        limits: limit controller (``memory``, ``cpu``, ``pids``) -> name of the hierarchy that
            enforces it; a controller that is missing or unusable is absent
        notes: human-readable findings for ``pymigrate check`` (missing controllers, hints)
    """

    mode: Mode
    hierarchies: tuple[Hierarchy, ...]
    freezer: FreezeMethod
    limits: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def hierarchy(self, name: str) -> Hierarchy | None:
        """The hierarchy called ``name`` (``unified``, ``memory``, ``cpu,cpuacct`` ...)."""
        for h in self.hierarchies:
            if h.name == name:
                return h
        return None

    @property
    def unified(self) -> Hierarchy | None:
        return self.hierarchy(UNIFIED)

    def v1_with(self, controller: str) -> Hierarchy | None:
        """The v1 hierarchy that has ``controller`` bound (``cpu`` finds ``cpu,cpuacct``)."""
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        return None

    def limit_dir(self, controller: str) -> Path | None:
        """Our own cgroup directory in the hierarchy enforcing ``controller``, if usable."""
        name = self.limits.get(controller)
        h = self.hierarchy(name) if name else None
        return h.own_dir if h else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``pymigrate check --json``)."""
        return {
            "mode": self.mode,
            "freezer": self.freezer,
            "limits": {c: self.limits.get(c) for c in LIMIT_CONTROLLERS},
            "hierarchies": [
                {
                    "name": h.name,
                    "version": h.version,
                    "controllers": list(h.controllers),
                    "mount_point": str(h.mount_point),
                    "own_path": h.own_path,
                    "own_dir": str(h.own_dir),
                }
                for h in self.hierarchies
            ],
            "notes": list(self.notes),
        }

    def describe(self) -> list[str]:
        """Short human lines, one fact each, for ``pymigrate check``."""
        lines = [f"cgroup mode: {self.mode}", f"freezer: {_freezer_text(self)}"]
        for ctrl in LIMIT_CONTROLLERS:
            d = self.limit_dir(ctrl)
            lines.append(f"{ctrl} limits: " + (f"{self.limits[ctrl]} at {d}" if d else "unavailable"))
        for h in self.hierarchies:
            ctrls = ",".join(h.controllers) or "-"
            lines.append(f"hierarchy {h.name} (v{h.version}, controllers {ctrls}): own cgroup {h.own_path} at {h.own_dir}")
        lines.extend(f"note: {n}" for n in self.notes)
        return lines


def _freezer_text(lay: CgroupLayout) -> str:
    if lay.freezer == "cgroup2" and lay.unified:
        return f"cgroup2 cgroup.freeze below {lay.unified.own_dir}"
    if lay.freezer == "v1":
        h = lay.v1_with("freezer")
        return f"v1 freezer.state below {h.own_dir if h else '?'}"
    return "unavailable"


# --- parsing -------------------------------------------------------------------------------

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The cgroup and cgroup2 mounts in a mountinfo text, first mount of each hierarchy only."""
    entries: list[MountEntry] = []
    seen: set[str] = set()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        device = fields[2]
        if device in seen:  # a bind mount of a hierarchy already found
            continue
        seen.add(device)
        entries.append(
            MountEntry(
                device=device,
                root=_unescape(fields[3]),
                mount_point=Path(_unescape(fields[4])),
                fstype=tail[0],
                super_options=tuple(tail[2].split(",")),
            )
        )
    return entries


def parse_proc_cgroup(text: str) -> list[ProcCgroupEntry]:
    """The lines of /proc/<pid>/cgroup."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        hid, ctrls, path = line.split(":", 2)
        entries.append(
            ProcCgroupEntry(
                hierarchy_id=int(hid),
                controllers=tuple(c for c in ctrls.split(",") if c),
                path=path,
            )
        )
    return entries


def _rebase(mount_point: Path, sys_root: Path) -> Path:
    """Place a mount point below ``sys_root`` (a test hook; identity for the real root)."""
    if sys_root == DEFAULT_SYS_ROOT:
        return mount_point
    try:
        return sys_root / mount_point.relative_to(DEFAULT_SYS_ROOT)
    except ValueError:
        return sys_root / mount_point.relative_to("/")


def _own_dir(mount_point: Path, mount_root: str, own_path: str) -> Path:
    # Usually the hierarchy root is mounted ("/"). When a sub-tree is mounted (containers) and
    # our path lies below it, strip the mounted part; in a cgroup namespace the paths are
    # already relative to what is mounted.
    rel = own_path
    if mount_root not in ("/", "") and (own_path == mount_root or own_path.startswith(mount_root.rstrip("/") + "/")):
        rel = own_path[len(mount_root.rstrip("/")) :]
    rel = rel.strip("/")
    return mount_point / rel if rel else mount_point


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _kernel_has_cgroup_freeze() -> bool:
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (5, 2)


def _cgroup2_freeze_works(own_dir: Path) -> bool:
    if (own_dir / CGROUP_FREEZE).exists():
        return True
    # The root cgroup has no cgroup.freeze; look at an existing child, else trust the kernel
    # version (cgroup.freeze appeared in 5.2).
    try:
        for child in own_dir.iterdir():
            if child.is_dir():
                return (child / CGROUP_FREEZE).exists()
    except OSError:
        return False
    return _kernel_has_cgroup_freeze()


def layout(proc_root: Path = DEFAULT_PROC_ROOT, sys_root: Path = DEFAULT_SYS_ROOT) -> CgroupLayout:
    """Find the cgroup hierarchies, this process's cgroups and what can be used for containers.

    Args:
        proc_root: where /proc is (tests pass a directory holding ``self/cgroup`` and
            ``self/mountinfo``)
        sys_root: where the cgroup mounts of mountinfo under /sys/fs/cgroup are looked for (tests
            pass a tmp_path tree; mount points are rebased onto it)

    Raises:
        Unsupported: no cgroup hierarchy is mounted, or /proc cannot be read
    """
    from runtime.errors import Unsupported

    try:
        mountinfo = (proc_root / "self" / "mountinfo").read_text()
        proc_cgroup = (proc_root / "self" / "cgroup").read_text()
    except OSError as exc:
        raise Unsupported("cgroups", f"cannot read {exc.filename}: {exc.strerror}") from exc

    mounts = parse_mountinfo(mountinfo)
    own = parse_proc_cgroup(proc_cgroup)
    notes: list[str] = []
    hierarchies: list[Hierarchy] = []

    v2_mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    v2_line = next((e for e in own if e.hierarchy_id == 0), None)
    if v2_mount is not None and v2_line is not None:
        mp = _rebase(v2_mount.mount_point, sys_root)
        own_dir = _own_dir(mp, v2_mount.root, v2_line.path)
        ctrls = tuple((_read(own_dir / CGROUP_CONTROLLERS) or "").split())
        hierarchies.append(Hierarchy(UNIFIED, 2, ctrls, mp, v2_line.path, own_dir))

    for entry in own:
        if entry.hierarchy_id == 0:
            continue
        wanted = set(entry.controllers)
        mount = next((m for m in mounts if m.fstype == "cgroup" and wanted <= set(m.super_options)), None)
        if mount is None:
            notes.append(f"v1 hierarchy {','.join(entry.controllers)} is not mounted")
            continue
        mp = _rebase(mount.mount_point, sys_root)
        hierarchies.append(
            Hierarchy(
                name=",".join(entry.controllers),
                version=1,
                controllers=entry.controllers,
                mount_point=mp,
                own_path=entry.path,
                own_dir=_own_dir(mp, mount.root, entry.path),
            )
        )

    v1_controllers = {c for h in hierarchies if h.version == 1 for c in h.controllers if not c.startswith("name=")}
    unified = next((h for h in hierarchies if h.version == 2), None)
    if unified is None and not v1_controllers:
        raise Unsupported(
            "cgroups",
            "no cgroup or cgroup2 hierarchy is mounted",
            hint="mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        )
    mode: Mode = "v2" if not v1_controllers else ("hybrid" if unified else "v1")

    limits: dict[str, str] = {}
    if mode == "v2" and unified is not None:
        usable = set(unified.controllers)
        if unified.own_is_root:
            # We never write a hierarchy root's files, so at the root only controllers someone
            # else already enabled in cgroup.subtree_control reach our cgroups.
            control = unified.own_dir / CGROUP_SUBTREE_CONTROL
            enabled = set((_read(control) or "").split())
            for c in LIMIT_CONTROLLERS:
                if c in usable and c not in enabled:
                    notes.append(
                        f"controller {c} is not enabled in {control}; enable it with 'echo +{c} > {control}'"
                    )
            usable &= enabled
        for c in LIMIT_CONTROLLERS:
            if c in usable:
                limits[c] = UNIFIED
            else:
                notes.append(f"controller {c} is not available in {unified.own_dir}; {c} limits cannot be set")
    else:
        for c in LIMIT_CONTROLLERS:
            h = next((h for h in hierarchies if h.version == 1 and c in h.controllers), None)
            if h is not None and h.own_dir.is_dir():
                limits[c] = h.name
            else:
                notes.append(f"v1 controller {c} is not mounted; {c} limits cannot be set")
        if unified is not None and unified.controllers:
            notes.append(f"cgroup2 controllers {' '.join(unified.controllers)} are unused (limits go to v1)")

    freezer: FreezeMethod = "none"
    if unified is not None and _cgroup2_freeze_works(unified.own_dir):
        freezer = "cgroup2"
    elif any(h.version == 1 and "freezer" in h.controllers for h in hierarchies):
        freezer = "v1"
        if unified is not None:
            notes.append("cgroup2 has no cgroup.freeze (kernel older than 5.2); using the v1 freezer")
    else:
        notes.append("no freezer: neither cgroup.freeze nor the v1 freezer controller is available")

    for h in hierarchies:
        if not h.own_dir.is_dir():
            notes.append(f"own cgroup directory {h.own_dir} of hierarchy {h.name} does not exist")

    return CgroupLayout(mode=mode, hierarchies=tuple(hierarchies), freezer=freezer, limits=limits, notes=tuple(notes))
