"""A container image with Debian's redis-server: a real server that no one here wrote.

``redis_image_tar(root, out)`` exports the busybox image of state root ``root`` as a tar and
appends ``/usr/bin/redis-server`` (the file the Debian package installed) plus every shared
library ``ldd`` names for it, at the same paths (symlinks resolved to their files, so the
dynamic loader finds them without /etc/ld.so.cache), and a minimal ``/etc/redis.conf``.
``image import`` of the tar gives the same digest on every state root, so a migration target
that lacks the image receives the same one.

Redis runs in the foreground with no persistence (``save ""``, ``appendonly no``): all data lives
in its memory, which is exactly what a migration must carry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

REDIS_SERVER = Path("/usr/bin/redis-server")
REDIS_IMAGE = "redis"
REDIS_PORT = 6379
REDIS_CONF = """\
bind 0.0.0.0
port 6379
protected-mode no
daemonize no
save ""
appendonly no
logfile ""
dir /tmp
"""
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def redis_available() -> bool:
    return REDIS_SERVER.is_file() and shutil.which("ldd") is not None


def shared_libraries(binary: Path) -> list[Path]:
    """The absolute library paths ``ldd`` prints for ``binary`` (the loader included)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True, timeout=30).stdout
    paths = []
    for line in out.splitlines():
        m = _LDD_PATH.search(line)
        if m:
            paths.append(Path(m.group(1)))
    return paths


def _add_dirs(tar: tarfile.TarFile, rel: str, seen: set[str]) -> None:
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d in seen:
            continue
        seen.add(d)
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 0
        tar.addfile(info)


def _add_file(tar: tarfile.TarFile, rel: str, data_path: Path | None, mode: int, seen: set[str], data: bytes | None = None) -> None:
    _add_dirs(tar, rel, seen)
    info = tarfile.TarInfo(rel)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if data is not None:
        import io

        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    assert data_path is not None
    real = Path(os.path.realpath(data_path))
    info.size = real.stat().st_size
    with open(real, "rb") as f:
        tar.addfile(info, f)


def redis_image_tar(root: Path, out: Path, base: str = "busybox") -> Path:
    """busybox image ``base`` of state root ``root`` + redis-server and its libraries, as a tar."""
    from runtime.config import Paths
    from runtime.image_store import ImageStore

    store = ImageStore(Paths(root))
    with open(out, "wb") as f:
        store.export_stream(base, f)
    with tarfile.open(out, "r") as tar:
        seen = {m.name.rstrip("/") for m in tar.getmembers() if m.isdir()}
        existing = {m.name for m in tar.getmembers()}
    with tarfile.open(out, "a", format=tarfile.PAX_FORMAT) as tar:
        _add_file(tar, "usr/bin/redis-server", REDIS_SERVER, 0o755, seen)
        for lib in shared_libraries(REDIS_SERVER):
            rel = str(lib).lstrip("/")
            if rel not in existing:
                _add_file(tar, rel, lib, 0o755, seen)
                existing.add(rel)
        _add_file(tar, "etc/redis.conf", None, 0o644, seen, data=REDIS_CONF.encode())
    return out


def redis_command() -> list[str]:
    return ["/usr/bin/redis-server", "/etc/redis.conf"]
