"""A container's overlay upper dir written as one OCI image layer (a plain tar), for ``commit``.

The upper dir holds what the container changed, in overlayfs' own terms (overlayfs.rst,
"whiteouts and opaque directories"); an OCI layer says the same in the image spec's
(image-spec layer.md, "Whiteouts"):

* a character device 0/0 ``DIR/NAME`` (a deleted lower entry) -> an empty file ``DIR/.wh.NAME``;
* a directory with ``trusted.overlay.opaque=y`` (made anew over a lower one) -> the directory,
  then ``DIR/.wh..wh..opq`` before its children;
* everything else as it is: files, directories, symlinks, fifos, with numeric owners, permission
  bits (setuid, sticky), mtimes, hard links inside the layer and the extended attributes images
  keep (``runtime.tarsafe.kept_xattr``); overlayfs' own ``trusted.overlay.*`` never go out.

Left out: paths the runtime wrote or mounted itself (``exclude``: the log dir, /etc/hosts, mount
points), and, listed in ``LayerStats.skipped`` because they are the container's own, other device
nodes and sockets (an image may not carry them: runtime/tarsafe.py refuses them) and names
starting with ``.wh.`` (a file the container called that would read back as a whiteout). A directory redirected or a file
copied up metadata-only (``redirect_dir``/``metacopy``, off on this kernel's defaults) has
content in the lower layers that the upper dir does not hold: refused (``Unsupported``).

The upper dir was written by the container, so it is untrusted: nothing here follows a symlink
(every directory and file is opened relative to its parent's fd with O_NOFOLLOW, and a file must
still be the regular file lstat saw), and the layer is bounded by the extraction limits
(runtime/extract_limits.py) as it is written, so the loader that reads it back never has to
refuse it for size. A file that changes while it is read (``commit --pause=false``) is written
with the size it had when its header was made: cut short or padded with zeros.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, cast

from runtime.errors import ImageLimitExceeded, Unsupported
from runtime.extract_limits import ExtractLimits
from runtime.tarsafe import CAPABILITY_XATTR, OPAQUE_WHITEOUT, OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX, kept_xattr

log = logging.getLogger(__name__)

OVERLAY_REDIRECT_XATTR = "trusted.overlay.redirect"
OVERLAY_METACOPY_XATTR = "trusted.overlay.metacopy"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass
class LayerStats:
    members: int = 0  # tar members written (whiteouts included)
    whiteouts: int = 0  # .wh.NAME members
    opaque_dirs: int = 0  # .wh..wh..opq members
    bytes: int = 0  # regular file content written
    skipped: list[str] = field(default_factory=list)  # the container's paths left out (module docstring), "/"-rooted


@dataclass(frozen=True)
class Exclusions:
    """Container paths (absolute, normalised) left out of the layer with everything below them."""

    paths: frozenset[str] = frozenset()

    def excludes(self, rel: str) -> bool:
        return "/" + rel in self.paths


@dataclass(frozen=True)
class IdRange:
    """A user-namespaced container's ids as the host sees them (runtime/userns.py): host ids
    ``base``..``base+size-1`` are the container's 0..size-1, and the layer says the latter."""

    base: int
    size: int

    def inner(self, host_id: int) -> int:
        """The container's id for a host id (ids outside the range stay as they are, as
        runtime.userns.shift_tree leaves them)."""
        return host_id - self.base if self.base <= host_id < self.base + self.size else host_id


def write_layer(upper_fd: int, sink: BinaryIO, *, exclude: Exclusions, limits: ExtractLimits,
                ids: IdRange | None = None) -> LayerStats:
    """Write the tree below the open directory ``upper_fd`` to ``sink`` as an uncompressed PAX tar
    (module docstring); the fd stays open. ``ids``: the upper dir of a container with a user
    namespace holds host-range owners; the layer gets the container's own (and a file
    capability set inside it, which the kernel stores with the range's root id, is written in
    the namespace-less form an image carries).

    Raises:
        ImageLimitExceeded: the layer would exceed one of ``limits`` (names the path and limit).
        Unsupported: a redirected directory or a metacopy file (content outside the upper dir).
        OSError: reading the upper dir failed.
    """
    stats = LayerStats()
    writer = _Writer(exclude, limits, stats, ids)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        writer.tar = tar
        writer.walk(upper_fd)
    return stats


