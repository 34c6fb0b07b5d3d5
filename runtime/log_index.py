"""The log index: when each piece of a container's output was written (``logs -t/--since/--until``).

A container's stdout and stderr are two files of its own root, /.pymigrate/log and
/.pymigrate/log.err (runtime/process.py): CRIU dumps fds on files of the container's root without
extra plumbing, and the files travel with the upper layer through checkpoint, export and
migration. A file holds bytes, not times, so the shim (runtime/shim.py), alive while the container
runs, watches the directory (inotify IN_MODIFY, and a scan every ``POLL_S`` in case a watch is
impossible or misses) and appends a record (stream, end offset, unix ns) to /.pymigrate/log.idx
whenever a file grew. A line's time is that of the first record of its stream whose offset
reaches the line's end (runtime/logs.py reads this). The index lives beside the logs, so it
travels with them too; a restored or restarted container's new shim goes on appending.

The container can write to all three files, replace them or plant symlinks and device nodes: the
shim opens the directory below merged/ with O_NOFOLLOW, reaches the files only through that
directory's fd, writes only to a regular file (a FIFO or device planted as the index is never
opened for writing: it is looked at through an O_PATH fd first), pads the index back to whole
records after garbage, and never reads it. It opens and closes everything on each scan: a held fd
would keep the overlay busy when a checkpoint unmounts it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

LOG_DIR_NAME = ".pymigrate"  # runtime.overlay.LOG_DIR_IN_CONTAINER below the root
FILE_NAMES = {"stdout": "log", "stderr": "log.err"}  # "log": the one file of older containers
INDEX_NAME = "log.idx"
STREAM_CODES = {"stdout": 1, "stderr": 2}
MAGIC = b"PMLI"
RECORD = struct.Struct("<4sB3xqq")  # magic, stream code, pad, end offset (bytes), time (unix ns)
POLL_S = 0.5  # a scan even without an inotify event
COALESCE_S = 0.01  # after an event: let a burst of writes become one record per stream

_IN_MODIFY = 0x2
_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000


def open_log_dir(root: Path | str) -> int:
    """An fd of ``root``/.pymigrate, refused (OSError ELOOP/ENOTDIR) when the container made it a
    symlink or anything but a directory. ``root`` itself is a host path (merged/ or the upper dir)."""
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(LOG_DIR_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=rootfd)
    finally:
        os.close(rootfd)


def open_regular(dirfd: int, name: str, flags: int) -> int | None:
    """``name`` in ``dirfd`` opened with ``flags`` if it is a regular file; None if it is missing,
    a symlink, a FIFO, a device... (looked at through O_PATH, which opens nothing, then reopened)."""
    try:
        pathfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(pathfd).st_mode):
            return None
        # the magic link names the inode looked at, nothing is resolved again (and O_NOFOLLOW
        # would refuse the link itself)
        return os.open(f"/proc/self/fd/{pathfd}", flags | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(pathfd)


def file_size(dirfd: int, name: str) -> int | None:
    """The size of regular file ``name`` in ``dirfd`` (a symlink is not followed); None otherwise."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class Indexer:
    """The shim's writer of one container's log index: a thread from ``start()`` to ``stop()``."""

    def __init__(self, root: Path, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.root = root  # the container's mounted root (merged/)
        self._clock_ns = clock_ns
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="log-index", daemon=True)

    def start(self) -> "Indexer":
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the thread, then scan once more: output written up to the init's exit is indexed."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout_s)
        self.scan()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def scan(self) -> None:
        """Append a record for each log file that grew (or shrank) since the last scan."""
        with self._lock:
            try:
                dirfd = open_log_dir(self.root)
            except OSError:
                return  # no log directory (yet), or the container replaced it: nothing to index
            try:
                records = self._records(dirfd)
                if records:
                    self._append(dirfd, records)
            finally:
                os.close(dirfd)

    def _records(self, dirfd: int) -> bytes:
        now = self._clock_ns()
        out = b""
        for stream, name in FILE_NAMES.items():
            size = file_size(dirfd, name)
            if size is None or size == self._sizes.get(stream, 0):
                continue  # nothing new (an empty file needs no record)
            self._sizes[stream] = size
            out += RECORD.pack(MAGIC, STREAM_CODES[stream], size, now)
        return out

    def _append(self, dirfd: int, records: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        try:
            fd: int | None = os.open(INDEX_NAME, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dirfd)
        except FileExistsError:
            fd = open_regular(dirfd, INDEX_NAME, flags | os.O_NONBLOCK)
        except OSError as exc:
            log.debug("log index of %s not written: %s", self.root, exc)
            return
        if fd is None:
            return  # the container put something else there: its logs lose their times, nothing more
        try:
            misaligned = os.fstat(fd).st_size % RECORD.size
            if misaligned:  # garbage written by the container: realign so readers find our records
                records = bytes(RECORD.size - misaligned) + records
            os.write(fd, records)
        except OSError as exc:  # a full disk: the logs lose times, the container goes on
            log.debug("log index of %s not written: %s", self.root, exc)
        finally:
            os.close(fd)

    def _run(self) -> None:  # pragma: no cover - the thread; covered by tests/integration/test_logs.py
        inotify = _watch(self.root)
        try:
            while not self._stopping:
                self.scan()
                watched = [self._wake_r] + ([inotify] if inotify is not None else [])
                ready, _, _ = select.select(watched, [], [], POLL_S)
                if inotify is not None and inotify in ready and not self._stopping:
                    time.sleep(COALESCE_S)
                    _drain(inotify)
        except Exception:  # the index is a convenience: never let it take the shim down
            log.warning("log index of %s stopped", self.root, exc_info=True)
        finally:
            if inotify is not None:
                os.close(inotify)


def start(root: Path) -> Indexer | None:
    """An ``Indexer`` of the container mounted at ``root``, running; None if it cannot start (no fd
    or thread left): the shim goes on monitoring, the logs only lose their times."""
    try:
        return Indexer(root).start()
    except (OSError, RuntimeError) as exc:
        log.warning("log index of %s not started: %s", root, exc)
        return None


def _watch(root: Path) -> int | None:
    """An inotify fd watching root/.pymigrate for writes (IN_MODIFY of any file in it), or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK))
    if fd < 0:
        return None
    try:
        dirfd = open_log_dir(root)
        try:
            # through the fd's magic link: the directory opened with O_NOFOLLOW, not a path to re-resolve
            wd = int(libc.inotify_add_watch(fd, f"/proc/self/fd/{dirfd}".encode(), _IN_MODIFY))
        finally:
            os.close(dirfd)
    except OSError:
        wd = -1
    if wd < 0:
        os.close(fd)
        return None
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
