"""The container's filesystem view, built as a list of operations first and applied second.

``plan(...)`` returns the operations (``MountOp`` objects) for one container's root, with paths
*relative to the new root* (``/proc``, ``/dev/null``); ``apply(ops, root, sys)`` performs them below
``root`` (the host path of the container's merged overlay, before pivot_root). The plan is pure,
so unit tests check it without root.

Why it looks like this (CRIU must be able to dump the result with no flags beyond declared volumes):
- /dev is a tmpfs with device nodes made by mknod, not bind mounts from the host: a bind of the
  host's /dev/null is an external mount CRIU refuses to dump unless told about it.
- /dev/pts is a private devpts instance (newinstance) so ptys are the container's own.
- masked paths follow runc's paths: files get the container's own /dev/null bound over them,
  directories a read-only bind of one empty directory of the container's /dev (``MASK_DIR``)
  where runc mounts an empty read-only tmpfs. Same view, but CRIU dumps and restores every tmpfs
  by running ``tar`` (~3.5 ms a mount on each side, inside a migration's pause), while a bind of a
  directory in a mount it restores anyway costs nothing. /proc/sys and friends are bound on
  themselves and remounted read-only (a bind remount must repeat MS_BIND, see mount(2)
  "MS_REMOUNT").
- volumes are the only mounts whose source is outside the container; they are recorded in the
  spec so the checkpoint code can declare them to CRIU as external mounts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Union

from runtime.errors import MountError
from runtime.spec import Volume
from runtime.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
    Syscalls,
)


@dataclass(frozen=True)
class Mount:
    target: str
    fstype: str | None
    source: str | None = None
    flags: int = 0
    data: str | None = None
    # a bind source that lives inside the new root (relative to it), e.g. "/dev/null"
    source_in_root: bool = False
    # a bind made beforehand as a detached tree (open_tree; ``pin_sources``): attached, not mounted
    source_fd: int = -1
    # --userns: a named volume's bind shows its files with the container's ids (idmapped, ``pin_sources``)
    idmap: bool = False


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class MakeFile:
    """An empty file, as the mount point of a file bind."""

    path: str
    mode: int = 0o644


@dataclass(frozen=True)
class MakeNode:
    path: str
    major: int
    minor: int
    mode: int = 0o666


@dataclass(frozen=True)
class Symlink:
    target: str
    path: str


@dataclass(frozen=True)
class Mask:
    """Hide ``path`` if it exists (a missing masked path is fine): the container's /dev/null is
    bound over a file, the empty ``MASK_DIR`` (read-only) over a directory."""

    path: str


@dataclass(frozen=True)
class ReadOnly:
    """Bind ``path`` on itself and remount it read-only, if it exists."""

    path: str


MountOp = Union[Mount, MakeDir, MakeFile, MakeNode, Symlink, Mask, ReadOnly]

# runc's defaults (libcontainer/specconv/example.go)
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
LOG_DIR = "/.pymigrate"  # the log's directory (runtime.overlay.LOG_PATH_IN_CONTAINER), writable under --read-only
MASK_DIR = "/dev/.masked"  # empty; bound read-only over masked directories (module doc)
READONLY_PATHS: tuple[str, ...] = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


def plan(volumes: tuple[Volume, ...] = (), *, read_only: bool = False, userns: bool = False) -> list[MountOp]:
    """Every operation that turns a merged overlay into the container's root, in order.

    Volumes come before the masks so a volume cannot unmask a path; masks come last because
    they bind the container's own /dev/null. ``read_only`` (``run --read-only``) adds a bind of
    /.pymigrate on itself, so the log stays writable once the init remounts / read-only after
    pivot_root (runtime/process.py; a remount fails while a file on that mount is open for
    writing, and the log is). ``userns`` (``--userns auto``): the device nodes are binds of the
    host's (``DEVICES``), as mknod(2) of a device needs the host's root, and a tmpfs made in
    a user namespace ignores device nodes anyway.
    """
    ops: list[MountOp] = [
        MakeDir("/proc"),
        Mount("/proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        MakeDir("/dev"),
        Mount("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k"),
    ]
    if userns:
        for name, _major, _minor in DEVICES:
            ops += [MakeFile(f"/dev/{name}", 0o666), Mount(f"/dev/{name}", None, f"/dev/{name}", MS_BIND)]
    else:
        ops += [MakeNode(f"/dev/{name}", major, minor) for name, major, minor in DEVICES]
    ops += [
        MakeDir(MASK_DIR, 0o555),
        MakeDir("/dev/pts"),
        Mount("/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        MakeDir("/dev/shm", 0o1777),
        Mount("/dev/shm", "tmpfs", "shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k"),
        MakeDir("/dev/mqueue"),
        Mount("/dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ]
    ops += [Symlink(target, path) for target, path in DEV_SYMLINKS]
    ops += [
        MakeDir("/sys"),
        Mount("/sys", "sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY),
    ]
    for vol in volumes:
        if os.path.isdir(vol.source) or not os.path.exists(vol.source):
            ops.append(MakeDir(vol.target))
        else:
            ops.append(MakeFile(vol.target))
        ops.append(Mount(vol.target, None, vol.source, MS_BIND | MS_REC, idmap=userns and bool(vol.name)))
        if vol.readonly:
            ops.append(Mount(vol.target, None, None, MS_BIND | MS_REMOUNT | MS_RDONLY))
        # Volumes must not propagate mounts back to the host (nor receive the host's).
        ops.append(Mount(vol.target, None, None, MS_PRIVATE | MS_REC))
    if read_only:
        ops.append(Mount(LOG_DIR, None, LOG_DIR, MS_BIND, source_in_root=True))
    ops += [Mask(p) for p in MASKED_PATHS]
    ops += [ReadOnly(p) for p in READONLY_PATHS]
    return ops


def device_externals(userns: bool, *, restore: bool) -> tuple[str, ...]:
    """CRIU ``external`` entries for a ``--userns`` container's device binds (``plan``): a dump
    names each ``mnt[/dev/null]:dev-null``, a restore maps the key to this host's node; the masks
    bound from the container's /dev/null are binds of the same external mount."""
    if not userns:
        return ()
    if restore:
        return tuple(f"mnt[dev-{name}]:/dev/{name}" for name, _ma, _mi in DEVICES)
    return tuple(f"mnt[/dev/{name}]:dev-{name}" for name, _ma, _mi in DEVICES)


