"""Round trips through the checkpoint archive (migrate.archive): tree fidelity, growing files,
streaming through a pipe, compress="none", manifest and trailer handling. No root needed."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import time
from pathlib import Path

import pytest

import migrate.archive as images
from migrate.errors import ArchiveError
from migrate.archive import FORMAT_VERSION, ArchiveWriter, MemberInfo, read_archive, read_manifest

MiB = 1 << 20


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.pymigrate.probe", b"1")
        os.removexattr(path, "user.pymigrate.probe")
        return True
    except OSError:
        return False


def make_tree(root: Path) -> None:
    """A tree with every kind a non-root user can make."""
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "odd").write_bytes(os.urandom(4 * MiB + 12345))  # crosses a chunk boundary
    (root / "text").write_bytes(b"compressible line\n" * 300_000)  # ~5.4 MB, compresses
    with open(root / "sparse", "wb") as f:  # 64 MiB with two small data islands and a hole at the end
        f.seek(8 * MiB)
        f.write(b"island one" * 1000)
        f.seek(40 * MiB)
        f.write(os.urandom(5 * MiB))
        f.truncate(64 * MiB)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "deep").write_bytes(b"deep\n")
    os.link(root / "small", root / "dir" / "hardlink-to-small")
    os.link(root / "small", root / "hardlink-2")
    os.symlink("../small", root / "dir" / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does-not-exist", root / "dangling")
    os.mkfifo(root / "fifo")
    os.chmod(root / "small", 0o4755)  # setuid
    os.chmod(root / "dir" / "sub", 0o1777)  # sticky
    os.chmod(root / "empty", 0o2640)  # setgid
    if _xattrs_supported(root):
        os.setxattr(root / "dir", "user.overlay.opaque", b"y")
        os.setxattr(root / "text", "user.comment", b"\x00\xffbinary value")
    os.chmod(root / "dir" / "sub" / "deep", 0o400)
    # distinct, ns-precise times; directories last so creating children does not move them
    for i, p in enumerate(sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True)):
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i), follow_symlinks=False)
    os.utime(root, ns=(1_600_000_000_000_000_001, 1_500_000_000_000_000_001))


def _sha256_noatime(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)  # reading must not move the atime we compare
    with open(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def snapshot(root: Path) -> dict[str, dict[str, object]]:
    """Everything the archive must preserve, keyed by relative path (hardlinks as inode groups)."""
    out: dict[str, dict[str, object]] = {}
    inode_names: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if dirpath == os.fspath(root) else [*dirnames, *filenames]:
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            entry: dict[str, object] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": {k: os.getxattr(full, k, follow_symlinks=False) for k in os.listxattr(full, follow_symlinks=False)},
            }
            if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                # (readlink moves a symlink's atime, so this very snapshot would disturb it)
                entry["atime_ns"] = st.st_atime_ns
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["sha256"] = _sha256_noatime(full)
                entry["first_link"] = inode_names.setdefault((st.st_dev, st.st_ino), rel)
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(full)
            out[rel] = entry
    return out


def first_link_canonical(snap: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    # The name that carries the content can differ in walk order; compare the grouping instead.
    groups: dict[object, list[str]] = {}
    for rel, e in snap.items():
        if "first_link" in e:
            groups.setdefault(e["first_link"], []).append(rel)
    canon = {rel: min(g) for g in groups.values() for rel in g}
    return {rel: {**e, "first_link": canon[rel]} if "first_link" in e else e for rel, e in snap.items()}


def write_archive(sink, src: Path, **kwargs) -> images.ArchiveSummary:
    with ArchiveWriter(sink, **kwargs) as w:
        w.write_manifest({"checkpoint_id": "cp-1", "container": {"name": "web-1"}})
        w.add_tree("upper", src)
        return w.close({"dump_stats": {"frozen_ms": 12.5}})


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_tree_round_trip_is_faithful(tmp_path: Path, compress: str) -> None:
    src = tmp_path / "src"
    make_tree(src)
    before = snapshot(src)
    buf = io.BytesIO()
    summary = write_archive(buf, src, compress=compress)
    buf.seek(0)
    dest = tmp_path / "dest"
    manifest = read_archive(buf, dest)

    assert manifest["checkpoint_id"] == "cp-1"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["dump_stats"] == {"frozen_ms": 12.5}
    assert manifest == summary.manifest
    assert first_link_canonical(snapshot(dest / "upper")) == first_link_canonical(before)

    # sparse stays sparse: only the ~5 MiB of data is allocated, not 64 MiB
    st = os.stat(dest / "upper" / "sparse")
    assert st.st_size == 64 * MiB
    assert st.st_blocks * 512 < 8 * MiB
    assert st.st_blocks <= os.stat(src / "sparse").st_blocks + 64
    # hardlinks are one inode again
    assert os.stat(dest / "upper" / "small").st_ino == os.stat(dest / "upper" / "dir" / "hardlink-to-small").st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "upper" / "fifo").st_mode)

    by_name = {m.name: m for m in summary.members}
    assert by_name["upper/text"].sha256 == hashlib.sha256((src / "text").read_bytes()).hexdigest()
    assert by_name["upper/sparse"] == MemberInfo("upper/sparse", "file", 64 * MiB, before["sparse"]["sha256"])
    assert by_name["upper/dir/rel-link"].kind == "symlink"
    assert [m.kind for m in summary.members].count("hardlink") == 2
    assert summary.written_bytes == len(buf.getvalue())
    if compress == "zstd":
        assert summary.written_bytes < summary.raw_bytes  # the text file compressed
    else:
        assert summary.written_bytes > summary.raw_bytes  # headers only


def test_add_file_returns_sha256_and_extracts_flat(tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 7)
    (tmp_path / "pages-1.img").write_bytes(data)
    (tmp_path / "core-1.img").write_bytes(b"core")
    buf = io.BytesIO()
    with ArchiveWriter(buf, threads=1) as w:
        w.write_manifest({})
        info = w.add_file("images/pages-1.img", tmp_path / "pages-1.img")
        w.add_file("images/core-1.img", tmp_path / "core-1.img")
        summary = w.close()
    assert info == MemberInfo("images/pages-1.img", "file", len(data), hashlib.sha256(data).hexdigest())
    assert summary.members[1].name == "images/core-1.img"
    buf.seek(0)
    read_archive(buf, tmp_path / "out")
    assert (tmp_path / "out" / "images" / "pages-1.img").read_bytes() == data
    assert (tmp_path / "out" / "images" / "core-1.img").read_bytes() == b"core"


def test_add_file_follows_a_growing_file_until_the_producer_is_done(tmp_path: Path) -> None:
    path = tmp_path / "pages-1.img"
    done = threading.Event()
    written = hashlib.sha256()
    total = 0

    def producer() -> None:
        # CRIU-like: the file appears late, then grows in uneven pieces with pauses.
        nonlocal total
        time.sleep(0.05)
        with open(path, "wb", buffering=0) as f:
            for i in range(40):
                piece = os.urandom(137_000 + i * 50_000)
                f.write(piece)
                written.update(piece)
                total += len(piece)
                time.sleep(0.005 if i % 7 else 0.05)
        done.set()

    t = threading.Thread(target=producer)
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({})
        t.start()
        info = w.add_file("images/pages-1.img", path, growing=lambda: not done.is_set())
        w.close()
    t.join()
    assert info.size_bytes == total
    assert info.sha256 == written.hexdigest()
    buf.seek(0)
    read_archive(buf, tmp_path / "out")
    assert hashlib.sha256((tmp_path / "out" / "images" / "pages-1.img").read_bytes()).hexdigest() == written.hexdigest()


def test_add_file_that_never_appears_raises_and_the_writer_goes_on(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({})
        deadline = time.monotonic() + 0.05
        with pytest.raises(FileNotFoundError):
            w.add_file("images/x.img", tmp_path / "x.img", growing=lambda: time.monotonic() < deadline)
        (tmp_path / "x.img").write_bytes(b"late")
        w.add_file("images/x.img", tmp_path / "x.img")  # nothing was written: name and stream still usable
    buf.seek(0)
    read_archive(buf, tmp_path / "out")
    assert (tmp_path / "out" / "images" / "x.img").read_bytes() == b"late"


class _BrokenSink:
    def __init__(self, fail_after: int) -> None:
        self.left = fail_after

    def write(self, data: bytes) -> int:
        if self.left <= 0:
            raise BrokenPipeError("peer went away")
        self.left -= 1
        return len(data)


def test_a_sink_failure_mid_member_fails_the_writer(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(10 * MiB))
    w = ArchiveWriter(_BrokenSink(fail_after=5))  # type: ignore[arg-type]
    w.write_manifest({})
    with pytest.raises(BrokenPipeError):
        w.add_file("images/f.img", tmp_path / "f")
    with pytest.raises(ValueError, match="failed"):
        w.close()


def test_streams_through_a_pipe_without_seeking(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    r, w = os.pipe()
    result: dict[str, object] = {}

    def reader() -> None:
        with open(r, "rb", buffering=0) as source:  # raw pipe: short reads, not seekable
            result["manifest"] = read_archive(source, tmp_path / "dest", progress=lambda n: result.update(progress=n))

    t = threading.Thread(target=reader)
    t.start()
    with open(w, "wb", buffering=0) as sink:
        summary = write_archive(sink, src)
    t.join(timeout=60)
    assert result["manifest"] == summary.manifest
    assert result["progress"] == summary.written_bytes
    assert first_link_canonical(snapshot(tmp_path / "dest" / "upper")) == first_link_canonical(snapshot(src))


class _ReadOnlySource:
    """A source with only read(n), returning at most 1000 bytes: like a chunked network stream."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._data.read(min(n, 1000))


