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
