"""The container's root filesystem: an overlay mounted on the host at ROOT/containers/<id>/merged.

lowerdir is the image's read-only rootfs, or its layers' diff dirs top first (runtime/layer_store.py;
shared by every container of that image), upperdir and
workdir are the container's own (same filesystem, as overlayfs requires): on the container's
upper-layer image (runtime/upperfs.py) when it has one, mounted ``xino=on`` so that every file
keeps its inode number across an unmount and remount of that image (overlayfs.rst, "Inode
properties": with layers on different file systems and xino off, a copied-up file's st_ino is
not persistent), or plain directories in the container's dir. The mount is made
MS_PRIVATE so it neither propagates to other mount namespaces nor receives their mounts; the
container's mount namespace starts from a copy of it and pivot_roots into it. Restore mounts the
same way and hands merged/ to CRIU as ``--root``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime import upperfs
from runtime.errors import MountError
from runtime.syscalls import MNT_DETACH, MS_PRIVATE, Syscalls

log = logging.getLogger(__name__)

# Where the container's stdout/stderr land, inside its own filesystem (see runtime/config.py's
# LOG_PATH_IN_CONTAINER when present): CRIU can dump an fd on a file of the container's own root.
LOG_DIR_IN_CONTAINER = "/.pymigrate"
LOG_PATH_IN_CONTAINER = "/.pymigrate/log"  # stdout (and a -t terminal); older containers: stderr too
ERR_LOG_PATH_IN_CONTAINER = "/.pymigrate/log.err"  # stderr (runtime/logs.py reads both and their index)


@dataclass(frozen=True)
class OverlayDirs:
    lowers: tuple[Path, ...]  # top first
    upper: Path
    work: Path
    merged: Path
    xino: bool = False  # upper on a file system of its own (upperfs): keep inode numbers
    # --userns auto: the lowers are mounted through idmapped binds of this user namespace and a new
    # upper's root belongs to ``base`` (runtime/userns.py)
    userns: Path | None = None
    base: int = 0

    @classmethod
    def for_container(cls, container_dir: Path, lowers: tuple[Path, ...], userns: Path | None = None, base: int = 0) -> "OverlayDirs":
        layout = upperfs.Layout.of(container_dir)
        return cls(lowers=lowers, upper=layout.upper, work=layout.work, merged=container_dir / "merged",
                   xino=layout.image is not None, userns=userns, base=base)


def _escape(path: Path) -> str:
    # overlayfs splits options on ',' and lowerdir on ':'; backslash escapes both
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def lowerdir_option(lowers: tuple[Path, ...]) -> str:
    """``lowerdir=A:B:...`` (top first), escaped; refused when over the one page mount(2) takes."""
    option = "lowerdir=" + ":".join(_escape(p) for p in lowers)
    if len(option) > 3072:  # leave room for upperdir, workdir and xino within 4096 bytes
        raise MountError(f"cannot mount {len(lowers)} layers: the overlay's lowerdir option would be "
                         f"{len(option)} bytes, more than mount(2) takes", hint="flatten the image (fewer layers)")
    return option


def mount(sys: Syscalls, dirs: OverlayDirs) -> None:
    """Create upper/work/merged and mount the overlay privately on merged/."""
    # a new layer: no dir yet, or an empty one made for it (runtime.upperfs makes it on its image)
    new_upper = not dirs.upper.exists() or _is_empty(dirs.upper)
    for d in (dirs.upper, dirs.work, dirs.merged):
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
    if new_upper:
        # The merged root takes its mode from the upper dir: make it the image's root mode, not
        # 0755 minus whatever umask the caller had (a 0700 root locks out every non-root user).
        os.chmod(dirs.upper, stat.S_IMODE(os.stat(dirs.lowers[0]).st_mode))
        if dirs.userns is not None:
            root = os.stat(dirs.lowers[0])
            os.chown(dirs.upper, dirs.base + root.st_uid, dirs.base + root.st_gid)
    lowers = _idmapped(dirs) if dirs.userns is not None else dirs.lowers
    data = f"{lowerdir_option(lowers)},upperdir={_escape(dirs.upper)},workdir={_escape(dirs.work)}"
    if dirs.xino:
        data += ",xino=on"
    log.debug("mount overlay %s on %s", data, dirs.merged)
    try:
        sys.mount("overlay", str(dirs.merged), "overlay", 0, data)
    except OSError as exc:
        raise MountError(f"cannot mount overlay on {dirs.merged}: {exc.strerror}") from exc
    finally:
        if dirs.userns is not None:
            _drop_idmapped(dirs)
    try:
        sys.mount(None, str(dirs.merged), None, MS_PRIVATE)
    except OSError as exc:
        unmount(sys, dirs.merged)
        raise MountError(f"cannot make {dirs.merged} private: {exc.strerror}") from exc


def _idmap_dir(dirs: OverlayDirs) -> Path:
    return dirs.merged.parent / "idmap"


def _idmapped(dirs: OverlayDirs) -> tuple[Path, ...]:
    """Each lower bound through the container's id mapping (runtime/userns.py), top first.

    The binds are only needed while mount(2) runs: the overlay keeps private clones of its
    layers, so they are detached right after (``_drop_idmapped``)."""
    from runtime import userns

    assert dirs.userns is not None
    _drop_idmapped(dirs)  # leftovers of a crash
    out: list[Path] = []
    try:
        for i, lower in enumerate(dirs.lowers):
            target = _idmap_dir(dirs) / str(i)
            userns.idmapped_bind(lower, target, dirs.userns)
            out.append(target)
    except BaseException:
        _drop_idmapped(dirs)
        raise
    return tuple(out)


def _drop_idmapped(dirs: OverlayDirs) -> None:
    from runtime import userns

    top = _idmap_dir(dirs)
    if not top.is_dir():
        return
    for entry in top.iterdir():
        userns.detach(entry)
    top.rmdir()


def _is_empty(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return next(entries, None) is None


def is_mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point in this mount namespace (from /proc/self/mountinfo)."""
    return os.path.realpath(path) in mount_points()


def mount_points() -> list[str]:
    """Every mount point of this mount namespace (/proc/self/mountinfo's fifth field, unescaped)."""
    with open("/proc/self/mountinfo", "rb") as f:
        return [_unescape(line.split(b" ", 5)[4]) for line in f]


def _unescape(raw: bytes) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    text = os.fsdecode(raw)
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) + 0 and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def unmount(sys: Syscalls, merged: Path) -> None:
    """Unmount merged/ (lazily if busy); not mounted is fine."""
    try:
        sys.umount2(str(merged), 0)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return  # not a mount point (already unmounted) or gone
        if exc.errno != errno.EBUSY:
            raise MountError(f"cannot unmount {merged}: {exc.strerror}") from exc
        log.warning("overlay %s busy, detaching it", merged)
        sys.umount2(str(merged), MNT_DETACH)
