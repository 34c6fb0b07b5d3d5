"""What this host's CRIU says that cannot change before a reboot or a new binary, asked once.

``criu --version`` (~4-9 ms) and ``criu cpuinfo dump`` (~10-30 ms: CRIU starts, loads its kernel
facts, reads cpuid) ran in every checkpoint, restore pre-flight and migration, and always
answered the same. Their answers are kept beside CRIU's own kernel-feature cache, in its RUNDIR
(runtime/criu_kdat.py), and only when that is a tmpfs: a reboot empties it, as it does for
criu.kdat. The key names the boot (``/proc/sys/kernel/random/boot_id``) and the binary (inode,
mtime, size), so a rebuilt CRIU or a directory that survived a reboot is asked again. The
directory is root's (0700, made by ``ensure_cache_dir``), entries are written 0600 and renamed
into place: a reader sees a whole answer or none.

Anything unexpected (no tmpfs, no binary, a short read) means "not cached": the caller asks CRIU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _dir(binary: str) -> Path | None:
    from runtime.criu_kdat import cache_path, is_tmpfs

    path = cache_path(binary)
    if path is None or not is_tmpfs(path.parent):
        return None
    return path.parent


def _key(binary: str) -> str | None:
    try:
        st = os.stat(binary)
        boot = BOOT_ID.read_text().strip()
    except OSError:
        return None
    return f"{boot}-{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


def get(binary: str, name: str) -> bytes | None:
    """The kept answer ``name`` of ``binary`` in this boot, or None."""
    directory, key = _dir(binary), _key(binary)
    if directory is None or key is None:
        return None
    try:
        return (directory / f"pymigrate-{name}-{key}").read_bytes()
    except OSError:
        return None


def put(binary: str, name: str, data: bytes) -> None:
    """Keep ``data`` as ``binary``'s answer ``name`` for this boot (quietly nothing without a tmpfs)."""
    directory, key = _dir(binary), _key(binary)
    if directory is None or key is None:
        return
    path = directory / f"pymigrate-{name}-{key}"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:  # a cache: the next caller asks CRIU again
        log.debug("cannot keep %s of %s in %s: %s", name, binary, directory, exc)
        tmp.unlink(missing_ok=True)
