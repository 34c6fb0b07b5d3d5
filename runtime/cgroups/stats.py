"""Reading a container cgroup's usage counters beyond ``CgroupManager.stats``: block I/O and the
memory the kernel can drop (page cache), from the directories ``CgroupManager.info`` names.

No path is guessed here: a hierarchy is used only if the container's ``CgroupInfo`` lists it, so
the same code reads a pure cgroup2 host (``unified``: io.stat, memory.stat) and a v1 or hybrid
one (``blkio``: blkio.throttle.io_service_bytes_recursive, ``memory``: memory.stat).

Kernel facts (Documentation/admin-guide/cgroup-v2.rst "IO Interface Files", cgroup-v1/blkio-controller.rst,
cgroup-v1/memory.rst):
- io.stat: one line per device, ``MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N``; it
  exists only where the io controller is enabled for the cgroup.
- blkio.throttle.io_service_bytes_recursive: ``MAJ:MIN Read N`` / ``Write`` / ``Sync`` / ``Async``
  / ``Discard`` / ``Total`` lines per device, then one ``Total N`` line.
- memory.stat: v2 ``inactive_file N`` (the cgroup's own, recursive by nature); v1 ``total_inactive_file``
  includes descendants, ``inactive_file`` does not. docker and podman subtract it from the usage.
- A hybrid host's cgroup2 has no controllers and this runtime joins no v1 blkio cgroup, so block
  I/O there is not a cgroup counter at all (``None``; runtime/stats.py falls back to /proc/PID/io).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups._files import CgroupFs, parse_keyed
from runtime.cgroups._interface import CgroupInfo
from runtime.cgroups._layout import UNIFIED

IO_STAT = "io.stat"
BLKIO_SERVICE_BYTES = "blkio.throttle.io_service_bytes_recursive"
MEMORY_STAT = "memory.stat"


@dataclass(frozen=True)
class BlockIo:
    read_bytes: int
    write_bytes: int


def parse_io_stat(text: str) -> BlockIo:
    """Sum ``rbytes``/``wbytes`` of every device line of a cgroup2 io.stat."""
    read = write = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes" and value.isdigit():
                read += int(value)
            elif key == "wbytes" and value.isdigit():
                write += int(value)
    return BlockIo(read, write)


def parse_blkio_service_bytes(text: str) -> BlockIo:
    """Sum the per-device ``Read``/``Write`` lines of a v1 blkio io_service_bytes file."""
    read = write = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or not parts[2].isdigit():
            continue  # the closing "Total N" line and anything unexpected
        if parts[1] == "Read":
            read += int(parts[2])
        elif parts[1] == "Write":
            write += int(parts[2])
    return BlockIo(read, write)


def block_io(info: CgroupInfo, fs: CgroupFs | None = None) -> BlockIo | None:
    """The cgroup's block I/O, or None when no hierarchy of it counts block I/O."""
    files = fs or CgroupFs()
    unified = info.dirs.get(UNIFIED)
    if unified is not None:
        text = _read(files, unified / IO_STAT)
        if text is not None:
            return parse_io_stat(text)
    for name, directory in info.dirs.items():
        if "blkio" in name.split(","):
            text = _read(files, directory / BLKIO_SERVICE_BYTES)
            if text is not None:
                return parse_blkio_service_bytes(text)
    return None


def inactive_file_bytes(info: CgroupInfo, fs: CgroupFs | None = None) -> int:
    """Page cache the kernel can drop first (0 when unknown): what docker subtracts from usage."""
    files = fs or CgroupFs()
    for name, directory in info.dirs.items():
        if name == UNIFIED or "memory" in name.split(","):
            text = _read(files, directory / MEMORY_STAT)
            if text:
                keyed = parse_keyed(text)
                if "total_inactive_file" in keyed:  # v1: with descendants
                    return keyed["total_inactive_file"]
                if "inactive_file" in keyed:
                    return keyed["inactive_file"]
    return 0


def _read(fs: CgroupFs, path: Path) -> str | None:
    try:
        return fs.read(path)
    except OSError:  # not enabled for this cgroup (no such file) or the cgroup just went
        return None
