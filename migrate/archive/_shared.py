"""Helpers the archive writer and reader share (private to migrate.archive)."""

from __future__ import annotations

import os
from typing import Any

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

