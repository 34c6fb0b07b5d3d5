"""Safe extraction of image tarballs into a fresh private directory.

An image tarball comes from users and from other hosts, so every member is checked before it
touches the disk, and extraction itself never follows a symlink:

* each parent directory is opened with ``openat(O_DIRECTORY | O_NOFOLLOW)`` from the root's fd,
  so a symlink anywhere on the path makes the kernel fail with ELOOP/ENOTDIR instead of walking
  out of the tree (see open(2), O_NOFOLLOW); the last component is created with ``O_EXCL``,
  ``symlinkat``, ``mkdirat``, ``mknodat`` or ``linkat`` without AT_SYMLINK_FOLLOW;
* members are also checked by name against what was already extracted, so the refusal names the
  member and the reason instead of surfacing as a bare ELOOP.

Refused (``UnsafeArchive`` naming the member): absolute names, ``..`` components, paths through an
extracted symlink, hard links whose target is outside the archive or not extracted yet, symlinks
whose *relative* target climbs above the root when resolved lexically from the link's directory,
device nodes and any member type other than file, directory, symlink, hard link and fifo.
Absolute symlink targets are allowed: a rootfs is full of them (``/bin/sh -> /bin/busybox``) and
they resolve inside the container's root once it is pivoted into.

Why not ``tarfile``'s ``filter="data"`` (Python >= 3.11.4): it is the model for these checks, but
it is built for data, not root filesystems. It refuses absolute symlinks, clears setuid/setgid/
sticky bits (``/tmp`` must stay 1777) and drops ownership, and ``TarFile.extract`` opens regular
files with a plain ``open()`` that follows a symlink extracted earlier under the same name. So this
module applies the same rules in its own words and does the writing itself.

Ownership, permission bits (including setuid and sticky) and mtimes are preserved; ownership only
when running as root (unprivileged unit tests keep their own uid). Extended attributes come from
pax headers (``SCHILY.xattr.NAME``) and are restored on files and directories when their name is
in ``KEPT_XATTRS`` (``user.*``, file capabilities ``security.capability``, POSIX ACLs), after the
owner and the content (chown(2) and write(2) clear ``security.capability``). Others are dropped
with a log line: ``trusted.*`` above all, because overlayfs reads ``trusted.overlay.*`` on its
lower dirs (an image could forge opaque dirs or redirects), and LSM labels (``security.selinux``)
belong to the host. File capabilities need CAP_SETFCAP: without root they are dropped too.

Layers (``apply_layers``): OCI image layers are applied in order into one tree by one extractor,
so the checks above see every earlier layer. Whiteouts (OCI image-spec, layer.md) are applied,
never written: ``DIR/.wh.NAME`` deletes DIR/NAME of the lower layers, ``DIR/.wh..wh..opq`` deletes
everything the lower layers put in DIR. An entry of a later layer replaces a lower layer's entry
of another type (a file over a directory removes the directory's tree); within one layer that is
still refused.

Budgets (``runtime.extract_limits``, ``ImageLimitExceeded`` naming the limit): members, path depth
and length, each member's and all members' sizes (a sparse member counts with its holes, which are
left as holes on disk instead of being written as zeros), and the size of pax/GNU long-name
headers, which ``tarfile`` reads into memory whole (a few KB of zstd can claim gigabytes). Every
problem with the input ends in an ``ImageError``: ``tarfile`` raises ``ValueError``,
``OverflowError`` or ``UnicodeError`` on some crafted headers, and those are translated here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, cast

from runtime.errors import ImageError, ImageLimitExceeded, UnsafeArchive
from runtime.extract_limits import NAME_MAX, ExtractLimits, current_limits
from runtime.fstree import remove_tree

if TYPE_CHECKING:
    from runtime.zstd_frames import ZstdFrames

log = logging.getLogger(__name__)

NOT_A_TAR = "not a tar archive (plain, gzip or zstd)"

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_CHUNK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_TRAILING_BYTES = 64 << 20  # padding after the end-of-archive blocks (tar's record size is 10 KiB)
MAX_HEADER_BYTES = 1 << 20  # a pax or GNU long-name header (tarfile reads it into memory whole)
_U32 = (1 << 32) - 1
_MAX_MTIME_S = float(1 << 33)  # ~year 2242; os.utime raises OverflowError far beyond
# tarfile raises these (besides TarError) on some crafted headers: numbers that do not parse,
# base-256 sizes that do not fit, names that do not decode.
_HEADER_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, ValueError, OverflowError, UnicodeError, IndexError)

XATTR_PAX_PREFIX = "SCHILY.xattr."
CAPABILITY_XATTR = "security.capability"
# restored when extracting; anything else is dropped (see the module docstring)
KEPT_XATTRS = ("user.", CAPABILITY_XATTR, "system.posix_acl_access", "system.posix_acl_default")
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_XATTR_VALUE_BYTES = 64 << 10  # XATTR_SIZE_MAX
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"


class NotATarArchive(UnsafeArchive):
    """The input is not a tar archive at all (nor a gzip or zstd compressed one)."""

    def __init__(self, source: str) -> None:
        super().__init__(source, NOT_A_TAR)
        self.message = f"refusing {source}: {NOT_A_TAR}"
        self.args = (self.message,)


def _over(member: str, limits: ExtractLimits, limit: str, actual: int, what: str) -> ImageLimitExceeded:
    return ImageLimitExceeded(member, limits.exceeded(limit, actual, what), limit=limit, value=getattr(limits, limit),
                              actual=actual, hint=limits.hint(limit))


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses a pax or GNU long-name header larger than MAX_HEADER_BYTES before
    ``tarfile`` reads it into memory (it reads such a header whole, whatever size it claims)."""

    def _check_header_size(self) -> None:
        if self.size > MAX_HEADER_BYTES:
            raise UnsafeArchive(self.name or "(header)", f"a {self.size}-byte extended header, expected at most {MAX_HEADER_BYTES}")

    def _proc_pax(self, tarfile):  # type: ignore[no-untyped-def]
        self._check_header_size()
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile):  # type: ignore[no-untyped-def]
        self._check_header_size()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]


