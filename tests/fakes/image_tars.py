"""Crafted tarballs for the image store tests: good trees and each kind of bad member.

Built in memory with ``tarfile`` so no binary test data is stored in the repository.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | fifo | chr | blk
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    linkname: str = ""


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
}


def make_tar(members: list[Member], *, mtime_shift: int = 0) -> bytes:
    """A plain PAX tar with exactly these members, in this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = _TYPES[m.kind]
            ti.mode = m.mode
            ti.uid, ti.gid = m.uid, m.gid
            ti.mtime = m.mtime + mtime_shift
            ti.linkname = m.linkname
            if m.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = 1, 3
            if m.kind == "file":
                ti.size = len(m.data)
                tar.addfile(ti, io.BytesIO(m.data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "none":
        return data
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    raise ValueError(how)


def sample_tree() -> list[Member]:
    """A small rootfs-like tree using every allowed member type."""
    return [
        Member(".", "dir", mode=0o755),
        Member("bin", "dir", mode=0o755),
        Member("bin/busybox", data=b"\x7fELF fake busybox\n", mode=0o755),
        Member("bin/sh", "symlink", linkname="/bin/busybox"),
        Member("bin/ls", "symlink", linkname="busybox"),
        Member("bin/su", data=b"setuid thing\n", mode=0o4755),
        Member("etc", "dir", mode=0o755),
        Member("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        Member("etc/hostname", data=b"box\n"),
        Member("etc/hostname.link", "hardlink", linkname="etc/hostname"),
        Member("home", "dir", mode=0o755),
        Member("home/user", "dir", mode=0o750, uid=1000, gid=1000),
        Member("home/user/notes", data=b"hello\n", mode=0o600, uid=1000, gid=1000),
        Member("tmp", "dir", mode=0o1777),
        Member("usr/lib/deep/file", data=b"implicit parents\n"),
        Member("usr/bin/up", "symlink", linkname="../../bin/busybox"),
        Member("run/fifo", "fifo", mode=0o600),
        Member("empty", data=b""),
    ]


def layer(entries: list[tuple[str, str | None]]) -> bytes:
    """An image layer tar (PAX): (name, content) files; content None makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            ti = tarfile.TarInfo(name)
            if content is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            else:
                data = content.encode()
                ti.size, ti.mode = len(data), 0o644
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()
