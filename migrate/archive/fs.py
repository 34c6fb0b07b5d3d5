"""File-system side of the checkpoint archive (private): read and recreate inode metadata.

Kernel facts that shape this module:

- Nothing here follows symlinks: ``os.lstat``, ``os.listxattr/getxattr/setxattr(follow_symlinks=False)``,
  ``os.utime(..., follow_symlinks=False)``, ``O_NOFOLLOW`` on open.
- Overlayfs marks a deleted lower file in the upper layer with a *whiteout*: a character device
  0:0 (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque directories"); an opaque
  directory carries ``trusted.overlay.opaque="y"`` (or ``user.overlay.opaque`` with the
  ``userxattr`` mount option). Since 6.7 a whiteout may also be a regular file with
  ``trusted.overlay.whiteout``. All of these are plain inodes + xattrs and are copied as such.
  Reading ``trusted.*`` needs CAP_SYS_ADMIN; without it ``listxattr`` silently omits them.
- ``chown`` clears setuid/setgid and ``security.capability``, so metadata is applied in the order
  chown, xattrs, chmod, utime. Directory times are set after their contents exist.
- Sparse files: ``lseek(SEEK_DATA/SEEK_HOLE)`` gives the data extents (lseek(2)); filesystems
  without hole support report the whole file as data, which is correct, only larger.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from migrate.archive import format as fmt
from migrate.errors import ArchiveError

log = logging.getLogger(__name__)


def kind_of(st: os.stat_result) -> str | None:
    """The archive kind for an inode (hardlinks are decided by the caller); None for unknown types."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return fmt.KIND_FILE
    if stat.S_ISDIR(mode):
        return fmt.KIND_DIR
    if stat.S_ISLNK(mode):
        return fmt.KIND_SYMLINK
    if stat.S_ISFIFO(mode):
        return fmt.KIND_FIFO
    if stat.S_ISSOCK(mode):
        return fmt.KIND_SOCKET
    if stat.S_ISCHR(mode):
        return fmt.KIND_WHITEOUT if st.st_rdev == 0 else fmt.KIND_CHAR
    if stat.S_ISBLK(mode):
        return fmt.KIND_BLOCK
    return None


def read_xattrs(path: str | int) -> dict[str, str]:
    """Every xattr this process can see on ``path`` (not following symlinks), values base64-encoded."""
    by_fd = isinstance(path, int)
    try:
        names = os.listxattr(path) if by_fd else os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[str, str] = {}
    for key in sorted(names):
        try:
            value = os.getxattr(path, key) if by_fd else os.getxattr(path, key, follow_symlinks=False)
        except OSError as exc:
            # Listed but gone (raced with a removal) or not readable by us: nothing to copy.
            if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                continue
            raise
        out[key] = base64.b64encode(value).decode("ascii")
    return out


