"""Untrusted archives and tarballs (docs/security.md): each attack of issue 11 is refused with a
typed error before it touches anything outside the extraction dir, within a bounded time.

The end-to-end versions (restore --import, UploadCheckpoint, a peer's PushCheckpoint to a real
daemon) are in tests/integration/test_trust_archives.py; these pin the reader's rules."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from migrate.archive.members import CHECKPOINT_MEMBERS, CRIU_IMAGE_NAME, check_member
from migrate.errors import ArchiveError, ArchiveLimitExceeded, UnsafeMember
from migrate.archive import ArchiveWriter, read_archive
from runtime import tarsafe
from runtime.errors import ImageError, ImageLimitExceeded, InvalidArgument, UnsafeArchive
from runtime.extract_limits import ENV_LIMITS, ExtractLimits, current_limits, parse_limits
from runtime.fstree import remove_tree, remove_tree_quietly
from tests.fakes import hostile_archives as ha

GiB = 1 << 30
# top-level regular-file members (the upper layer as an image): a symlink there is refused too
FILE_MEMBERS = [rule.top for rule in CHECKPOINT_MEMBERS if rule.top_kinds == {"file"}]


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """An extraction dir with a canary beside it: nothing may appear next to ``dest`` or change it."""
    (tmp_path / "canary").write_text("keep")
    return tmp_path


def extract(box: Path, data: bytes, limits: ExtractLimits | None = None) -> dict:
    return read_archive(io.BytesIO(data), box / "dest", limits=limits or ExtractLimits())


def assert_contained(box: Path) -> None:
    assert sorted(p.name for p in box.iterdir()) in (["canary"], ["canary", "dest"])
    assert (box / "canary").read_text() == "keep"


# -- the member whitelist -----------------------------------------------------------------------


@pytest.mark.parametrize("member", ["images/cpuinfo-check.log", "images/restore.log", "images/stats-restore",
                                    "images/inventory.img", "images/parent",
                                    *FILE_MEMBERS])
def test_a_symlink_outside_upper_is_refused(box: Path, member: str) -> None:
    with pytest.raises(UnsafeMember, match="symlink") as err:
        extract(box, ha.symlink_archive(member, str(box / "canary")))
    assert err.value.member == member
    assert_contained(box)


@pytest.mark.parametrize(("member", "kind", "extra"), [
    ("images/core-1.img", "hardlink", {"target": "images/inventory.img"}),
    ("images/pipe.img", "fifo", {}),
    ("images/null.img", "char", {"rdev": [1, 3]}),
    ("images/sub", "dir", {}),
    ("images/sub/core-1.img", "file", {}),
    ("images/cpuinfo-check.log", "file", {}),
    ("images/restore.log", "file", {}),
    ("images/../x.img", "file", {}),
    ("work/restore.log", "file", {}),
    ("criu-work", "dir", {}),
    ("images", "symlink", {"target": "/etc"}),
    ("upper", "file", {}),
])
def test_only_whitelisted_members(box: Path, member: str, kind: str, extra: dict) -> None:
    with pytest.raises(UnsafeMember):
        extract(box, ha.kind_archive(member, kind, **extra))
    assert_contained(box)


def test_every_name_a_real_dump_writes_is_allowed() -> None:
    # The images dir of a real CRIU 4.1.1 dump of a busybox container (listed from a dump made by
    # tests/integration/test_trust_archives.py, which checks this against a fresh dump too).
    real = ("cgroup.img core-1.img cpuinfo-dump.log cpuinfo.img dump.log fdinfo-2.img files.img fs-1.img ids-1.img "
            "inventory.img ipcns-var-11.img mm-1.img mountpoints-13.img netns-10.img pagemap-1.img pages-1.img pstree.img "
            "seccomp.img stats-dump timens-0.img tmpfs-dev-73.tar.gz.img tmpfs-dev-75.tar.gz.img utsns-12.img")
    for name in real.split() + ["irmap-cache", "ghost-file-1a.img", "pages-shmem-123.img"]:
        assert CRIU_IMAGE_NAME.fullmatch(name), name
        check_member(f"images/{name}", "file")


# -- limits -------------------------------------------------------------------------------------


def test_a_deep_tree_is_refused_by_the_depth_limit(box: Path) -> None:
    data = ha.deep_archive(1500)  # deeper than Python's recursion limit (what broke shutil.rmtree)
    with pytest.raises(ArchiveLimitExceeded) as err:
        extract(box, data)
    assert (err.value.limit, err.value.value) == ("max_depth", 256)
    assert "max_depth=256" in str(err.value) and ENV_LIMITS in (err.value.hint or "")
    remove_tree(box / "dest")
    assert_contained(box)


def test_a_huge_claimed_hole_is_refused_before_hashing(box: Path) -> None:
    data = ha.hole_archive(1 << 62)
    assert len(data) < 2000
    started = time.monotonic()
    with pytest.raises(ArchiveLimitExceeded) as err:
        extract(box, data)
    assert time.monotonic() - started < 2.0
    assert err.value.limit == "max_member_bytes"
    with pytest.raises(ArchiveLimitExceeded) as err:
        extract(box / "2", ha.hole_archive(20 * GiB)) if (box / "2").mkdir() is None else None
    assert err.value.limit == "max_hole_bytes"


def test_a_zip_bomb_is_refused_by_the_total_limit(box: Path) -> None:
    data = ha.bomb_archive(48 << 20, chunk_bytes=16 << 20)
    assert len(data) < 8_000
    with pytest.raises(ArchiveLimitExceeded) as err:
        extract(box, data, ExtractLimits(max_total_bytes=32 << 20))
    assert err.value.limit == "max_total_bytes"
    assert_contained(box)


def test_member_count_and_name_length_limits(box: Path) -> None:
    with pytest.raises(ArchiveLimitExceeded, match="max_members=3"):
        extract(box, ha.deep_archive(5), ExtractLimits(max_members=3))
    remove_tree(box / "dest")
    long_name = "images/" + "a" * 250 + ".img"
    with pytest.raises(ArchiveLimitExceeded, match="max_name_bytes=100"):
        extract(box, ha.kind_archive(long_name, "file"), ExtractLimits(max_name_bytes=100))
    remove_tree(box / "dest")
    with pytest.raises(UnsafeMember, match="255"):
        extract(box, ha.kind_archive("upper/" + "b" * 300, "file"))


def test_limits_come_from_one_place() -> None:
    assert parse_limits("max_total_bytes=2T, max_depth=512") == ExtractLimits(max_total_bytes=2 << 40, max_depth=512)
    assert parse_limits("max_hole_bytes=64GiB").max_hole_bytes == 64 * GiB
    for bad in ("max_depth", "nope=1", "max_depth=-1", "max_depth=x"):
        with pytest.raises(ValueError):
            parse_limits(bad)


def test_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LIMITS, "max_members=10")
    assert current_limits().max_members == 10
    monkeypatch.setenv(ENV_LIMITS, "max_members=ten")
    with pytest.raises(InvalidArgument, match=ENV_LIMITS):
        current_limits()


# -- typed errors for crafted fields ------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(ha.crafted_entries()))
def test_crafted_fields_end_in_a_typed_error(box: Path, case: str) -> None:
    with pytest.raises(ArchiveError) as err:
        extract(box, ha.crafted_entries()[case], None)
    assert "unexpected" not in str(err.value), err.value  # not the safety net: a real check
    assert_contained(box)


def test_the_trailer_cannot_set_the_format_version(box: Path) -> None:
    with pytest.raises(ArchiveError, match="format_version"):
        extract(box, ha.trailer_version_archive())


def test_no_space_left_is_a_typed_error(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("migrate.archive.reader.os.pwrite", full)
    with pytest.raises(ArchiveError, match="No space left") as err:
        extract(box, ha.kind_archive("images/core-1.img", "file"))
    assert "space" in (err.value.hint or "")


def test_a_genuine_archive_still_round_trips(box: Path) -> None:
    src = box / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "pages-1.img").write_bytes(os.urandom(5000))
    (src / "upper" / "a" / "b").mkdir(parents=True)
    os.symlink("/etc/passwd", src / "upper" / "a" / "abs-link")  # fine inside the upper layer
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"kind": ha.CHECKPOINT_KIND})
        w.add_tree("upper", src / "upper")
        w.add_file("images/pages-1.img", src / "images" / "pages-1.img")
    read_archive(io.BytesIO(buf.getvalue()), box / "dest")
    assert (box / "dest" / "images" / "pages-1.img").read_bytes() == (src / "images" / "pages-1.img").read_bytes()
    assert os.readlink(box / "dest" / "upper" / "a" / "abs-link") == "/etc/passwd"


# -- image tarballs -----------------------------------------------------------------------------


def tar_extract(box: Path, data: bytes, limits: ExtractLimits | None = None) -> tarsafe.ExtractStats:
    (box / "dest").mkdir(exist_ok=True)
    return tarsafe.extract(io.BytesIO(data), box / "dest", source="test.tar", limits=limits or ExtractLimits())


def test_a_deep_tar_is_refused(box: Path) -> None:
    with pytest.raises(ImageLimitExceeded) as err:
        tar_extract(box, ha.deep_tar(3000))
    assert err.value.limit == "max_depth"
    tarsafe.rmtree(box / "dest")
    assert_contained(box)


def test_a_sparse_tar_stays_sparse_and_counts_its_holes(box: Path) -> None:
    data = ha.sparse_tar(256 << 20)
    assert len(data) < 12_000
    stats = tar_extract(box, data)
    out = box / "dest" / "sparse"
    assert out.stat().st_size == 256 << 20
    assert out.stat().st_blocks * 512 <= 2 << 20, "the hole was written out"
    assert stats.bytes_written <= 2 << 20
    remove_tree(box / "dest")
    with pytest.raises(ImageLimitExceeded) as err:
        tar_extract(box, data, ExtractLimits(max_hole_bytes=128 << 20))
    assert err.value.limit == "max_hole_bytes"
    remove_tree(box / "dest")
    with pytest.raises(ImageLimitExceeded) as err:
        tar_extract(box, data, ExtractLimits(max_member_bytes=128 << 20))
    assert err.value.limit == "max_member_bytes"


def test_a_huge_pax_header_is_refused_before_reading_it(box: Path) -> None:
    data = ha.zstd(ha.pax_header_tar(8 * GiB))
    with pytest.raises(ImageError, match="extended header"):
        tar_extract(box, data)


def test_crafted_tar_headers_end_in_image_errors(box: Path) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"mtime": "1e300", "uid": "99999999999"}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchive):
        tar_extract(box, buf.getvalue())


def test_zeros_after_the_tar_end_are_bounded(box: Path) -> None:
    data = ha.zstd(ha.deep_tar(2) + bytes(80 << 20))
    with pytest.raises(UnsafeArchive, match="after the end"):
        tar_extract(box, data)


# -- removal of input trees ---------------------------------------------------------------------


def test_remove_tree_handles_any_depth_and_never_follows_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    top = tmp_path / "tree"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(1100):  # deeper than Python's recursion limit, and longer than PATH_MAX as one path
            os.mkdir("dddd", dir_fd=fd)
            if i % 300 == 0:
                os.symlink(str(victim), "link", dir_fd=fd)
            nfd = os.open("dddd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.fchmod(fd, 0o500)  # a read-only directory at the bottom
    finally:
        os.close(fd)
    remove_tree(top)
    assert not top.exists()
    assert (victim / "keep").read_text() == "keep"
    assert remove_tree_quietly(top) is True  # already gone: fine


def test_a_local_images_dir_with_a_symlink_is_refused(tmp_path: Path) -> None:
    from migrate.archive.members import check_images_dir

    images = tmp_path / "images"
    images.mkdir()
    (images / "inventory.img").write_bytes(b"x")
    (images / "cpuinfo-check.log").write_text("left by an older restore")  # a regular file: fine
    check_images_dir(images)
    os.symlink("/etc/shadow", images / "cpuinfo.img")
    with pytest.raises(UnsafeMember, match="not a regular file"):
        check_images_dir(images)
