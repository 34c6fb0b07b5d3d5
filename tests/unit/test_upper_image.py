"""The upper-layer image's pure parts: sizes, layout, sparse copies, block comparison, packing,
the map checks an untrusted archive meets, and the image checks before a mount (no root: mkfs
and e2fsck work on a plain file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from migrate.archive import upper_image
from runtime import upperfs

BLOCK = upper_image.BLOCK_BYTES


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in chunks.items():
            f.seek(offset)
            f.write(data)
    return path


# -- configuration and layout ---------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "size"), [("", upperfs.DEFAULT_SIZE_BYTES), ("0", 0), ("dir", 0), ("1G", 1 << 30),
                                           ("512M", 512 << 20), (str(1 << 30), 1 << 30)])
def test_configured_size(monkeypatch: pytest.MonkeyPatch, raw: str, size: int) -> None:
    monkeypatch.setenv(upperfs.ENV_SIZE, raw)
    assert upperfs.configured_size() == size


@pytest.mark.parametrize("raw", ["lots", "1X", "-1G", "1M", "17T"])
def test_configured_size_refuses_nonsense(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(upperfs.ENV_SIZE, raw)
    with pytest.raises(ValueError, match=upperfs.ENV_SIZE):
        upperfs.configured_size()


def test_layout_follows_the_image_file(tmp_path: Path) -> None:
    plain = upperfs.Layout.of(tmp_path)
    assert plain.image is None and plain.upper == tmp_path / "upper" and plain.work == tmp_path / "work"
    (tmp_path / "upper.img").write_bytes(b"")
    on_image = upperfs.Layout.of(tmp_path)
    assert on_image.image == tmp_path / "upper.img"
    assert on_image.upper == tmp_path / "layer" / "upper" and on_image.work == tmp_path / "layer" / "work"


def test_a_symlink_named_upper_img_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "host-file").write_text("secret")
    (tmp_path / "upper.img").symlink_to(tmp_path / "host-file")
    assert upperfs.Layout.of(tmp_path).image is None
    assert not upperfs.is_image_file(tmp_path / "upper.img")


# -- sparse copies and comparison ----------------------------------------------------------------
def test_copy_sparse_keeps_content_and_holes(tmp_path: Path) -> None:
    src = sparse_file(tmp_path / "src", 64 << 20, {0: b"a" * 4096, 32 << 20: b"b" * 100_000})
    copied = upperfs.copy_sparse(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert copied < 1 << 20  # only the data extents
    assert os.stat(tmp_path / "dst").st_blocks * 512 < 1 << 20


def test_changed_ranges_finds_each_changed_block(tmp_path: Path) -> None:
    size = 32 << 20
    old = sparse_file(tmp_path / "old", size, {0: b"x" * (3 * BLOCK), 10 << 20: b"y" * BLOCK})
    new = tmp_path / "new"
    shutil.copyfile(old, new)
    with open(new, "r+b") as f:
        f.seek(BLOCK + 7)  # inside the second block
        f.write(b"!")
        f.seek(20 << 20)  # a hole that became data
        f.write(b"z")
        f.seek(10 << 20)  # data that became zeros
        f.write(bytes(BLOCK))
    assert upper_image.changed_ranges(old, new) == [(BLOCK, BLOCK), (10 << 20, BLOCK), (20 << 20, BLOCK)]
    assert upper_image.changed_ranges(old, old) == []


def test_changed_since_a_packed_copy_equals_changed_ranges(tmp_path: Path) -> None:
    size = 16 << 20
    old = sparse_file(tmp_path / "old", size, {0: os.urandom(3 * BLOCK), 5 << 20: os.urandom(2 * BLOCK + 100), 9 << 20: b"q"})
    new = tmp_path / "new"
    shutil.copyfile(old, new)
    with open(new, "r+b") as f:
        for at in (10, (5 << 20) + BLOCK + 5, (9 << 20), 12 << 20):
            f.seek(at)
            f.write(b"CHANGED")
    layout = upper_image.pack(old, tmp_path / "sent")
    assert upper_image.changed_since(tmp_path / "sent", layout, new) == upper_image.changed_ranges(old, new)
    assert len(upper_image.changed_ranges(old, new)) == 4


def test_changed_ranges_counts_a_grown_tail(tmp_path: Path) -> None:
    old = sparse_file(tmp_path / "old", 4 * BLOCK, {})
    new = sparse_file(tmp_path / "new", 6 * BLOCK, {})
    assert upper_image.changed_ranges(old, new) == [(4 * BLOCK, 2 * BLOCK)]


# -- packing and the map checks ------------------------------------------------------------------
def test_pack_and_unpack_round_trip_sparse(tmp_path: Path) -> None:
    src = sparse_file(tmp_path / "img", 128 << 20, {4096: os.urandom(5000), 100 << 20: os.urandom(70_000)})
    layout = upper_image.pack(src, tmp_path / "data")
    (tmp_path / "map").write_text(json.dumps(layout))
    assert os.stat(tmp_path / "data").st_size == sum(n for _o, n in layout["extents"]) < 1 << 20
    upper_image.unpack(tmp_path / "map", tmp_path / "data", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "out").st_blocks * 512 < 1 << 20


@pytest.mark.parametrize(("layout", "data_bytes", "match"), [
    ({"image_bytes": 1 << 20, "extents": [[0, 10], [5, 10]]}, 20, "overlaps"),
    ({"image_bytes": 1 << 20, "extents": [[(1 << 20) - 5, 10]]}, 10, "ends past"),
    ({"image_bytes": 1 << 20, "extents": [[0, 0]]}, 0, "empty"),
    ({"image_bytes": 1 << 20, "extents": [[-10, 10]]}, 10, "overlaps"),
    ({"image_bytes": 1 << 20, "extents": [[0, 10]]}, 11, "its map says 10"),
    ({"image_bytes": 1 << 60, "extents": []}, 0, "out of range"),
    ({"image_bytes": 1 << 20, "extents": [["0", 1]]}, 1, "not \\[offset, length\\]"),
    ({"image_bytes": 1 << 20, "extents": "all"}, 0, "list"),
    ([1, 2], 0, "out of range"),
])
def test_a_map_that_does_not_fit_is_refused_before_any_write(tmp_path: Path, layout: Any, data_bytes: int, match: str) -> None:
    (tmp_path / "map").write_text(json.dumps(layout))
    (tmp_path / "data").write_bytes(b"d" * data_bytes)
    with pytest.raises(ValueError, match=match):
        upper_image.unpack(tmp_path / "map", tmp_path / "data", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_map_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "map").write_bytes(b"\xff{")
    (tmp_path / "data").write_bytes(b"")
    with pytest.raises(ValueError, match="unreadable"):
        upper_image.read_map(tmp_path / "map", tmp_path / "data")


class _CopyingWriter:
    """Keeps a copy of every member added (the archive writer's add_file, without the archive)."""

    def __init__(self, into: Path) -> None:
        self.into = into
        into.mkdir(exist_ok=True)

    def add_file(self, name: str, path: Path) -> None:
        shutil.copyfile(path, self.into / name)


def test_stage_then_delta_rebuilds_the_frozen_image_on_the_target(tmp_path: Path) -> None:
    """The source changes the image between the stage and the freeze, including a block that is
    changed and changed back (the snapshot compared is exactly what was sent)."""
    cdir = tmp_path / "container"
    (cdir / "layer").mkdir(parents=True)  # syncfs needs the mount point to exist
    image = sparse_file(cdir / "upper.img", 64 << 20, {0: b"s" * BLOCK, 8 << 20: b"t" * BLOCK})
    stage = upper_image.ImageStage(image, tmp_path, "m1")
    sent = tmp_path / "sent"
    stage.send(_CopyingWriter(sent))
    with open(image, "r+b") as f:
        f.seek(8 << 20)
        f.write(b"T" * 10)
        f.seek(30 << 20)
        f.write(b"new")
    staged = tmp_path / "staged.img"
    assert upper_image.unpack_members(sent, staged)
    frozen = tmp_path / "frozen"
    stage.add_delta(_CopyingWriter(frozen))
    assert stage.changed_blocks == 2
    assert not stage.sent.exists() and not stage.sent_map.exists(), "what was sent must go once the delta is written"
    assert upper_image.has_delta(frozen)
    upper_image.apply_delta_members(frozen, staged)
    assert staged.read_bytes() == image.read_bytes()
    assert not any(p.name.startswith("upper.img.") for p in tmp_path.iterdir()), "packed temp files left"


def test_a_delta_for_another_image_size_is_refused(tmp_path: Path) -> None:
    src = sparse_file(tmp_path / "img", 8 << 20, {0: b"a"})
    layout = upper_image.pack(src, tmp_path / "data", [(0, BLOCK)])
    (tmp_path / "map").write_text(json.dumps(layout))
    staged = sparse_file(tmp_path / "staged", 4 << 20, {})
    with pytest.raises(ValueError, match="staged one has"):
        upper_image.unpack(tmp_path / "map", tmp_path / "data", staged, into_existing=True)


# -- images from elsewhere -------------------------------------------------------------------------
needs_e2fsprogs = pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("e2fsck") is None,
                                     reason="e2fsprogs not installed")


