"""The archive reader refuses what it must: corruption (attributed to the member being read),
truncation, other format versions, and crafted members that would escape or misuse ``dest``.

Bad archives are made by ``Crafter``, a test-only writer that emits records verbatim and
checks nothing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from migrate.archive import format as fmt
from migrate.errors import ArchiveError, ChecksumMismatch, FormatVersionError, UnsafeMember
from migrate.archive import FORMAT_VERSION, MAGIC, ArchiveWriter, read_archive, read_manifest

MiB = 1 << 20


class Crafter:
    """Writes archive records exactly as told: no name checks, no member bookkeeping."""

    def __init__(self, *, version: int = FORMAT_VERSION, magic: bytes = MAGIC) -> None:
        self.out = io.BytesIO()
        self.out.write(struct.pack("<8sI", magic, version))
        self.members: list[dict[str, Any]] = []

    def record(self, kind: int, payload: bytes, *, raw_len: int | None = None, offset: int = 0, flags: int = 0) -> None:
        raw = len(payload) if raw_len is None else raw_len
        self.out.write(fmt.pack_record_header(kind, flags, len(payload), raw, offset, zlib.crc32(payload)))
        self.out.write(payload)

    def json(self, kind: int, obj: dict[str, Any]) -> None:
        self.record(kind, fmt.encode_json(obj))

    def manifest(self, **fields: Any) -> Crafter:
        self.json(fmt.REC_MANIFEST, {"format_version": FORMAT_VERSION, **fields})
        return self

    def entry(self, name: str, kind: str, **extra: Any) -> Crafter:
        meta = {"name": name, "kind": kind, "mode": 0o644, "uid": os.getuid(), "gid": os.getgid(), "atime_ns": 0, "mtime_ns": 0}
        self.json(fmt.REC_ENTRY, {**meta, **extra})
        self.members.append({"name": name, "kind": kind, "size_bytes": 0, "sha256": None})
        return self

    def file(self, name: str, data: bytes) -> Crafter:
        import hashlib

        self.entry(name, "file")
        self.record(fmt.REC_DATA, data)
        digest = hashlib.sha256(data).hexdigest()
        self.json(fmt.REC_END, {"size_bytes": len(data), "sha256": digest})
        self.members[-1].update(size_bytes=len(data), sha256=digest)
        return self

    def trailer(self, **extra: Any) -> Crafter:
        self.json(fmt.REC_TRAILER, {"members": self.members, "trailer": extra})
        return self

    def source(self) -> io.BytesIO:
        return io.BytesIO(self.out.getvalue())


def real_archive(tmp_path: Path, compress: str = "zstd") -> tuple[bytes, dict[str, tuple[int, int]]]:
    """An archive of three members and, per file member, the byte range of its stored data."""
    (tmp_path / "a.img").write_bytes(b"first member " * 1000)
    (tmp_path / "pages-1.img").write_bytes(os.urandom(6 * MiB))  # stored raw (incompressible)
    (tmp_path / "text.img").write_bytes(b"compressible pages " * 400_000)  # zstd frames
    buf = io.BytesIO()
    with ArchiveWriter(buf, compress=compress) as w:
        w.write_manifest({"checkpoint_id": "cp"})
        for name in ("a.img", "pages-1.img", "text.img"):
            w.add_file(f"images/{name}", tmp_path / name)
    data = buf.getvalue()
    return data, member_ranges(data)


def member_ranges(data: bytes) -> dict[str, tuple[int, int]]:
    """Walk the records: {member name: (first data byte, last data byte + 1)}."""
    ranges: dict[str, tuple[int, int]] = {}
    pos = fmt.STREAM_HEADER.size
    current = None
    while pos < len(data):
        kind, _flags, stored, _raw, _off, _crc = fmt.unpack_record_header(data[pos : pos + fmt.RECORD_HEADER_SIZE])  # type: ignore[misc]
        body = pos + fmt.RECORD_HEADER_SIZE
        if kind == fmt.REC_ENTRY:
            current = fmt.decode_json(data[body : body + stored])["name"]
        elif kind == fmt.REC_DATA:
            start, _ = ranges.get(current, (body, 0))
            ranges[current] = (start, body + stored)
        pos = body + stored
    return ranges


def flip(data: bytes, at: int) -> io.BytesIO:
    b = bytearray(data)
    b[at] ^= 0x10
    return io.BytesIO(bytes(b))


# -- corruption ----------------------------------------------------------------------------


@pytest.mark.parametrize("compress", ["zstd", "none"])
@pytest.mark.parametrize("member", ["images/a.img", "images/pages-1.img", "images/text.img"])
def test_flipped_bit_in_member_data_names_the_member(tmp_path: Path, compress: str, member: str) -> None:
    data, ranges = real_archive(tmp_path, compress)
    start, end = ranges[member]
    with pytest.raises(ArchiveError) as info:
        read_archive(flip(data, (start + end) // 2), tmp_path / "out")
    assert member in str(info.value)


def test_flipped_bit_anywhere_is_detected(tmp_path: Path) -> None:
    data, _ = real_archive(tmp_path)
    for i, at in enumerate(range(3, len(data), len(data) // 97)):
        with pytest.raises(ArchiveError):
            read_archive(flip(data, at), tmp_path / f"out{i}")


def test_corrupt_zstd_frame_is_reported_as_corrupt_compressed_data(tmp_path: Path) -> None:
    payload = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(b"x" * 100_000)
    bad = bytearray(payload)
    bad[len(bad) // 2] ^= 0xFF  # crc32 computed over the bad frame: only zstd can notice
    c = Crafter().manifest()
    c.entry("images/x.img", "file")
    c.record(fmt.REC_DATA, bytes(bad), raw_len=100_000, flags=fmt.FLAG_ZSTD)
    with pytest.raises(ArchiveError, match=r"member images/x.img .*(decompress|zstd)"):
        read_archive(c.source(), tmp_path / "out")


def test_content_not_matching_sha256_is_a_checksum_mismatch(tmp_path: Path) -> None:
    c = Crafter().manifest()
    c.entry("images/x.img", "file")
    c.record(fmt.REC_DATA, b"actual content")
    c.json(fmt.REC_END, {"size_bytes": 14, "sha256": "0" * 64})
    with pytest.raises(ChecksumMismatch) as info:
        read_archive(c.source(), tmp_path / "out")
    assert info.value.member == "images/x.img"


def test_trailer_must_list_the_members_read(tmp_path: Path) -> None:
    c = Crafter().manifest().file("images/a.img", b"a").file("images/b.img", b"b")
    c.members.pop()
    c.trailer()
    with pytest.raises(ArchiveError, match="trailer member list"):
        read_archive(c.source(), tmp_path / "out")


def test_data_after_the_trailer_is_refused(tmp_path: Path) -> None:
    c = Crafter().manifest().file("images/a.img", b"a").trailer()
    c.out.write(b"junk")
    with pytest.raises(ArchiveError, match="after the trailer"):
        read_archive(c.source(), tmp_path / "out")


def test_huge_length_fields_are_refused_before_allocating(tmp_path: Path) -> None:
    c = Crafter().manifest()
    c.entry("images/a.img", "file")
    c.out.write(fmt.pack_record_header(fmt.REC_DATA, 0, 1 << 31, 1 << 31, 0, 0))
    with pytest.raises(ArchiveError, match="implausible"):
        read_archive(c.source(), tmp_path / "out")


def test_zstd_frame_claiming_another_size_is_refused(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor(level=1).compress(b"y" * 5000)
    c = Crafter().manifest()
    c.entry("images/a.img", "file")
    c.record(fmt.REC_DATA, frame, raw_len=10, flags=fmt.FLAG_ZSTD)
    with pytest.raises(ArchiveError, match="images/a.img"):
        read_archive(c.source(), tmp_path / "out")


# -- truncation ----------------------------------------------------------------------------


def test_truncation_anywhere_is_a_truncated_archive(tmp_path: Path) -> None:
    data, ranges = real_archive(tmp_path)
    cuts = {0, 5, 12, 13, 40, ranges["images/a.img"][0] - 1, len(data) - 1, len(data) - 30}
    cuts |= {(s + e) // 2 for s, e in ranges.values()}
    cuts |= {e for _, e in ranges.values()}  # record boundaries
    cuts |= set(range(0, len(data), len(data) // 23))
    for i, cut in enumerate(sorted(cuts)):
        with pytest.raises(ArchiveError, match="truncated archive"):
            read_archive(io.BytesIO(data[:cut]), tmp_path / f"out{i}")
    read_archive(io.BytesIO(data), tmp_path / "whole")  # and the whole thing is fine


def test_read_manifest_of_a_cut_head_is_truncated(tmp_path: Path) -> None:
    data, _ = real_archive(tmp_path)
    (tmp_path / "cut").write_bytes(data[:20])
    with pytest.raises(ArchiveError, match="truncated archive"):
        read_manifest(tmp_path / "cut")


# -- versions ------------------------------------------------------------------------------


def test_other_stream_version_is_refused(tmp_path: Path) -> None:
    c = Crafter(version=2).manifest().trailer()
    with pytest.raises(FormatVersionError) as info:
        read_archive(c.source(), tmp_path / "out")
    assert info.value.found == 2
    (tmp_path / "v2").write_bytes(c.out.getvalue())
    with pytest.raises(FormatVersionError):
        read_manifest(tmp_path / "v2")


def test_other_manifest_version_is_refused(tmp_path: Path) -> None:
    c = Crafter()
    c.json(fmt.REC_MANIFEST, {"format_version": 7})
    with pytest.raises(FormatVersionError):
        read_archive(c.trailer().source(), tmp_path / "out")


def test_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a pymigrate checkpoint archive"):
        read_archive(io.BytesIO(b"\x28\xb5\x2f\xfd" + bytes(100)), tmp_path / "out")


# -- unsafe members ------------------------------------------------------------------------


def unsafe(tmp_path: Path, c: Crafter, **kwargs: Any) -> UnsafeMember:
    with pytest.raises(UnsafeMember) as info:
        read_archive(c.trailer().source(), tmp_path / "out", **kwargs)
    return info.value


def test_absolute_name_is_refused(tmp_path: Path) -> None:
    err = unsafe(tmp_path, Crafter().manifest().file(str(tmp_path / "evil"), b"x"))
    assert err.member == str(tmp_path / "evil")
    assert "absolute" in err.reason
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("name", ["../evil", "upper/../../evil", "upper/a/.."])
def test_dotdot_is_refused(tmp_path: Path, name: str) -> None:
    err = unsafe(tmp_path, Crafter().manifest().file(name, b"x"))
    assert err.member == name and ".." in err.reason
    assert not (tmp_path / "evil").exists()


def test_path_through_an_extracted_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    c = Crafter().manifest().entry("upper/link", "symlink", target="/", mode=0o777)
    c.file("upper/link/" + str(tmp_path / "outside" / "evil").lstrip("/"), b"x")
    err = unsafe(tmp_path, c)
    assert "symlink upper/link" in err.reason
    assert not (tmp_path / "outside" / "evil").exists()


def test_path_through_a_file_is_refused(tmp_path: Path) -> None:
    c = Crafter().manifest().file("upper/f", b"x").file("upper/f/g", b"y")
    assert "not a directory" in unsafe(tmp_path, c).reason


@pytest.mark.parametrize("target", ["../../etc", "../..", "a/../../..", "../upper/../../x"])
def test_escaping_relative_symlink_is_refused(tmp_path: Path, target: str) -> None:
    err = unsafe(tmp_path, Crafter().manifest().entry("upper/l", "symlink", target=target))
    assert err.member == "upper/l" and "escapes" in err.reason


def test_symlinks_that_stay_inside_or_are_absolute_are_fine(tmp_path: Path) -> None:
    c = Crafter().manifest()
    c.entry("upper/a", "symlink", target="../images/x")
    c.entry("upper/b", "symlink", target="/etc/shadow")  # resolves inside the container root
    c.entry("upper/c", "symlink", target="./d/../e")
    read_archive(c.trailer().source(), tmp_path / "out")
    assert os.readlink(tmp_path / "out" / "upper" / "b") == "/etc/shadow"


@pytest.mark.parametrize("target", ["/etc/passwd", "../x", "upper/later", "upper/dir"])
def test_hardlink_to_anything_not_extracted_before_is_refused(tmp_path: Path, target: str) -> None:
    c = Crafter().manifest().entry("upper/dir", "dir", mode=0o755)
    c.entry("upper/h", "hardlink", target=target)
    c.file("upper/later", b"x")
    err = unsafe(tmp_path, c)
    assert err.member == "upper/h" and "hardlink" in err.reason


def test_hardlink_to_an_earlier_member_works(tmp_path: Path) -> None:
    c = Crafter().manifest().file("upper/f", b"content").entry("upper/h", "hardlink", target="upper/f")
    read_archive(c.trailer().source(), tmp_path / "out")
    assert os.stat(tmp_path / "out" / "upper" / "h").st_ino == os.stat(tmp_path / "out" / "upper" / "f").st_ino


@pytest.mark.parametrize("kind", ["char", "block"])
def test_device_node_without_allow_devices_is_refused(tmp_path: Path, kind: str) -> None:
    err = unsafe(tmp_path, Crafter().manifest().entry("upper/dev/sda", kind, rdev=[8, 0]))
    assert err.member == "upper/dev/sda" and "allow_devices" in err.reason
    assert not (tmp_path / "out" / "upper" / "dev" / "sda").exists()


def test_duplicate_and_unknown_members_are_refused(tmp_path: Path) -> None:
    assert "duplicate" in unsafe(tmp_path, Crafter().manifest().file("upper/f", b"1").file("upper/f", b"2")).reason
    assert "unknown member kind" in unsafe(tmp_path / "x", Crafter().manifest().entry("upper/q", "door")).reason


def test_entry_without_required_fields_is_malformed(tmp_path: Path) -> None:
    c = Crafter().manifest()
    c.json(fmt.REC_ENTRY, {"name": "upper/f", "kind": "fifo"})
    with pytest.raises(ArchiveError, match="upper/f"):
        read_archive(c.trailer().source(), tmp_path / "out")