def test_source_without_readinto_and_short_reads(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(5 * MiB))
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"a": 1})
        w.add_file("images/f.img", tmp_path / "f")
    read_archive(_ReadOnlySource(buf.getvalue()), tmp_path / "out")  # type: ignore[arg-type]
    assert (tmp_path / "out" / "images" / "f.img").read_bytes() == (tmp_path / "f").read_bytes()


def test_read_manifest_reads_only_the_head(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(MiB))
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"criu_version": "4.1.1", "kernel": "6.18"})
        w.add_file("images/f.img", tmp_path / "f")
    data = buf.getvalue()
    archive = tmp_path / "cp.pmc"
    archive.write_bytes(data[:200])  # the rest is gone: the head is still readable
    manifest = read_manifest(archive)
    assert manifest["criu_version"] == "4.1.1"
    assert manifest["format_version"] == FORMAT_VERSION
    assert "created_at" in manifest


def test_writer_misuse_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    w = ArchiveWriter(io.BytesIO())
    with pytest.raises(ValueError, match="write_manifest"):
        w.add_file("images/f.img", tmp_path / "f")
    w.write_manifest({})
    with pytest.raises(ValueError):
        w.write_manifest({})
    with pytest.raises(ValueError, match="invalid archive member name"):
        w.add_file("../f", tmp_path / "f")
    w.add_file("images/f.img", tmp_path / "f")
    with pytest.raises(ValueError, match="duplicate"):
        w.add_file("images/f.img", tmp_path / "f")
    with pytest.raises(ValueError, match="format_version"):
        w.close({"format_version": 9})
    with pytest.raises(ValueError, match="compression"):
        ArchiveWriter(io.BytesIO(), compress="gzip")  # type: ignore[arg-type]


def test_exception_in_the_writer_leaves_a_truncated_archive(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(MiB))
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with ArchiveWriter(buf) as w:
            w.write_manifest({})
            w.add_file("images/f.img", tmp_path / "f")
            raise RuntimeError("dump failed")
    buf.seek(0)
    with pytest.raises(ArchiveError, match="truncated archive"):
        read_archive(buf, tmp_path / "out")


def test_dest_must_be_empty(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "junk").write_bytes(b"")
    buf.seek(0)
    with pytest.raises(ArchiveError, match="not empty"):
        read_archive(buf, tmp_path / "out")


def test_public_names() -> None:
    assert set(images.__all__) >= {
        "FORMAT_VERSION",
        "MAGIC",
        "MemberInfo",
        "ArchiveSummary",
        "ArchiveWriter",
        "read_archive",
        "read_manifest",
    }
    assert images.FORMAT_VERSION == 1