@needs_e2fsprogs
def test_an_image_we_made_passes_the_untrusted_checks(tmp_path: Path) -> None:
    upperfs.create(tmp_path / "upper.img", 256 << 20)
    upperfs.check_untrusted(tmp_path / "upper.img")


@needs_e2fsprogs
def test_a_damaged_image_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "upper.img"
    upperfs.create(image, 256 << 20)
    with open(image, "r+b") as f:  # the group descriptors after the superblock
        f.seek(4096)
        f.write(b"\xa5" * 8192)
    with pytest.raises(upperfs.UntrustedImage, match="e2fsck|features|not an ext4"):
        upperfs.check_untrusted(image)


@needs_e2fsprogs
def test_an_image_with_other_features_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "upper.img"
    upperfs.create(image, 256 << 20)
    subprocess.run(["tune2fs", "-O", "has_journal", str(image)], check=True, capture_output=True)
    with pytest.raises(upperfs.UntrustedImage, match="has_journal"):
        upperfs.check_untrusted(image)


def test_not_a_file_system_or_not_a_file_is_refused(tmp_path: Path) -> None:
    junk = sparse_file(tmp_path / "junk.img", 128 << 20, {0: b"junk"})
    with pytest.raises(upperfs.UntrustedImage):
        upperfs.check_untrusted(junk)
    (tmp_path / "link.img").symlink_to(junk)
    with pytest.raises(upperfs.UntrustedImage, match="not a regular file"):
        upperfs.check_untrusted(tmp_path / "link.img")
    small = sparse_file(tmp_path / "small.img", 4096, {})
    with pytest.raises(upperfs.UntrustedImage, match="size"):
        upperfs.check_untrusted(small)


