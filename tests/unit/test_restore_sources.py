"""restore_container's sources and its answer (migrate/restore.py ``_open_source`` and ``_stats``),
with the fakes of test_checkpoint_orchestration: a local checkpoint, an archive of ours imported,
nothing to restore from; the stats' fields and the progress phases of each."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.api import CheckpointOptions, ProgressEvent, RestoreOptions
from migrate.checkpoint import checkpoint_container
from migrate.errors import MigrationError
from migrate.restore import restore_container
from tests.fakes.criu import FakeCriu
from tests.unit.test_checkpoint_orchestration import FakeHost, _checkpoint, leftovers


def _phases(events: list[ProgressEvent]) -> list[str]:
    return [e.phase for e in events]


def test_a_local_checkpoint_answers_with_its_images_size_and_no_archive(tmp_path: Path) -> None:
    host, cid = _checkpoint(tmp_path)
    images = host.paths.checkpoint(cid) / "images"
    events: list[ProgressEvent] = []
    result = restore_container(host, RestoreOptions(checkpoint_id=cid, name="web2"), criu=FakeCriu(), progress=events.append)
    stats = result.stats
    assert stats.images_bytes == sum(p.stat().st_size for p in images.iterdir() if p.is_file()) > 0
    assert stats.archive_bytes == 0 and result.signed_by == ""
    assert 0 <= stats.import_ms <= stats.total_ms and 0 <= stats.restore_ms <= stats.total_ms
    assert stats.since_resume_ms >= 0
    assert _phases(events) == ["verify", "preflight", "restore", "done"]
    assert leftovers(host) == []


def test_an_archive_of_ours_counts_its_bytes_and_goes_with_its_scratch(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    archive = tmp_path / "web.pma"
    checkpoint_container(host, "web", CheckpointOptions(export_path=archive), criu=FakeCriu())
    result = restore_container(host, RestoreOptions(import_path=archive, name="web2"), criu=FakeCriu())
    assert result.stats.archive_bytes == archive.stat().st_size > 0
    assert result.stats.images_bytes > 0  # counted before its scratch dir went
    assert result.signed_by == ""  # no keys asked for
    assert leftovers(host) == []


def test_nothing_to_restore_from_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    host.paths.tmp.mkdir(parents=True, exist_ok=True)
    events: list[ProgressEvent] = []
    with pytest.raises(MigrationError, match="restore needs a checkpoint id or an archive to import"):
        restore_container(host, RestoreOptions(), criu=FakeCriu(), progress=events.append)
    assert _phases(events) == ["verify"] and host.built == [] and leftovers(host) == []
