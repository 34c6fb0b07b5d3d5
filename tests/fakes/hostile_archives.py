"""Hostile inputs, built the way an attacker would: checkpoint archives and image tarballs.

``Crafter`` writes archive records verbatim (valid framing and crc32s, nothing else checked), so
each builder below makes exactly one attack from docs/security.md and issue 11:

- ``symlink_archive``: an absolute symlink under a member name CRIU later opens for writing
  (``images/cpuinfo-check.log``, ``images/restore.log``, ...);
- ``deep_archive`` / ``deep_tar``: thousands of nested directories in ~10 KB;
- ``hole_archive``: a member claiming a huge size it never sends (the reader would hash zeros);
- ``bomb_archive``: zstd frames of zeros that expand ~30,000 times;
- ``sparse_tar``: a pax 1.0 sparse member of a few bytes claiming gigabytes;
- ``pax_header_tar``: an extended header claiming to be huge;
- ``crafted_entries``: field values that used to escape as OverflowError/AttributeError/RecursionError.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zlib
from typing import Any

import zstandard

from migrate.archive import format as fmt

FORMAT_VERSION = fmt.FORMAT_VERSION
CHECKPOINT_KIND = "pymigrate-checkpoint"


class Crafter:
    """Writes archive records exactly as told: no name checks, no member bookkeeping beyond the
    trailer's member list (which ``members`` holds and a test may change)."""

    def __init__(self, *, version: int = FORMAT_VERSION) -> None:
        self.out = io.BytesIO()
        self.out.write(struct.pack("<8sI", fmt.MAGIC, version))
        self.members: list[dict[str, Any]] = []

    def record(self, kind: int, payload: bytes, *, raw_len: int | None = None, offset: int = 0, flags: int = 0) -> Crafter:
        raw = len(payload) if raw_len is None else raw_len
        self.out.write(fmt.pack_record_header(kind, flags, len(payload), raw, offset, zlib.crc32(payload)))
        self.out.write(payload)
        return self

    def json(self, kind: int, obj: Any) -> Crafter:
        return self.record(kind, json.dumps(obj, separators=(",", ":")).encode("ascii"))

    def manifest(self, **fields: Any) -> Crafter:
        return self.json(fmt.REC_MANIFEST, {"format_version": FORMAT_VERSION, "kind": CHECKPOINT_KIND, **fields})

    def entry(self, name: str, kind: str, **extra: Any) -> Crafter:
        meta = {"name": name, "kind": kind, "mode": 0o644, "uid": 0, "gid": 0, "atime_ns": 0, "mtime_ns": 0}
        self.json(fmt.REC_ENTRY, {**meta, **extra})
        self.members.append({"name": name, "kind": kind, "size_bytes": 0, "sha256": None})
        return self

    def file(self, name: str, data: bytes, **extra: Any) -> Crafter:
        self.entry(name, "file", **extra)
        if data:
            self.record(fmt.REC_DATA, data)
        return self.end(len(data), hashlib.sha256(data).hexdigest())

    def end(self, size: int, digest: str) -> Crafter:
        self.json(fmt.REC_END, {"size_bytes": size, "sha256": digest})
        self.members[-1].update(size_bytes=size, sha256=digest)
        return self

    def zstd_data(self, raw: bytes, offset: int) -> Crafter:
        frame = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(raw)
        return self.record(fmt.REC_DATA, frame, raw_len=len(raw), offset=offset, flags=fmt.FLAG_ZSTD)

    def trailer(self, **extra: Any) -> Crafter:
        return self.json(fmt.REC_TRAILER, {"members": self.members, "trailer": extra})

    def getvalue(self) -> bytes:
        return self.out.getvalue()


def genuine_head(c: Crafter | None = None) -> Crafter:
    """A manifest and the few images a real dump always has (names only; content is junk)."""
    c = c or Crafter()
    return c.manifest(checkpoint_id="0123456789abcdef01234567").file("images/inventory.img", b"inventory").file(
        "images/cpuinfo.img", b"cpuinfo"
    )


def symlink_archive(member: str, target: str) -> bytes:
    """``member`` is an absolute symlink to ``target`` (the 822-byte host-file overwrite)."""
    c = genuine_head()
    extra: dict[str, Any] = {"target": target}
    return c.entry(member, "symlink", mode=0o777, **extra).trailer().getvalue()


def kind_archive(member: str, kind: str, **extra: Any) -> bytes:
    """One member of ``kind`` (hardlink, fifo, char, dir, ...) where the whitelist allows none."""
    c = genuine_head()
    if kind == "file":
        c.file(member, b"x")
    else:
        c.entry(member, kind, **extra)
    return c.trailer().getvalue()