def entry_meta(name: str, kind: str, st: os.stat_result, xattrs: dict[str, str]) -> dict[str, Any]:
    """The JSON body of an entry record (see docs/archive-format.md, "entry record")."""
    meta: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
    }
    if xattrs:
        meta["xattrs"] = xattrs
    if kind in (fmt.KIND_CHAR, fmt.KIND_BLOCK):
        meta["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    return meta


def walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield (relative path, full path, lstat) for ``root`` ("" first) and everything below it.

    Pre-order, names sorted, never following symlinks; an explicit stack so deep trees do not
    hit the recursion limit.
    """
    stack: list[tuple[str, str]] = [("", os.fspath(root))]
    while stack:
        rel, full = stack.pop()
        st = os.lstat(full)
        yield rel, full, st
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(full) as it:
                names = sorted(e.name for e in it)
            for child in reversed(names):
                stack.append((f"{rel}/{child}" if rel else child, os.path.join(full, child)))


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the data extents of an open regular file of ``size`` bytes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                return
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # no hole support
                yield pos, size - pos
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start
        pos = end


_U32 = (1 << 32) - 1
_NS_RANGE = 1 << 62  # utime() takes any time_t; Python refuses ns beyond about +-2^63 with OverflowError


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def check_entry_meta(meta: dict[str, Any]) -> str | None:
    """What is wrong with an entry record's fields for its kind (types and ranges), or None.

    The reader calls this before touching the disk, so a crafted entry ends in a typed
    ArchiveError instead of an OverflowError from ``os.makedev`` or ``os.utime`` later.
    """
    kind = meta.get("kind")
    if kind == fmt.KIND_HARDLINK:
        target = meta.get("target")
        return None if isinstance(target, str) and target else f"hardlink target {str(target)[:64]!r}"
    for key in ("mode",):
        if not _is_int(meta.get(key), 0, 0o7777):
            return f"mode {meta.get(key)!r}, expected permission bits within 07777"
    for key in ("uid", "gid"):
        if not _is_int(meta.get(key), 0, _U32):
            return f"{key} {meta.get(key)!r}, expected an integer 0..{_U32}"
    for key in ("atime_ns", "mtime_ns"):
        if not _is_int(meta.get(key), -_NS_RANGE, _NS_RANGE):
            return f"{key} {meta.get(key)!r}, expected an integer within +-2^62"
    xattrs = meta.get("xattrs", {})
    if not isinstance(xattrs, dict):
        return "xattrs is not a JSON object"
    for key, value in xattrs.items():
        if not key or "\x00" in key or not fmt.encodable(key) or not isinstance(value, str):
            return f"xattr {key[:64]!r}"
        try:
            base64.b64decode(value, validate=True)
        except ValueError:
            return f"xattr {key[:64]!r} is not base64"
    if kind == fmt.KIND_SYMLINK:
        target = meta.get("target")
        if not isinstance(target, str) or not target or "\x00" in target or not fmt.encodable(target) or len(target) > 4095:
            return f"symlink target {str(target)[:64]!r}"
    if kind in (fmt.KIND_CHAR, fmt.KIND_BLOCK):
        rdev = meta.get("rdev")
        # Linux dev_t: 12-bit major, 20-bit minor (MAJOR/MINOR in include/linux/kdev_t.h)
        if not (isinstance(rdev, list) and len(rdev) == 2 and _is_int(rdev[0], 0, 0xFFF) and _is_int(rdev[1], 0, 0xFFFFF)):
            return f"rdev {str(rdev)[:64]}, expected [major, minor]"
    return None


class MetaApplier:
    """Applies entry metadata to extracted inodes, in the order the kernel needs."""

    def __init__(self) -> None:
        self._root = os.geteuid() == 0

    def apply(self, target: str | int, meta: dict[str, Any], *, is_symlink: bool = False) -> None:
        """Set owner, xattrs, mode and times on ``target`` (a path, not followed, or an open fd)."""
        name = meta["name"]
        by_fd = isinstance(target, int)
        nofollow: dict[str, Any] = {} if by_fd else {"follow_symlinks": False}
        uid, gid = int(meta["uid"]), int(meta["gid"])
        try:
            os.chown(target, uid, gid, **nofollow)
        except PermissionError:
            if self._root:
                raise
            # Without CAP_CHOWN ownership cannot be kept (tar does the same as non-root).
            log.debug("cannot chown member %s to %d:%d without root, keeping the current owner", name, uid, gid)
        for key, value in meta.get("xattrs", {}).items():
            try:
                os.setxattr(target, key, base64.b64decode(value), **nofollow)
            except OSError as exc:
                raise ArchiveError(f"cannot set xattr {key} on archive member {name}: {exc.strerror}") from exc
        if not is_symlink:  # Linux has no lchmod; a symlink's mode is always 0777
            os.chmod(target, int(meta["mode"]), **nofollow)
        os.utime(target, ns=(int(meta["atime_ns"]), int(meta["mtime_ns"])), **nofollow)
