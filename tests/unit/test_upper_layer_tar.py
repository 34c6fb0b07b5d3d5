"""An overlay upper dir written as an OCI layer (runtime/upper_layer_tar.py): overlayfs whiteouts
and opaque dirs become OCI whiteouts, metadata is kept, the runtime's own paths, devices and
sockets are left out, symlinks are never followed, budgets hold. Root: whiteouts are device
nodes and the opaque mark a ``trusted.*`` xattr."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from runtime.errors import ImageLimitExceeded, Unsupported
from runtime.extract_limits import ExtractLimits
from runtime.tarsafe import extract_layer
from runtime.upper_layer_tar import Exclusions, LayerStats, write_layer

pytestmark = pytest.mark.requires("root")


def make_upper(root: Path) -> Path:
    upper = root / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/passwd", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a deleted image file
    (upper / "etc/hosts").write_text("runtime's\n")
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "opq", "trusted.overlay.origin", b"junk")  # overlayfs' own: never exported
    (upper / "opq/new").write_text("new\n")
    (upper / "hello").write_text("hi\n")
    os.chown(upper / "hello", 1234, 5678)
    os.chmod(upper / "hello", 0o4750)
    os.setxattr(upper / "hello", "user.note", b"kept")
    os.link(upper / "hello", upper / "hello2")
    os.symlink("/etc/shadow", upper / "shadow-link")  # a container's symlink: written as a symlink
    os.symlink("/etc", upper / "dir-link")  # never descended into
    os.mkfifo(upper / "fifo", 0o600)
    (upper / ".wh.sneaky").write_text("")  # would read back as a whiteout of 'sneaky'
    os.mknod(upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(upper / "sock"))
    (upper / ".pymigrate").mkdir()
    (upper / ".pymigrate/log").write_text("log\n")
    return upper


def write(upper: Path, *, exclude: tuple[str, ...] = (), limits: ExtractLimits | None = None) -> tuple[bytes, LayerStats]:
    sink = io.BytesIO()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stats = write_layer(fd, sink, exclude=Exclusions(frozenset(exclude)), limits=limits or ExtractLimits())
    finally:
        os.close(fd)
    return sink.getvalue(), stats


def test_whiteouts_opaque_dirs_and_metadata(tmp_path: Path) -> None:
    upper = make_upper(tmp_path)
    data, stats = write(upper, exclude=("/.pymigrate", "/etc/hosts"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["dir-link", "etc", "etc/.wh.passwd", "fifo", "hello", "hello2", "opq", "opq/.wh..wh..opq",
                             "opq/new", "shadow-link"]
    assert (stats.whiteouts, stats.opaque_dirs) == (1, 1)
    assert sorted(stats.skipped) == ["/.wh.sneaky", "/null", "/sock"]  # the runtime's own paths are not listed
    hello = members["hello"]
    assert (hello.uid, hello.gid, hello.mode, hello.size) == (1234, 5678, 0o4750, 3)
    assert hello.pax_headers["SCHILY.xattr.user.note"] == "kept"
    assert members["hello2"].islnk() and members["hello2"].linkname == "hello"
    assert members["shadow-link"].issym() and members["shadow-link"].linkname == "/etc/shadow"
    assert members["dir-link"].issym() and members["fifo"].isfifo()
    assert not any("trusted" in k for m in members.values() for k in m.pax_headers)

    # read back by the loader every image layer goes through: overlayfs' terms again
    out = tmp_path / "diff"
    out.mkdir()
    _stats, _diff_id = extract_layer(io.BytesIO(data), out, source="commit")
    st = os.lstat(out / "etc/passwd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(out / "opq", "trusted.overlay.opaque") == b"y"
    assert (out / "opq/new").read_text() == "new\n"
    assert os.stat(out / "hello").st_ino == os.stat(out / "hello2").st_ino
    assert os.readlink(out / "shadow-link") == "/etc/shadow"


def test_budgets_are_checked_while_writing(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "a/b/c").mkdir(parents=True)
    (upper / "big").write_bytes(b"x" * 4096)
    with pytest.raises(ImageLimitExceeded) as info:
        write(upper, limits=ExtractLimits(max_members=2))
    assert info.value.limit == "max_members"
    with pytest.raises(ImageLimitExceeded) as info:
        write(upper, limits=ExtractLimits(max_depth=2))
    assert info.value.limit == "max_depth" and info.value.member == "/a/b/c"
    with pytest.raises(ImageLimitExceeded) as info:
        write(upper, limits=ExtractLimits(max_member_bytes=1024))
    assert info.value.limit == "max_member_bytes" and "PYMIGRATE_EXTRACT_LIMITS" in (info.value.hint or "")
    with pytest.raises(ImageLimitExceeded) as info:
        write(upper, limits=ExtractLimits(max_total_bytes=1024))
    assert info.value.limit == "max_total_bytes"


def test_redirected_directories_are_refused(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(Unsupported) as info:
        write(upper)
    assert "/moved" in str(info.value) and info.value.hint


def test_a_file_that_grows_or_shrinks_while_read_keeps_the_tar_whole(tmp_path: Path) -> None:
    from runtime.upper_layer_tar import _Exactly

    f = tmp_path / "f"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert _Exactly(fd, 5).read() == b"abc\0\0"  # shrank since its header: padded
        os.lseek(fd, 0, os.SEEK_SET)
        assert _Exactly(fd, 2).read() == b"ab"  # grew: cut at the header's size
    finally:
        os.close(fd)


def test_a_user_namespaced_upper_dir_gets_the_containers_own_ids(tmp_path: Path) -> None:
    from runtime.upper_layer_tar import IdRange

    base = 1_000_000_000
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "mine").write_text("m\n")
    os.chown(upper / "mine", base + 1000, base + 1001)
    (upper / "root-file").write_text("r\n")
    os.chown(upper / "root-file", base, base)
    (upper / "outside").write_text("o\n")
    os.chown(upper / "outside", 7, 8)  # not the range's: left as it is (runtime.userns.shift_tree's rule)
    # cap_net_bind_service (bit 10) permitted+effective, set by the container's root: v3, root id = base
    caps = (0x03000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12) + base.to_bytes(4, "little")
    os.setxattr(upper / "root-file", "security.capability", caps)
    sink = io.BytesIO()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_layer(fd, sink, exclude=Exclusions(), limits=ExtractLimits(), ids=IdRange(base, 65536))
    finally:
        os.close(fd)
    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert (members["mine"].uid, members["mine"].gid) == (1000, 1001)
    assert (members["root-file"].uid, members["outside"].uid, members["outside"].gid) == (0, 7, 8)
    v2 = members["root-file"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert len(v2) == 20 and int.from_bytes(v2[:4], "little") == 0x02000001 and v2[4:8] == (1 << 10).to_bytes(4, "little")


def test_a_deep_tree_needs_no_recursion(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    deep = upper.joinpath(*["d"] * 600)  # deeper than Python's recursion limit allows two frames a level
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("x")
    data, stats = write(upper, limits=ExtractLimits(max_depth=1000))
    assert stats.members == 601
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmembers()[-1].name == "/".join(["d"] * 600 + ["leaf"])
