"""ImageStore: imports (plain/gzip/zstd), canonical digests, export, names, remove semantics."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from runtime.config import Paths
from runtime.errors import ImageError, ImageNotFound, InvalidArgument, Unsupported
from runtime.image_store import Image, ImageStore, tree_digest, validate_name
from tests.fakes.image_tars import Member, compress, make_tar, sample_tree

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(Paths(tmp_path / "root"))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def image_dirs(store: ImageStore) -> list[str]:
    return sorted(p.name for p in store.images_dir.iterdir() if p.is_dir())


# --- imports and digests -------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_import_each_compression_gives_the_same_digest(store: ImageStore, tmp_path: Path, how: str) -> None:
    plain = make_tar(sample_tree())
    reference = ImageStore(Paths(tmp_path / "ref")).import_tarball("ref", write(tmp_path, "ref.tar", plain))
    # a misleading file name: detection goes by magic bytes
    img = store.import_tarball("sample", write(tmp_path, "sample.tar.bz2", compress(plain, how)))
    assert img.digest == reference.digest
    assert img.digest.startswith("sha256:") and len(img.digest) == 7 + 64
    assert img.rootfs == store.images_dir / img.digest[7:] / "rootfs"
    assert (img.rootfs / "etc/passwd").read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
    assert store.get("sample") == img
    assert list((store.paths.tmp).iterdir()) == []


def test_mtimes_do_not_change_the_digest_but_content_and_modes_do(store: ImageStore, tmp_path: Path) -> None:
    base = store.import_tarball("a", write(tmp_path, "a.tar", make_tar(sample_tree())))
    later = store.import_tarball("b", write(tmp_path, "b.tar", compress(make_tar(sample_tree(), mtime_shift=12345), "zstd")))
    assert later.digest == base.digest
    changed = [m if m.name != "etc/hostname" else Member("etc/hostname", data=b"other\n") for m in sample_tree()]
    assert store.import_tarball("c", write(tmp_path, "c.tar", make_tar(changed))).digest != base.digest
    chmod = [m if m.name != "etc/passwd" else Member("etc/passwd", data=m.data, mode=0o600) for m in sample_tree()]
    assert store.import_tarball("d", write(tmp_path, "d.tar", make_tar(chmod))).digest != base.digest
    relink = [m if m.name != "bin/sh" else Member("bin/sh", "symlink", linkname="busybox") for m in sample_tree()]
    assert store.import_tarball("e", write(tmp_path, "e.tar", make_tar(relink))).digest != base.digest
    # member order in the archive does not matter
    shuffled = sample_tree()
    shuffled = shuffled[:1] + list(reversed(shuffled[1:6])) + shuffled[6:]
    assert store.import_tarball("f", write(tmp_path, "f.tar", make_tar(shuffled))).digest == base.digest


@pytest.mark.skipif(not AS_ROOT, reason="ownership is only restored as root")
def test_ownership_is_part_of_the_digest(store: ImageStore, tmp_path: Path) -> None:
    base = store.import_tarball("a", write(tmp_path, "a.tar", make_tar(sample_tree())))
    owned = [m if m.name != "etc/passwd" else Member("etc/passwd", data=m.data, uid=7) for m in sample_tree()]
    assert store.import_tarball("b", write(tmp_path, "b.tar", make_tar(owned))).digest != base.digest


def test_metadata_is_preserved(store: ImageStore, tmp_path: Path) -> None:
    img = store.import_tarball("s", write(tmp_path, "s.tar", make_tar(sample_tree())))
    r = img.rootfs
    assert stat.S_IMODE(os.lstat(r / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(r / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(r / "home/user").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(r).st_mode) == 0o755
    assert os.readlink(r / "bin/sh") == "/bin/busybox"
    assert stat.S_ISFIFO(os.lstat(r / "run/fifo").st_mode)
    assert os.lstat(r / "etc/hostname").st_ino == os.lstat(r / "etc/hostname.link").st_ino
    assert os.lstat(r / "etc/passwd").st_mtime == 1_700_000_000
    assert os.lstat(r / "home/user").st_mtime == 1_700_000_000  # set after its children
    assert stat.S_IMODE(os.lstat(r / "usr/lib/deep").st_mode) == 0o755  # implicit parent
    if AS_ROOT:
        assert (os.lstat(r / "home/user/notes").st_uid, os.lstat(r / "home/user").st_gid) == (1000, 1000)
        assert os.lstat(r / "bin/sh").st_uid == 0
    # the image dir is private to root: host users cannot reach setuid files inside it
    assert stat.S_IMODE(os.lstat(r.parent).st_mode) == 0o700


def test_import_stream_reads_a_non_seekable_stream(store: ImageStore) -> None:
    data = compress(make_tar(sample_tree()), "zstd")

    class OneWay(io.RawIOBase):
        def __init__(self) -> None:
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            chunk = self.buf.read(min(len(b), 777))  # short reads too
            b[: len(chunk)] = chunk
            return len(chunk)

        def seekable(self) -> bool:
            return False

    img = store.import_stream("streamed", OneWay())  # type: ignore[arg-type]
    assert (img.rootfs / "home/user/notes").read_bytes() == b"hello\n"


def test_export_stream_reimports_to_the_same_digest(store: ImageStore, tmp_path: Path) -> None:
    img = store.import_tarball("s", write(tmp_path, "s.tar", make_tar(sample_tree())))
    sink = io.BytesIO()
    store.export_stream("s", sink)
    other = ImageStore(Paths(tmp_path / "other"))
    again = other.import_stream("copy", io.BytesIO(sink.getvalue()))
    assert again.digest == img.digest
    assert tree_digest(again.rootfs) == (img.digest, img.size_bytes)
    # by digest, and compressed on the way
    import zstandard

    sink2 = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(sink2, closefd=False) as z:
        store.export_stream(img.digest, z)  # type: ignore[arg-type]
    third = ImageStore(Paths(tmp_path / "third")).import_stream("z", io.BytesIO(sink2.getvalue()), expected_digest=img.digest)
    assert third.digest == img.digest
    # export is itself deterministic
    sink3 = io.BytesIO()
    other.export_stream("copy", sink3)
    assert sink3.getvalue() == sink.getvalue()


def test_same_digest_is_reused_and_only_tagged(store: ImageStore, tmp_path: Path) -> None:
    tar = write(tmp_path, "s.tar", make_tar(sample_tree()))
    a = store.import_tarball("a", tar)
    b = store.import_tarball("b:v2", tar)
    assert a.digest == b.digest and a.rootfs == b.rootfs
    assert image_dirs(store) == [a.digest[7:]]
    assert [i.name for i in store.list()] == ["a", "b:v2"]
    assert list(store.paths.tmp.iterdir()) == []


def test_size_counts_hardlinked_content_once(store: ImageStore, tmp_path: Path) -> None:
    members = [Member("a", data=b"x" * 1000), Member("b", "hardlink", linkname="a"), Member("c", data=b"yy")]
    img = store.import_tarball("s", write(tmp_path, "s.tar", make_tar(members)))
    assert img.size_bytes == 1002


@pytest.mark.skipif(not AS_ROOT, reason="the pinned digest has uid/gid 0 entries")
def test_digest_format_is_pinned(store: ImageStore, tmp_path: Path) -> None:
    """Other hosts compare digests: the canonical format must not change by accident."""
    members = [
        Member(".", "dir", mode=0o755),
        Member("bin", "dir", mode=0o755),
        Member("bin/sh", "symlink", linkname="/bin/busybox"),
        Member("etc", "dir", mode=0o755),
        Member("etc/hostname", data=b"box\n", mode=0o644),
        Member("tmp", "dir", mode=0o1777),
    ]
    img = store.import_tarball("pinned", write(tmp_path, "p.tar", make_tar(members)))
    assert img.digest == PINNED_DIGEST


PINNED_DIGEST = "sha256:9751ea33b76a1f84b05587d2fa78da31704014fd65e07f9fbe45524c7d1db92d"


def test_expected_digest(store: ImageStore, tmp_path: Path) -> None:
    tar = write(tmp_path, "s.tar", make_tar(sample_tree()))
    digest = ImageStore(Paths(tmp_path / "probe")).import_tarball("p", tar).digest
    with pytest.raises(ImageError, match=r"digest is sha256:[0-9a-f]{64}, expected sha256:0{64}"):
        store.import_tarball("s", tar, expected_digest="sha256:" + "0" * 64)
    assert image_dirs(store) == [] and list(store.paths.tmp.iterdir()) == []
    assert not store.index_path.exists()
    assert store.import_tarball("s", tar, expected_digest=digest).digest == digest
    with pytest.raises(InvalidArgument, match="invalid image digest"):
        store.import_tarball("s", tar, expected_digest="md5:abc")


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["busybox", "a", "a.b-c_d", "web:v1.2", "x:Latest", "0" * 128, "n:" + "t" * 128])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Busybox", "-x", ".x", "_x", "a/b", "a b", "a:b:c", "a:", "a:-x", "0" * 129, "n:" + "t" * 129, "../x", "a\n"]
)
def test_bad_names_are_refused(store: ImageStore, tmp_path: Path, name: str) -> None:
    tar = write(tmp_path, "s.tar", make_tar(sample_tree()))
    with pytest.raises(InvalidArgument, match="invalid image name"):
        store.import_tarball(name, tar)
    with pytest.raises(InvalidArgument):
        store.remove(name)
    assert image_dirs(store) == []


# --- get / list / remove -------------------------------------------------------------------------


def test_get_by_name_and_digest(store: ImageStore, tmp_path: Path) -> None:
    img = store.import_tarball("b", write(tmp_path, "s.tar", make_tar(sample_tree())))
    store.import_tarball("a", write(tmp_path, "s.tar", make_tar(sample_tree())))
    by_digest = store.get(img.digest)
    assert by_digest.digest == img.digest and by_digest.name == "a"  # first name that refers to it
    assert store.has_digest(img.digest)
    assert not store.has_digest("sha256:" + "1" * 64)
    with pytest.raises(ImageNotFound, match="no such image: nope"):
        store.get("nope")
    with pytest.raises(ImageNotFound):
        store.get("sha256:" + "1" * 64)
    with pytest.raises(InvalidArgument):
        store.get("sha256:xyz")
    with pytest.raises(InvalidArgument):
        store.has_digest("abc")


def test_list_is_sorted_and_returns_images(store: ImageStore, tmp_path: Path) -> None:
    assert store.list() == []
    tar = write(tmp_path, "s.tar", make_tar(sample_tree()))
    store.import_tarball("zeta", tar)
    store.import_tarball("alpha", tar)
    images = store.list()
    assert [i.name for i in images] == ["alpha", "zeta"]
    assert all(isinstance(i, Image) and i.size_bytes > 0 and i.created_at > 0 for i in images)
    index = json.loads(store.index_path.read_text())
    assert index["version"] == 1 and set(index["images"]) == {"alpha", "zeta"}


def test_remove_drops_rootfs_with_the_last_name(store: ImageStore, tmp_path: Path) -> None:
    tar = write(tmp_path, "s.tar", make_tar(sample_tree()))
    a = store.import_tarball("a", tar)
    store.import_tarball("b", tar)
    store.remove("a")
    assert store.has_digest(a.digest) and a.rootfs.is_dir()
    with pytest.raises(ImageNotFound):
        store.get("a")
    store.remove("b")
    assert not store.has_digest(a.digest)
    assert image_dirs(store) == [] and list(store.paths.tmp.iterdir()) == []
    with pytest.raises(ImageNotFound, match="no such image: b"):
        store.remove("b")


def test_remove_refuses_a_rootfs_in_use(tmp_path: Path) -> None:
    used: set[str] = set()
    store = ImageStore(Paths(tmp_path / "root"), in_use=lambda d: d in used)
    img = store.import_tarball("a", write(tmp_path, "s.tar", make_tar(sample_tree())))
    used.add(img.digest)
    with pytest.raises(ImageError, match=r"cannot remove image a: its rootfs sha256:\w+ is in use") as err:
        store.remove("a")
    assert err.value.hint
    assert store.get("a") == img and img.rootfs.is_dir()
    used.clear()
    store.remove("a")
    assert not img.rootfs.exists()


def test_retagging_a_name_drops_the_unreferenced_old_rootfs(store: ImageStore, tmp_path: Path) -> None:
    old = store.import_tarball("web", write(tmp_path, "a.tar", make_tar(sample_tree())))
    new = store.import_tarball("web", write(tmp_path, "b.tar", make_tar([Member("x", data=b"1")])))
    assert new.digest != old.digest
    assert store.get("web").digest == new.digest
    assert not old.rootfs.exists()
    assert image_dirs(store) == [new.digest[7:]]


def test_retagging_keeps_an_old_rootfs_in_use(tmp_path: Path) -> None:
    used: set[str] = set()
    store = ImageStore(Paths(tmp_path / "root"), in_use=lambda d: d in used)
    old = store.import_tarball("web", write(tmp_path, "a.tar", make_tar(sample_tree())))
    used.add(old.digest)
    store.import_tarball("web", write(tmp_path, "b.tar", make_tar([Member("x", data=b"1")])))
    assert store.has_digest(old.digest)
    assert store.get(old.digest).name == old.digest  # unnamed, still reachable by digest
    assert [i.name for i in store.list()] == ["web"]


def test_a_corrupt_index_is_reported(store: ImageStore) -> None:
    store.index_path.write_text("{not json")
    with pytest.raises(ImageError, match="image index .* is not valid json"):
        store.list()


# --- busybox ------------------------------------------------------------------------------------


def test_build_busybox_without_busybox_is_unsupported(store: ImageStore, tmp_path: Path) -> None:
    with pytest.raises(Unsupported, match="not found") as err:
        store.build_busybox(busybox=tmp_path / "no-busybox")
    assert err.value.hint == "apt-get install busybox-static"
    assert image_dirs(store) == []


def test_build_busybox_refuses_a_dynamic_busybox(store: ImageStore, tmp_path: Path) -> None:
    dynamic = Path("/bin/true")  # coreutils' is dynamically linked on Debian
    if not dynamic.exists():
        pytest.skip("no /bin/true")
    with pytest.raises(Unsupported, match="not a statically linked executable") as err:
        store.build_busybox(busybox=dynamic)
    assert err.value.hint == "apt-get install busybox-static"


def test_build_busybox_bad_name(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument):
        store.build_busybox("Bad Name")


def test_concurrent_imports_keep_every_name(store: ImageStore, tmp_path: Path) -> None:
    """index.json updates are serialised by the flock (each open() is its own lock owner)."""
    from concurrent.futures import ThreadPoolExecutor

    tars = [write(tmp_path, f"{i}.tar", make_tar(sample_tree(), mtime_shift=i)) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda i: store.import_tarball(f"n{i}", tars[i]), range(6)))
    assert {r.digest for r in results} == {results[0].digest}
    assert [i.name for i in store.list()] == [f"n{i}" for i in range(6)]
    assert image_dirs(store) == [results[0].digest[7:]]
    assert list(store.paths.tmp.iterdir()) == []
