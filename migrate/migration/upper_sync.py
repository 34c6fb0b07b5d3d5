"""Upper-layer pre-sync for live migration: send the overlay upper layer while the container
still runs, then, while it is frozen, only what changed since.

Source: ``write_snapshot(writer, "upper", upper_dir)`` while the container runs; after the
freeze ``compute_delta(snapshot, upper_dir)``: None means "send the whole tree as before",
otherwise ``write_delta(...)`` adds just the changed entries and ``delta.as_dict()`` travels
with them. Target: the snapshot archive is extracted into a staging dir, the delta archive into
another, and ``apply_delta(staged, received, delta)`` makes the staged tree equal the source's
tree at delta time.

Kernel facts this relies on:

- ``st_ctime`` cannot be set from user space and moves on every change of content or inode
  metadata (write, truncate, chmod, chown, setxattr, link/unlink via nlink, rename of the inode
  on ext4/xfs/btrfs/tmpfs). ``utime`` can put mtime back, never ctime. A signature therefore
  holds ctime, plus ``st_ino`` (a path renamed over or recreated gets another inode) and the
  rest of the stat fields.
- ctime is taken from the kernel's coarse clock (a tick of 1-10 ms; the multigrain timestamps
  of Linux 6.13+ only sharpen it when someone looked), so a change right after we recorded a
  signature may keep the same ctime: git's "racy git" problem. Every entry whose recorded ctime
  is within RACY_MARGIN_NS of the snapshot start (or later) is always sent again. The margin
  assumes CLOCK_REALTIME does not step backwards between snapshot and delta.
- A regular file's signature is its ``fstat`` when it was opened for reading, before its
  content was read: a write during the read shows as a later ctime.
- Writes through a shared writable mmap move the times only at the write fault that dirties a
  clean page (``page_mkwrite`` -> ``file_update_time``); more writes to an already dirty page
  move nothing. ``syncfs`` before the walk writes back and write-protects every page, so a
  later store faults and moves ctime (or happens after the snapshot start: racy, resent).
- Hardlinks: a delta member cannot name a link target that only the staged tree has, so a
  change touching a multiply linked inode makes ``compute_delta`` return None (full resend).
- On the target nothing follows symlinks: every lookup in the staged tree goes directory by
  directory with ``O_NOFOLLOW|O_DIRECTORY`` and the operations use ``dir_fd``; a name whose
  parent is a symlink or other non-directory is refused (``UnsafeMember``).
- ``rename`` keeps an inode's mtime but moves its new parent's mtime (and ctime), so touched
  directories get their times back at the end, after all their children are in place.
"""

from __future__ import annotations

import base64
import collections
import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate.archive import format as fmt
from migrate.archive.fs import kind_of, read_xattrs
from migrate.errors import ArchiveError, UnsafeMember
from migrate.archive import ArchiveWriter

log = logging.getLogger(__name__)

__all__ = [
    "RACY_MARGIN_NS",
    "Signature",
    "UpperDelta",
    "UpperSnapshot",
    "apply_delta",
    "compute_delta",
    "write_delta",
    "write_snapshot",
]

# Changes within this much of the snapshot start may not have moved ctime (coarse clock tick,
# 1-10 ms); such entries are always resent.
RACY_MARGIN_NS = 50_000_000

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FD_CACHE = 64  # open directory fds kept while applying a delta


@dataclass(frozen=True, slots=True)
class Signature:
    """The stat fields of one entry that show a change (``kind`` as in the archive format,
    ``mode`` with the type bits, ``rdev`` raw)."""

    kind: str
    ino: int
    size_bytes: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(
            kind_of(st) or "unknown",
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_nlink,
            st.st_rdev,
        )

    def key(self) -> tuple[int, ...]:
        """The fields as a tuple, in ``_stat_key`` order (``kind`` follows from mode and rdev)."""
        return (self.ino, self.size_bytes, self.mtime_ns, self.ctime_ns, self.mode, self.uid, self.gid, self.nlink, self.rdev)


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_rdev)


_CTIME = 3  # index of ctime in a key


@dataclass(frozen=True)
class UpperSnapshot:
    """What ``write_snapshot`` sent: ``entries`` maps a relative path ("" is the root dir) to
    the signature of the inode as it was sent; ``taken_ns`` is ``time.time_ns()`` just before
    the walk (and the syncfs) started."""

    root: Path
    taken_ns: int
    entries: Mapping[str, Signature]
    # The signatures as plain tuples, built here (before the freeze) so compute_delta, which
    # runs while the container is frozen, compares tuples instead of building objects.
    _keys: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", {rel: sig.key() for rel, sig in self.entries.items()})


