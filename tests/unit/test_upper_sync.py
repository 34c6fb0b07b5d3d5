"""Upper-layer pre-sync (migrate.migration.upper_sync): snapshot signatures, delta detection, and round
trips snapshot archive -> staged tree, delta archive -> received tree -> apply_delta.

Entries made just before a snapshot are "racy" (always resent); tests that check exact delta
contents let the tree age past RACY_MARGIN_NS first. Whiteouts, chown and device parts need
root and are skipped without it.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import random
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from migrate.migration import upper_sync
from migrate.archive.fs import walk
from migrate.errors import ArchiveError, UnsafeMember
from migrate.archive import ArchiveWriter, read_archive
from migrate.migration.upper_sync import (
    RACY_MARGIN_NS,
    UpperDelta,
    UpperSnapshot,
    apply_delta,
    compute_delta,
    write_delta,
    write_snapshot,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (whiteouts, chown)")


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.pymigrate.probe", b"1")
        os.removexattr(path, "user.pymigrate.probe")
        return True
    except OSError:
        return False


def age() -> None:
    """Let everything made so far fall out of the racy window of the next snapshot."""
    time.sleep(RACY_MARGIN_NS / 1e9 + 0.05)


def tree_state(root: Path) -> dict[str, dict[str, object]]:
    """Everything a delta must carry, keyed by relative path (atimes left out)."""
    out: dict[str, dict[str, object]] = {}
    for rel, full, st in walk(root):
        entry: dict[str, object] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": {k: os.getxattr(full, k, follow_symlinks=False) for k in os.listxattr(full, follow_symlinks=False)},
        }
        if stat.S_ISREG(st.st_mode):
            entry["sha256"] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
            entry["size"] = st.st_size
        elif stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(full)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = st.st_rdev
        out[rel] = entry
    return out


def snapshot_archive(src: Path) -> tuple[UpperSnapshot, io.BytesIO]:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"checkpoint_id": "pre-sync"})
        snap = write_snapshot(w, "upper", src)
        w.close()
    buf.seek(0)
    return snap, buf


def delta_archive(src: Path, delta: UpperDelta) -> io.BytesIO:
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({"checkpoint_id": "frozen"})
        write_delta(w, "upper", src, delta)
        w.close({"upper_delta": delta.as_dict()})
    buf.seek(0)
    return buf


def round_trip(tmp_path: Path, src: Path, mutate: Callable[[Path], None]) -> UpperDelta:
    """Snapshot, extract, mutate the source, delta, extract, apply; assert staged == source."""
    snap, first = snapshot_archive(src)
    staged_root = tmp_path / "staged"
    read_archive(first, staged_root)
    staged = staged_root / "upper"
    assert tree_state(staged) == tree_state(src)
    mutate(src)
    delta = compute_delta(snap, src)
    assert delta is not None
    received_root = tmp_path / "received"
    manifest = read_archive(delta_archive(src, delta), received_root)
    received = UpperDelta.from_dict(manifest["upper_delta"])
    assert received == delta
    apply_delta(staged, received_root / "upper", received)
    assert tree_state(staged) == tree_state(src)
    shutil.rmtree(staged_root)
    shutil.rmtree(received_root)
    return delta


def make_tree(root: Path) -> None:
    root.mkdir()
    (root / "f").write_bytes(b"hello\n")
    (root / "big").write_bytes(os.urandom(100_000))
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"a\n")
    (root / "d" / "sub" / "b").write_bytes(b"b\n")
    (root / "other").mkdir()
    (root / "other" / "c").write_bytes(b"c\n")
    os.symlink("../f", root / "d" / "link")
    os.mkfifo(root / "fifo")
    os.chmod(root / "d" / "sub", 0o1755)
    if _xattrs_supported(root):
        os.setxattr(root / "d", "user.overlay.opaque", b"y")
        os.setxattr(root / "f", "user.note", b"one")
    for i, (dirpath, _dirs, files) in enumerate(sorted(os.walk(root), reverse=True)):
        for j, name in enumerate(files):
            os.utime(os.path.join(dirpath, name), ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + j))
        os.utime(dirpath, ns=(1_600_000_100_000_000_000 + i, 1_600_000_100_000_000_000 + i))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(root)
    age()
    return root


def test_snapshot_records_every_entry_as_sent(src: Path) -> None:
    snap, _ = snapshot_archive(src)
    assert set(snap.entries) == {rel for rel, _, _ in walk(src)}
    assert snap.entries[""].kind == "dir"
    assert snap.entries["f"].kind == "file" and snap.entries["f"].size_bytes == 6
    assert snap.entries["d/link"].kind == "symlink"
    assert snap.entries["fifo"].kind == "fifo"
    assert snap.taken_ns <= time.time_ns()


def test_unchanged_tree_gives_empty_delta(src: Path) -> None:
    snap, _ = snapshot_archive(src)
    assert compute_delta(snap, src) == UpperDelta(changed=(), deleted=())


def test_content_change_with_mtime_restored_is_detected(src: Path, tmp_path: Path) -> None:
    st = os.stat(src / "f")

    def mutate(root: Path) -> None:
        (root / "f").write_bytes(b"HELLO\n")  # same size
        os.utime(root / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(root / "f").st_mtime_ns == st.st_mtime_ns

    delta = round_trip(tmp_path, src, mutate)
    assert delta == UpperDelta(changed=("f",), deleted=())


def test_new_file_in_new_dir(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        (root / "new" / "deeper").mkdir(parents=True)
        (root / "new" / "deeper" / "x").write_bytes(b"x")
        (root / "d" / "sub" / "y").write_bytes(b"y")

    delta = round_trip(tmp_path, src, mutate)
    assert delta.changed == ("", "d/sub", "d/sub/y", "new", "new/deeper", "new/deeper/x")
    assert delta.deleted == ()


def test_deleted_file_and_dir(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        (root / "d" / "a").unlink()
        shutil.rmtree(root / "other")

    delta = round_trip(tmp_path, src, mutate)
    assert delta.deleted == ("d/a", "other")  # "other/c" is implied
    assert delta.changed == ("", "d")


def test_file_replaced_by_dir_and_dir_by_file(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        (root / "f").unlink()
        (root / "f").mkdir()
        (root / "f" / "inside").write_bytes(b"in")
        shutil.rmtree(root / "d" / "sub")
        (root / "d" / "sub").write_bytes(b"now a file")

    delta = round_trip(tmp_path, src, mutate)
    assert delta.deleted == ("d/sub", "f")
    assert delta.changed == ("", "d", "d/sub", "f", "f/inside")


def test_symlink_retargeted(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        (root / "d" / "link").unlink()
        os.symlink("sub/b", root / "d" / "link")

    delta = round_trip(tmp_path, src, mutate)
    assert "d/link" in delta.changed and delta.deleted == ()


def test_xattr_change_is_detected(src: Path, tmp_path: Path) -> None:
    if not _xattrs_supported(tmp_path):  # (not src: that would make its root racy)
        pytest.skip("no user xattrs on this file system")

    def mutate(root: Path) -> None:
        os.setxattr(root / "f", "user.note", b"two")
        os.removexattr(root / "d", "user.overlay.opaque")
        os.setxattr(root / "d", "user.fresh", b"1")

    delta = round_trip(tmp_path, src, mutate)
    assert delta == UpperDelta(changed=("d", "f"), deleted=())


def test_mode_change_of_dir_is_applied(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        os.chmod(root / "d", 0o500)
        os.chmod(root / "big", 0o600)

    delta = round_trip(tmp_path, src, mutate)
    assert delta == UpperDelta(changed=("big", "d"), deleted=())


def test_racy_entries_are_always_sent(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "young").write_bytes(b"1")
    snap, _ = snapshot_archive(root)  # no age(): everything is within the racy margin
    delta = compute_delta(snap, root)
    assert delta is not None and delta.changed == ("", "young")

    # The same entries recorded long enough after they changed are trusted.
    old = UpperSnapshot(root=root, taken_ns=snap.taken_ns + 10 * RACY_MARGIN_NS, entries=snap.entries)
    assert compute_delta(old, root) == UpperDelta(changed=(), deleted=())


def test_hardlinks_force_a_full_resend(src: Path) -> None:
    os.link(src / "d" / "a", src / "d" / "a2")
    age()
    snap, _ = snapshot_archive(src)
    assert compute_delta(snap, src) == UpperDelta(changed=(), deleted=())  # untouched links are fine
    (src / "d" / "a").write_bytes(b"changed")
    assert compute_delta(snap, src) is None

    os.link(src / "f", src / "f2")  # a new link to an unchanged file
    snap2 = UpperSnapshot(root=src, taken_ns=snap.taken_ns, entries={**snap.entries, "d/a": upper_sync.Signature.of(os.lstat(src / "d" / "a"))})
    assert compute_delta(snap2, src) is None


def test_unlinking_one_name_of_a_hardlink_forces_a_full_resend(src: Path) -> None:
    os.link(src / "f", src / "f2")
    age()
    snap, _ = snapshot_archive(src)
    (src / "f2").unlink()  # "f" is left with nlink 1 but was linked in the snapshot
    assert compute_delta(snap, src) is None


def test_fifo_socket_and_whiteout(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        (root / "fifo").unlink()
        os.mknod(root / "fifo", stat.S_IFSOCK | 0o600)  # kind change: fifo -> socket
        os.mkfifo(root / "d" / "pipe")
        if ROOT:
            os.mknod(root / "d" / "wh", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # overlay whiteout
            (root / "other" / "c").unlink()
            os.mknod(root / "other" / "c", stat.S_IFCHR, os.makedev(0, 0))

    delta = round_trip(tmp_path, src, mutate)
    assert "fifo" in delta.deleted and "fifo" in delta.changed and "d/pipe" in delta.changed
    if ROOT:
        assert {"d/wh", "other/c"} <= set(delta.changed)


@needs_root
def test_owner_change_is_applied(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        os.chown(root / "d", 1234, 5678)
        os.chown(root / "d" / "link", 4321, 8765, follow_symlinks=False)
        os.chown(root / "big", 99, 98)

    delta = round_trip(tmp_path, src, mutate)
    assert set(delta.changed) == {"d", "d/link", "big"}


def test_root_metadata_change(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        os.chmod(root, 0o751)
        if _xattrs_supported(root):
            os.setxattr(root, "user.root", b"r")

    delta = round_trip(tmp_path, src, mutate)
    assert delta.changed == ("",)


def test_write_through_a_dirty_shared_mapping_is_detected(src: Path) -> None:
    # A store to a page that is already dirty moves no timestamp; write_snapshot's syncfs
    # cleans and write-protects the pages first, so the store after the snapshot faults.
    path = src / "big"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[0:5] = b"dirty"  # dirties page 0 (moves ctime now)
        age()  # ...long before the snapshot starts
        snap, _ = snapshot_archive(src)
        m[10:15] = b"again"  # same page
        delta = compute_delta(snap, src)
    assert delta is not None and "big" in delta.changed


def test_delta_with_only_deletions_needs_no_received_tree(src: Path, tmp_path: Path) -> None:
    snap, first = snapshot_archive(src)
    read_archive(first, tmp_path / "staged")
    staged = tmp_path / "staged" / "upper"
    (src / "d" / "sub" / "b").unlink()
    os.utime(src / "d" / "sub", ns=(0, os.stat(staged / "d" / "sub").st_mtime_ns))  # (mtime restored by hand)
    delta = compute_delta(snap, src)
    assert delta is not None and delta.deleted == ("d/sub/b",)
    apply_delta(staged, tmp_path / "nowhere", UpperDelta(changed=(), deleted=delta.deleted))
    assert not (staged / "d" / "sub" / "b").exists()


# -- validation and safety ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["/etc/passwd", "a/../../etc", "..", "a//b", "a/./b", "a/", "nul\x00byte"],
)
@pytest.mark.parametrize("key", ["changed", "deleted"])
def test_from_dict_refuses_unsafe_names(bad: str, key: str) -> None:
    d = {"changed": ["ok"], "deleted": ["gone"]}
    d[key] = [*d[key], bad]
    with pytest.raises(UnsafeMember) as info:
        UpperDelta.from_dict(d)
    assert info.value.member == bad


@pytest.mark.parametrize(
    "bad",
    [None, [], {"changed": []}, {"changed": "abc", "deleted": []}, {"changed": [1], "deleted": []}, {"changed": ["a", "a"], "deleted": []}],
)
def test_from_dict_refuses_malformed_shapes(bad: object) -> None:
    with pytest.raises(ArchiveError, match="malformed upper delta"):
        UpperDelta.from_dict(bad)


def test_from_dict_refuses_deleting_the_root() -> None:
    with pytest.raises(UnsafeMember):
        UpperDelta.from_dict({"changed": [], "deleted": [""]})


def test_as_dict_round_trips() -> None:
    delta = UpperDelta(changed=("", "a", "a/b"), deleted=("c",))
    assert UpperDelta.from_dict(delta.as_dict()) == delta


def test_apply_refuses_a_path_through_a_staged_symlink(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    outside = tmp_path / "outside"
    staged.mkdir()
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    os.symlink(outside, staged / "link")
    received = tmp_path / "received"
    (received / "link").mkdir(parents=True)
    (received / "link" / "victim").write_bytes(b"evil")

    with pytest.raises(UnsafeMember, match="symlink") as info:
        apply_delta(staged, received, UpperDelta(changed=(), deleted=("link/victim",)))
    assert info.value.member == "link/victim"
    with pytest.raises(UnsafeMember, match="symlink"):
        apply_delta(staged, received, UpperDelta(changed=("link/victim",), deleted=()))
    assert (outside / "victim").read_bytes() == b"keep me"


def test_apply_refuses_a_path_through_a_staged_file(tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "file").write_bytes(b"")
    received = tmp_path / "received"
    (received / "file").mkdir(parents=True)
    (received / "file" / "x").write_bytes(b"x")
    with pytest.raises(UnsafeMember, match="file, not a directory"):
        apply_delta(staged, received, UpperDelta(changed=("file/x",), deleted=()))


def test_apply_names_a_changed_entry_missing_from_received(tmp_path: Path) -> None:
    (tmp_path / "staged").mkdir()
    (tmp_path / "received").mkdir()
    with pytest.raises(ArchiveError, match="'gone'"):
        apply_delta(tmp_path / "staged", tmp_path / "received", UpperDelta(changed=("gone",), deleted=()))


def test_apply_does_not_apply_implicit_parent_dirs(src: Path, tmp_path: Path) -> None:
    os.chmod(src / "d" / "sub", 0o700)
    age()

    def mutate(root: Path) -> None:
        (root / "d" / "sub" / "b").write_bytes(b"new content")  # in place: "d/sub" is unchanged

    delta = round_trip(tmp_path, src, mutate)  # received has d and d/sub as implicit 0755 dirs
    assert delta.changed == ("d/sub/b",)


# -- the writer's entry hooks ---------------------------------------------------------------------


def test_add_entries_skips_vanished_entries_only_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "gone").write_bytes(b"1")
    (root / "now-fifo").write_bytes(b"2")
    (root / "stays").write_bytes(b"3")
    listed = list(walk(root))
    (root / "gone").unlink()
    (root / "now-fifo").unlink()
    os.mkfifo(root / "now-fifo")  # opening it must not block

    seen: list[str] = []
    buf = io.BytesIO()
    with ArchiveWriter(buf) as w:
        w.write_manifest({})
        w.add_entries("upper", listed, on_entry=lambda rel, st: seen.append(rel), vanished_ok=True)
        summary = w.close()
    assert seen == ["", "stays"]
    assert [m.name for m in summary.members] == ["upper", "upper/stays"]

    with ArchiveWriter(io.BytesIO()) as w:
        w.write_manifest({})
        with pytest.raises(FileNotFoundError):
            w.add_entries("upper", listed)
        w.abort()


# -- randomized ------------------------------------------------------------------------------------


class _Mutator:
    """Random changes of every kind a container makes in its upper layer (no hardlinks)."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.xattrs = _xattrs_supported(root)
        self.counter = 0

    def _entries(self) -> tuple[list[str], list[str]]:
        dirs, others = [], []
        for rel, _full, st in walk(self.root):
            (dirs if stat.S_ISDIR(st.st_mode) else others).append(rel)
        return dirs, others

    def _new_name(self, dirs: list[str]) -> Path:
        self.counter += 1
        parent = self.rng.choice(dirs)
        return self.root / parent / f"n{self.counter}"

    def step(self) -> None:
        rng = self.rng
        dirs, others = self._entries()
        files = [o for o in others if stat.S_ISREG(os.lstat(self.root / o).st_mode)]
        op = rng.choice(
            ["new_file", "new_file", "new_dir", "rewrite_keep_mtime", "append", "truncate", "chmod", "utime",
             "xattr", "unlink", "rmtree", "rename", "file_to_dir", "dir_to_file", "symlink", "retarget",
             "fifo", "whiteout", "chown"]
        )
        if op == "new_file":
            self._new_name(dirs).write_bytes(os.urandom(rng.randrange(0, 3000)))
        elif op == "new_dir":
            self._new_name(dirs).mkdir()
        elif op == "rewrite_keep_mtime" and files:
            p = self.root / rng.choice(files)
            st = os.lstat(p)
            p.write_bytes(os.urandom(st.st_size))
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif op == "append" and files:
            with open(self.root / rng.choice(files), "ab") as f:
                f.write(b"more")
        elif op == "truncate" and files:
            os.truncate(self.root / rng.choice(files), rng.randrange(0, 50))
        elif op == "chmod" and files:
            os.chmod(self.root / rng.choice(files), rng.choice([0o600, 0o644, 0o755, 0o4755, 0o400]))
        elif op == "chmod" and len(dirs) > 1:
            os.chmod(self.root / rng.choice(dirs[1:]), rng.choice([0o700, 0o755, 0o1777, 0o2755]))
        elif op == "utime" and others + dirs:
            os.utime(self.root / rng.choice(others + dirs), ns=(rng.randrange(1 << 60), rng.randrange(1 << 60)), follow_symlinks=False)
        elif op == "xattr" and self.xattrs:
            target = self.root / rng.choice(files + dirs)
            if rng.random() < 0.3 and os.listxattr(target):
                os.removexattr(target, rng.choice(os.listxattr(target)))
            else:
                os.setxattr(target, f"user.k{rng.randrange(3)}", os.urandom(rng.randrange(1, 20)))
        elif op == "unlink" and others:
            (self.root / rng.choice(others)).unlink()
        elif op == "rmtree" and len(dirs) > 1:
            shutil.rmtree(self.root / rng.choice(dirs[1:]))
        elif op == "rename" and files:
            src = self.root / rng.choice(files)
            dst = self.root / rng.choice(files) if rng.random() < 0.5 else self._new_name(dirs)
            os.rename(src, dst)
        elif op == "file_to_dir" and files:
            p = self.root / rng.choice(files)
            p.unlink()
            p.mkdir()
            (p / "child").write_bytes(b"c")
        elif op == "dir_to_file" and len(dirs) > 1:
            p = self.root / rng.choice(dirs[1:])
            shutil.rmtree(p)
            p.write_bytes(b"was a dir")
        elif op == "symlink":
            os.symlink(rng.choice(["../x", "/etc/hostname", "n1", "dangling"]), self._new_name(dirs))
        elif op == "retarget":
            links = [o for o in others if os.path.islink(self.root / o)]
            if links:
                p = self.root / rng.choice(links)
                p.unlink()
                os.symlink(f"t{rng.randrange(100)}", p)
        elif op == "fifo":
            os.mkfifo(self._new_name(dirs))
        elif op == "whiteout" and ROOT:
            os.mknod(self._new_name(dirs), stat.S_IFCHR, os.makedev(0, 0))
        elif op == "chown" and ROOT and others + dirs:
            os.chown(self.root / rng.choice(others + dirs), rng.randrange(5000), rng.randrange(5000), follow_symlinks=False)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_mutations_round_trip(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    src = tmp_path / "src"
    src.mkdir()
    mutator = _Mutator(src, rng)
    for _ in range(120):  # the snapshot's tree
        mutator.step()
    age()

    def mutate(root: Path) -> None:
        for _ in range(300):
            mutator.step()

    delta = round_trip(tmp_path, src, mutate)
    assert delta.changed and delta.deleted


def test_names_that_are_not_utf8_round_trip(src: Path, tmp_path: Path) -> None:
    def mutate(root: Path) -> None:
        os.mkdir(os.path.join(os.fsencode(root), b"dir-\xff"))
        with open(os.path.join(os.fsencode(root), b"dir-\xff", b"file-\xfe"), "wb") as f:
            f.write(b"latin-1 name")

    delta = round_trip(tmp_path, src, mutate)
    assert os.fsdecode(b"dir-\xff/file-\xfe") in delta.changed