def deep_archive(depth: int) -> bytes:
    """``upper/d/d/.../d`` ``depth`` directories deep: ~4 bytes of path per level."""
    c = genuine_head()
    name = "upper"
    c.entry(name, "dir", mode=0o755)
    for _ in range(depth):
        name += "/d"
        c.entry(name, "dir", mode=0o755)
    return c.trailer().getvalue()


def hole_archive(claimed_bytes: int, member: str = "images/pages-1.img") -> bytes:
    """A member that sends nothing and claims ``claimed_bytes``: its sha256 would need that many
    zeros hashed (the 519-byte archive that burned a core for hours)."""
    return genuine_head().entry(member, "file").end(claimed_bytes, "0" * 64).trailer().getvalue()


def bomb_archive(expanded_bytes: int, chunk_bytes: int = 64 << 20, member: str = "images/pages-1.img") -> bytes:
    """zstd frames of zeros: ~2 KB per 64 MiB chunk, ``expanded_bytes`` in all, correct sha256."""
    c = genuine_head().entry(member, "file")
    zeros = bytes(chunk_bytes)
    h = hashlib.sha256()
    offset = 0
    while offset < expanded_bytes:
        n = min(chunk_bytes, expanded_bytes - offset)
        c.zstd_data(zeros[:n], offset)
        h.update(zeros[:n])
        offset += n
    return c.end(expanded_bytes, h.hexdigest()).trailer().getvalue()


def trailer_version_archive() -> bytes:
    """A trailer that tries to change the manifest's format_version."""
    return genuine_head().trailer(format_version=2).getvalue()


def crafted_entries() -> dict[str, bytes]:
    """Entries whose field values used to escape as untyped exceptions ("internal error")."""
    cases: dict[str, Any] = {
        "huge-rdev": ("upper/dev", "char", {"rdev": [1 << 70, 1]}),
        "huge-mtime": ("upper/f", "fifo", {"mtime_ns": 1 << 80}),
        "float-mode": ("upper/f", "fifo", {"mode": 420.5}),
        "xattrs-list": ("upper/f", "fifo", {"xattrs": ["user.a"]}),
        "xattr-not-base64": ("upper/f", "fifo", {"xattrs": {"user.a": "***"}}),
        "negative-uid": ("upper/f", "fifo", {"uid": -1}),
        "surrogate-name": ("upper/\ud800", "fifo", {}),
        "symlink-target-int": ("upper/l", "symlink", {"target": 7}),
        "hardlink-target-list": ("upper/h", "hardlink", {"target": ["upper"]}),
    }
    out = {}
    for key, (name, kind, extra) in cases.items():
        c = genuine_head().entry("upper", "dir", mode=0o755)
        c.entry(name, kind, **extra)
        out[key] = c.trailer().getvalue()
    nested = genuine_head()
    nested.record(fmt.REC_ENTRY, b"[" * 100_000 + b"]" * 100_000)
    out["nested-json"] = nested.trailer().getvalue()
    return out


# --- image tarballs ------------------------------------------------------------------------------


def deep_tar(depth: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        name = "d"
        for _ in range(depth):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
            name += "/d"
    return buf.getvalue()


def sparse_tar(real_size: int, data: bytes = b"tail", name: str = "sparse") -> bytes:
    """A GNU pax 1.0 sparse member: ``data`` at the end of ``real_size`` bytes, the rest a hole
    (what ``tar --sparse`` writes for a mostly empty file)."""
    sparse_map = f"1\n{real_size - len(data)}\n{len(data)}\n".encode()
    sparse_map += b"\0" * (-len(sparse_map) % 512)
    payload = sparse_map + data
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.size = len(payload)
    info.mode = 0o644
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(real_size),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def file_tar(name: str, size: int) -> bytes:
    """One regular member of ``size`` zero bytes (compresses to almost nothing)."""
    buf = io.BytesIO()
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644

    class Zeros(io.RawIOBase):
        def readinto(self, b: Any) -> int:
            view = memoryview(b)
            view[:] = bytes(len(view))
            return len(view)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, Zeros())
    return buf.getvalue()


def pax_header_tar(claimed_bytes: int) -> bytes:
    """An extended ('x') header whose size field claims ``claimed_bytes``, then end of data."""
    header = bytearray(512)
    header[0:9] = b"PaxHeader"
    header[100:108] = b"0000644\0"
    header[124:136] = f"{claimed_bytes:011o}\0".encode() if claimed_bytes < 8**11 else b"\x80" + claimed_bytes.to_bytes(11, "big")
    header[136:148] = b"00000000000\0"
    header[156:157] = b"x"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header) + bytes(1024)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)
