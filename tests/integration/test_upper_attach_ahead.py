"""An upper-layer image bound to its loop device ahead of its mount (runtime.upperfs.attach_ahead):
a post-copy target binds the staged image while the source dumps, then writes the frozen delta
into the image file and mounts through that device. The mount must see the image as it is then,
never blocks the device cached before (a blkid probe's), nor a file renamed over the image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import upperfs
from runtime.syscalls import LINUX

pytestmark = [pytest.mark.integration, pytest.mark.requires("root")]

SIZE = 64 << 20


def _image_with(path: Path, mnt: Path, text: str, *, like: Path | None = None) -> None:
    """An image whose file ``f`` says ``text`` (a copy of ``like`` changed, or a new one)."""
    if like is None:
        upperfs.create(path, SIZE)
    else:
        upperfs.copy_sparse(like, path)
    upperfs.mount(LINUX, path, mnt)
    try:
        (mnt / "f").write_text(text)
        upperfs.syncfs(mnt)
    finally:
        upperfs.unmount(LINUX, mnt)


def _overwrite_in_place(dst: Path, src: Path) -> None:
    """``src``'s bytes into ``dst`` through the file (same inode), as a delta is written."""
    with open(src, "rb") as s, open(dst, "r+b") as d:
        while chunk := s.read(1 << 20):
            d.write(chunk)


def _read_mounted(image: Path, mnt: Path, attached: upperfs.Attached | None) -> str:
    upperfs.mount(LINUX, image, mnt, attached=attached)
    try:
        return (mnt / "f").read_text()
    finally:
        upperfs.unmount(LINUX, mnt)


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path, Path]:
    mnt = tmp_path / "mnt"
    old, new = tmp_path / "old.img", tmp_path / "new.img"
    _image_with(old, mnt, "before the freeze")
    _image_with(new, mnt, "after the freeze, a longer text " * 64, like=old)
    return old, new, mnt


def test_the_mount_sees_what_was_written_after_the_bind(images: tuple[Path, Path, Path]) -> None:
    old, new, mnt = images
    attached = upperfs.attach_ahead(old)
    assert attached is not None
    _overwrite_in_place(old, new)
    assert _read_mounted(old, mnt, attached).startswith("after the freeze")
    assert attached.fd == -1  # taken by the mount, which holds the device now


def test_blocks_a_probe_cached_before_the_delta_are_dropped(images: tuple[Path, Path, Path]) -> None:
    old, new, mnt = images
    attached = upperfs.attach_ahead(old)
    assert attached is not None
    with open(attached.device, "rb") as probe:  # what blkid does on a new device: the superblock and on
        probe.read(4 << 20)
    assert upperfs._cached_pages(attached.fd) > 0
    _overwrite_in_place(old, new)
    taken = attached.take(old)
    assert taken is not None
    device, fd = taken
    try:
        # (the ext4 mount's own block-size switch drops them too today; this does not rely on it)
        assert upperfs._cached_pages(fd) == 0
        LINUX.mount(device, str(mnt), upperfs.FS_TYPE, 0, upperfs.MOUNT_OPTIONS)
    finally:
        os.close(fd)
    try:
        assert (mnt / "f").read_text().startswith("after the freeze")
    finally:
        upperfs.unmount(LINUX, mnt)


def test_a_file_renamed_over_the_image_is_mounted_not_the_bound_one(images: tuple[Path, Path, Path]) -> None:
    old, new, mnt = images
    attached = upperfs.attach_ahead(old)
    assert attached is not None
    os.rename(new, old)  # another inode at the image's path
    assert _read_mounted(old, mnt, attached).startswith("after the freeze")
    assert attached.fd == -1


def test_an_unused_binding_is_released(images: tuple[Path, Path, Path]) -> None:
    old, _new, _mnt = images
    attached = upperfs.attach_ahead(old)
    assert attached is not None
    device = attached.device
    attached.release()
    attached.release()  # idempotent
    name = Path(device).name
    backing = Path(f"/sys/block/{name}/loop/backing_file")
    assert not backing.exists() or backing.read_text().strip() != str(old)
