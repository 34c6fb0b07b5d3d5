"""migrate/checkpoint_presync.py (--leave-running --export, issue 17): trees copied before the
freeze, their changes taken "frozen", merged after: each tree in the staging dir must equal the
source as it was at ``capture``, however it changed before (also between the signature walk and
the copy) and whatever it does after. A hardlinked change falls back to the whole-tree copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from migrate import checkpoint_presync
from tests.unit.test_upper_sync import age, make_tree, tree_state


def cp_a(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--no-target-directory", "--", str(src), str(dst)], check=True)


def copies(log: list[Path]) -> Callable[[Path, Path], None]:
    def copy(src: Path, dst: Path) -> None:
        log.append(src)
        cp_a(src, dst)

    return copy


def before_cp(monkeypatch: pytest.MonkeyPatch, src: Path, change: Callable[[], None]) -> None:
    """Change ``src`` after its signatures were taken, right before ``cp -a`` copies it."""
    real = subprocess.run

    def run(argv: list[str], **kw: Any) -> Any:
        if argv[:2] == ["cp", "-a"] and str(src) in argv:
            change()
        return real(argv, **kw)

    monkeypatch.setattr(checkpoint_presync.subprocess, "run", run)


def mutate(upper: Path, vol: Path) -> None:
    (upper / "f").write_bytes(b"changed, same mtime\n")
    os.utime(upper / "f", ns=(1, 1_600_000_000_000_000_000))  # mtime put back: ctime still moves
    (upper / "big").unlink()
    shutil.rmtree(upper / "other")
    (upper / "d" / "new").mkdir()
    (upper / "d" / "new" / "x").write_bytes(os.urandom(5000))
    os.chmod(upper / "d" / "sub", 0o700)
    os.rename(upper / "d" / "a", upper / "d" / "sub" / "a2")
    with open(vol / "log", "ab") as f:
        f.write(b"two\n")
    (vol / "fresh").write_text("made after the stage\n")


def test_trees_are_captured_as_they_were_at_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upper, vol, staging = tmp_path / "upper", tmp_path / "vol", tmp_path / "staging"
    make_tree(upper)
    vol.mkdir()
    (vol / "log").write_bytes(b"one\n")
    (vol / "torn").write_bytes(b"as signed\n")
    staging.mkdir()
    age()

    def change() -> None:  # after the signature walk: the copy sees these, the signatures do not
        (vol / "brief").write_text("made and removed before the freeze\n")
        (vol / "torn").write_bytes(b"as copied\n")
        os.utime(vol / "torn", ns=(1, 1_600_000_000_000_000_000))

    before_cp(monkeypatch, vol, change)
    trees = {"upper": upper, "volumes/v": vol}
    presync = checkpoint_presync.stage(staging, trees)
    assert presync is not None and (staging / "volumes" / "v" / "brief").is_file()
    monkeypatch.undo()

    mutate(upper, vol)  # the container runs on until the freeze
    (vol / "brief").unlink()
    (vol / "torn").write_bytes(b"as frozen\n")
    os.utime(vol / "torn", ns=(1, 1_600_000_000_000_000_000))
    expected = {rel: tree_state(path) for rel, path in trees.items()}
    copied: list[Path] = []
    checkpoint_presync.capture(presync, copies(copied))  # "frozen"
    assert copied == [], "a delta could say every change: nothing may be copied whole while frozen"
    assert set(presync.deltas) == set(trees)
    assert "f" in presync.deltas["upper"].changed and "big" in presync.deltas["upper"].deleted
    assert "brief" in presync.deltas["volumes/v"].deleted

    (upper / "d" / "new" / "x").write_bytes(b"after the thaw")  # the container runs again
    (vol / "log").write_bytes(b"after the thaw")
    checkpoint_presync.merge(presync)
    assert {rel: tree_state(staging / rel) for rel in trees} == expected
    assert sorted(p.name for p in staging.iterdir()) == ["upper", "volumes"], "the stage's files were left"


def test_an_unchanged_tree_needs_no_copy_and_a_hardlinked_change_is_copied_whole(tmp_path: Path) -> None:
    still, linked, staging = tmp_path / "still", tmp_path / "linked", tmp_path / "staging"
    make_tree(still)
    linked.mkdir()
    (linked / "g").write_text("upper\n")
    os.link(linked / "g", linked / "h")
    staging.mkdir()
    age()
    presync = checkpoint_presync.stage(staging, {"upper": still, "volumes/l": linked})
    assert presync is not None
    (linked / "g").write_text("changed through one of its names\n")
    expected = tree_state(linked)
    copied: list[Path] = []
    checkpoint_presync.capture(presync, copies(copied))
    assert copied == [linked]
    assert presync.deltas["upper"].changed == () and presync.deltas["upper"].deleted == ()
    checkpoint_presync.merge(presync)
    assert tree_state(staging / "upper") == tree_state(still)
    assert tree_state(staging / "volumes" / "l") == expected
    assert os.stat(staging / "volumes" / "l" / "g").st_ino == os.stat(staging / "volumes" / "l" / "h").st_ino
    assert sorted(p.name for p in staging.iterdir()) == ["upper", "volumes"]


def test_a_failed_copy_stages_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, staging = tmp_path / "src", tmp_path / "staging"
    make_tree(src)
    staging.mkdir()

    def fail(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        Path(argv[-1]).mkdir(parents=True)  # cp's partial copy
        return subprocess.CompletedProcess(argv, 1, "", "cp: cannot stat 'x': No such file or directory")

    monkeypatch.setattr(checkpoint_presync.subprocess, "run", fail)
    assert checkpoint_presync.stage(staging, {"upper": src}) is None
    assert list(staging.iterdir()) == [], "the partial copy was left"
    assert checkpoint_presync.stage(staging, {}) is None