@dataclass(frozen=True)
class UpperDelta:
    """The difference between a snapshot and the tree now.

    ``changed``: relative paths to (re)send, parents before children; "" is the root dir's
    metadata. ``deleted``: paths of the snapshot that are gone (or changed kind), top-most only
    (a removed dir is listed, its children are not).
    """

    changed: tuple[str, ...]
    deleted: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form. Names may hold surrogate escapes (non-UTF-8 file names): encode the
        JSON with ``ensure_ascii`` (the default), not as a UTF-8 protobuf string."""
        return {"changed": list(self.changed), "deleted": list(self.deleted)}

    @classmethod
    def from_dict(cls, d: Any) -> UpperDelta:
        """Parse and validate ``as_dict`` output received from the other host.

        Raises:
            UnsafeMember: a name is absolute, has '..', '.' or empty components or a NUL, or
                ``deleted`` names the root (names the entry).
            ArchiveError: not the expected shape, or a duplicate name.
        """
        if not isinstance(d, dict):
            raise ArchiveError(f"malformed upper delta: expected an object, got {type(d).__name__}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("changed", "deleted"):
            value = d.get(key)
            if not isinstance(value, list):
                raise ArchiveError(f"malformed upper delta: {key!r} is not a list")
            lists[key] = tuple(value)
        delta = cls(changed=lists["changed"], deleted=lists["deleted"])
        _validate(delta)
        return delta


def write_snapshot(writer: ArchiveWriter, prefix: str, root: Path, *, sync: bool = True) -> UpperSnapshot:
    """Add the whole tree (like ``writer.add_tree(prefix, root)``) and record each entry's signature.

    Meant for a running container: entries that disappear (or change type) between being listed
    and being read are skipped and not recorded, so ``compute_delta`` sees them as new if they
    exist later.

    Args:
        sync: ``syncfs`` the file system of ``root`` first, so later writes through shared
            mmaps move ctime (see the module docstring). Only tests should turn it off.

    Raises:
        OSError: ``root`` is missing or not a directory, or reading failed.
        ValueError: writer misuse (see ``ArchiveWriter.add_entries``).
    """
    root = Path(root)
    taken_ns = time.time_ns()
    if sync:
        _syncfs(root)
    entries: dict[str, Signature] = {}

    def record(rel: str, st: os.stat_result) -> None:
        entries[rel] = Signature.of(st)

    start = time.monotonic()
    writer.add_entries(prefix, _walk_live(root), on_entry=record, vanished_ok=True)
    log.debug(
        "upper snapshot of %s: entries=%d elapsed_ms=%.1f",
        root,
        len(entries),
        (time.monotonic() - start) * 1000,
    )
    return UpperSnapshot(root=root, taken_ns=taken_ns, entries=entries)


def compute_delta(snapshot: UpperSnapshot, root: Path) -> UpperDelta | None:
    """What changed in ``root`` since ``snapshot``; None when a delta cannot express it
    faithfully (then send the full tree).

    ``root`` must not change until ``write_delta`` ran (the container is frozen). None when a
    new, changed or replaced non-directory is (or was) multiply hardlinked, or the root is no
    longer a directory.
    """
    start = time.monotonic()
    old_keys = snapshot._keys
    racy_from = snapshot.taken_ns - RACY_MARGIN_NS
    changed: list[str] = []
    gone: set[str] = set()  # replaced by another kind (deleted, then sent anew)
    present: set[str] = set()
    for rel, st in scan(Path(root)):
        present.add(rel)
        key = _stat_key(st)
        old_key = old_keys.get(rel)
        if old_key == key and key[_CTIME] < racy_from:
            continue
        sig = Signature.of(st)
        old = snapshot.entries.get(rel)
        if rel == "" and sig.kind != fmt.KIND_DIR:
            log.info("upper delta of %s impossible: the root is no longer a directory", root)
            return None
        if old is not None and old.kind != sig.kind:
            gone.add(rel)
        if (sig.kind != fmt.KIND_DIR and sig.nlink > 1) or (
            old is not None and old.kind != fmt.KIND_DIR and old.nlink > 1
        ):
            log.info("upper delta of %s impossible: %s is hardlinked (nlink %d)", root, rel, sig.nlink)
            return None
        changed.append(rel)
    gone.update(rel for rel in old_keys if rel not in present)
    deleted = sorted(rel for rel in gone if not _has_ancestor_in(rel, gone))
    delta = UpperDelta(changed=tuple(changed), deleted=tuple(deleted))
    log.info(
        "upper delta of %s: entries=%d changed=%d deleted=%d elapsed_ms=%.1f",
        root,
        len(present),
        len(delta.changed),
        len(delta.deleted),
        (time.monotonic() - start) * 1000,
    )
    return delta


def write_delta(writer: ArchiveWriter, prefix: str, root: Path, delta: UpperDelta) -> None:
    """Add exactly the ``changed`` entries as members ``prefix/<rel>`` (same member format as
    ``add_tree``; "" is ``prefix`` itself), in ``delta.changed`` order.

    Raises:
        OSError: an entry is missing (``root`` changed after ``compute_delta``).
        ValueError: an invalid name or writer misuse.
    """
    base = os.fspath(root)

    def entries() -> Iterator[tuple[str, str, os.stat_result]]:
        for rel in delta.changed:
            full = os.path.join(base, rel) if rel else base
            yield rel, full, os.lstat(full)

    writer.add_entries(prefix, entries())


def apply_delta(staged: Path, received: Path, delta: UpperDelta) -> None:
    """Make ``staged`` (the extracted snapshot) equal the source tree at delta time.

    ``received`` holds the extracted delta members (``read_archive`` of the delta archive,
    its ``upper`` part); its parent dirs that are not in ``changed`` are the reader's implicit
    0755 dirs and are not applied. Entries are moved out of ``received`` with ``rename``, so
    both must be on one file system. Deletions come first (a directory with all below it),
    then ``changed`` in order; finally directory modes and times are set, deepest first.

    Raises:
        UnsafeMember: an invalid name, or a name whose parent in ``staged`` is a symlink or
            other non-directory (names it).
        ArchiveError: a changed entry missing from ``received``, a parent missing from
            ``staged``, or ``staged``/``received`` on different file systems.
        OSError: other file-system failures.
    """
    _validate(delta)
    changed = set(delta.changed)
    with _Tree(Path(staged)) as dst, _Tree(Path(received)) as src:
        parents: dict[str, tuple[int, int]] = {}  # dir not in the delta -> (atime, mtime) before

        def touch_parent(rel: str) -> None:
            parent = _parent(rel)
            if parent not in changed and parent not in parents:
                pst = dst.stat(parent)
                if pst is None:
                    raise ArchiveError(f"cannot apply upper delta: parent of {rel!r} is missing in {staged}")
                parents[parent] = (pst.st_atime_ns, pst.st_mtime_ns)

        for rel in delta.deleted:
            dst.release()
            cur = dst.stat(rel)
            if cur is None:  # (or a parent of it)
                log.debug("upper delta: %s to delete is not in the staged tree", rel)
                continue
            touch_parent(rel)
            dst.remove(rel, cur)

        dirs: list[tuple[str, os.stat_result]] = []
        for rel in delta.changed:
            dst.release()
            src.release()
            rst = src.stat(rel)
            if rst is None:
                raise ArchiveError(f"cannot apply upper delta: changed entry {rel!r} is not in {received}")
            if stat.S_ISDIR(rst.st_mode):
                _apply_dir(dst, src, rel, rst, touch_parent)
                dirs.append((rel, rst))
                continue
            if rel == "":
                raise UnsafeMember(rel, "the root of the upper layer must be a directory")
            cur = dst.stat(rel)
            touch_parent(rel)
            if cur is not None and stat.S_ISDIR(cur.st_mode):
                dst.remove(rel, cur)
            dfd, name = dst.parent_fd(rel)
            sfd, sname = src.parent_fd(rel)
            try:
                os.rename(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd)  # replaces a non-dir atomically
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise ArchiveError(
                        f"cannot apply upper delta: {received} and {staged} are on different file systems"
                    ) from exc
                raise

        # Modes and times last: children were added (mtime) and a read-only dir had to take them.
        for rel, rst in sorted(dirs, key=lambda d: _depth(d[0]), reverse=True):
            dst.release()
            fd = dst.open_dir(rel)
            try:
                os.chmod(fd, stat.S_IMODE(rst.st_mode))
                os.utime(fd, ns=(rst.st_atime_ns, rst.st_mtime_ns))
            finally:
                os.close(fd)
        for rel, times in parents.items():
            dst.release()
            try:
                fd = dst.open_dir(rel)
            except (FileNotFoundError, UnsafeMember):
                continue  # replaced later in this delta: its own entry set its times
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)
    log.debug("upper delta applied to %s: changed=%d deleted=%d", staged, len(delta.changed), len(delta.deleted))


# -- helpers ------------------------------------------------------------------------------------


def _validate(delta: UpperDelta) -> None:
    for key, names in (("changed", delta.changed), ("deleted", delta.deleted)):
        seen: set[str] = set()
        for rel in names:
            if not isinstance(rel, str):
                raise ArchiveError(f"malformed upper delta: {key} entry {rel!r} is not a string")
            if rel in seen:
                raise ArchiveError(f"malformed upper delta: {key} lists {rel!r} twice")
            seen.add(rel)
            if rel == "":
                if key == "deleted":
                    raise UnsafeMember(rel, "the upper layer's root cannot be deleted")
                continue
            fmt.check_member_name(rel)


def _parent(rel: str) -> str:
    cut = rel.rfind("/")
    return rel[:cut] if cut >= 0 else ""


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


def _has_ancestor_in(rel: str, names: set[str]) -> bool:
    cut = rel.rfind("/")
    while cut > 0:
        rel = rel[:cut]
        if rel in names:
            return True
        cut = rel.rfind("/")
    return False


def _syncfs(root: Path) -> None:
    """syncfs(2) on the file system holding ``root`` (Python has no wrapper)."""
    import ctypes  # lazily: only the migration source needs it

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", os.fspath(root))
    finally:
        os.close(fd)


def scan(root: Path, *, running: bool = False) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of ``root`` ("" first) and everything below it: pre-order, names
    sorted, symlinks not followed. Like ``migrate.archive.fs.walk`` but cheaper per entry (no path
    joins; ``DirEntry.stat``), as it runs while the container is frozen. ``running``: the tree
    may change meanwhile (checkpoint_presync): an entry that vanishes while listed is left out."""
    top = os.fspath(root)
    st = os.lstat(top)
    yield "", st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack: list[tuple[str, Iterator[tuple[str, os.stat_result]]]] = [("", _sorted_entries(top, running))]
    while stack:
        prefix, it = stack[-1]
        found = next(it, None)
        if found is None:
            stack.pop()
            continue
        rel, st = prefix + found[0], found[1]
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((rel + "/", _sorted_entries(os.path.join(top, rel), running)))


