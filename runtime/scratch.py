"""Scratch entries under ROOT/tmp that say whether a live process still works in them, and the
sweep that removes the ones nobody does.

Image work (loads, pulls, pushes, layer unpacks, blob copies, read-only views of an image's
layers, removals) happens in ``image-*``, ``pull-*``, ``push-*``, ``layer-*``, ``blob-*``,
``view-*`` and ``remove-*`` entries of ROOT/tmp, made by whichever process runs the command: a
CLI process as often as the daemon. A process killed there (SIGKILL, OOM, power) leaves its entry
behind, so a sweep must remove leftovers, yet never the entry of an ``image pull`` running in
another CLI process right now.

How a live process is told apart: for as long as it works in an entry it holds a **shared
flock(2)** on it (``held``: an fd of the entry itself, O_CLOEXEC). flock locks belong to the open
file description, so the kernel drops the lock when the last fd of it closes: when the process
exits, however it exits, and not before (a helper the process passes the fd to, e.g. skopeo,
keeps it held until it exits too). The sweep asks with ``LOCK_EX | LOCK_NB``: EWOULDBLOCK means a
live process holds it, and the entry stays. An entry nobody holds is still kept while younger
than a grace period: it covers the moment between making an entry and locking it, and entries
of processes that take no lock.

``busy`` asks the same question of a set of prefixes without sweeping, for work that must wait
for others (the image store does not collect layers and blobs while a pull, which writes blobs
straight into the store, runs). flock cannot tell this process's own holds apart (a second
open conflicts even in the same process), so ``held`` also notes which thread holds what, and
``busy`` leaves out the calling thread's own entries.

Mounts: a ``view-*`` dir holds the image's layers as a read-only overlay on ``view-*/merged``
while a process reads it; a process killed then leaves the mount (in its mount namespace, the
host's for the CLI and the daemon). The sweep detaches (umount2 MNT_DETACH) every mount at or
below an entry, deepest first, before removing anything; when one cannot be detached the entry
is kept: removing through a mount point would remove inside the mounted tree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from runtime.fstree import remove_tree_quietly

log = logging.getLogger(__name__)

GRACE_S = 60.0  # an unheld entry younger than this is kept (made, not locked yet; or a lock-less writer)

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


_threads_lock = threading.Lock()
_held_by_thread: dict[str, list[int]] = {}  # entry path -> the threads of this process holding it


@contextlib.contextmanager
def held(path: Path) -> Iterator[int]:
    """Hold the entry ``path`` (a dir or a file: a shared flock on an fd of it) for the block.

    Yields the fd, O_CLOEXEC: pass it to a helper process (``pass_fds``) that must keep the
    entry held while it runs. The lock goes with the inode if the entry is renamed away."""
    fd = os.open(path, _OPEN_FLAGS)
    key = os.path.abspath(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with _threads_lock:
            _held_by_thread.setdefault(key, []).append(threading.get_ident())
        try:
            yield fd
        finally:
            with _threads_lock:
                holders = _held_by_thread[key]
                holders.remove(threading.get_ident())
                if not holders:
                    del _held_by_thread[key]
    finally:
        os.close(fd)


@contextlib.contextmanager
def scratch_dir(tmp_dir: Path, prefix: str) -> Iterator[Path]:
    """A private dir ``tmp_dir/PREFIX*`` held (``held``) while in use, removed on the way out
    unless it was renamed away."""
    from runtime.fstree import remove_tree

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))
    with held(work):
        try:
            yield work
        finally:
            remove_tree(work)


def busy(tmp_dir: Path, prefixes: tuple[str, ...]) -> list[str]:
    """The entries of ``tmp_dir`` named ``PREFIX*`` that another process, or another thread of
    this one, holds now."""
    if not tmp_dir.is_dir():
        return []
    mine = threading.get_ident()
    with _threads_lock:
        own = {k for k, threads in _held_by_thread.items() if mine in threads}
    out = []
    for entry in sorted(tmp_dir.iterdir()):
        if not entry.name.startswith(prefixes) or os.path.abspath(entry) in own:
            continue
        fd = _try_exclusive(entry)
        if fd == _HELD:
            out.append(entry.name)
        elif fd >= 0:
            os.close(fd)
    return out


@dataclass(frozen=True)
class Swept:
    """What one sweep did: entries removed, and entries kept because a live process holds them,
    they are younger than the grace period, or they could not be removed (a mount in them that
    would not detach, an error: logged)."""

    removed: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    young: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()


def sweep(tmp_dir: Path, prefixes: tuple[str, ...], *, grace_s: float = GRACE_S, now: float | None = None) -> Swept:
    """Remove the entries of ``tmp_dir`` named ``PREFIX*`` that no live process holds and that
    are older than ``grace_s`` (by mtime); mounts in them are detached first.

    Never raises for one entry (logged, then kept): a daemon must start whatever a crash left.
    """
    if not tmp_dir.is_dir():
        return Swept()
    now = time.time() if now is None else now
    removed: list[str] = []
    holding: list[str] = []
    young: list[str] = []
    stuck: list[str] = []
    mounts: list[str] | None = None
    for entry in sorted(tmp_dir.iterdir()):
        if not entry.name.startswith(prefixes):
            continue
        fd = _try_exclusive(entry)
        if fd == _HELD:
            holding.append(entry.name)
            continue
        try:
            if grace_s > 0 and now - _mtime(entry) < grace_s:
                young.append(entry.name)
                continue
            if mounts is None:
                mounts = _mount_points()
            if not _detach_mounts(entry, mounts):
                stuck.append(entry.name)
                continue
            (removed if remove_tree_quietly(entry) else stuck).append(entry.name)
        finally:
            if fd >= 0:
                os.close(fd)
    if removed:
        log.info("swept %d scratch entries from %s: %s", len(removed), tmp_dir, ", ".join(removed))
    return Swept(tuple(removed), tuple(holding), tuple(young), tuple(stuck))


_HELD = -2  # _try_exclusive: a live process holds the entry
_NO_FD = -1  # _try_exclusive: nothing to lock (a symlink, gone, unreadable): not held


def _try_exclusive(entry: Path) -> int:
    """An fd holding LOCK_EX on ``entry`` (nobody else holds it), ``_HELD``, or ``_NO_FD``."""
    try:
        fd = os.open(entry, _OPEN_FLAGS)
    except OSError:
        return _NO_FD  # a symlink (ELOOP), gone, or a node we cannot open: no process can hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return _HELD
        return _NO_FD
    return fd


def _mtime(entry: Path) -> float:
    try:
        return os.lstat(entry).st_mtime
    except FileNotFoundError:
        return 0.0


def _mount_points() -> list[str]:
    from runtime.overlay import mount_points

    return mount_points()


def _detach_mounts(entry: Path, mounts: list[str]) -> bool:
    """Detach every mount at or below ``entry``, deepest first; False when one stays."""
    from runtime.syscalls import LINUX, MNT_DETACH

    top = os.path.realpath(entry)
    below = [m for m in mounts if m == top or m.startswith(top + "/")]
    for mount in sorted(below, key=len, reverse=True):
        try:
            LINUX.umount2(mount, MNT_DETACH)
            log.info("detached %s, left mounted by a process that is gone", mount)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                continue  # not (or no longer) a mount point
            log.warning("cannot detach %s: %s; keeping %s", mount, exc.strerror, entry)
            return False
    return True