@needs_e2fsprogs
def test_images_after_the_first_are_copies_of_a_template(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    upperfs.create(tmp_path / "a.img", 256 << 20, template_dir=cache)
    template = cache / f"upperfs-template-{256 << 20}-v1.img"
    assert template.is_file() and [p.name for p in cache.iterdir()] == [template.name]
    stamp = template.stat().st_mtime_ns
    upperfs.create(tmp_path / "b.img", 256 << 20, template_dir=cache)
    assert template.stat().st_mtime_ns == stamp, "the template is made once"
    assert (tmp_path / "b.img").read_bytes() == template.read_bytes()
    assert os.stat(tmp_path / "b.img").st_blocks * 512 < 8 << 20  # sparse, like the template
    upperfs.check_untrusted(tmp_path / "b.img")


# -- pymigrate check --------------------------------------------------------------------------------
def test_check_reports_whether_upper_layers_keep_their_inodes(tmp_path: Path) -> None:
    import dataclasses

    from migrate.check import evaluate
    from tests.fakes.host import fake_host_report

    good = dataclasses.replace(fake_host_report(tmp_path), upper_images_problem=None)
    assert next(i for i in evaluate(good).items if i.name == "upper-layer images").status == "ok"
    bad = dataclasses.replace(good, upper_images_problem="no /dev/loop-control (loop devices unavailable)")
    result = evaluate(bad)
    found = next(i for i in result.items if i.name == "upper-layer images")
    assert found.status == "warning" and not found.required and "new inode numbers" in found.detail
    assert result.ok  # plain directories still work
    assert bad.as_dict()["upper_images_problem"].startswith("no /dev/loop-control")


def test_a_bad_size_setting_is_an_invalid_argument_for_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.errors import InvalidArgument
    from runtime.runtime import Runtime

    monkeypatch.setenv(upperfs.ENV_SIZE, "lots")
    with pytest.raises(InvalidArgument, match=upperfs.ENV_SIZE) as err:
        Runtime._upper_size(None)  # type: ignore[arg-type]  # reads only the environment
    assert err.value.hint and "0 for plain directories" in err.value.hint


class _FailingWriter:
    def add_file(self, name: str, path: Path) -> None:
        raise OSError(32, "the target stopped receiving")


@pytest.mark.parametrize("fail_in", ["send", "delta"])
def test_a_failed_stage_or_delta_leaves_nothing_in_tmp(tmp_path: Path, fail_in: str) -> None:
    cdir = tmp_path / "container"
    (cdir / "layer").mkdir(parents=True)
    image = sparse_file(cdir / "upper.img", 16 << 20, {0: b"s" * BLOCK})
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stage = upper_image.ImageStage(image, scratch, "m2")
    with pytest.raises(OSError):
        if fail_in == "send":
            stage.send(_FailingWriter())
        else:
            stage.send(_CopyingWriter(tmp_path / "sent"))
            stage.add_delta(_FailingWriter())
    assert list(scratch.iterdir()) == []