def _sorted_entries(path: str, running: bool) -> Iterator[tuple[str, os.stat_result]]:
    """(name, lstat) of ``path``'s entries, sorted by name; with ``running`` a directory or an
    entry gone meanwhile is left out."""
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=_entry_name)
        return iter([(e.name, e.stat(follow_symlinks=False)) for e in entries])
    except (FileNotFoundError, NotADirectoryError):
        if not running:
            raise
        return iter(())


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _walk_live(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """``migrate.archive.fs.walk`` for a tree that changes while it is read: entries that vanish (or a
    dir that became something else) between listing and reading are skipped. The root itself
    must be a directory."""
    top = os.fspath(root)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "upper layer root is not a directory", top)
    stack: list[tuple[str, str, os.stat_result | None]] = [("", top, st)]
    while stack:
        rel, full, known = stack.pop()
        if known is None:
            try:
                known = os.lstat(full)
            except (FileNotFoundError, NotADirectoryError):
                continue
        yield rel, full, known
        if not stat.S_ISDIR(known.st_mode):
            continue
        try:
            with os.scandir(full) as it:
                names = sorted(e.name for e in it)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for child in reversed(names):
            stack.append((f"{rel}/{child}" if rel else child, os.path.join(full, child), None))


class _Tree:
    """Directory-fd access below ``root`` that never follows a symlink: each lookup goes
    component by component with O_NOFOLLOW|O_DIRECTORY.

    Keeps an LRU of open dir fds. An fd returned by ``dir_fd``/``parent_fd`` stays open until
    the next ``release()`` (evicted fds are closed there, not at once), so a caller may hold
    one while it makes other lookups for the same entry. The root is opened on first use (an
    empty delta has no received tree).
    """

    def __init__(self, root: Path) -> None:
        self._root_path = root
        self._root_fd: int | None = None
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._retired: list[int] = []

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    @property
    def _root(self) -> int:
        if self._root_fd is None:
            self._root_fd = os.open(self._root_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._root_fd

    def release(self) -> None:
        """Close the fds evicted from the cache since the last call."""
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def dir_fd(self, rel: str, entry: str) -> int:
        """The fd of the directory ``rel``; ``entry`` is the delta name it is looked up for."""
        if rel == "":
            return self._root
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parts = rel.split("/")
        have = len(parts) - 1  # components of the deepest cached ancestor
        fd = self._root
        while have > 0:
            cached = self._fds.get("/".join(parts[:have]))
            if cached is not None:
                fd = cached
                break
            have -= 1
        for i in range(have, len(parts)):
            path = "/".join(parts[: i + 1])
            fd = self._open_child(fd, path, entry)
            self._fds[path] = fd
            if len(self._fds) > _DIR_FD_CACHE:
                self._retired.append(self._fds.popitem(last=False)[1])
        return fd

    def _open_child(self, parent_fd: int, rel: str, entry: str) -> int:
        name = rel.rsplit("/", 1)[-1]
        try:
            return os.open(name, _OPEN_DIR, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else f"a {kind_of(st) or 'non-directory'}"
        raise UnsafeMember(entry, f"path passes through {rel} in {self._root_path}, {what}, not a directory")

    def parent_fd(self, rel: str) -> tuple[int, str]:
        """(fd of the parent dir, last component) of the non-root entry ``rel``."""
        cut = rel.rfind("/")
        if cut < 0:
            return self._root, rel
        return self.dir_fd(rel[:cut], rel), rel[cut + 1 :]

    def stat(self, rel: str) -> os.stat_result | None:
        """lstat of ``rel`` (never following it), None if it does not exist."""
        try:
            if rel == "":
                return os.fstat(self._root)
            dfd, name = self.parent_fd(rel)
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_dir(self, rel: str) -> int:
        """A new fd (the caller closes it) of the directory ``rel``."""
        if rel == "":
            return os.dup(self._root)
        dfd, name = self.parent_fd(rel)
        try:
            return os.open(name, _OPEN_DIR, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            raise UnsafeMember(rel, f"{rel} in {self._root_path} is not a directory") from exc

    def remove(self, rel: str, st: os.stat_result) -> None:
        """Remove the non-root entry ``rel`` (a directory with everything below it)."""
        dfd, name = self.parent_fd(rel)
        if stat.S_ISDIR(st.st_mode):
            self.forget(rel)
            shutil.rmtree(name, dir_fd=dfd)  # fd-based: never follows a symlink inside
        else:
            os.unlink(name, dir_fd=dfd)

    def forget(self, rel: str) -> None:
        """Drop cached fds of ``rel`` and below (it is being removed or replaced)."""
        under = rel + "/"
        for key in [k for k in self._fds if k == rel or k.startswith(under)]:
            self._retired.append(self._fds.pop(key))


def _apply_dir(
    dst: _Tree,
    src: _Tree,
    rel: str,
    rst: os.stat_result,
    touch_parent: Callable[[str], None],
) -> None:
    """Make ``rel`` in the staged tree a directory with the received one's owner and xattrs
    (mode and times come at the end, after its children are in place)."""
    if rel != "":
        cur = dst.stat(rel)
        if cur is None or not stat.S_ISDIR(cur.st_mode):
            touch_parent(rel)
            if cur is not None:
                dst.remove(rel, cur)
            dfd, name = dst.parent_fd(rel)
            os.mkdir(name, 0o700, dir_fd=dfd)
    fd = dst.open_dir(rel)
    try:
        try:
            os.chown(fd, rst.st_uid, rst.st_gid)
        except PermissionError:
            if os.geteuid() == 0:
                raise
            log.debug("cannot chown %s to %d:%d without root, keeping the current owner", rel, rst.st_uid, rst.st_gid)
        rfd = src.open_dir(rel)
        try:
            want = {k: base64.b64decode(v) for k, v in read_xattrs(rfd).items()}
        finally:
            os.close(rfd)
        have = {k: base64.b64decode(v) for k, v in read_xattrs(fd).items()}
        for key in have.keys() - want.keys():
            os.removexattr(fd, key)
        for key, value in want.items():
            if have.get(key) != value:
                try:
                    os.setxattr(fd, key, value)
                except OSError as exc:
                    raise ArchiveError(f"cannot set xattr {key} on upper delta entry {rel!r}: {exc.strerror}") from exc
    finally:
        os.close(fd)
