"""Archive round trips that need root: trusted.* xattrs, overlay whiteouts, ownership, device
nodes, and a real overlayfs upper layer that is archived, extracted and mounted again."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from migrate.errors import UnsafeMember
from migrate.archive import ArchiveWriter, read_archive

pytestmark = pytest.mark.integration


def archive_tree(src: Path, prefix: str = "upper") -> io.BytesIO:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"checkpoint_id": "it"})
        w.add_tree(prefix, src)
    buf.seek(0)
    return buf


def xattrs(path: Path) -> dict[str, bytes]:
    return {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}


@pytest.mark.requires("root")
def test_trusted_xattrs_whiteouts_and_owners_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "opaque").mkdir(parents=True)
    os.setxattr(src / "opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(src / "opaque", "user.overlay.opaque", b"y")
    os.mknod(src / "deleted", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # overlay whiteout
    os.link(src / "deleted", src / "deleted-too")  # overlay shares one whiteout inode
    (src / "xwhiteout").write_bytes(b"")
    os.setxattr(src / "xwhiteout", "trusted.overlay.whiteout", b"")
    (src / "owned").write_bytes(b"data")
    os.chown(src / "owned", 1234, 5678)
    os.chmod(src / "owned", 0o6750)  # setuid+setgid survive the chown on extraction
    os.symlink("owned", src / "owned-link")
    os.chown(src / "owned-link", 4321, 8765, follow_symlinks=False)
    os.utime(src / "opaque", ns=(1, 2))

    dest = tmp_path / "dest"
    read_archive(archive_tree(src), dest)
    up = dest / "upper"
    assert xattrs(up / "opaque") == {"trusted.overlay.opaque": b"y", "user.overlay.opaque": b"y"}
    assert os.stat(up / "opaque").st_mtime_ns == 2
    st = os.lstat(up / "deleted")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.lstat(up / "deleted-too").st_ino == st.st_ino
    assert xattrs(up / "xwhiteout") == {"trusted.overlay.whiteout": b""}
    st = os.lstat(up / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o6750)
    st = os.lstat(up / "owned-link")
    assert (st.st_uid, st.st_gid) == (4321, 8765)


@pytest.mark.requires("root")
def test_device_nodes_need_allow_devices(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(src / "null", 0o666)  # (mknod applies the umask)
    data = archive_tree(src).getvalue()
    with pytest.raises(UnsafeMember) as info:
        read_archive(io.BytesIO(data), tmp_path / "refused")
    assert info.value.member == "upper/null"
    assert not (tmp_path / "refused" / "upper" / "null").exists()

    read_archive(io.BytesIO(data), tmp_path / "allowed", allow_devices=True)
    st = os.lstat(tmp_path / "allowed" / "upper" / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o666


def _mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)],
        check=True,
    )


def _view(root: Path) -> dict[str, object]:
    """What a container sees: names, types, modes and contents of the merged tree."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            content = p.read_bytes() if stat.S_ISREG(st.st_mode) else os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), content)
    return out


@pytest.mark.requires("root", "overlay")
def test_overlay_upper_layer_survives_archive_and_remount(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "hostname").write_text("lower\n")
    (lower / "etc" / "gone").write_text("delete me\n")
    (lower / "etc" / "gone-too").write_text("delete me too\n")
    (lower / "var" / "cache").mkdir(parents=True)
    (lower / "var" / "cache" / "old").write_text("hidden by an opaque dir\n")
    merged = tmp_path / "merged"
    mounted: list[Path] = []
    try:
        _mount_overlay(lower, tmp_path / "upper", tmp_path / "work", merged)
        mounted.append(merged)
        (merged / "etc" / "hostname").write_text("container\n")  # copy-up
        (merged / "etc" / "gone").unlink()  # whiteout
        (merged / "etc" / "gone-too").unlink()  # whiteout (may share the first one's inode)
        subprocess.run(["rm", "-rf", str(merged / "var" / "cache")], check=True)
        (merged / "var" / "cache").mkdir()  # opaque dir
        (merged / "var" / "cache" / "new").write_text("new\n")
        (merged / "bin").mkdir()
        (merged / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
        os.chmod(merged / "bin" / "tool", 0o4755)
        expected = _view(merged)
        subprocess.run(["umount", str(merged)], check=True)
        mounted.remove(merged)

        upper = tmp_path / "upper"
        assert stat.S_ISCHR(os.lstat(upper / "etc" / "gone").st_mode)  # the kernel made a whiteout
        assert os.getxattr(upper / "var" / "cache", "trusted.overlay.opaque") == b"y"

        dest = tmp_path / "restored"
        read_archive(archive_tree(upper), dest)
        merged2 = tmp_path / "merged2"
        _mount_overlay(lower, dest / "upper", tmp_path / "work2", merged2)
        mounted.append(merged2)
        assert _view(merged2) == expected
        assert not (merged2 / "etc" / "gone").exists()
        assert not (merged2 / "var" / "cache" / "old").exists()
    finally:
        for m in mounted:
            subprocess.run(["umount", "-l", str(m)], check=False)
