"""cp: argument parsing, docker's path rules, the tar rebase and the extraction rules (issue 14).

The extraction runs here on tmp_path (no container): the same code runs inside a container's
root in the real copy (tests/integration/test_stats_top_cp.py)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from runtime.container_files import paths, tarstream
from runtime.container_files.enter import procfs_mount_points
from runtime.errors import InvalidArgument, UnsafeArchive


@pytest.mark.parametrize(("text", "expected"), [
    ("web:/etc/hosts", ("web", "/etc/hosts")),
    ("web:rel/x", ("web", "rel/x")),
    ("web:", ("web", "")),
    ("-", (None, "-")),
    ("/abs/a:b", (None, "/abs/a:b")),
    ("./a:b", (None, "./a:b")),
    ("plain", (None, "plain")),
    ("dir/a:b", (None, "dir/a:b")),  # a slash before the colon: a local path
])
def test_parse_location(text: str, expected: tuple[str | None, str]) -> None:
    assert paths.parse_location(text) == expected


def test_parse_location_refuses_an_empty_name() -> None:
    with pytest.raises(InvalidArgument):
        paths.parse_location(":/x")


def test_source_names() -> None:
    assert paths.source("/etc/hosts") == paths.Source("/etc/hosts", "hosts")
    assert paths.source("/etc/") == paths.Source("/etc", "etc", must_be_dir=True)
    assert paths.source("/etc/.") == paths.Source("/etc", "etc", contents_only=True, must_be_dir=True)
    assert paths.source("/").top == "." and paths.source("/").contents_only
    with pytest.raises(InvalidArgument):
        paths.source("relative")


def test_container_paths_are_below_the_workdir() -> None:
    assert paths.container_path("a/b", "/srv") == "/srv/a/b"
    assert paths.container_path("a/", "/srv") == "/srv/a/"
    assert paths.container_path("/x", "/srv") == "/x"
    assert paths.container_path("x", "") == "/x"
    with pytest.raises(InvalidArgument):
        paths.container_path("", "/")


FILE, DIR, CONTENTS = paths.source("/s/f"), paths.source("/s/d"), paths.source("/s/d/.")


@pytest.mark.parametrize(("dest", "kind", "src", "is_dir", "expected"), [
    ("/t", "dir", FILE, False, paths.Extraction("/t")),
    ("/t/", "dir", DIR, True, paths.Extraction("/t")),
    ("/t", "dir", CONTENTS, True, paths.Extraction("/t", strip=True)),
    ("/t/new", "missing", FILE, False, paths.Extraction("/t", new_top="new")),
    ("/t/new", "missing", DIR, True, paths.Extraction("/t", new_top="new")),
    ("/t/new/", "missing", DIR, True, paths.Extraction("/t", new_top="new")),
    ("/t/new", "missing", CONTENTS, True, paths.Extraction("/t", new_top="new")),
    ("/t/file", "file", FILE, False, paths.Extraction("/t", new_top="file")),
])
def test_plan_follows_docker(dest: str, kind: paths.DestKind, src: paths.Source, is_dir: bool,
                             expected: paths.Extraction) -> None:
    assert paths.plan_extraction(dest, kind, True, is_dir, src) == expected


@pytest.mark.parametrize(("dest", "kind", "parent", "src", "is_dir", "match"), [
    ("/t/file", "file", True, DIR, True, "onto file"),
    ("/t/file/", "file", True, FILE, False, "not a directory"),
    ("/t/new/", "missing", True, FILE, False, "does not exist"),
    ("/nope/new", "missing", False, FILE, False, "parent"),
])
def test_plan_refusals(dest: str, kind: paths.DestKind, parent: bool, src: paths.Source, is_dir: bool, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        paths.plan_extraction(dest, kind, parent, is_dir, src)


def test_rebase() -> None:
    keep, new, strip = paths.Extraction("/t"), paths.Extraction("/t", new_top="n"), paths.Extraction("/t", strip=True)
    assert paths.rebase("d", "d", keep) == "d" and paths.rebase("d/x/y", "d", keep) == "d/x/y"
    assert paths.rebase("d/x", "d", new) == "n/x" and paths.rebase("d", "d", new) == "n"
    assert paths.rebase("d", "d", strip) is None and paths.rebase("d/x", "d", strip) == "x"
    assert paths.rebase("./bin", ".", strip) == "bin" and paths.rebase(".", ".", strip) is None
    for bad in ("other", "d2/x", "../d", "d/../../x"):
        with pytest.raises(UnsafeArchive):
            paths.rebase(bad, "d", keep)


def test_procfs_mount_points_deepest_first() -> None:
    from runtime.container_files.enter import PSEUDO_FS, mount_points

    assert mount_points("1 0 0:5 / /sys rw - sysfs sysfs rw\n2 0 0:6 / /data rw - ext4 /dev/x rw\n", PSEUDO_FS) == ["/sys"]
    info = (
        "117 114 0:49 / /proc rw,nosuid - proc proc rw\n"
        "123 117 0:50 /.masked /proc/acpi ro - tmpfs tmpfs rw\n"
        "127 117 0:49 /sys /proc/sys ro - proc proc rw\n"
        "130 114 0:51 / /with\\040space rw - proc proc rw\n"
    )
    assert procfs_mount_points(info) == ["/with space", "/proc/sys", "/proc"]


# -- extraction --------------------------------------------------------------------------------

def _tar(*members: tuple[str, str, object], mode: int = 0o644, uid: int = 0) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid = mode, uid, uid
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind in ("l", "h"):
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "l" else tarfile.LNKTYPE), str(data)
                tar.addfile(info)
            elif kind == "c":
                info.type = tarfile.CHRTYPE
                tar.addfile(info)
            else:
                raw = bytes(data)  # type: ignore[call-overload]
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    buf.seek(0)
    return buf


def _extract(stream: io.BytesIO, dest: Path, top: str | None = "d", ext: paths.Extraction | None = None, host: bool = True) -> int:
    ext = ext or paths.Extraction(str(dest))
    return tarstream.extract(stream, top, lambda is_dir: ext, ids=lambda u, g: (u, g), host=host)


def test_extract_renames_the_top_and_keeps_links(tmp_path: Path) -> None:
    stream = _tar(("d", "d", None), ("f", "d/a", b"A"), ("l", "d/sym", "/etc/passwd"), ("h", "d/hard", "d/a"))
    n = _extract(stream, tmp_path, ext=paths.Extraction(str(tmp_path), new_top="new"))
    assert n == 4 and (tmp_path / "new" / "a").read_bytes() == b"A"
    assert os.readlink(tmp_path / "new" / "sym") == "/etc/passwd"  # copied as a link, never followed
    assert os.stat(tmp_path / "new" / "hard").st_ino == os.stat(tmp_path / "new" / "a").st_ino


def test_extract_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchive):
        _extract(_tar(("d", "d", None), ("l", "d/esc", str(outside)), ("f", "d/esc/pwned", b"x")), dest)
    assert not (outside / "pwned").exists()
    # an existing symlink at a file's path is replaced, not followed
    (dest / "d" / "victim").symlink_to(outside / "target")
    _extract(_tar(("d", "d", None), ("f", "d/victim", b"new")), dest)
    assert not (outside / "target").exists() and (dest / "d" / "victim").read_bytes() == b"new"


def test_extract_refuses_devices_escapes_and_outside_hardlinks(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="device"):
        _extract(_tar(("c", "d", None)), tmp_path, host=False)  # into a container: refused
    assert _extract(_tar(("d", "d", None), ("c", "d/null", None)), tmp_path) == 1  # to the host: left out
    assert not (tmp_path / "d" / "null").exists()
    with pytest.raises(UnsafeArchive):
        _extract(_tar(("f", "../x", b"x")), tmp_path, top=None)
    _extract(_tar(("f", "/abs", b"x")), tmp_path, top=None)  # tar's rule: below the destination
    assert (tmp_path / "abs").read_bytes() == b"x"
    with pytest.raises(UnsafeArchive, match="hard link"):
        _extract(_tar(("d", "d", None), ("h", "d/h", "../../etc/passwd")), tmp_path / "x", ext=paths.Extraction(str(tmp_path)))
    assert not (tmp_path.parent / "x").exists()


def test_extract_drops_set_id_bits_on_the_host_only(tmp_path: Path) -> None:
    (tmp_path / "h").mkdir()
    (tmp_path / "c").mkdir()
    _extract(_tar(("f", "d", b"x"), mode=0o4755), tmp_path / "h")
    _extract(_tar(("f", "d", b"x"), mode=0o4755), tmp_path / "c", host=False)
    assert (tmp_path / "h" / "d").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "c" / "d").stat().st_mode & 0o7777 == 0o4755


def test_write_tree_names_by_top_and_maps_ids(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("x")
    (tmp_path / "d" / "link").symlink_to("/etc")
    buf = io.BytesIO()
    tarstream.write_tree(buf, paths.source(f"{tmp_path}/d"), follow=False, ids=lambda u, g: (7, 8))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"d", "d/sub", "d/sub/f", "d/link"}
    assert members["d/link"].issym() and {(m.uid, m.gid, m.uname) for m in members.values()} == {(7, 8, "")}
    buf = io.BytesIO()  # a kernel file system's contents are left out, its mount point stays
    tarstream.write_tree(buf, paths.source(f"{tmp_path}/d"), follow=False, ids=lambda u, g: (u, g),
                         skip_below=(f"{tmp_path}/d/sub", "/sys"))
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        assert sorted(tar.getnames()) == ["d", "d/link", "d/sub"]
    with pytest.raises(InvalidArgument, match="not a directory"):
        tarstream.write_tree(io.BytesIO(), paths.source(f"{tmp_path}/d/sub/f/"), follow=False, ids=lambda u, g: (u, g))
    with pytest.raises(InvalidArgument, match="no such file"):
        tarstream.write_tree(io.BytesIO(), paths.source(f"{tmp_path}/missing"), follow=False, ids=lambda u, g: (u, g))


def test_cp_parser_and_local_checks(tmp_path: Path) -> None:
    from migrate.cli import build_parser

    args = build_parser("cp").parse_args(["cp", "-a", "-L", "web:/x", str(tmp_path)])
    assert (args.archive, args.follow_link, args.src, args.dest) == (True, True, "web:/x", str(tmp_path))
    from migrate.cli import Context
    from migrate.cli.copy import cmd_cp

    ctx = Context(root=None, json=False, debug=False, args=args)
    for src, dest in (("a:/x", "b:/y"), (str(tmp_path), "./local")):
        args.src, args.dest = src, dest
        with pytest.raises(InvalidArgument):
            cmd_cp(args, ctx)