def pin_sources(ops: list[MountOp], sys: Syscalls, userns: str = "") -> tuple[list[MountOp], list[int]]:
    """``ops`` with each bind of a source outside the new root made now as a detached tree
    (open_tree), which ``apply`` attaches; and those fds (close-on-exec). A named volume's tree is
    idmapped with the user namespace pinned at ``userns``: its files on disk keep the ids a
    container without a user namespace sees (one volume serves containers of any range, and
    moves between hosts unchanged), the container's root owns what root owns on disk. A host
    path bound with -v is not idmapped: its root-owned files stay out of the container's reach.

    For ``--userns auto``: the init applies the plan as the root of its own user namespace, an
    unprivileged id on the host, which may not traverse the state root (0700) to reach a named
    volume's data; the host's root takes the trees first, before joining the namespace. (A path
    fd would not do: a bind's source must be in the caller's mount namespace, or detached.)"""
    out: list[MountOp] = []
    fds: list[int] = []
    try:
        for op in ops:
            if isinstance(op, Mount) and op.flags & MS_BIND and op.source and not op.source_in_root and not op.flags & MS_REMOUNT:
                fd = sys.open_tree(op.source, recursive=bool(op.flags & MS_REC))
                fds.append(fd)
                if op.idmap and userns:
                    from runtime.userns import idmap_tree

                    idmap_tree(fd, userns, op.source)
                op = Mount(op.target, op.fstype, None, op.flags, op.data, source_fd=fd)
            out.append(op)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return out, fds


def _inside(root: str, path: str) -> str:
    """``path`` (absolute, container view) below ``root``, refusing '..' escapes."""
    norm = os.path.normpath("/" + path.lstrip("/"))
    if ".." in norm.split("/"):
        raise MountError(f"container path {path} escapes the root")
    return root.rstrip("/") + norm


def apply(ops: list[MountOp], root: str, sys: Syscalls) -> None:
    """Perform ``ops`` below ``root`` (the host path of the new root, before pivot_root)."""
    for op in ops:
        try:
            _apply_one(op, root, sys)
        except OSError as exc:
            raise MountError(f"cannot set up {getattr(op, 'target', None) or getattr(op, 'path', '')}: {exc.strerror or exc}") from exc


def _apply_one(op: MountOp, root: str, sys: Syscalls) -> None:
    if isinstance(op, Mount) and op.source_fd >= 0:
        sys.move_mount(op.source_fd, _inside(root, op.target))
    elif isinstance(op, Mount):
        target = _inside(root, op.target)
        source = _inside(root, op.source) if (op.source_in_root and op.source) else op.source
        sys.mount(source, target, op.fstype, op.flags, op.data)
    elif isinstance(op, MakeDir):
        sys.mkdir(_inside(root, op.path), op.mode)
    elif isinstance(op, MakeFile):
        path = _inside(root, op.path)
        sys.mkdir(os.path.dirname(path))
        if not os.path.exists(path):
            sys.touch(path, op.mode)
    elif isinstance(op, MakeNode):
        sys.mknod(_inside(root, op.path), stat.S_IFCHR | op.mode, op.major, op.minor)
    elif isinstance(op, Symlink):
        sys.symlink(op.target, _inside(root, op.path))
    elif isinstance(op, Mask):
        path = _inside(root, op.path)
        if os.path.isdir(path):
            sys.mount(_inside(root, MASK_DIR), path, None, MS_BIND)
            sys.mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif os.path.exists(path):
            sys.mount(_inside(root, "/dev/null"), path, None, MS_BIND)
    elif isinstance(op, ReadOnly):
        path = _inside(root, op.path)
        if os.path.exists(path):
            sys.mount(path, path, None, MS_BIND | MS_REC)
            sys.mount(path, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"unknown rootfs operation {op!r}")
