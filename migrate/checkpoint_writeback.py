"""A local checkpoint's images on their way to the disk while CRIU still writes them.

A checkpoint that stops its container must be durable first (nothing lost: the container dies
only once its images are on disk), and CRIU does not sync what it writes. Left to the commit, the
fsync of a 64 MiB dump's pages took 44-63 ms here, after the dump and inside the command's time,
while the caller's thread sat idle waiting for CRIU. ``Writeback`` starts the disk writes of what
CRIU has appended so far (``sync_file_range(SYNC_FILE_RANGE_WRITE)``: initiate, do not wait), a
few times per dump, so the commit's fsync finds most pages written or in flight. It never replaces
that fsync: it only moves the I/O earlier, and the page cache keeps the pages (a restore reads
them right back), which ``posix_fadvise(DONTNEED)``'s writeback would have dropped.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait
CHUNK_BYTES = 1 << 20  # a smaller new tail is left to the next round (or the commit's fsync)
POLL_S = 0.004

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)


def start_write(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Start the writeback of ``fd``'s dirty pages in [offset, offset + nbytes) (0: to the end).
    A failure is only logged: the fsync that follows writes everything anyway."""
    if _libc.sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
        log.debug("sync_file_range(fd %d): %s", fd, os.strerror(ctypes.get_errno()))


def start_path(path: Path) -> None:
    """``start_write`` on the whole file at ``path``; a file that is gone is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        start_write(fd)
    finally:
        os.close(fd)


class Writeback:
    """Follows the files of one images dir as CRIU appends to them (from one thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}
        self._started: dict[str, int] = {}  # file name -> bytes whose writeback was started

    def poll(self) -> None:
        """Start the writeback of what each file gained since the last poll (>= CHUNK_BYTES)."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.startswith("pages-"):  # the small images come at the end: the commit's
                    continue
                size = entry.stat().st_size
                done = self._started.get(entry.name, 0)
                if size - done < CHUNK_BYTES:
                    continue
                fd = self._fds.get(entry.name)
                if fd is None:
                    fd = self._fds[entry.name] = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                start_write(fd, done, size - done)
                self._started[entry.name] = size

    def follow(self, dumping: Callable[[], bool]) -> None:
        """Poll until ``dumping()`` is false (a ``--leave-running`` container thaws right after),
        then close the files. Never raises OSError: what it could not start, the commit's fsync
        writes."""
        try:
            while dumping():  # no last round after the dump: the commit's sync_files starts the rest
                self.poll()
                time.sleep(POLL_S)
        except OSError as exc:  # the commit's fsync writes what was not started here
            log.debug("writeback of %s: %s", self.directory, exc)
        finally:
            self.close()

    def start(self, dumping: Callable[[], bool]) -> threading.Thread:
        """``follow`` in a thread of its own: a ``sync_file_range`` that blocks (a busy disk's full
        request queue) never holds up the caller, whose container may still be frozen."""
        thread = threading.Thread(target=self.follow, args=(dumping,), name="criu-writeback", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def sync_files(directory: Path) -> None:
    """fsync every file of ``directory`` and the directory itself. Every file's writeback is
    started first, so their writes go out together instead of one fsync's wait after another."""
    files = [p for p in directory.iterdir() if p.is_file()]
    fds = []
    try:
        for p in files:
            fds.append(os.open(p, os.O_RDONLY | os.O_CLOEXEC))
            start_write(fds[-1])
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
