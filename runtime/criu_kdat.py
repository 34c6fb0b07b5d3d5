"""CRIU's kernel-feature cache (kdat): where it lives, and making sure CRIU can keep it.

Every CRIU run starts by probing the kernel (``kerndat_init``: pagemap, vDSO layout, netns and
socket features, ... forking helpers on the way). That costs ~30-35 ms per run on this project's
machines — paid by the dump *and* the restore *and* the lazy-pages daemon of a migration, all of
it inside the container's pause. CRIU saves the result in ``<RUNDIR>/criu.kdat`` and loads it on
the next run, but only when that directory is on a **tmpfs** (criu/kerndat.c
``kerndat_save_cache``: the file must vanish at reboot, because nothing else marks it stale).
``RUNDIR`` is fixed when CRIU is built (``make RUNDIR=...``; default ``/run``).

Machines whose ``/run`` is not a tmpfs (this project's VMs) never got a cache. ``scripts/setup.sh``
therefore builds CRIU with ``RUNDIR=/run/pymigrate-criu`` and ``ensure_cache_dir`` mounts a small
tmpfs there when the directory is not on one already (after a reboot the mount is gone, the
directory is on the root filesystem again, CRIU refuses to save there, and the next
``ensure_cache_dir`` — setup, the daemon's start, any checkpoint or restore — mounts it again).

One more trap: CRIU writes ``criu.kdat.tmp`` with O_EXCL and renames it; a CRIU killed in between
leaves the ``.tmp`` behind and every later run silently skips saving. ``ensure_cache_dir`` removes
such a leftover when it is older than ``STALE_TMP_S``.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_NAME = "criu.kdat"
TMPFS_MAGIC = 0x01021994
TMPFS_OPTIONS = "size=1m,mode=0700"
STALE_TMP_S = 60.0
_NEEDLE = b"/criu.kdat\x00"

_cache: dict[tuple[str, int], Path | None] = {}


@dataclass(frozen=True)
class KdatStatus:
    """Whether CRIU at ``binary`` can keep its kdat cache, and why not."""

    path: Path | None  # <RUNDIR>/criu.kdat as compiled into the binary (None: not found in it)
    on_tmpfs: bool
    cached: bool  # the cache file exists now
    detail: str

    @property
    def ok(self) -> bool:
        return self.path is not None and self.on_tmpfs

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path) if self.path else None, "on_tmpfs": self.on_tmpfs, "cached": self.cached,
                "detail": self.detail}


def cache_path(binary: str | os.PathLike[str]) -> Path | None:
    """``<RUNDIR>/criu.kdat`` as compiled into the CRIU binary (read from its string table)."""
    try:
        st = os.stat(binary)
    except OSError:
        return None
    key = (str(binary), st.st_mtime_ns)
    if key not in _cache:
        try:
            with open(binary, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                _cache[key] = _find_path(data)
        except (OSError, ValueError):
            return None
    return _cache[key]


def _find_path(data: bytes | mmap.mmap) -> Path | None:
    """The NUL-terminated absolute path ending in ``/criu.kdat`` in a binary's read-only data."""
    end = data.find(_NEEDLE)
    while end >= 0:
        start = data.rfind(b"\x00", 0, end) + 1
        text = bytes(data[start:end])
        if text.startswith(b"/") and all(0x21 <= c <= 0x7E for c in text):
            return Path(text.decode()) / CACHE_NAME
        end = data.find(_NEEDLE, end + 1)
    return None


_statfs: tuple[object, type] | None = None


def _statfs_type(path: Path) -> int | None:
    global _statfs
    import ctypes

    if _statfs is None:

        class _Statfs(ctypes.Structure):  # struct statfs (64-bit Linux: f_type is the first long)
            _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

        _statfs = (ctypes.CDLL(None, use_errno=True).statfs, _Statfs)
    fn, struct_type = _statfs
    buf = struct_type()
    if fn(os.fsencode(path), ctypes.byref(buf)) != 0:  # type: ignore[operator]
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def is_tmpfs(path: Path) -> bool:
    return _statfs_type(path) == TMPFS_MAGIC


def status(binary: str | os.PathLike[str]) -> KdatStatus:
    path = cache_path(binary)
    if path is None:
        return KdatStatus(None, False, False, f"no kdat cache path found in {binary}")
    rundir = path.parent
    if not rundir.is_dir():
        return KdatStatus(path, False, False, f"{rundir} does not exist: criu probes the kernel on every run (~30 ms)")
    if not is_tmpfs(rundir):
        return KdatStatus(path, False, False, f"{rundir} is not on a tmpfs: criu probes the kernel on every run (~30 ms)")
    cached = path.exists()
    return KdatStatus(path, True, cached, f"{path} on tmpfs" + ("" if cached else " (written by the next criu run)"))


def ensure_cache_dir(binary: str | os.PathLike[str]) -> KdatStatus:
    """Make CRIU's kdat directory a tmpfs (mounting one on it when it is empty and not on one, as
    root) and drop a stale ``.tmp`` leftover. A directory in use (``/run`` of a distribution's
    CRIU) is never mounted over. Never raises: a host where this fails only runs CRIU slower."""
    path = cache_path(binary)
    if path is None:
        return status(binary)
    rundir = path.parent
    try:
        rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not is_tmpfs(rundir):
            if any(rundir.iterdir()):  # e.g. a distribution's CRIU with RUNDIR=/run: never hide a used dir
                log.info("criu's kdat dir %s is not on a tmpfs and not empty: leaving it alone", rundir)
                return status(binary)
            from runtime.syscalls import LinuxSyscalls

            LinuxSyscalls().mount("tmpfs", str(rundir), "tmpfs", 0, TMPFS_OPTIONS)
            log.info("mounted a tmpfs on %s for criu's kernel-feature cache", rundir)
        tmp = path.with_name(path.name + ".tmp")
        try:
            age = time.time() - tmp.stat().st_mtime
        except FileNotFoundError:
            age = -1.0
        if age > STALE_TMP_S:
            tmp.unlink(missing_ok=True)
            log.info("removed %s left by an interrupted criu (it blocked the cache)", tmp)
    except OSError as exc:
        log.warning("cannot prepare criu's kdat cache dir %s: %s", rundir, exc)
    return status(binary)


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.criu_kdat [CRIU]``: ensure the cache dir (used by scripts/setup.sh)."""
    import sys

    from runtime.criu_features import criu_binary

    args = sys.argv[1:] if argv is None else argv
    binary = args[0] if args else criu_binary()
    st = ensure_cache_dir(binary)
    print(st.detail)
    return 0 if st.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