class _Writer:
    def __init__(self, exclude: Exclusions, limits: ExtractLimits, stats: LayerStats, ids: IdRange | None) -> None:
        self.ids = ids
        self.exclude = exclude
        self.limits = limits
        self.stats = stats
        self.tar: tarfile.TarFile
        self.links: dict[tuple[int, int], str] = {}  # (dev, ino) of a file written -> its member name

    def walk(self, upper_fd: int) -> None:
        """Every entry below the directory ``upper_fd`` in pre-order, names sorted by their bytes.

        No recursion (runtime/fstree.py's rule): a stack of open directories, one per level,
        whose depth ``limits.max_depth`` bounds before each descent."""
        stack: list[tuple[int, str, int, Iterator[str]]] = [(os.dup(upper_fd), "", 1, iter(_sorted_names(upper_fd)))]
        try:
            while stack:
                dir_fd, prefix, depth, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                below = self._entry(dir_fd, prefix, name, depth)
                if below is not None:
                    stack.append((below, f"{prefix}{name}/", depth + 1, iter(_sorted_names(below))))
        finally:
            for dir_fd, *_rest in stack:
                os.close(dir_fd)

    def _entry(self, dir_fd: int, prefix: str, name: str, depth: int) -> int | None:
        """Write one entry; for a directory, its open fd (to descend into), else None."""
        rel = f"{prefix}{name}"
        if self.exclude.excludes(rel):
            return None  # the runtime's own: not the container's changes
        st = os.lstat(name, dir_fd=dir_fd)
        self._check_budget(rel, depth, st)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            self._whiteout(rel, prefix, name)
        elif name.startswith(WHITEOUT_PREFIX) or not _layer_type(st.st_mode):
            log.warning("commit: leaving out /%s (%s)", rel, "a name the image format reserves"
                        if name.startswith(WHITEOUT_PREFIX) else "a device node or socket")
            self.stats.skipped.append("/" + rel)
        elif stat.S_ISDIR(st.st_mode):
            return self._directory(dir_fd, name, rel)
        elif stat.S_ISREG(st.st_mode):
            self._file(dir_fd, name, rel, st)
        else:
            self._add(self._info(rel, st, os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None))
        return None

    def _directory(self, parent_fd: int, name: str, rel: str) -> int:
        """Write a directory (and its opaque mark); its open fd, for the caller to descend and close."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            attrs = _xattrs(fd, rel)
            self._add(self._info(rel, st, None, attrs))
            if attrs.get(OVERLAY_OPAQUE_XATTR) == b"y":
                self._add(tarfile.TarInfo(f"{rel}/{OPAQUE_WHITEOUT}"))
                self.stats.opaque_dirs += 1
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _file(self, parent_fd: int, name: str, rel: str, seen: os.stat_result) -> None:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                log.warning("commit: /%s changed while it was read; left out", rel)
                self.stats.skipped.append("/" + rel)
                return
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info = self._info(rel, st, None)
                info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
                self._add(info)
                return
            info = self._info(rel, st, None, _xattrs(fd, rel))
            info.type, info.size = tarfile.REGTYPE, st.st_size
            self.stats.bytes += st.st_size
            if self.stats.bytes > self.limits.max_total_bytes:
                raise self._over(rel, "max_total_bytes", self.stats.bytes, "the layer's files")
            self._add(info, cast(BinaryIO, _Exactly(fd, st.st_size)))
            self.links[key] = rel
        finally:
            os.close(fd)

    def _whiteout(self, rel: str, prefix: str, name: str) -> None:
        self._add(tarfile.TarInfo(f"{prefix}{WHITEOUT_PREFIX}{name}"))
        self.stats.whiteouts += 1

    def _info(self, rel: str, st: os.stat_result, linkname: str | None, xattrs: dict[str, bytes] | None = None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        if self.ids is not None:
            info.uid, info.gid = self.ids.inner(st.st_uid), self.ids.inner(st.st_gid)
            xattrs = _namespaced_caps(xattrs, self.ids)
        info.uname = info.gname = ""
        info.mtime = max(0, int(st.st_mtime))
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif linkname is not None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, linkname, 0o777
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in (xattrs or {}).items() if kept_xattr(k)}
        return info

    def _add(self, info: tarfile.TarInfo, content: BinaryIO | None = None) -> None:
        self.stats.members += 1
        if self.stats.members > self.limits.max_members:
            raise self._over(info.name, "max_members", self.stats.members, "the layer")
        self.tar.addfile(info, content)

    def _check_budget(self, rel: str, depth: int, st: os.stat_result) -> None:
        if depth > self.limits.max_depth:
            raise self._over(rel, "max_depth", depth, "a path of the layer")
        if len(os.fsencode(rel)) > self.limits.max_name_bytes:
            raise self._over(rel[:200], "max_name_bytes", len(os.fsencode(rel)), "a path of the layer")
        if stat.S_ISREG(st.st_mode) and st.st_size > self.limits.max_member_bytes:
            raise self._over(rel, "max_member_bytes", st.st_size, "a file of the layer")

    def _over(self, rel: str, limit: str, actual: int, what: str) -> ImageLimitExceeded:
        return ImageLimitExceeded("/" + rel, self.limits.exceeded(limit, actual, what), limit=limit,
                                  value=getattr(self.limits, limit), actual=actual, hint=self.limits.hint(limit))


# linux/capability.h: struct vfs_ns_cap_data (v3) is v2's 20 bytes plus the namespace's root id
_VFS_CAP_REVISION_MASK = 0xFF000000
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000


def _namespaced_caps(xattrs: dict[str, bytes] | None, ids: IdRange) -> dict[str, bytes] | None:
    """A v3 ``security.capability`` whose root id is the range's root becomes the v2 form an
    image carries (a file capability set by the container's root); any other v3 is dropped."""
    value = (xattrs or {}).get(CAPABILITY_XATTR)
    if value is None or len(value) != 24:
        return xattrs
    magic, rootid = int.from_bytes(value[:4], "little"), int.from_bytes(value[20:], "little")
    if magic & _VFS_CAP_REVISION_MASK != _VFS_CAP_REVISION_3:
        return xattrs
    out = {k: v for k, v in (xattrs or {}).items() if k != CAPABILITY_XATTR}
    if rootid == ids.base:
        v2 = (magic & ~_VFS_CAP_REVISION_MASK | _VFS_CAP_REVISION_2).to_bytes(4, "little") + value[4:20]
        out[CAPABILITY_XATTR] = v2
    return out


def _sorted_names(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as entries:  # works on its own dup of the fd, from the start
        return sorted((e.name for e in entries), key=os.fsencode)


def _layer_type(mode: int) -> bool:
    """Whether an image layer may hold an entry of this type (runtime/tarsafe.py's rule)."""
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISFIFO(mode)


def _xattrs(fd: int, rel: str) -> dict[str, bytes]:
    """An open entry's xattrs that matter here: kept ones, the opaque mark; refuses redirects."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    for refused in (OVERLAY_REDIRECT_XATTR, OVERLAY_METACOPY_XATTR):
        if refused in names:
            raise Unsupported(f"commit of /{rel}", f"the upper layer holds it as an overlayfs {refused.rsplit('.', 1)[1]} "
                              "entry whose content is in the image's layers",
                              hint="mount overlayfs without redirect_dir and metacopy (the kernel's defaults here)")
    return {n: os.getxattr(fd, n) for n in names if kept_xattr(n) or n == OVERLAY_OPAQUE_XATTR}


class _Exactly:
    """``size`` bytes of an open file: cut short or padded with zeros if it changed size since."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        chunks, got = [], 0
        while got < n:
            chunk = os.read(self.fd, min(n - got, _CHUNK))
            if not chunk:
                chunks.append(bytes(n - got))  # the file shrank: zeros keep the tar's framing
                break
            chunks.append(chunk)
            got += len(chunk)
        self.left -= n
        return b"".join(chunks)

    def readinto(self, buffer: memoryview) -> int:  # pragma: no cover - tarfile uses read()
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

