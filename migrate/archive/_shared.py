"""Helpers the archive writer and reader share (private to migrate.archive)."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable

from migrate.archive import format as fmt

_ZEROS = memoryview(bytes(fmt.CHUNK_BYTES))


def worker_count(threads: int) -> int:
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def update_zeros(h: Any, n: int) -> None:
    """Feed ``n`` zero bytes (a hole) to the hash without allocating them."""
    while n > 0:
        step = min(n, len(_ZEROS))
        h.update(_ZEROS[:step])
        n -= step



INLINE_BYTES = 64 << 10  # members up to this size are packed (unpacked) and hashed on the caller's thread


class Inline:
    """A stand-in for an executor: runs the call at once and returns its finished future. A
    checkpoint's CRIU images are dozens of files of a few KiB, written and read while the
    container is frozen: the hand-offs to the zstd and sha256 pools (~0.25 ms each on a loaded
    2-core host, three per file) cost more than the work."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - raised by result(), as from a pool
            future.set_exception(exc)
        return future


INLINE = Inline()


class BufferPool:
    """Reused CHUNK_BYTES buffers. Fresh 4 MiB allocations are mmap'd and page-faulted every
    time (slow on VMs that hand freed memory back to the host); reuse keeps them warm."""

    def __init__(self, keep: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep

    def get(self) -> bytearray:
        try:
            return self._free.pop()
        except IndexError:
            return bytearray(fmt.CHUNK_BYTES)

    def put(self, buf: bytearray) -> None:
        if len(self._free) < self._keep:
            self._free.append(buf)

