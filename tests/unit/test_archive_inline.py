"""The archive writer packs and hashes small files on its own thread (migrate/archive/writer.py
INLINE_BYTES): no thread pool for a CRIU images dir of small files, the same archive as through
the pools."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from migrate.archive import ArchiveWriter, MemberInfo, read_archive
from migrate.archive._shared import INLINE_BYTES


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_small_files_are_written_without_the_pools_and_read_back_intact(tmp_path: Path, compress: str) -> None:
    small = {f"core-{i}.img": os.urandom(100 * i) + b"x" * (INLINE_BYTES - 100 * i) for i in range(3)}
    for name, data in small.items():
        (tmp_path / name).write_bytes(data)
    buf = io.BytesIO()
    with ArchiveWriter(buf, compress=compress) as w:  # type: ignore[arg-type]
        w.write_manifest({})
        infos = [w.add_file(f"images/{name}", tmp_path / name) for name in small]
        assert w._pool is None and w._hasher is None  # no hand-off to a thread for these
        big = os.urandom(INLINE_BYTES + 1)
        (tmp_path / "pages-1.img").write_bytes(big)
        w.add_file("images/pages-1.img", tmp_path / "pages-1.img")
        assert w._pool is not None  # a larger file still goes through the pools
        w.close()
    assert infos == [MemberInfo(f"images/{n}", "file", len(d), hashlib.sha256(d).hexdigest()) for n, d in small.items()]
    buf.seek(0)
    read_archive(buf, tmp_path / "out")
    for name, data in {**small, "pages-1.img": big}.items():
        assert (tmp_path / "out" / "images" / name).read_bytes() == data

