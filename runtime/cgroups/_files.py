"""cgroupfs file names, the thin file-system wrapper the backends use, and shared helpers.

Every kernel interaction of the backends goes through a ``CgroupFs`` so unit tests can pass a
fake that emulates cgroupfs (interface files appear on mkdir, rmdir of a populated cgroup fails
with EBUSY, cgroup.freeze flips cgroup.events) on a tmp_path tree (tests/fakes/cgroupfs.py).

Kernel facts (Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/*.rst):
- rmdir removes a cgroup directory with its interface files; it fails with EBUSY while the cgroup
  has processes or child cgroups.
- Writing a pid to ``cgroup.procs`` moves the whole thread group; ESRCH if it is gone.
- A task exits its cgroups in do_exit, so an exited-but-unreaped zombie no longer blocks rmdir.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path, PurePosixPath

from runtime.cgroups._interface import Limits
from runtime.errors import CgroupError, InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_PARENT = "pymigrate"

# cgroup2 core and controller files
CGROUP_PROCS = "cgroup.procs"
CGROUP_EVENTS = "cgroup.events"
CGROUP_FREEZE = "cgroup.freeze"
CGROUP_KILL = "cgroup.kill"
CGROUP_CONTROLLERS = "cgroup.controllers"
CGROUP_SUBTREE_CONTROL = "cgroup.subtree_control"
MEMORY_MAX = "memory.max"
MEMORY_CURRENT = "memory.current"
MEMORY_EVENTS = "memory.events"
CPU_MAX = "cpu.max"
CPU_STAT = "cpu.stat"
PIDS_MAX = "pids.max"
PIDS_CURRENT = "pids.current"

# cgroup v1 files
MEMORY_LIMIT_IN_BYTES = "memory.limit_in_bytes"
MEMORY_USAGE_IN_BYTES = "memory.usage_in_bytes"
MEMORY_OOM_CONTROL = "memory.oom_control"
CPU_CFS_QUOTA_US = "cpu.cfs_quota_us"
CPU_CFS_PERIOD_US = "cpu.cfs_period_us"
CPUACCT_USAGE = "cpuacct.usage"
FREEZER_STATE = "freezer.state"

# v1 memory reports "unlimited" as PAGE_COUNTER_MAX * PAGE_SIZE (9223372036854771712 on x86_64).
V1_UNLIMITED_THRESHOLD = 1 << 62


class CgroupFs:
    """The few file-system calls the backends make; one call each, no policy."""

    def read(self, path: Path) -> str:
        return path.read_text()

    def write(self, path: Path, value: str) -> None:
        # cgroupfs takes one value per write(2); open without O_CREAT so a typo is ENOENT.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def subdirs(self, path: Path) -> list[Path]:
        try:
            return [p for p in path.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)

    def attach_device_program(self, directory: Path, insns: bytes) -> None:
        """Load a BPF_PROG_TYPE_CGROUP_DEVICE program and attach it to a cgroup2 directory."""
        from runtime.cgroups import _bpf

        prog_fd = _bpf.load_device_program(insns)
        try:
            _bpf.attach_device_program(directory, prog_fd)
        finally:
            os.close(prog_fd)  # the attachment keeps the program alive


# --- validation ----------------------------------------------------------------------------


def validate_name(name: str) -> str:
    """A container cgroup name is one path component."""
    if (
        not name
        or "/" in name
        or name in (".", "..")
        or "\0" in name
        or len(name.encode()) > 255
        or name.startswith("cgroup.")
    ):
        raise InvalidArgument(f"invalid cgroup name {name!r}: expected one path component without '/'")
    return name


def validate_parent(parent: str | None) -> PurePosixPath:
    """``parent`` is a relative path below our own cgroup, without ``..``."""
    if parent is None:
        return PurePosixPath(DEFAULT_PARENT)
    if not parent or parent.startswith("/"):
        raise InvalidArgument(
            f"invalid cgroup parent {parent!r}: expected a relative path below this process's cgroup"
        )
    parts = [p for p in parent.split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise InvalidArgument(f"invalid cgroup parent {parent!r}: '.' and '..' are not allowed")
        validate_name(p)
    return PurePosixPath(*parts)


def validate_limits(limits: Limits) -> None:
    if limits.memory_bytes is not None and limits.memory_bytes < 4096:
        raise InvalidArgument(f"invalid memory limit {limits.memory_bytes}: expected at least 4096 bytes")
    if not 1000 <= limits.cpu_period_us <= 1_000_000:
        raise InvalidArgument(f"invalid cpu period {limits.cpu_period_us}us: expected 1000..1000000")
    if limits.cpu_quota_us is not None and limits.cpu_quota_us < 1000:
        raise InvalidArgument(f"invalid cpu quota {limits.cpu_quota_us}us: expected at least 1000")
    if limits.pids_max is not None and limits.pids_max < 1:
        raise InvalidArgument(f"invalid pids limit {limits.pids_max}: expected at least 1")


# --- reading and writing -------------------------------------------------------------------


def write(fs: CgroupFs, path: Path, value: str, *, cgroup: str) -> None:
    """Write one value, turning the kernel's refusal into a CgroupError naming file and value."""
    log.debug("cgroup write %s <- %r", path, value)
    try:
        fs.write(path, value)
    except OSError as exc:
        raise CgroupError(
            f"cannot write {value!r} to {path} for cgroup {cgroup}: {os.strerror(exc.errno or 0).lower()}"
        ) from exc


