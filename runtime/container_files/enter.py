"""A forked child that works inside a container's root file system, never on the host's.

The container's files are untrusted: a path in it is resolved only by a process whose root *is*
the container's root, so ``/etc`` or a symlink to ``/`` in the container lead to the container's
files. The child is made one of three ways:

- ``LiveRoot`` (running or paused: its init's pid): setns into the init's mount namespace, which
  makes the child's root the container's root (the init pivot_root'ed into it; confirmed by
  comparing it with /proc/PID/root), then unshare a private copy of that namespace (nothing
  the child mounts or detaches reaches the container) and detach every procfs there: a
  ``/proc/PID/root`` magic link of a ``--pid host`` container would otherwise lead to the host's
  root. Volumes and the container's own mounts are seen as the container sees them.
- ``MountedRoot`` (created or exited: the overlay stays mounted at the container's merged/):
  a private mount namespace, chroot into merged/, then its volumes attached there as binds
  taken (open_tree) before the chroot and attached (move_mount) after it, so their targets
  resolve inside the container (a target that is a symlink to /etc stays in the container).
- ``LayerRoot`` (checkpointed: its writable layer is unmounted): a private mount namespace in
  which the layer (its ext4 image read-only, or its directory) and the image's layers are
  mounted as a read-only overlay on a scratch dir, then chroot. Mounts die with the child.

The child imports nothing after entering: the host's Python library is not in the container's
root, and a module the container planted at a sys.path location would run as root outside the
container's other namespaces. Imports fail in the child (``_no_imports``); what it runs is
loaded before the fork. It reports a failure as one JSON line on a pipe;
``Child.finish`` raises it again as the runtime error it was.

The caller must be single-threaded (fork): the CLI is; the daemon is not (cp is local only).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

from runtime import overlay, upperfs
from runtime.container_files.tarstream import disable_name_lookups
from runtime.errors import ContainerError, InvalidArgument, UnsafeArchive
from runtime.syscalls import CLONE_NEWNS, CLONE_NEWUSER, LINUX, MNT_DETACH, MS_BIND, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT


@dataclass(frozen=True)
class LiveRoot:
    pid: int
    userns: bool = False  # the container has a user namespace of its own: the child joins it


@dataclass(frozen=True)
class MountedRoot:
    merged: Path
    volumes: tuple[tuple[str, str, bool], ...] = ()  # (host source, target inside, read-only)


@dataclass(frozen=True)
class LayerRoot:
    upper: Path  # the upper dir (on the image once mounted: image's UPPER below the mount point)
    lowers: tuple[Path, ...]
    scratch: Path  # an empty dir this process holds (runtime/scratch.py)
    image: Path | None = None  # the layer's ext4 image, mounted read-only at scratch/layer


Root = Union[LiveRoot, MountedRoot, LayerRoot]


@dataclass
class Child:
    pid: int
    errors: int  # read end of the child's error pipe
    what: str  # "container web-1" for messages

    def finish(self, *, parent_failed: bool = False, quiet: bool = False) -> None:
        """Wait for the child; raise what it reported (or a ContainerError for an odd exit).
        ``parent_failed``: this side stopped, so the child's broken pipe is no news; ``quiet``:
        this side's error is the cause, whatever the child then saw."""
        with os.fdopen(self.errors, "rb") as f:
            report = f.read()
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if quiet:
            return
        if report:
            data = json.loads(report)
            if parent_failed and data.get("type") == "BrokenPipeError":
                return
            raise _error(data, self.what)
        if parent_failed:
            return
        if code != 0:
            raise ContainerError(f"cannot copy files of {self.what}: the helper process ended with status {code}")


def spawn(root: Root, work: Callable[[], None], *, what: str, close_in_child: tuple[int, ...] = ()) -> Child:
    """Fork a child that enters ``root`` and runs ``work`` there; ``close_in_child``: the
    parent's pipe ends the child must not keep."""
    live = _open_live(root) if isinstance(root, LiveRoot) else None
    errr, errw = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        for fd in (errr, errw):
            os.close(fd)
        if live is not None:
            live.close()
        raise
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(errr)
            for fd in close_in_child:
                os.close(fd)
            disable_name_lookups()
            _no_imports()
            _enter(root, live)
            work()
            code = 0
        except BaseException as exc:  # the child's boundary: everything goes to the parent
            _report(errw, exc)
        finally:
            os._exit(code)
    os.close(errw)
    if live is not None:
        live.close()
    return Child(pid, errr, what)


def _no_imports() -> None:  # pragma: no cover - child
    """Make any import from now on fail instead of searching sys.path: inside the container's
    root those paths are the container's files, and a module found there would run as root
    outside the container's other namespaces."""
    sys.path[:] = []
    sys.path_importer_cache.clear()
    sys.meta_path[:] = [f for f in sys.meta_path if f is not importlib.machinery.PathFinder]


@dataclass(frozen=True)
class _Live:
    """What the parent takes of a live container before the fork."""

    mnt_fd: int  # the init's mount namespace
    root_id: tuple[int, int]  # (st_dev, st_ino) of its root
    procfs: list[str]  # its procfs mount points as it sees them (its /proc has no "self" for us)
    user_fd: int | None  # its user namespace (--userns)

    def close(self) -> None:
        os.close(self.mnt_fd)
        if self.user_fd is not None:
            os.close(self.user_fd)


