"""``checkpoint --leave-running --export`` with fakes (no root, no CRIU): the container thaws before
a byte of the archive is written, the archive holds the upper layer as it was while frozen, and a
failure after the thaw leaves the container running and no file. Real CRIU:
tests/integration/test_checkpoint_leave_running_export.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from migrate.api import CheckpointOptions
from migrate.archive import ArchiveWriter, read_archive
from migrate.checkpoint import checkpoint_container
from tests.fakes.criu import FakeCriu
from tests.unit.test_checkpoint_orchestration import FakeHost, _no_cpuinfo, leftovers  # noqa: F401 (a fixture)


class WatchedHost(FakeHost):
    """Records the export's temp file size at the thaw, and changes the upper layer right after it."""

    def __init__(self, root: Path, exports: Path) -> None:
        super().__init__(root)
        self.exports = exports
        self.written_at_thaw: list[int] = []

    def thaw(self, c: Any) -> None:
        super().thaw(c)
        self.written_at_thaw = [p.stat().st_size for p in self.exports.glob(".web.pma.*.tmp")]
        (self.upper / "etc" / "motd").write_text("written after the thaw\n")  # the running container writes on


def test_thaws_before_the_archive_and_archives_the_frozen_upper_layer(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    host = WatchedHost(tmp_path, exports)
    out = exports / "web.pma"

    result = checkpoint_container(host, "web", CheckpointOptions(export_path=out, leave_running=True), criu=FakeCriu())

    assert host.events == ["freeze", "isolate", "rejoin", "thaw"], "thawed once, never stopped"
    assert host.written_at_thaw == [0], "the archive must be written after the thaw, not before"
    assert result.export_path == str(out) and [p.name for p in exports.iterdir()] == ["web.pma"]
    assert leftovers(host) == [], "the staging dir must go"
    dest = tmp_path / "unpacked"
    with open(out, "rb") as f:
        manifest = read_archive(f, dest)
    assert manifest["container"]["name"] == "web" and "dump_stats" in manifest
    assert (dest / "upper" / "etc" / "motd").read_text() == "hello\n", "the upper layer as it was while frozen"
    assert (dest / "images" / "pages-1.img").stat().st_size == 16 * 4096
    assert (dest / "images" / "cpuinfo.img").exists()
    assert result.stats.archive_bytes == out.stat().st_size


def test_a_failure_after_the_thaw_keeps_it_running_and_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    host = WatchedHost(tmp_path, exports)
    real_add_file = ArchiveWriter.add_file

    def full(self: ArchiveWriter, name: str, path: Path, **kw: Any) -> Any:
        if name.startswith("images/pages-"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_add_file(self, name, path, **kw)

    monkeypatch.setattr(ArchiveWriter, "add_file", full)
    with pytest.raises(OSError) as info:
        checkpoint_container(host, "web", CheckpointOptions(export_path=exports / "web.pma", leave_running=True),
                             criu=FakeCriu())
    assert info.value.errno == errno.ENOSPC
    assert host.events == ["freeze", "isolate", "rejoin", "thaw"], "thawed once before the failure, not stopped"
    assert list(exports.iterdir()) == [], "no temp archive may stay"
    assert leftovers(host) == [] and list(host.paths.checkpoints.iterdir()) == []


class WritesUntilTheFreeze(FakeHost):
    """The container writes its upper layer and its volume after the export staged them and until
    the freeze."""

    def __init__(self, root: Path) -> None:
        from runtime.spec import Volume

        self.data = root / "vol" / "_data"
        self.data.mkdir(parents=True)
        (self.data / "log").write_text("one\n")
        super().__init__(root, volumes=(Volume(source=str(self.data), target="/data", name="vol"),))

    def freeze(self, c: Any, **record: Any) -> None:
        (self.upper / "etc" / "motd").write_text("written just before the freeze\n")
        (self.upper / "etc" / "new").write_text("new\n")
        (self.data / "log").write_text("one\ntwo\n")
        super().freeze(c, **record)


@pytest.mark.parametrize("stage_fails", [(), ("upper",), ("vol",), ("upper", "vol")], ids=str)
def test_the_archive_holds_the_trees_of_the_freeze_not_of_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    stage_fails: tuple[str, ...]) -> None:
    import subprocess

    from migrate import checkpoint_presync

    host = WritesUntilTheFreeze(tmp_path)
    real, copies = subprocess.run, []

    def run(argv: list[str], **kw: Any) -> Any:
        tree = "upper" if argv[-1].endswith("/upper") else "vol"
        if tree in stage_fails and tree not in copies:  # the stage's cp -a: as if a file vanished under it
            copies.append(tree)
            return subprocess.CompletedProcess(argv, 1, "", "cp: cannot stat: No such file or directory")
        copies.append(tree)
        return real(argv, **kw)

    monkeypatch.setattr(checkpoint_presync.subprocess, "run", run)
    out = tmp_path / "web.pma"
    checkpoint_container(host, "web", CheckpointOptions(export_path=out, leave_running=True), criu=FakeCriu())
    assert sorted(copies) == sorted(["upper", "vol", *stage_fails]), "staged once, and copied whole when frozen if that failed"
    with open(out, "rb") as f:
        read_archive(f, tmp_path / "x")
    assert (tmp_path / "x" / "upper" / "etc" / "motd").read_text() == "written just before the freeze\n"
    assert (tmp_path / "x" / "upper" / "etc" / "new").read_text() == "new\n"
    assert (tmp_path / "x" / "volumes" / "vol" / "log").read_text() == "one\ntwo\n"
    assert leftovers(host) == []
