"""Bad tarballs: each kind of unsafe member is refused by name, and the store is left unchanged."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import ImageError, UnsafeArchive
from runtime.image_store import ImageStore
from runtime.tarsafe import NOT_A_TAR, NotATarArchive
from tests.fakes.image_tars import Member, compress, make_tar, sample_tree

OK = [Member("etc", "dir", mode=0o755), Member("etc/passwd", data=b"root\n")]

# (test id, members, the member the error must name, words the reason must contain)
BAD = [
    ("absolute-path", OK + [Member("/etc/shadow", data=b"x")], "/etc/shadow", "absolute path"),
    ("dotdot", OK + [Member("etc/../../escape", data=b"x")], "etc/../../escape", "'..' component"),
    ("dotdot-leading", [Member("../escape", data=b"x")], "../escape", "'..' component"),
    ("hardlink-outside", OK + [Member("etc/h", "hardlink", linkname="../outside")], "etc/h", "outside the archive"),
    ("hardlink-absolute", OK + [Member("etc/h", "hardlink", linkname="/etc/passwd")], "etc/h", "outside the archive"),
    ("hardlink-not-yet", [Member("a", "hardlink", linkname="b"), Member("b", data=b"x")], "a", "not in the archive before it"),
    ("hardlink-to-dir", OK + [Member("h", "hardlink", linkname="etc")], "h", "is a directory"),
    ("symlink-escapes", OK + [Member("etc/up", "symlink", linkname="../../etc/shadow")], "etc/up", "escapes the image root"),
    ("symlink-escapes-deep", OK + [Member("a/b/c", "symlink", linkname="../x/../../../y")], "a/b/c", "escapes the image root"),
    (
        "through-absolute-symlink",
        OK + [Member("lnk", "symlink", linkname="/etc"), Member("lnk/evil", data=b"x")],
        "lnk/evil",
        "goes through the symlink 'lnk'",
    ),
    (
        "through-relative-symlink",
        OK + [Member("lnk", "symlink", linkname="etc"), Member("lnk/sub/evil", data=b"x")],
        "lnk/sub/evil",
        "goes through the symlink 'lnk'",
    ),
    (
        "hardlink-through-symlink",
        OK + [Member("lnk", "symlink", linkname="etc"), Member("h", "hardlink", linkname="lnk/passwd")],
        "h",
        "goes through the symlink 'lnk'",
    ),
    (
        "through-a-file",
        OK + [Member("etc/passwd/x", data=b"x")],
        "etc/passwd/x",
        "not a directory",
    ),
    ("char-device", OK + [Member("dev/null", "chr")], "dev/null", "device nodes"),
    ("block-device", OK + [Member("dev/sda", "blk")], "dev/sda", "device nodes"),
    ("symlink-empty", [Member("x", "symlink", linkname="")], "x", "empty target"),
    ("root-not-dir", [Member(".", data=b"x")], ".", "not a directory"),
    ("replace-dir-with-file", OK + [Member("etc", data=b"x")], "etc", "would replace a directory"),
    ("replace-dir-with-symlink", OK + [Member("etc", "symlink", linkname="/")], "etc", "would replace a directory"),
]


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(Paths(tmp_path / "root"))
    # an image already present: a refused import must not disturb it
    s.import_tarball("present", _write(tmp_path, "present.tar", make_tar(sample_tree())))
    return s


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _snapshot(store: ImageStore) -> tuple[list[str], bytes, list[str]]:
    return (
        sorted(p.name for p in store.images_dir.iterdir()),
        store.index_path.read_bytes(),
        sorted(p.name for p in store.paths.tmp.iterdir()),
    )


@pytest.mark.parametrize("how", ["none", "zstd"])
@pytest.mark.parametrize(("members", "member", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_member_is_refused_by_name(
    store: ImageStore, tmp_path: Path, members: list[Member], member: str, reason: str, how: str
) -> None:
    before = _snapshot(store)
    assert before[2] == []
    tar = _write(tmp_path, "bad.tar", compress(make_tar(members), how))
    with pytest.raises(UnsafeArchive) as err:
        store.import_tarball("bad", tar)
    assert err.value.member == member
    assert reason in err.value.reason
    assert str(err.value).startswith(f"refusing archive member {member!r}: ")
    assert _snapshot(store) == before  # no new image dir, index untouched, nothing left in tmp/


def test_nothing_is_written_outside_the_root(store: ImageStore, tmp_path: Path) -> None:
    """A symlink to an outside directory followed by a file 'through' it never writes there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [Member("lnk", "symlink", linkname=str(outside)), Member("lnk/planted", data=b"x")]
    with pytest.raises(UnsafeArchive, match="goes through the symlink"):
        store.import_tarball("bad", _write(tmp_path, "bad.tar", make_tar(members)))
    assert list(outside.iterdir()) == []