def read_int(fs: CgroupFs, path: Path) -> int | None:
    """An integer file; ``None`` for ``max``, a missing file or an unreadable one."""
    try:
        text = fs.read(path).strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def read_keyed(fs: CgroupFs, path: Path) -> dict[str, int]:
    """A flat-keyed file (``key value`` lines) such as cgroup.events or memory.events."""
    try:
        text = fs.read(path)
    except OSError:
        return {}
    return parse_keyed(text)


def parse_keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def read_procs(fs: CgroupFs, directory: Path) -> list[int]:
    try:
        text = fs.read(directory / CGROUP_PROCS)
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def procs_recursive(fs: CgroupFs, directory: Path) -> set[int]:
    pids = set(read_procs(fs, directory))
    for child in fs.subdirs(directory):
        pids |= procs_recursive(fs, child)
    return pids


# --- tree operations -----------------------------------------------------------------------


def make_dirs(fs: CgroupFs, base: Path, rel: PurePosixPath) -> list[Path]:
    """mkdir each component of ``rel`` below ``base`` (which must exist); return all of them."""
    made = []
    current = base
    for part in rel.parts:
        current = current / part
        if not fs.exists(current):
            log.debug("cgroup mkdir %s", current)
            try:
                fs.mkdir(current)
            except FileExistsError:
                pass  # a concurrent create of the shared parent
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {current}: {os.strerror(exc.errno or 0).lower()}") from exc
        made.append(current)
    return made


def remove_tree(fs: CgroupFs, directory: Path, *, cgroup: str) -> None:
    """rmdir ``directory`` and any child cgroups, deepest first. Missing is fine."""
    for child in fs.subdirs(directory):
        remove_tree(fs, child, cgroup=cgroup)
    log.debug("cgroup rmdir %s", directory)
    try:
        fs.rmdir(directory)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CgroupError(
            f"cannot remove cgroup {cgroup} at {directory}: {os.strerror(exc.errno or 0).lower()}",
            hint="a process may still be inside; see its cgroup.procs",
        ) from exc


def remove_if_empty(fs: CgroupFs, directory: Path) -> bool:
    """rmdir a shared intermediate cgroup; another container may still use it (EBUSY/ENOTEMPTY)."""
    try:
        fs.rmdir(directory)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    log.debug("cgroup rmdir %s (empty parent)", directory)
    return True


def sigkill_until_empty(fs: CgroupFs, dirs: list[Path], *, cgroup: str, timeout_s: float) -> None:
    """SIGKILL every pid in ``dirs`` (recursively) until none is left, bounded by ``timeout_s``.

    Processes forked between reading cgroup.procs and the kill land in the same cgroup and are
    caught by the next round.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        pids: set[int] = set()
        for d in dirs:
            pids |= procs_recursive(fs, d)
        if not pids:
            return
        for pid in sorted(pids):
            try:
                fs.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() >= deadline:
            raise CgroupError(
                f"cgroup {cgroup} still has processes {sorted(pids)} after {timeout_s:g}s of SIGKILL"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_empty(fs: CgroupFs, dirs: list[Path], *, cgroup: str, timeout_s: float) -> None:
    """Wait (bounded) until no pid is left in ``dirs``; raise CgroupError naming them."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        left = {d: procs_recursive(fs, d) for d in dirs}
        left = {d: p for d, p in left.items() if p}
        if not left:
            return
        if time.monotonic() >= deadline:
            what = "; ".join(f"{d}: {sorted(p)}" for d, p in left.items())
            raise CgroupError(f"cgroup {cgroup} still has processes after {timeout_s:g}s: {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