@dataclass(frozen=True)
class ExtractStats:
    members: int
    bytes_written: int
    whiteouts: int = 0  # whiteout members applied (layers only)


def kept_xattr(name: str) -> bool:
    """Whether an extended attribute of this name is restored from an archive."""
    return any(name == k or (k.endswith(".") and name.startswith(k)) for k in KEPT_XATTRS)


def member_xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    """The ``SCHILY.xattr.*`` pax records of ``m`` (all of them, kept or not), values as bytes.

    tarfile decodes pax values as UTF-8 with surrogateescape, so encoding them back the same way
    gives the original bytes (file capabilities are binary).
    """
    out: dict[str, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith(XATTR_PAX_PREFIX):
            out[key[len(XATTR_PAX_PREFIX):]] = value.encode("utf-8", "surrogateescape")
    return out


# --- reading: compression by magic bytes -------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """A read-only stream that yields ``prefix`` and then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(view))
        if not data:
            return 0
        view[: len(data)] = data
        return len(data)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def open_decompressed(stream: BinaryIO) -> tuple[BinaryIO, str, tuple[type[BaseException], ...]]:
    """Wrap ``stream`` so it reads plain tar bytes; detect gzip/zstd by magic bytes, not by name.

    Returns the reader, the compression found ("none", "gzip" or "zstd") and the exception types
    that mean "corrupt or truncated data" for that compression.
    """
    head = _read_exactly(stream, 4)
    raw = io.BufferedReader(_Prefixed(head, stream), buffer_size=_CHUNK)
    corrupt: tuple[type[BaseException], ...] = (EOFError, tarfile.ReadError)
    if head.startswith(GZIP_MAGIC):
        import gzip
        import zlib

        reader = gzip.GzipFile(fileobj=raw, mode="rb")
        return reader, "gzip", corrupt + (gzip.BadGzipFile, zlib.error)  # type: ignore[return-value]
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        from runtime.zstd_frames import FrameTee, ZstdFrameError, ZstdFrames

        frames = ZstdFrames()  # the stream reader ends quietly where a cut file ends: see zstd_frames.py
        watched = io.BufferedReader(FrameTee(cast(BinaryIO, raw), frames), buffer_size=_CHUNK)
        zreader = zstandard.ZstdDecompressor().stream_reader(watched, read_size=_CHUNK, read_across_frames=True)
        return cast(BinaryIO, _WholeZstd(zreader, frames)), "zstd", corrupt + (zstandard.ZstdError, ZstdFrameError)
    return raw, "none", corrupt


class _WholeZstd(io.RawIOBase):
    """A zstd stream reader whose end is an ``EOFError`` (a "truncated" for every caller) when the
    compressed bytes stopped inside a frame."""

    def __init__(self, reader: BinaryIO, frames: ZstdFrames) -> None:
        self._reader = reader
        self._frames = frames

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._reader.read(size)
        if not data and size != 0 and not self._frames.complete():
            raise EOFError("the zstd stream ends inside a frame (truncated)")
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# --- checks ------------------------------------------------------------------------------------


def _split(name: str, member: str) -> tuple[str, ...]:
    """Archive path -> components relative to the root; refuses absolute and '..' names."""
    if "\x00" in name:
        raise UnsafeArchive(member, "NUL byte in the path")
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnsafeArchive(member, "not a file name: characters that do not encode to bytes") from None
    if name.startswith("/"):
        raise UnsafeArchive(member, "absolute path, expected a path relative to the image root")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(member, "path has a '..' component, expected a path inside the image root")
    return parts


def _relative_link_escapes(link_parts: tuple[str, ...], target: str) -> bool:
    """Whether a relative symlink target climbs above the root, resolved from the link's directory."""
    stack = list(link_parts[:-1])
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


# --- extraction --------------------------------------------------------------------------------


class _Extractor:
    """Extracts members one by one under ``root`` (an empty directory we own)."""

    def __init__(self, root: Path, source: str, limits: ExtractLimits | None = None) -> None:
        self.root = root
        self.source = source
        self.limits = limits or ExtractLimits()
        self.total_bytes = 0  # apparent sizes of the regular files so far (holes included)
        self.hole_bytes = 0
        self.as_root = os.geteuid() == 0
        self.root_fd = os.open(root, _DIR_FLAGS)
        # what the archive has put where so far: parts -> "dir" | "file" | "symlink" | "fifo"
        self.kinds: dict[tuple[str, ...], str] = {(): "dir"}
        # directory metadata, applied last (children change a directory's mtime; 0555 dirs)
        self.dir_meta: dict[tuple[str, ...], tuple[int, int, int, float]] = {(): (0o755, 0, 0, -1.0)}
        self._cached: tuple[tuple[str, ...], int] | None = None
        self.members = 0
        self.bytes_written = 0
        self.whiteouts = 0
        # layers: None while extracting one plain tarball; else what the current layer created
        self.layer_entries: set[tuple[str, ...]] | None = None
        self.dropped_xattrs: set[str] = set()
        # one layer into a directory of its own (extract_layer): whiteouts become overlayfs ones
        self.overlay = False

    def begin_layer(self) -> None:
        """Start the next layer: whiteouts and replacements now act on what came before."""
        self.layer_entries = set()

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
        os.close(self.root_fd)

    # directories ----------------------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], member: str) -> int:
        """An fd for directory ``parts``; creates missing ones (0755 root), never follows symlinks.

        The returned fd belongs to the cache; callers must not close it.
        """
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                here = parts[: i + 1]
                kind = self.kinds.get(here)
                if kind == "symlink":
                    raise UnsafeArchive(member, f"path goes through the symlink {'/'.join(here)!r} extracted earlier")
                if kind is not None and kind != "dir":
                    raise UnsafeArchive(member, f"path goes through {'/'.join(here)!r}, which is a {kind}, not a directory")
                if kind is None:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.kinds[here] = "dir"
                    self.dir_meta[here] = (0o755, 0, 0, -1.0)
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeArchive(member, f"path goes through {'/'.join(here)!r}, which is not a directory") from exc
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        if self._cached is not None:
            os.close(self._cached[1])
        self._cached = (parts, fd)
        return fd

    # members --------------------------------------------------------------------------------

    def _check_budget(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """Limits and field ranges, before anything of ``m`` touches the disk."""
        limits, name = self.limits, m.name
        if self.members >= limits.max_members:
            raise _over(name, limits, "max_members", self.members + 1, "the tarball's member count")
        raw = len(name.encode("utf-8", "surrogateescape"))
        if raw > limits.max_name_bytes:
            raise _over(name[:64], limits, "max_name_bytes", raw, "the member name")
        if len(parts) > limits.max_depth:
            raise _over(name[:64], limits, "max_depth", len(parts), "the member path")
        if any(len(p.encode("utf-8", "surrogateescape")) > NAME_MAX for p in parts):
            raise UnsafeArchive(name[:300], f"a path component is longer than {NAME_MAX} bytes")
        if "\x00" in m.linkname:
            raise UnsafeArchive(name, "NUL byte in the link target")
        try:
            if len(m.linkname.encode("utf-8", "surrogateescape")) > 4095:
                raise UnsafeArchive(name, "link target longer than 4095 bytes")
        except UnicodeEncodeError:
            raise UnsafeArchive(name, "link target does not encode to bytes") from None
        if not (0 <= m.uid <= _U32 and 0 <= m.gid <= _U32):
            raise UnsafeArchive(name, f"owner {m.uid}:{m.gid} out of range, expected 0..{_U32}")
        if not -_MAX_MTIME_S <= m.mtime <= _MAX_MTIME_S:  # also false for NaN
            raise UnsafeArchive(name, f"mtime {m.mtime} out of range")
        if not m.isreg():
            return
        if m.size > limits.max_member_bytes:
            raise _over(name, limits, "max_member_bytes", m.size, f"member {name}")
        if self.total_bytes + m.size > limits.max_total_bytes:
            raise _over(name, limits, "max_total_bytes", self.total_bytes + m.size, "the tarball's expanded size")
        if m.sparse is not None:
            # typeshed's stdlib/tarfile.pyi says ``sparse: bytes | None``; tarfile fills it with
            # (offset, size) pairs (TarInfo._proc_sparse, _proc_gnusparse_*).
            sparse = cast("list[tuple[int, int]]", m.sparse)
            holes = max(0, m.size - sum(length for _offset, length in sparse))
            if self.hole_bytes + holes > limits.max_hole_bytes:
                raise _over(name, limits, "max_hole_bytes", self.hole_bytes + holes, "the holes of sparse members")
            self.hole_bytes += holes
        self.total_bytes += m.size

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name
        parts = _split(name, name)
        self._check_budget(m, parts)
        if m.ischr() or m.isblk():
            raise UnsafeArchive(name, "device nodes are not allowed in an image (the runtime provides /dev)")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise UnsafeArchive(name, f"unsupported member type {m.type!r}, expected file, directory, symlink, hard link or fifo")
        for i in range(1, len(parts)):
            kind = self.kinds.get(parts[:i])
            if kind == "symlink":
                raise UnsafeArchive(name, f"path goes through the symlink {'/'.join(parts[:i])!r} extracted earlier")
        mode = m.mode & 0o7777
        if self.overlay and parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._overlay_whiteout(parts, name)
            self.members += 1
            return
        if self.layer_entries is not None and parts and parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, name)
            self.members += 1
            return
        if not parts:
            if not m.isdir():
                raise UnsafeArchive(name, "names the image root but is not a directory")
            self.dir_meta[()] = (mode, m.uid, m.gid, float(m.mtime))
            self.members += 1
            return
        parent, leaf = parts[:-1], parts[-1]
        existing = self.kinds.get(parts)
        replaces_whiteout = existing == "whiteout"
        if replaces_whiteout:  # the layer deletes the lower entry, then makes its own
            os.unlink(leaf, dir_fd=self._open_dir(parent, name))
            del self.kinds[parts]
            existing = None
        lower = self.layer_entries is not None and parts not in self.layer_entries
        if lower and existing is not None and (existing == "dir") != m.isdir():
            self._remove_lower(parts)  # a later layer changes the type: the lower entry goes
            existing = None
        if existing == "dir" and not m.isdir():
            raise UnsafeArchive(name, "would replace a directory extracted earlier")
        if existing is not None and existing != "dir" and m.isdir():
            raise UnsafeArchive(name, f"would replace a {existing} extracted earlier with a directory")

        # validate link targets before touching the disk
        if m.issym():
            if not m.linkname:
                raise UnsafeArchive(name, "symlink has an empty target")
            if not m.linkname.startswith("/") and _relative_link_escapes(parts, m.linkname):
                raise UnsafeArchive(name, f"symlink target {m.linkname!r} escapes the image root")
        target_parts: tuple[str, ...] = ()
        if m.islnk():
            if m.linkname.startswith("/"):
                raise UnsafeArchive(name, f"hard link target {m.linkname!r} is outside the archive")
            try:
                target_parts = _split(m.linkname, name)
            except UnsafeArchive:
                raise UnsafeArchive(name, f"hard link target {m.linkname!r} is outside the archive") from None
            for i in range(1, len(target_parts)):
                if self.kinds.get(target_parts[:i]) == "symlink":
                    through = "/".join(target_parts[:i])
                    raise UnsafeArchive(name, f"hard link target {m.linkname!r} goes through the symlink {through!r} extracted earlier")
            tkind = self.kinds.get(target_parts)
            if tkind is None:
                raise UnsafeArchive(name, f"hard link target {m.linkname!r} is not in the archive before it")
            if tkind in ("dir", "whiteout"):
                raise UnsafeArchive(name, f"hard link target {m.linkname!r} is a {'directory' if tkind == 'dir' else tkind}")
            if target_parts == parts:
                raise UnsafeArchive(name, "hard link to itself")

        pfd = self._open_dir(parent, name)
        if existing is not None and existing != "dir":
            os.unlink(leaf, dir_fd=pfd)  # replaced by a later member with the same name (tar -r)

        if m.isdir():
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=pfd)
            self.kinds[parts] = "dir"
            self.dir_meta[parts] = (mode, m.uid, m.gid, float(m.mtime))
            xattrs = self._kept_xattrs(m)
            if replaces_whiteout:  # a new directory, not merged with the deleted one below
                xattrs[OVERLAY_OPAQUE_XATTR] = b"y"
            if xattrs:
                dfd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
                try:
                    self._set_xattrs(dfd, xattrs, name)
                finally:
                    os.close(dfd)
        elif m.isreg():
            self._write_file(tar, m, pfd, leaf, mode)
            self.kinds[parts] = "file"
        elif m.issym():
            os.symlink(m.linkname, leaf, dir_fd=pfd)
            self._own(leaf, pfd, m.uid, m.gid)
            os.utime(leaf, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
            self.kinds[parts] = "symlink"
        elif m.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=pfd)
            self._own(leaf, pfd, m.uid, m.gid)
            os.chmod(leaf, mode, dir_fd=pfd)
            os.utime(leaf, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
            self.kinds[parts] = "fifo"
        else:  # hard link
            tfd = os.open(".", _DIR_FLAGS, dir_fd=self._open_dir(target_parts[:-1], name))
            try:
                pfd = self._open_dir(parent, name)
                os.link(target_parts[-1], leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
            self.kinds[parts] = self.kinds[target_parts]
        if self.layer_entries is not None:
            self.layer_entries.add(parts)
        self.members += 1

    # layers ---------------------------------------------------------------------------------

    def _whiteout(self, parts: tuple[str, ...], member: str) -> None:
        """Apply ``.wh.NAME`` or ``.wh..wh..opq`` (layer.md "Whiteouts") to the lower layers."""
        assert self.layer_entries is not None
        parent, leaf = parts[:-1], parts[-1]
        if self.kinds.get(parent, "dir") != "dir":
            raise UnsafeArchive(member, f"whiteout in {'/'.join(parent)!r}, which is a {self.kinds[parent]}, not a directory")
        self.whiteouts += 1
        if leaf == OPAQUE_WHITEOUT:
            if parent not in self.kinds:
                return  # nothing below to hide; the directory itself comes with its own member
            doomed = [p for p in self.kinds if len(p) == len(parent) + 1 and p[: len(parent)] == parent
                      and p not in self.layer_entries]
            for p in doomed:
                self._remove_lower(p)
            log.debug("opaque whiteout %s: removed %d lower entries", member, len(doomed))
            return
        target = leaf[len(WHITEOUT_PREFIX):]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise UnsafeArchive(member, f"whiteout for {target!r}, expected the name of an entry")
        tparts = parent + (target,)
        if tparts in self.layer_entries or tparts not in self.kinds:
            return  # whiteouts hide lower layers only; a missing target is allowed (layer.md)
        self._remove_lower(tparts)

    def _overlay_whiteout(self, parts: tuple[str, ...], member: str) -> None:
        """A whiteout of a layer unpacked on its own, in overlayfs' terms (overlayfs.rst,
        "whiteouts and opaque directories"): ``.wh.NAME`` becomes a 0/0 character device NAME,
        ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory. Only this code
        writes them: devices and ``trusted.*`` xattrs from the tar itself are still refused."""
        parent, leaf = parts[:-1], parts[-1]
        if self.kinds.get(parent, "dir") != "dir":
            raise UnsafeArchive(member, f"whiteout in {'/'.join(parent)!r}, which is a {self.kinds[parent]}, not a directory")
        self.whiteouts += 1
        pfd = self._open_dir(parent, member)
        if leaf == OPAQUE_WHITEOUT:
            os.setxattr(pfd, OVERLAY_OPAQUE_XATTR, b"y")
            return
        target = leaf[len(WHITEOUT_PREFIX):]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise UnsafeArchive(member, f"whiteout for {target!r}, expected the name of an entry")
        if parent + (target,) in self.kinds:
            return  # this layer has its own entry there, which hides the lower one anyway
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        self.kinds[parent + (target,)] = "whiteout"

    def _remove_lower(self, parts: tuple[str, ...]) -> None:
        """Delete an entry (a directory with its tree) that an earlier layer created."""
        if self._cached is not None:  # it may be the entry or below it
            os.close(self._cached[1])
            self._cached = None
        pfd = self._open_dir(parts[:-1], "/".join(parts))
        if self.kinds[parts] == "dir":
            # the path is made of directories this extractor created (kinds), never symlinks
            remove_tree(self.root.joinpath(*parts))
        else:
            os.unlink(parts[-1], dir_fd=pfd)
        n = len(parts)
        for p in [p for p in self.kinds if p[:n] == parts]:
            del self.kinds[p]
            self.dir_meta.pop(p, None)

    # xattrs ---------------------------------------------------------------------------------

    def _kept_xattrs(self, m: tarfile.TarInfo) -> dict[str, bytes]:
        xattrs = member_xattrs(m)
        kept: dict[str, bytes] = {}
        for key, value in xattrs.items():
            if len(value) > MAX_XATTR_VALUE_BYTES or "\x00" in key:
                raise UnsafeArchive(m.name, f"extended attribute {key[:64]!r} is larger than {MAX_XATTR_VALUE_BYTES} bytes or misnamed")
            if kept_xattr(key) and (key != CAPABILITY_XATTR or self.as_root):
                kept[key] = value
            elif key not in self.dropped_xattrs:
                self.dropped_xattrs.add(key)
                log.info("%s: dropping extended attribute %s (first on %s)", self.source, key, m.name)
        return kept

    def _set_xattrs(self, fd: int, xattrs: dict[str, bytes], member: str) -> None:
        for key, value in xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                raise ImageError(
                    f"cannot set extended attribute {key} on member {member!r} of {self.source}: {exc.strerror or exc}",
                    hint="the state root's filesystem must support extended attributes (ext4, xfs, btrfs, tmpfs)",
                ) from exc

    def _own(self, leaf: str, dir_fd: int, uid: int, gid: int) -> None:
        if self.as_root:
            os.chown(leaf, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

    def _write_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, leaf: str, mode: int) -> None:
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(m)
            sparse = m.sparse is not None
            if src is not None:
                while True:
                    chunk = src.read(_CHUNK)
                    if not chunk:
                        break
                    if sparse and chunk.count(0) == len(chunk):
                        os.lseek(fd, len(chunk), os.SEEK_CUR)  # a hole stays a hole
                        continue
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    self.bytes_written += len(chunk)
                if sparse:
                    os.ftruncate(fd, m.size)  # a trailing hole
            if self.as_root:
                os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid/setgid
            os.fchmod(fd, mode)
            xattrs = self._kept_xattrs(m)
            if xattrs:
                self._set_xattrs(fd, xattrs, m.name)  # after chown and write: both clear file capabilities
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Apply directory ownership, modes and mtimes, deepest first."""
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
        for parts in sorted(self.dir_meta, key=len, reverse=True):
            mode, uid, gid, mtime = self.dir_meta[parts]
            if parts:
                fd = self._open_dir(parts[:-1], "/".join(parts))
                dfd = os.open(parts[-1], _DIR_FLAGS, dir_fd=fd)
            else:
                dfd = os.dup(self.root_fd)
            try:
                if self.as_root:
                    os.fchown(dfd, uid, gid)
                os.fchmod(dfd, mode)
                if mtime >= 0:
                    os.utime(dfd, (mtime, mtime))
            finally:
                os.close(dfd)


def extract(stream: BinaryIO, dest: Path, *, source: str, limits: ExtractLimits | None = None) -> ExtractStats:
    """Extract the tar (plain, gzip or zstd) read from ``stream`` into the empty directory ``dest``.

    Args:
        stream: the archive, read sequentially (need not be seekable).
        dest: an empty directory the caller owns; on error it holds a partial tree to delete.
        source: how to name the archive in errors (a path or "stream").
        limits: the extraction budget (default: ``runtime.extract_limits.current_limits()``).

    Raises:
        NotATarArchive: the data is neither tar nor gzip/zstd compressed tar.
        ImageLimitExceeded: over an extraction limit (names the limit and its value).
        UnsafeArchive: a member was refused (named in the error).
        ImageError: the archive is truncated or corrupt, or a member cannot be created (no space).
    """
    limits = limits or current_limits()
    tar, reader, compression, corrupt = _open_tar(stream, source)
    log.debug("extracting %s (compression %s) into %s", source, compression, dest)
    ex = _Extractor(dest, source, limits)
    _extract_all(tar, reader, ex, source, compression, corrupt, dest)
    return ExtractStats(members=ex.members, bytes_written=ex.bytes_written)


def _extract_all(tar: tarfile.TarFile, reader: BinaryIO, ex: _Extractor, source: str, compression: str,
                 corrupt: tuple[type[BaseException], ...], dest: Path) -> None:
    """Every member, then the directories' metadata; the extractor and the tar closed in any case."""
    try:
        _extract_members(tar, reader, ex, source, compression, corrupt, dest)
        ex.finish()
    finally:
        ex.close()
        tar.close()


def _open_tar(stream: BinaryIO, source: str, *, wrap: Callable[[BinaryIO], BinaryIO] | None = None,
              ) -> tuple[tarfile.TarFile, BinaryIO, str, tuple[type[BaseException], ...]]:
    """A streaming tar reader over ``stream`` (plain, gzip or zstd), with what names its errors;
    ``wrap`` sees the uncompressed bytes on their way to the tar reader."""
    reader, compression, corrupt = open_decompressed(stream)
    if wrap is not None:
        reader = wrap(reader)
    try:
        tar = tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedTarInfo)
    except tarfile.ReadError as exc:
        raise NotATarArchive(source) from exc
    except corrupt + _HEADER_ERRORS as exc:
        raise ImageError(f"cannot read archive {source}: corrupt {compression} data: {exc}") from exc
    return tar, reader, compression, corrupt


def apply_layers(layers: Iterable[tuple[BinaryIO, str]], dest: Path, *, limits: ExtractLimits | None = None) -> ExtractStats:
    """Apply image layers (each a tar: plain, gzip or zstd) in order into the empty directory ``dest``.

    Every layer goes through the same checks as ``extract``; the limits count all layers together.
    Whiteouts are applied (module docstring); ``layers`` yields ``(stream, source)`` pairs and is
    consumed lazily, so a caller can open each layer only when its turn comes.

    Raises: as ``extract``.
    """
    limits = limits or current_limits()
    ex = _Extractor(dest, "layers", limits)
    try:
        for stream, source in layers:
            ex.source = source
            ex.begin_layer()
            tar, reader, compression, corrupt = _open_tar(stream, source)
            log.debug("applying layer %s (compression %s) onto %s", source, compression, dest)
            try:
                _extract_members(tar, reader, ex, source, compression, corrupt, dest)
            finally:
                tar.close()
        ex.finish()
    finally:
        ex.close()
    return ExtractStats(members=ex.members, bytes_written=ex.bytes_written, whiteouts=ex.whiteouts)


class _Prefetched(io.RawIOBase):
    """Reads ``stream`` (the decompressing reader) ahead in a thread of its own and hashes every
    byte there (a layer's diff_id), so decompression and hashing, which release the GIL, overlap
    with unpacking in the caller's thread. An error of the stream is raised to the reader as is
    (its type says "corrupt data"); ``close`` stops the thread."""

    _DEPTH = 8  # chunks read ahead (8 MiB)

    def __init__(self, stream: BinaryIO) -> None:
        import queue
        import threading

        self.sha256 = hashlib.sha256()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=self._DEPTH)
        self._full = queue.Full
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._run, args=(stream,), name="layer-read", daemon=True)
        self._thread.start()

    def _run(self, stream: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                chunk = stream.read(_CHUNK)
                self.sha256.update(chunk)
                self._put(chunk)
                if not chunk:
                    return  # b"" told the reader it is the end
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except self._full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._pending:
            if self._ended:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return 0
            self._pending = memoryview(item)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


def extract_layer(stream: BinaryIO, dest: Path, *, source: str, limits: ExtractLimits | None = None) -> tuple[ExtractStats, str]:
    """Unpack one image layer into the empty directory ``dest``, as an overlayfs lower dir.

    Checks as ``extract``; whiteouts become overlayfs whiteouts (``_Extractor._overlay_whiteout``).
    Needs root (mknod, ``trusted.*`` xattrs).

    Returns the stats and the layer's diff_id: ``sha256:`` of the uncompressed tar, all of it read.
    Raises: as ``extract``.
    """
    limits = limits or current_limits()
    ahead: _Prefetched | None = None

    def prefetched(reader: BinaryIO) -> BinaryIO:
        nonlocal ahead
        ahead = _Prefetched(reader)
        return cast(BinaryIO, io.BufferedReader(ahead, buffer_size=_CHUNK))

    tar, reader, compression, corrupt = _open_tar(stream, source, wrap=prefetched)
    assert ahead is not None
    ex = _Extractor(dest, source, limits)
    ex.overlay = True
    try:
        _extract_all(tar, reader, ex, source, compression, corrupt, dest)
    finally:
        ahead.close()
    diff_id = f"sha256:{ahead.sha256.hexdigest()}"
    return ExtractStats(members=ex.members, bytes_written=ex.bytes_written, whiteouts=ex.whiteouts), diff_id


def _extract_members(
    tar: tarfile.TarFile,
    reader: BinaryIO,
    ex: _Extractor,
    source: str,
    compression: str,
    corrupt: tuple[type[BaseException], ...],
    dest: Path,
) -> None:
    last: str | None = None
    m: tarfile.TarInfo | None
    while True:
        try:
            m = None
            m = tar.next()  # parses headers: crafted ones raise more than TarError
        except corrupt + _HEADER_ERRORS as exc:
            where = f"after member {last!r}" if last is not None else "at its start"
            raise ImageError(f"cannot read archive {source}: corrupt or truncated {where}: {exc}") from exc
        if m is None:
            break
        try:
            ex.add(tar, m)
            last = m.name
        except corrupt as exc:
            where = f"after member {last!r}" if last is not None else "at its start"
            raise ImageError(f"cannot read archive {source}: corrupt or truncated {where}: {exc}") from exc
        except OSError as exc:  # creating a member: no space, EFBIG, ...
            what = m.name
            hint = "the image needs more space than the state root's filesystem has free" if exc.errno in (
                errno.ENOSPC, errno.EDQUOT) else None
            raise ImageError(f"cannot extract member {what!r} of {source} into {dest}: {exc.strerror or exc}", hint=hint) from exc
    # read to the end so gzip's CRC and zstd's content checksum (written after the tar's
    # end-of-archive blocks) are verified, and a network stream is fully consumed
    try:
        trailing = 0
        while chunk := reader.read(_CHUNK):
            trailing += len(chunk)
            if trailing > MAX_TRAILING_BYTES:  # zeros after the end, compressed to nothing
                raise UnsafeArchive("(end of archive)", f"more than {MAX_TRAILING_BYTES} bytes after the end of the tar")
    except corrupt as exc:
        raise ImageError(f"cannot read archive {source}: corrupt {compression} data after the last member: {exc}") from exc


def rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only directories (as an unprivileged user too) and any
    depth (runtime.fstree: no recursion, never follows a symlink)."""
    remove_tree(path)