def test_a_file_replacing_a_symlink_does_not_write_through_it(store: ImageStore, tmp_path: Path) -> None:
    """tar -r style duplicates replace the earlier member; the old symlink is unlinked, not followed."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"original\n")
    members = [Member("x", "symlink", linkname=str(victim)), Member("x", data=b"replaced\n")]
    img = store.import_tarball("dup", _write(tmp_path, "dup.tar", make_tar(members)))
    assert victim.read_bytes() == b"original\n"
    assert not (img.rootfs / "x").is_symlink() and (img.rootfs / "x").read_bytes() == b"replaced\n"


def test_allowed_links(store: ImageStore, tmp_path: Path) -> None:
    members = [
        Member("bin/busybox", data=b"bb", mode=0o755),
        Member("bin/sh", "symlink", linkname="/bin/busybox"),  # absolute: resolves inside the container
        Member("usr/bin/env", "symlink", linkname="../../bin/busybox"),  # relative, stays inside
        Member("lib", "symlink", linkname="usr/lib"),
        Member("dangling", "symlink", linkname="does/not/exist"),
        Member("root-link", "symlink", linkname=".."),  # from the root's own directory? no: see below
    ]
    with pytest.raises(UnsafeArchive, match="escapes the image root"):
        store.import_tarball("links", _write(tmp_path, "l.tar", make_tar(members)))
    img = store.import_tarball("links", _write(tmp_path, "l.tar", make_tar(members[:-1] + [Member("d/up", "symlink", linkname="..")])))
    assert os.readlink(img.rootfs / "bin/sh") == "/bin/busybox"
    assert os.readlink(img.rootfs / "d/up") == ".."


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"", "empty.tar"),
        (b"hello, this is not a tar archive\n" * 10, "text.tar"),
        (os.urandom(4096), "random.tar.zst"),
        (compress(b"plain text, gzip'd\n" * 100, "gzip"), "text.tar.gz"),
        (compress(b"plain text, zstd'd\n" * 100, "zstd"), "text.tar.zst"),
        (b"\xfd7zXZ\x00" + b"\x00" * 600, "xz.tar.xz"),
    ],
    ids=["empty", "text", "random", "gzip-text", "zstd-text", "xz"],
)
def test_not_a_tar_archive(store: ImageStore, tmp_path: Path, data: bytes, name: str) -> None:
    before = _snapshot(store)
    path = _write(tmp_path, name, data)
    with pytest.raises(NotATarArchive) as err:
        store.import_tarball("junk", path)
    assert isinstance(err.value, UnsafeArchive)
    assert str(err.value) == f"refusing {path}: {NOT_A_TAR}"
    assert _snapshot(store) == before


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_truncated_archive(store: ImageStore, tmp_path: Path, how: str) -> None:
    big = [Member("a", data=os.urandom(200_000)), Member("b", data=os.urandom(200_000))]
    data = compress(make_tar(big), how)
    before = _snapshot(store)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        store.import_tarball("cut", _write(tmp_path, "cut.tar", data[: len(data) // 2]))
    assert _snapshot(store) == before


def test_corrupt_zstd_in_the_middle(store: ImageStore, tmp_path: Path) -> None:
    import zstandard

    tar = make_tar([Member("a", data=os.urandom(300_000))])
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(tar))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    before = _snapshot(store)
    with pytest.raises(ImageError, match="corrupt"):
        store.import_stream("bad", io.BytesIO(bytes(data)))
    assert _snapshot(store) == before


def test_missing_tarball_is_an_oserror_naming_the_path(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        store.import_tarball("x", tmp_path / "nope.tar")


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_bad_checksum_after_the_tar_end_is_caught(store: ImageStore, tmp_path: Path, how: str) -> None:
    """gzip's CRC32 and zstd's content checksum trail the data: the whole stream is read and checked."""
    import zstandard

    tar = make_tar(sample_tree())
    data = bytearray(compress(tar, "gzip") if how == "gzip" else zstandard.ZstdCompressor(write_checksum=True).compress(tar))
    data[-6 if how == "gzip" else -2] ^= 0xFF  # inside gzip's CRC32 / zstd's checksum
    before = _snapshot(store)
    with pytest.raises(ImageError, match="corrupt"):
        store.import_stream("bad", io.BytesIO(bytes(data)))
    assert _snapshot(store) == before


def test_unusual_member_type_is_refused(store: ImageStore, tmp_path: Path) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        ti = tarfile.TarInfo("volume-label")
        ti.type = b"V"  # a GNU volume header: not part of a filesystem tree
        tar.addfile(ti)
    before = _snapshot(store)
    with pytest.raises(UnsafeArchive, match="unsupported member type") as err:
        store.import_tarball("odd", _write(tmp_path, "odd.tar", buf.getvalue()))
    assert err.value.member == "volume-label"
    assert _snapshot(store) == before
