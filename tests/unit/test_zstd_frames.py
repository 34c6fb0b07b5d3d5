"""A cut .tar.zst is refused as truncated (runtime/zstd_frames.py, tarsafe.open_decompressed): python-
zstandard's stream reader ends quietly where the input ends, so only the frame structure tells."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from runtime.errors import ImageError
from runtime.tarsafe import extract, open_decompressed
from runtime.zstd_frames import ZstdFrameError, ZstdFrames


def _tar(members: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i in range(members):
            data = os.urandom(size)
            info = tarfile.TarInfo(f"m{i}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read_all(data: bytes) -> bytes:
    reader, compression, _ = open_decompressed(io.BytesIO(data))
    assert compression == "zstd"
    out = bytearray()
    while chunk := reader.read(1 << 16):
        out += chunk
    return bytes(out)


def test_a_whole_stream_of_several_frames_and_a_skippable_one_reads_whole() -> None:
    a, b = os.urandom(300_000), b"x" * 500_000
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    c = zstandard.ZstdCompressor(write_checksum=True)
    assert _read_all(c.compress(a) + skippable + c.compress(b)) == a + b


@pytest.mark.parametrize("cut", [7, 1000, 150_000, -5])
def test_a_stream_cut_inside_a_frame_is_eof_error(cut: int) -> None:
    data = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(400_000))
    with pytest.raises(EOFError, match="ends inside a frame"):
        _read_all(data[:cut])


def test_bytes_that_are_no_frame_are_refused() -> None:
    frames = ZstdFrames()
    with pytest.raises(ZstdFrameError, match="not zstd's magic"):
        frames.feed(b"\x28\xb5\x2f\xfe" + b"\0" * 8)


def _cut_at_member_boundary(packed: bytes, members: int) -> bytes:
    """The prefix of ``packed`` whose decompressed bytes are exactly the first ``members`` of 128 KiB
    (random data: level 1 stores each 128 KiB as one raw block of 3 + 131072 bytes)."""
    for header in range(5, 19):
        cut = packed[: header + members * (3 + 131072)]
        out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(cut), read_across_frames=True).read(1 << 22)
        if len(out) == members * 131072:
            return cut
    raise AssertionError("no block boundary found")


def test_extract_refuses_a_tar_zst_cut_where_a_member_ends(tmp_path: Path) -> None:
    """Cut where the decompressed bytes end on a member boundary: tar alone reads the shorter
    archive as whole (a stream's end blocks are optional), so the frame check must catch it."""
    packed = zstandard.ZstdCompressor(level=1).compress(_tar(4, 131072 - 512))
    cut = _cut_at_member_boundary(packed, 2)
    (tmp_path / "out").mkdir()
    with pytest.raises(ImageError, match="truncated"):
        extract(io.BytesIO(cut), tmp_path / "out", source="cut.tar.zst")
