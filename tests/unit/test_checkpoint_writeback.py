"""migrate/checkpoint_writeback.py: which ranges of a growing images dir get their writeback started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from migrate import checkpoint_writeback
from migrate.checkpoint_writeback import CHUNK_BYTES, Writeback, sync_files

MiB = 1 << 20


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    calls: list[tuple[str, int, int]] = []

    def record(fd: int, offset: int = 0, nbytes: int = 0) -> None:
        calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, nbytes))

    monkeypatch.setattr(checkpoint_writeback, "start_write", record)
    return calls


def grow(path: Path, nbytes: int) -> None:
    with open(path, "ab") as f:
        f.write(b"\x01" * nbytes)


def test_poll_starts_each_new_stretch_once(tmp_path: Path, started: list[tuple[str, int, int]]) -> None:
    wb = Writeback(tmp_path)
    grow(tmp_path / "pages-1.img", 3 * MiB)
    grow(tmp_path / "core-1.img", 2 * MiB)  # not a pages file: left to the commit's fsync
    wb.poll()
    grow(tmp_path / "pages-1.img", CHUNK_BYTES - 1)  # less than a chunk: waits for more
    wb.poll()
    grow(tmp_path / "pages-1.img", 1)
    grow(tmp_path / "pages-2.img", 2 * MiB)
    wb.poll()
    wb.close()
    assert sorted(started) == sorted([
        ("pages-1.img", 0, 3 * MiB),
        ("pages-1.img", 3 * MiB, CHUNK_BYTES),
        ("pages-2.img", 0, 2 * MiB),
    ])


def test_follow_polls_until_the_dump_ends(tmp_path: Path, started: list[tuple[str, int, int]]) -> None:
    answers = iter([True, True, True, False])
    pages = tmp_path / "pages-1.img"

    def dumping() -> bool:
        grow(pages, MiB)  # CRIU appends between polls
        return next(answers)

    Writeback(tmp_path).follow(dumping)  # the MiB appended before the last answer is the commit's
    assert [(o, n) for _, o, n in started] == [(0, MiB), (MiB, MiB), (2 * MiB, MiB)]


def test_follow_survives_a_vanished_dir(tmp_path: Path) -> None:
    """What the writeback could not start, the commit's fsync writes: never an error of the dump."""
    answers = iter([True, False])
    Writeback(tmp_path / "gone").follow(lambda: next(answers))


def test_sync_files_starts_all_then_waits_for_each(tmp_path: Path, started: list[tuple[str, int, int]],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_writeback.os, "fsync", fsync)
    for name in ("pages-1.img", "core-1.img"):
        grow(tmp_path / name, 4096)
    (tmp_path / "sub").mkdir()
    sync_files(tmp_path)
    assert sorted(n for n, _, _ in started) == ["core-1.img", "pages-1.img"]
    assert sorted(synced) == ["core-1.img", "pages-1.img", tmp_path.name]  # the files, then the directory
    assert synced[-1] == tmp_path.name


def test_start_write_on_a_real_file(tmp_path: Path) -> None:
    """The real system call (no fake): a written file's range, and a closed fd only logs."""
    path = tmp_path / "pages-1.img"
    grow(path, MiB)
    checkpoint_writeback.start_path(path)
    checkpoint_writeback.start_path(tmp_path / "missing")
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    checkpoint_writeback.start_write(fd)  # EBADF: logged, not raised


def test_start_follows_in_its_own_thread(tmp_path: Path, started: list[tuple[str, int, int]]) -> None:
    grow(tmp_path / "pages-1.img", MiB)
    answers = iter([True, False])
    thread = Writeback(tmp_path).start(lambda: next(answers))
    thread.join(5)
    assert not thread.is_alive() and thread.daemon
    assert started == [("pages-1.img", 0, MiB)]