def _open_live(root: LiveRoot) -> _Live:
    """The init's namespaces, root identity and procfs mount points, taken before the fork."""
    fd = os.open(f"/proc/{root.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    user_fd = None
    try:
        if root.userns:
            user_fd = os.open(f"/proc/{root.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        st = os.stat(f"/proc/{root.pid}/root")
        with open(f"/proc/{root.pid}/mountinfo", "rb") as f:
            points = procfs_mount_points(f.read().decode("utf-8", "surrogateescape"))
    except BaseException:
        os.close(fd)
        if user_fd is not None:
            os.close(user_fd)
        raise
    return _Live(fd, (st.st_dev, st.st_ino), points, user_fd)


def _enter(root: Root, live: _Live | None) -> None:  # pragma: no cover - child
    if isinstance(root, LiveRoot) and live is not None:
        if live.user_fd is not None:
            _become_container_root(live.user_fd)
        LINUX.setns(live.mnt_fd, CLONE_NEWNS)
        LINUX.unshare(CLONE_NEWNS)
        os.chdir("/")
        st = os.stat("/")
        if (st.st_dev, st.st_ino) != live.root_id:
            raise ContainerError("the mount namespace's root is not the container's root")
        LINUX.mount(None, "/", None, MS_REC | MS_PRIVATE)
        for point in live.procfs:  # deepest first
            LINUX.umount2(point, MNT_DETACH)
        return
    LINUX.unshare(CLONE_NEWNS)
    LINUX.mount(None, "/", None, MS_REC | MS_PRIVATE)
    if isinstance(root, MountedRoot):
        trees = [(LINUX.open_tree(source, recursive=True), target, ro) for source, target, ro in root.volumes]
        os.chroot(root.merged)
        os.chdir("/")
        _attach_volumes(trees)
        return
    os.chroot(_mount_layers(root))  # type: ignore[arg-type]
    os.chdir("/")


def _attach_volumes(trees: list[tuple[int, str, bool]]) -> None:  # pragma: no cover - child
    """Attach each volume's tree at its target, resolved inside the chroot; a target the container
    no longer has is skipped (what would be copied there is not in the container either)."""
    for fd, target, readonly in trees:
        if os.path.lexists(target) and not os.path.islink(target):
            LINUX.move_mount(fd, target)
            if readonly:
                LINUX.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)


def _become_container_root(user_fd: int) -> None:  # pragma: no cover - child
    """Join a --userns container's user namespace as its root. Its mounts are locked for any
    namespace owned by another user namespace (mount_namespaces(7)): the private copy must be
    owned by the container's for its procfs to come off; and files are then read and written
    with the container's own ids (the kernel maps them)."""
    LINUX.setns(user_fd, CLONE_NEWUSER)
    os.close(user_fd)
    try:
        os.setgroups([])
    except PermissionError:  # the namespace denies setgroups(2): the groups stay unmapped, harmless
        pass
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _mount_layers(root: LayerRoot) -> Path:  # pragma: no cover - child
    LINUX.mount("tmpfs", str(root.scratch), "tmpfs", 0, "mode=0700")
    layer, merged = root.scratch / "layer", root.scratch / "root"
    layer.mkdir()
    merged.mkdir()
    upper = root.upper
    if root.image is not None:
        device, dev = upperfs.attach(root.image)
        try:
            LINUX.mount(device, str(layer), upperfs.FS_TYPE, MS_RDONLY, None)
        finally:
            os.close(dev)
        upper = layer / upperfs.UPPER
    # a read-only overlay: the writable layer as the top lower (its whiteouts hide as they would)
    LINUX.mount("overlay", str(merged), "overlay", MS_RDONLY, overlay.lowerdir_option((upper, *root.lowers)))
    return merged


# kernel file systems whose files are views of kernel state, not files: a copy leaves them out
# (sysfs sizes are 4096 whatever a read returns; procfs goes with the child's detach)
PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs", "tracefs",
                       "securityfs", "bpf", "fusectl", "configfs", "pstore", "binfmt_misc"})


def procfs_mount_points(mountinfo: str) -> list[str]:
    """The procfs mount points of a mountinfo text, deepest first."""
    return mount_points(mountinfo, frozenset({"proc"}))


def mount_points(mountinfo: str, fstypes: frozenset[str]) -> list[str]:
    """The mount points of a mountinfo text whose type is one of ``fstypes``, deepest first."""
    points = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts = fields.split()
        if tail.split()[:1] and tail.split()[0] in fstypes and len(parts) > 4:
            points.append(_unescape(parts[4]))
    return sorted(points, key=len, reverse=True)


def pseudo_mount_points(pid: int) -> tuple[str, ...]:
    """Where a live container has kernel file systems mounted (as it sees them)."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return tuple(mount_points(f.read().decode("utf-8", "surrogateescape"), PSEUDO_FS))


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _report(fd: int, exc: BaseException) -> None:  # pragma: no cover - child
    if isinstance(exc, OSError) and exc.strerror:
        message = exc.strerror.lower() + (f": {exc.filename}" if exc.filename else "")
    else:
        message = str(exc)
    data = {"type": type(exc).__name__, "message": message, "hint": getattr(exc, "hint", None),
            "member": getattr(exc, "member", None), "reason": getattr(exc, "reason", None)}
    try:
        os.write(fd, json.dumps(data).encode())
    except OSError:
        pass


def _error(data: dict[str, str | None], what: str) -> ContainerError:
    kind, message = data.get("type"), data.get("message") or "unknown error"
    if kind in ("UnsafeArchive", "ImageLimitExceeded"):
        return UnsafeArchive(data.get("member") or "?", data.get("reason") or message)
    if kind == "InvalidArgument":
        return InvalidArgument(f"{message} (in {what})", hint=data.get("hint"))
    if kind == "BrokenPipeError":
        return ContainerError(f"cannot copy files of {what}: the other end of the copy stopped reading")
    return ContainerError(f"cannot copy files of {what}: {message}", hint=data.get("hint"))
